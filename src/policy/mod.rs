//! Policies: the model of a policy document, its parsing and validation, and the compiled set
//! that picks the policy for a namespace.
//!
//! A document:
//! ```yaml
//! apiVersion: stateful-guard.io/v1alpha1
//! kind: Policy
//! metadata: {name: default}
//! spec:
//!   mode: enforce            # or audit: dry-run, nothing denied or patched
//!   match: {namespaces: [], namespaceSelector: {}}
//!   exemptNamespaces: [kube-system]
//!   objectExemptions: {allow: false, rules: []}
//!   updates: {validate: new-findings, mutateTemplate: false}
//!   rules:
//!     require-pdb: {action: enforce, minReplicas: 2}
//! ```
//! Every field is documented in `policies/README.md`.
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterView;
use crate::labels;
use crate::rules::RuleId;
pub use crate::rules::Rules;

pub mod action;
pub mod source;

pub use action::{Mode, MutateAction, ValidateAction};

pub const API_VERSION: &str = "stateful-guard.io/v1alpha1";
pub const KIND: &str = "Policy";

/// The recommended policy, compiled into the binary: what `serve` uses when no policy is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../policies/default.yaml");

/// The source name of [`EMBEDDED_DEFAULT`] in logs and errors.
pub const EMBEDDED_SOURCE: &str = "<embedded policies/default.yaml>";

/// Object annotation listing rules to skip for that object, honoured only when the policy's
/// `objectExemptions.allow` is true: `stateful-guard.io/exempt: "require-pdb,probes-differ"`.
pub const EXEMPT_ANNOTATION: &str = "stateful-guard.io/exempt";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: PolicyMeta,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, rename = "match")]
    pub scope: Scope,
    #[serde(default = "default_exempt_namespaces")]
    pub exempt_namespaces: Vec<String>,
    #[serde(default)]
    pub object_exemptions: ObjectExemptions,
    #[serde(default)]
    pub updates: Updates,
    #[serde(default)]
    pub rules: Rules,
}

fn default_exempt_namespaces() -> Vec<String> {
    vec!["kube-system".into()]
}

/// Which namespaces a policy applies to. Both parts must hold; an empty scope matches all.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

impl Scope {
    /// 2 for named namespaces, 1 for a selector, 0 for everything: the more specific wins.
    fn specificity(&self) -> u8 {
        if !self.namespaces.is_empty() {
            2
        } else if self.namespace_selector.is_some() {
            1
        } else {
            0
        }
    }

    fn matches(&self, namespace: &str, cluster: &dyn ClusterView) -> bool {
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        match &self.namespace_selector {
            None => true,
            Some(selector) => cluster
                .namespace_labels(namespace)
                .is_some_and(|l| labels::matches(selector, &l)),
        }
    }
}

/// Per-object opt-outs through the [`EXEMPT_ANNOTATION`]. Off by default: whoever can create a
/// StatefulSet must not be able to switch the guard off for it unless the policy owner allows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectExemptions {
    #[serde(default)]
    pub allow: bool,
    /// Rules that may be exempted; empty means every rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateValidation {
    /// On UPDATE, report only findings the old object did not already have.
    #[default]
    NewFindings,
    /// On UPDATE, report every finding, as on CREATE.
    All,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Updates {
    #[serde(default)]
    pub validate: UpdateValidation,
    /// Allow mutation rules to change `spec.template` on UPDATE (rolls every pod).
    #[serde(default)]
    pub mutate_template: bool,
}

/// An I/O error kept as the cause of a [`PolicyError`], which is cloned into the store's
/// bookkeeping and compared in tests: shared, and equal when kind and message are.
#[derive(Debug, Clone)]
pub struct IoCause(pub std::sync::Arc<std::io::Error>);

