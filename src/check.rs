//! `stateful-guard check`: the webhook's engine over manifests, offline.
//!
//! Each StatefulSet and PVC is evaluated as a CREATE after the defaults kube-apiserver would
//! apply, first by the mutation rules, then (on the mutated object, as the validating webhook
//! sees it) by the validation rules. PodDisruptionBudgets, StorageClasses and Namespaces in the
//! input are the cluster state: the input is taken as the whole of its namespaces' PDBs, and
//! StorageClass questions are answered only when the input holds StorageClasses.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use json_patch::PatchOperation;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::{CheckArgs, OutputFormat};
use crate::cluster::{ClusterView, Snapshot};
use crate::engine::{self, Evaluation, Object, Phase, Subject};
use crate::policy::PolicySet;
use crate::policy::source::{FileSource, PolicyStore};
use crate::policy::{Mode, ValidateAction};
use crate::rules::{Operation, RuleId};

/// Why `check` could not run: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: cannot read: {message}")]
    Read { path: String, message: String },
    #[error("{path}: document {document}: invalid YAML: {message}")]
    Yaml {
        path: String,
        document: usize,
        message: String,
    },
    #[error("{at} does not decode: {message}")]
    Object { at: ObjectAt, message: String },
    #[error("{at} is invalid, kube-apiserver would reject it: {message}")]
    Invalid { at: ObjectAt, message: String },
    #[error("invalid policy: {0}")]
    Policy(String),
}

/// One input document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: String,
    pub index: usize,
    pub value: Value,
}

/// Reads files, directories (recursively, `*.yaml`, `*.yml`, `*.json`) and `-` (stdin).
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Document>, InputError> {
    let mut docs = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| InputError::Read {
                    path: "<stdin>".into(),
                    message: e.to_string(),
                })?;
            docs.extend(parse_stream(&text, "<stdin>")?);
        } else {
            for file in expand(path)? {
                let text = std::fs::read_to_string(&file).map_err(|e| InputError::Read {
                    path: file.display().to_string(),
                    message: e.to_string(),
                })?;
                docs.extend(parse_stream(&text, &file.display().to_string())?);
            }
        }
    }
    Ok(docs)
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let meta = std::fs::metadata(path).map_err(|e| InputError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| InputError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            out.extend(expand(&entry)?);
        } else if [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e)) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Multi-document YAML (JSON is YAML); `List` kinds are flattened into their items.
pub fn parse_stream(text: &str, path: &str) -> Result<Vec<Document>, InputError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = Value::deserialize(de).map_err(|e| InputError::Yaml {
            path: path.to_owned(),
            document: index,
            message: e.to_string(),
        })?;
        match value {
            Value::Null => {}
            Value::Object(ref map)
                if map
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                for item in map
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push(Document {
                        path: path.to_owned(),
                        index,
                        value: item.clone(),
                    });
                }
            }
            value => out.push(Document {
                path: path.to_owned(),
                index,
                value,
            }),
        }
    }
    Ok(out)
}

fn type_of(v: &Value) -> (&str, &str) {
    (
        v.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
        v.get("kind").and_then(Value::as_str).unwrap_or(""),
    )
}

/// Where an object of the input is: `FILE: document N: KIND NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectAt {
    pub path: String,
    pub document: usize,
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for ObjectAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ObjectAt {
            path,
            document,
            kind,
            name,
        } = self;
        write!(f, "{path}: document {document}: {kind} {name}")
    }
}

