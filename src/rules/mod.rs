//! The rules: one module each, each a pure function of (object, parameters, cluster view).
//!
//! Mutation rules return a [`Mutation`] (JSON Patch operations, a summary of what they change,
//! and notes when they chose not to); validation rules return [`Finding`]s. Neither knows about
//! HTTP, policies' actions or modes: the [`crate::engine`] decides what each outcome does.
use std::fmt;

use json_patch::PatchOperation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterView;

pub mod explicit;
pub mod patch;

pub mod fast_storage_class;
pub mod parallel_pod_management;
pub mod pdb_allows_disruption;
pub mod pod_anti_affinity;
pub mod probes;
pub mod probes_differ;
pub mod require_liveness_probe;
pub mod require_pdb;
pub mod require_persistent_storage;
pub mod require_readiness_probe;
pub mod topology_spread;

/// Every rule's id: the name used in policy files, messages, metrics and annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleId {
    PodAntiAffinity,
    TopologySpread,
    ParallelPodManagement,
    FastStorageClass,
    RequirePdb,
    PdbAllowsDisruption,
    RequireReadinessProbe,
    RequireLivenessProbe,
    ProbesDiffer,
    RequirePersistentStorage,
}

impl RuleId {
    pub const ALL: [RuleId; 10] = [
        RuleId::PodAntiAffinity,
        RuleId::TopologySpread,
        RuleId::ParallelPodManagement,
        RuleId::FastStorageClass,
        RuleId::RequirePdb,
        RuleId::PdbAllowsDisruption,
        RuleId::RequireReadinessProbe,
        RuleId::RequireLivenessProbe,
        RuleId::ProbesDiffer,
        RuleId::RequirePersistentStorage,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RuleId::PodAntiAffinity => "pod-anti-affinity",
            RuleId::TopologySpread => "topology-spread",
            RuleId::ParallelPodManagement => "parallel-pod-management",
            RuleId::FastStorageClass => "fast-storage-class",
            RuleId::RequirePdb => "require-pdb",
            RuleId::PdbAllowsDisruption => "pdb-allows-disruption",
            RuleId::RequireReadinessProbe => "require-readiness-probe",
            RuleId::RequireLivenessProbe => "require-liveness-probe",
            RuleId::ProbesDiffer => "probes-differ",
            RuleId::RequirePersistentStorage => "require-persistent-storage",
        }
    }

    pub fn parse(s: &str) -> Option<RuleId> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The admission operation, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// What every rule may read besides the object itself.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub operation: Operation,
    pub namespace: &'a str,
    pub cluster: &'a dyn ClusterView,
    /// Whether mutation rules may change `spec.template` on UPDATE (it rolls every pod).
    pub mutate_template_on_update: bool,
    /// The object as its author wrote it, when known (`check` reads it from a file): every field
    /// present in it was chosen, as `kubectl apply` and server-side apply would show.
    pub written: Option<&'a serde_json::Value>,
}

impl Context<'_> {
    /// Whether a rule that changes the pod template may run for this request.
    pub fn may_change_template(&self) -> bool {
        self.operation == Operation::Create || self.mutate_template_on_update
    }
}

/// The result of one mutation rule on one object.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mutation {
    /// JSON Patch operations, against the object as received.
    pub ops: Vec<PatchOperation>,
    /// What the operations change and why, for people (warnings, annotations, `check`).
    pub summary: String,
    /// Why the rule did not change something it would normally change, or what the user should
    /// know about the change.
    pub notes: Vec<String>,
}

impl Mutation {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn note(note: impl Into<String>) -> Self {
        Self {
            notes: vec![note.into()],
            ..Self::default()
        }
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.notes.is_empty()
    }
}

/// A problem a validation rule found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: RuleId,
    /// The part of the object the finding is about (a container name, `pdb`, ...). On UPDATE a
    /// finding whose (rule, subject) was already present on the old object is not new.
    pub subject: String,
    /// What is wrong and exactly what to change.
    pub message: String,
    /// The rule could not verify (no cluster state): never deny on such a finding.
    pub unverified: bool,
}

impl Finding {
    pub fn new(rule: RuleId, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            rule,
            subject: subject.into(),
            message: message.into(),
            unverified: false,
        }
    }
}

/// `namespace/name` of an object, or its `generateName` prefix when it has no name yet.
pub fn display_name(meta: &ObjectMeta, namespace: &str) -> String {
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) => format!("{namespace}/{name}"),
        (None, Some(prefix)) => format!("{namespace}/{prefix}*"),
        (None, None) => format!("{namespace}/<unnamed>"),
    }
}

/// Whether an object carries `annotation` with `value` (case-insensitive value).
pub fn has_annotation(meta: &ObjectMeta, annotation: &str, value: &str) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders shared by the rules' unit tests.
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;

    use super::*;
    use crate::cluster::Snapshot;

    pub fn ctx<'a>(operation: Operation, cluster: &'a Snapshot) -> Context<'a> {
        Context {
            operation,
            namespace: "default",
            cluster,
            mutate_template_on_update: false,
            written: None,
        }
    }

    /// A StatefulSet as kube-apiserver would send it (defaulted), from YAML.
    pub fn sts(yaml: &str) -> StatefulSet {
        let mut sts: StatefulSet = serde_yaml_ng::from_str(yaml).expect("test YAML");
        sts.spec
            .pod_management_policy
            .get_or_insert_with(|| "OrderedReady".into());
        sts
    }

    /// The smallest StatefulSet of the Kubernetes docs, with overrides merged in.
    pub fn basic_sts() -> StatefulSet {
        sts(r#"
metadata: {name: db, namespace: default}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: postgres:16
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#)
    }

    pub fn pvc(yaml: &str) -> PersistentVolumeClaim {
        serde_yaml_ng::from_str(yaml).expect("test YAML")
    }

    /// Applies a mutation's operations to the object, as the apiserver would.
    pub fn apply<T: serde::Serialize + serde::de::DeserializeOwned>(obj: &T, m: &Mutation) -> T {
        let mut doc = serde_json::to_value(obj).unwrap();
        json_patch::patch(&mut doc, &m.ops).expect("patch applies");
        serde_json::from_value(doc).expect("patched object decodes")
    }
}