impl From<std::io::Error> for IoCause {
    fn from(error: std::io::Error) -> Self {
        Self(std::sync::Arc::new(error))
    }
}

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl std::fmt::Display for IoCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Why a policy document was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: cannot read: {source}")]
    Read {
        origin: String,
        #[source]
        source: IoCause,
    },
    #[error("{origin}: cannot read: not UTF-8: {source}")]
    NotUtf8 {
        origin: String,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("{origin}: document {document} (line {line}): {field}: {message}")]
    Parse {
        origin: String,
        document: usize,
        line: usize,
        field: String,
        message: String,
    },
    #[error("{origin}: policy {name:?}: {message}")]
    Invalid {
        origin: String,
        name: String,
        message: String,
    },
    #[error("{origin}: no policy document found")]
    Empty { origin: String },
}

impl PolicyError {
    /// The source (file or ConfigMap key) the error is about.
    pub fn source_name(&self) -> &str {
        match self {
            PolicyError::Read { origin, .. }
            | PolicyError::NotUtf8 { origin, .. }
            | PolicyError::Parse { origin, .. }
            | PolicyError::Invalid { origin, .. }
            | PolicyError::Empty { origin } => origin,
        }
    }
}

/// Parses every YAML (or JSON) document of `text`, naming `source` and the line and field of
/// the first error. Empty documents (comments only) are skipped.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<PolicyDocument>, PolicyError> {
    let mut docs = Vec::new();
    for (index, (first_line, chunk)) in split_documents(text).into_iter().enumerate() {
        let document = index + 1;
        if chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let de = serde_yaml_ng::Deserializer::from_str(chunk);
        let doc: PolicyDocument = serde_path_to_error::deserialize(de).map_err(|e| {
            let line = e.inner().location().map_or(0, |l| l.line()) + first_line;
            let path = e.path().to_string();
            let mut message = e.inner().to_string();
            // serde_yaml_ng appends " at line L column C": the line is reported on its own.
            if let Some(cut) = message.find(" at line ") {
                message.truncate(cut);
            }
            // ... and prefixes its own path (`spec.rules: unknown field`): the field is
            // reported once, from serde_path_to_error.
            if let Some((prefix, rest)) = message.split_once(": ")
                && !prefix.contains(' ')
            {
                message = rest.to_owned();
            }
            PolicyError::Parse {
                origin: source.to_owned(),
                document,
                line: line.max(first_line + 1),
                field: if path == "." {
                    "(document)".into()
                } else {
                    path
                },
                message,
            }
        })?;
        validate_document(&doc, source)?;
        docs.push(doc);
    }
    if docs.is_empty() {
        return Err(PolicyError::Empty {
            origin: source.to_owned(),
        });
    }
    Ok(docs)
}

/// Splits a multi-document YAML stream at `---` lines: (0-based first line, text) per document.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut start_line = 0;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            out.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = n + 1;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

fn validate_document(doc: &PolicyDocument, source: &str) -> Result<(), PolicyError> {
    let invalid = |message: String| PolicyError::Invalid {
        origin: source.to_owned(),
        name: doc.metadata.name.clone(),
        message,
    };
    if doc.api_version != API_VERSION {
        return Err(invalid(format!(
            "apiVersion: expected {API_VERSION:?}, got {:?}",
            doc.api_version
        )));
    }
    if doc.kind != KIND {
        return Err(invalid(format!(
            "kind: expected {KIND:?}, got {:?}",
            doc.kind
        )));
    }
    if doc.metadata.name.is_empty() {
        return Err(invalid("metadata.name: must not be empty".into()));
    }
    if let Some(selector) = &doc.spec.scope.namespace_selector {
        labels::check(selector, "spec.match.namespaceSelector").map_err(invalid)?;
    }
    doc.spec.rules.check().map_err(invalid)
}

/// A policy ready to evaluate requests.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    /// Where it came from (file path or `configmap:ns/name/key`).
    pub source: String,
    pub spec: PolicySpec,
}

impl Policy {
    /// Rules the object exempts itself from, if the policy allows object exemptions.
    pub fn object_exemptions(&self, annotations: Option<&BTreeMap<String, String>>) -> Vec<RuleId> {
        let oe = &self.spec.object_exemptions;
        let Some(value) = annotations.and_then(|a| a.get(EXEMPT_ANNOTATION)) else {
            return vec![];
        };
        if !oe.allow {
            return vec![];
        }
        value
            .split(',')
            .filter_map(|s| RuleId::parse(s.trim()))
            .filter(|r| oe.rules.is_empty() || oe.rules.contains(r))
            .collect()
    }
}