impl ObjectAt {
    fn of(doc: &Document) -> Self {
        ObjectAt {
            path: doc.path.clone(),
            document: doc.index,
            kind: type_of(&doc.value).1.to_owned(),
            name: doc
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(doc: &Document, value: Value) -> Result<T, InputError> {
    serde_json::from_value(value).map_err(|e| InputError::Object {
        at: ObjectAt::of(doc),
        message: e.to_string(),
    })
}

/// An object kube-apiserver's own validation refuses, in its words.
fn invalid(doc: &Document, message: String) -> InputError {
    InputError::Invalid {
        at: ObjectAt::of(doc),
        message,
    }
}

/// The cluster state the input describes.
pub fn snapshot(docs: &[Document]) -> Result<Snapshot, InputError> {
    let (mut pdbs, mut classes, mut namespaces) = (Vec::new(), Vec::new(), Vec::new());
    for doc in docs {
        match type_of(&doc.value) {
            ("policy/v1", "PodDisruptionBudget") => {
                let mut pdb: PodDisruptionBudget = decode(doc, doc.value.clone())?;
                pdb.metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                pdbs.push(pdb);
            }
            ("storage.k8s.io/v1", "StorageClass") => {
                classes.push(decode::<StorageClass>(doc, doc.value.clone())?)
            }
            ("v1", "Namespace") => namespaces.push(decode::<Namespace>(doc, doc.value.clone())?),
            _ => {}
        }
    }
    Ok(Snapshot::known(pdbs, classes, namespaces))
}

/// One finding in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportFinding {
    pub rule: RuleId,
    pub action: ValidateAction,
    pub message: String,
}

/// One mutation in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportMutation {
    pub rule: RuleId,
    pub applied: bool,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The verdict on one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub file: String,
    pub document: usize,
    pub policy: String,
    pub mode: Mode,
    pub allowed: bool,
    /// The JSON Patch the mutating webhook would return.
    pub patch: Vec<PatchOperation>,
    pub mutations: Vec<ReportMutation>,
    pub findings: Vec<ReportFinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Summary {
    pub objects: usize,
    pub denied: usize,
    pub mutated: usize,
    pub findings: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub objects: Vec<ObjectReport>,
    pub summary: Summary,
}

/// A document as kube-apiserver would store it before admission: the defaults the rules can
/// tell apart.
fn apply_defaults(value: &mut Value, namespace: &str, cluster: &dyn ClusterView) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
        && !meta.contains_key("namespace")
    {
        meta.insert("namespace".into(), Value::String(namespace.into()));
    }
    match type_of(value) {
        ("apps/v1", "StatefulSet") => {
            if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("podManagementPolicy")
                    .or_insert_with(|| "OrderedReady".into());
                spec.entry("replicas").or_insert_with(|| 1.into());
            }
        }
        ("v1", "PersistentVolumeClaim") => {
            // The DefaultStorageClass admission plugin.
            if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut)
                && !spec.contains_key("storageClassName")
                && let Some(default) = cluster.default_storage_class()
                && let Some(name) = &default.metadata.name
            {
                spec.insert("storageClassName".into(), Value::String(name.clone()));
            }
        }
        _ => {}
    }
}

/// What `check` learns about one object.
struct Evaluated {
    mutation: Evaluation,
    validation: Evaluation,
    /// The patch the mutating webhook would return.
    patch: Vec<PatchOperation>,
    /// The object with that patch applied.
    mutated: Value,
}

/// Evaluates one defaulted object: the mutating pass, then the validating pass on its result.
fn evaluate_value(
    value: &Value,
    policies: &PolicySet,
    cluster: &dyn ClusterView,
    doc: &Document,
) -> Result<Evaluated, InputError> {
    let ns = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let kind = type_of(value).1;
    // Decodes `value` as its kind and runs one webhook's phase on it, as a CREATE.
    let run = |phase: Phase, value: Value| -> Result<(Evaluation, ObjectMeta), InputError> {
        let evaluate = |object: Object| {
            let subject = Subject {
                operation: Operation::Create,
                namespace: ns,
                object,
                old: None,
                claim_owner: None,
                written: Some(&doc.value),
            };
            engine::evaluate(phase, &subject, policies, cluster)
        };
        if kind == "StatefulSet" {
            let written_selector = value
                .pointer("/spec/selector")
                .is_some_and(|s| !s.is_null());
            let sts: StatefulSet = decode(doc, value)?;
            if !written_selector {
                return Err(invalid(doc, "spec.selector: Required value".into()));
            }
            if let Some(why) = engine::apiserver_rejects(&sts) {
                return Err(invalid(doc, why));
            }
            Ok((evaluate(Object::StatefulSet(&sts)), sts.metadata))
        } else {
            let pvc: PersistentVolumeClaim = decode(doc, value)?;
            Ok((evaluate(Object::Pvc(&pvc)), pvc.metadata))
        }
    };
    let (mutation, meta) = run(Phase::Mutate, value.clone())?;
    let patch = mutation.patch(&meta);
    let mut mutated = value.clone();
    json_patch::patch(&mut mutated, &patch).map_err(|e| InputError::Object {
        at: ObjectAt::of(doc),
        message: format!("internal error: the patch does not apply: {e}"),
    })?;
    let (validation, _) = run(Phase::Validate, mutated.clone())?;
    Ok(Evaluated {
        mutation,
        validation,
        patch,
        mutated,
    })
}

