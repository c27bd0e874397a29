//! `check`'s evaluation: each StatefulSet and PVC as kube-apiserver would admit it on CREATE,
//! the mutating webhook's pass, then the validating webhook's on its result.
use json_patch::PatchOperation;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::input::{Document, InputError, ObjectAt, decode, invalid, snapshot_of, type_of};
use super::report::{ObjectReport, Report, ReportFinding, ReportMutation, Summary};
use crate::cluster::ClusterView;
use crate::engine::{self, Evaluation, Input, Object, Phase};
use crate::policy::PolicySet;
use crate::rules::Operation;

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
                // The apiserver defaults an empty or null policy as an absent one.
                let policy = spec
                    .entry("podManagementPolicy")
                    .or_insert_with(|| "OrderedReady".into());
                if policy.is_null() || policy.as_str() == Some("") {
                    *policy = "OrderedReady".into();
                }
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

/// Where the objects come from, which says what their fields tell about the user's choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Manifests as their authors wrote them: every field present was chosen.
    Manifests,
    /// Objects stored in a cluster (`check --cluster`): fully defaulted, so only their
    /// managedFields and last-applied annotation tell what was chosen; the claims the
    /// StatefulSet controller made follow their StatefulSet, as in the webhook.
    Cluster,
}

/// Evaluates one defaulted object: the mutating pass, then the validating pass on its result.
fn evaluate_value(
    value: &Value,
    policies: &PolicySet,
    cluster: &dyn ClusterView,
    doc: &Document,
    origin: Origin,
) -> Result<Evaluated, InputError> {
    let ns = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let kind = type_of(value).1;
    let claim_owner = match (origin, kind) {
        (Origin::Cluster, "PersistentVolumeClaim") => value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .and_then(|claim| cluster.claim_owner(ns, claim)),
        _ => None,
    };
    let written = match origin {
        Origin::Manifests => Some(&doc.value),
        Origin::Cluster => None,
    };
    // Decodes `value` as its kind and runs one webhook's phase on it, as a CREATE.
    let run = |phase: Phase, value: Value| -> Result<(Evaluation, ObjectMeta), InputError> {
        let evaluate = |object: Object| {
            let input = Input {
                operation: Operation::Create,
                namespace: ns,
                object,
                old: None,
                claim_owner: claim_owner.as_ref(),
                written,
            };
            engine::evaluate(phase, &input, policies, cluster)
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
    let patch: Vec<_> = mutation
        .patch(&meta)
        .into_iter()
        .map(std::borrow::Cow::into_owned)
        .collect();
    let mut mutated = value.clone();
    json_patch::patch(&mut mutated, &patch).map_err(|source| InputError::Patch {
        at: Box::new(ObjectAt::of(doc)),
        source,
    })?;
    let (validation, _) = run(Phase::Validate, mutated.clone())?;
    Ok(Evaluated {
        mutation,
        validation,
        patch,
        mutated,
    })
}

/// What `check` makes of its input.
#[derive(Debug)]
pub struct Checked {
    pub report: Report,
    /// Every document that read, with the mutations applied to those that evaluated (for
    /// `--fix`).
    pub fixed: Vec<Value>,
    /// Each document that did not evaluate, and why: `check` exits 2 after reporting the rest.
    pub errors: Vec<InputError>,
}

/// Evaluates every StatefulSet and PVC of `docs`, with the cluster state they describe.
pub fn check(docs: &[Document], policies: &PolicySet, namespace: &str) -> Checked {
    let (cluster, mut errors) = snapshot_of(docs);
    let mut checked = evaluate_all(docs, policies, namespace, &cluster, Origin::Manifests);
    errors.append(&mut checked.errors);
    checked.errors = errors;
    checked
}

/// Evaluates every StatefulSet and PVC of `docs` against `cluster`.
pub fn evaluate_all(
    docs: &[Document],
    policies: &PolicySet,
    namespace: &str,
    cluster: &dyn ClusterView,
    origin: Origin,
) -> Checked {
    let mut objects = Vec::new();
    let mut fixed = Vec::new();
    let mut errors = Vec::new();
    for doc in docs {
        match evaluate_document(doc, policies, namespace, cluster, origin) {
            Ok(Some((report, mutated))) => {
                objects.push(report);
                fixed.push(mutated);
            }
            Ok(None) => fixed.push(doc.value.clone()),
            Err(error) => {
                errors.push(error);
                fixed.push(doc.value.clone());
            }
        }
    }
    let summary = Summary::of(&objects);
    Checked {
        report: Report { objects, summary },
        fixed,
        errors,
    }
}

/// The verdict on one document, and the document with the mutations applied; `None` when it is
/// not a StatefulSet or PVC. Objects from a cluster that do not evaluate are reported as
/// skipped, with why (what a cluster stores was admitted by its apiserver: one odd object, a
/// newer API field say, must not hide the others).
pub fn evaluate_document(
    doc: &Document,
    policies: &PolicySet,
    namespace: &str,
    cluster: &dyn ClusterView,
    origin: Origin,
) -> Result<Option<(ObjectReport, Value)>, InputError> {
    let is_subject = matches!(
        type_of(&doc.value),
        ("apps/v1", "StatefulSet") | ("v1", "PersistentVolumeClaim")
    );
    if !is_subject {
        return Ok(None);
    }
    let mut value = doc.value.clone();
    apply_defaults(&mut value, namespace, cluster);
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
    let evaluated = evaluate_value(&value, policies, cluster, doc, origin);
    let Evaluated {
        mutation: m,
        validation: v,
        patch,
        mutated,
    } = match (evaluated, origin) {
        (Ok(evaluated), _) => evaluated,
        (Err(error), Origin::Cluster) => {
            let report = ObjectReport {
                kind: type_of(&value).1.to_owned(),
                namespace: text("namespace"),
                name,
                file: doc.path.clone(),
                document: doc.index,
                line: doc.line,
                policy: String::new(),
                mode: Default::default(),
                allowed: true,
                patch: vec![],
                mutations: vec![],
                findings: vec![],
                skipped: Some(format!("not evaluated: {error}")),
            };
            return Ok(Some((report, value)));
        }
        (Err(error), Origin::Manifests) => return Err(error),
    };
    let denied = v.denials().next().is_some();
    let report = ObjectReport {
        kind: type_of(&value).1.to_owned(),
        namespace: text("namespace"),
        name,
        file: doc.path.clone(),
        document: doc.index,
        line: doc.line,
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
    };
    Ok(Some((report, mutated)))
}