/// The outcome of choosing a policy for a namespace.
#[derive(Debug)]
pub enum Selection<'a> {
    Policy(&'a Arc<Policy>),
    /// The namespace is exempt (the reason says by what).
    Exempt(String),
    /// No policy applies.
    NoPolicy,
}

/// All loaded policies, in precedence order.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
    /// Namespaces never evaluated, whatever the policies say (the webhook's own).
    always_exempt: Vec<String>,
    /// Set when every source of policies is gone and these are the last good ones, kept so
    /// that admission never silently stops checking: every response carries it as a warning.
    orphaned: Option<String>,
}

impl PolicySet {
    /// Compiles documents, each with its source. Precedence: the most specific `match` first
    /// (named namespaces, then a namespace selector, then everything), then by name; a name
    /// used twice keeps the first by source order, and the later one is reported.
    pub fn compile(
        docs: impl IntoIterator<Item = (String, PolicyDocument)>,
        always_exempt: Vec<String>,
    ) -> (Self, Vec<PolicyError>) {
        let mut errors = Vec::new();
        let mut by_name: BTreeMap<String, Arc<Policy>> = BTreeMap::new();
        for (source, doc) in docs {
            if let Some(existing) = by_name.get(&doc.metadata.name) {
                errors.push(PolicyError::Invalid {
                    origin: source,
                    name: doc.metadata.name.clone(),
                    message: format!(
                        "a policy with this name is already loaded from {}; ignored",
                        existing.source
                    ),
                });
                continue;
            }
            by_name.insert(
                doc.metadata.name.clone(),
                Arc::new(Policy {
                    name: doc.metadata.name,
                    source,
                    spec: doc.spec,
                }),
            );
        }
        let mut policies: Vec<_> = by_name.into_values().collect();
        policies.sort_by(|a, b| {
            b.spec
                .scope
                .specificity()
                .cmp(&a.spec.scope.specificity())
                .then_with(|| a.name.cmp(&b.name))
        });
        (
            Self {
                policies,
                always_exempt,
                orphaned: None,
            },
            errors,
        )
    }

    /// The same policies, kept after every source is gone, with the warning `why`.
    pub fn orphaned(&self, why: String) -> Self {
        Self {
            policies: self.policies.clone(),
            always_exempt: self.always_exempt.clone(),
            orphaned: Some(why),
        }
    }

    /// Why these are the last good policies of sources that are gone, if they are.
    pub fn orphaned_warning(&self) -> Option<&str> {
        self.orphaned.as_deref()
    }

    /// The embedded default policy.
    pub fn embedded_default(always_exempt: Vec<String>) -> Result<Self, PolicyError> {
        let docs = parse_documents(EMBEDDED_DEFAULT, EMBEDDED_SOURCE)?;
        let (set, _) = Self::compile(
            docs.into_iter().map(|d| (EMBEDDED_SOURCE.to_owned(), d)),
            always_exempt,
        );
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether choosing a policy may depend on namespace labels.
    pub fn selects_by_namespace_labels(&self) -> bool {
        self.policies
            .iter()
            .any(|p| p.spec.scope.namespace_selector.is_some())
    }

    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// The policy that governs `namespace`: the first in precedence order whose `match` holds.
    pub fn select(&self, namespace: &str, cluster: &dyn ClusterView) -> Selection<'_> {
        if self.always_exempt.iter().any(|n| n == namespace) {
            return Selection::Exempt(format!(
                "namespace {namespace} is the webhook's own namespace"
            ));
        }
        match self
            .policies
            .iter()
            .find(|p| p.spec.scope.matches(namespace, cluster))
        {
            Some(p) if p.spec.exempt_namespaces.iter().any(|n| n == namespace) => {
                Selection::Exempt(format!(
                    "namespace {namespace} is exempt in policy {}",
                    p.name
                ))
            }
            Some(p) => Selection::Policy(p),
            None => Selection::NoPolicy,
        }
    }
}