/// Evaluates every StatefulSet and PVC of `docs`. Returns the report and the documents with
/// the mutations applied (for `--fix`).
pub fn check(
    docs: &[Document],
    policies: &PolicySet,
    namespace: &str,
) -> Result<(Report, Vec<Value>), InputError> {
    let cluster = snapshot(docs)?;
    let mut objects = Vec::new();
    let mut fixed = Vec::new();
    for doc in docs {
        let is_subject = matches!(
            type_of(&doc.value),
            ("apps/v1", "StatefulSet") | ("v1", "PersistentVolumeClaim")
        );
        if !is_subject {
            fixed.push(doc.value.clone());
            continue;
        }
        let mut value = doc.value.clone();
        apply_defaults(&mut value, namespace, &cluster);
        let Evaluated {
            mutation: m,
            validation: v,
            patch,
            mutated,
        } = evaluate_value(&value, policies, &cluster, doc)?;
        let meta = value.get("metadata");
        let text = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let name = if text("name").is_empty() {
            format!("{}*", text("generateName"))
        } else {
            text("name")
        };
        let denied = v.denials().next().is_some();
        objects.push(ObjectReport {
            kind: type_of(&value).1.to_owned(),
            namespace: text("namespace"),
            name,
            file: doc.path.clone(),
            document: doc.index,
            policy: m.policy_name().to_owned(),
            mode: m.mode,
            allowed: !denied,
            patch,
            mutations: m
                .mutations
                .iter()
                .map(|r| ReportMutation {
                    rule: r.rule,
                    applied: r.applied && !r.mutation.ops.is_empty(),
                    summary: r.mutation.summary.clone(),
                    notes: r.mutation.notes.clone(),
                })
                .collect(),
            findings: v
                .findings
                .iter()
                .map(|r| ReportFinding {
                    rule: r.finding.rule,
                    action: r.action,
                    message: r.finding.message.trim_end().to_owned(),
                })
                .collect(),
            skipped: m.skipped.clone(),
        });
        fixed.push(mutated);
    }
    let summary = Summary {
        objects: objects.len(),
        denied: objects.iter().filter(|o| !o.allowed).count(),
        mutated: objects.iter().filter(|o| !o.patch.is_empty()).count(),
        findings: objects.iter().map(|o| o.findings.len()).sum(),
    };
    Ok((Report { objects, summary }, fixed))
}

/// The report for people.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for o in &report.objects {
        let verdict = if o.allowed { "allowed" } else { "DENIED" };
        out.push_str(&format!(
            "{} {}/{} ({}, document {}): {verdict}, policy {} ({})\n",
            o.kind,
            o.namespace,
            o.name,
            o.file,
            o.document,
            o.policy,
            o.mode.as_str()
        ));
        if let Some(why) = &o.skipped {
            out.push_str(&format!("  skipped: {why}\n"));
        }
        for m in &o.mutations {
            if !m.summary.is_empty() {
                let tag = if m.applied { "mutate" } else { "would mutate" };
                out.push_str(&format!("  {tag:<7} {}: {}\n", m.rule, m.summary));
            }
            for note in &m.notes {
                out.push_str(&format!("  {:<7} {}: {note}\n", "note", m.rule));
            }
        }
        for f in &o.findings {
            let tag = if f.action == ValidateAction::Enforce && o.mode == Mode::Enforce {
                "DENY"
            } else {
                f.action.as_str()
            };
            let mut lines = f.message.lines();
            out.push_str(&format!(
                "  {tag:<7} {}: {}\n",
                f.rule,
                lines.next().unwrap_or("")
            ));
            for line in lines {
                out.push_str(&format!("          {line}\n"));
            }
        }
    }
    let s = &report.summary;
    out.push_str(&format!(
        "{} objects checked: {} denied, {} would be mutated, {} findings\n",
        s.objects, s.denied, s.mutated, s.findings
    ));
    out
}

fn load_policies(path: Option<&Path>) -> Result<Arc<PolicySet>, InputError> {
    let Some(path) = path else {
        return PolicySet::embedded_default(vec![])
            .map(Arc::new)
            .map_err(|e| InputError::Policy(e.to_string()));
    };
    // The same loader as `serve --policy`: a file or a directory.
    let store = PolicyStore::new(vec![], Arc::new(crate::metrics::Metrics::new()));
    let mut source = FileSource::new(path.to_owned());
    if let Some(error) = source.sync(&store).into_iter().next() {
        return Err(InputError::Policy(error.to_string()));
    }
    let set = store.current();
    if set.is_empty() {
        return Err(InputError::Policy(format!(
            "no policy document in {}",
            path.display()
        )));
    }
    Ok(set)
}

/// `stateful-guard check`: exit 0 when nothing enforced is violated, 1 when something is, 2 on
/// usage or input errors.
pub fn run(args: &CheckArgs) -> ExitCode {
    let result = (|| {
        let policies = load_policies(args.policy.as_deref())?;
        let docs = read_inputs(&args.files)?;
        check(&docs, &policies, &args.namespace)
    })();
    let (report, fixed) = match result {
        Ok(r) => r,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.fix {
        for value in &fixed {
            match serde_yaml_ng::to_string(value) {
                Ok(yaml) => print!("---\n{yaml}"),
                Err(error) => {
                    eprintln!("error: cannot render YAML: {error}");
                    return ExitCode::from(2);
                }
            }
        }
        eprint!("{}", render_text(&report));
    } else {
        let rendered = match args.output {
            OutputFormat::Text => Ok(render_text(&report)),
            OutputFormat::Json => serde_json::to_string_pretty(&report)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string()),
            OutputFormat::Yaml => serde_yaml_ng::to_string(&report).map_err(|e| e.to_string()),
        };
        match rendered {
            Ok(text) => print!("{text}"),
            Err(error) => {
                eprintln!("error: cannot render the report: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let enforced_violation = report.objects.iter().any(|o| !o.allowed);
    if enforced_violation {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
