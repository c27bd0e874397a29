//! The read-only view of cluster state the rules consult.
//!
//! Rules never call the API: they read a [`ClusterView`]. In a cluster it is backed by
//! kube-runtime reflectors ([`cache::ClusterCache`]); offline (the embedded default, `check`, tests)
//! by a [`Snapshot`] of the objects at hand, or by [`Snapshot::unknown`] when nothing is known.
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub mod cache;
pub mod cached;
pub mod health;
pub mod index;
pub mod live;
pub mod pages;

pub use cached::{ClaimTemplates, Pdb};
use index::ByNamespace;

/// The annotations that mark a StorageClass as the cluster default (GA and the older beta one).
const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

/// What the rules may ask about the cluster.
pub trait ClusterView: Send + Sync {
    /// True when this view reflects the cluster (caches synced, or objects supplied by the user).
    /// When false, rules that depend on cluster state say so in a warning instead of denying.
    fn is_known(&self) -> bool;
    /// True when StorageClass questions have answers (a snapshot may know PDBs but no classes).
    fn storage_classes_known(&self) -> bool {
        self.is_known()
    }
    /// PodDisruptionBudgets of one namespace.
    fn pdbs(&self, namespace: &str) -> Vec<Arc<Pdb>>;
    /// A StorageClass by name.
    fn storage_class(&self, name: &str) -> Option<Arc<StorageClass>>;
    /// All StorageClasses (to find the default one).
    fn storage_classes(&self) -> Vec<Arc<StorageClass>>;
    /// True when PriorityClass questions have answers.
    fn priority_classes_known(&self) -> bool {
        self.is_known()
    }
    /// A PriorityClass by name.
    fn priority_class(&self, name: &str) -> Option<Arc<PriorityClass>>;
    /// The labels of a namespace, when the namespace is known.
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
    /// The StatefulSet of `namespace` whose claim template a PVC named `claim` is made from
    /// (`<template>-<statefulset>-<ordinal>`), when one is known.
    fn claim_owner(&self, namespace: &str, claim: &str) -> Option<ClaimOwner>;

    /// The class the DefaultStorageClass admission plugin would choose: among classes marked
    /// default, the newest (as kube-apiserver does since 1.26), then by name.
    fn default_storage_class(&self) -> Option<Arc<StorageClass>> {
        self.storage_classes()
            .into_iter()
            .filter(|sc| is_default_class(sc))
            .max_by(|a, b| {
                let created = |sc: &StorageClass| sc.metadata.creation_timestamp.clone();
                created(a)
                    .cmp(&created(b))
                    .then_with(|| b.metadata.name.cmp(&a.metadata.name))
            })
    }
}

/// The StatefulSet and claim template a PVC is made from: the StatefulSet controller names each
/// replica's claim `<template>-<statefulset>-<ordinal>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOwner {
    pub statefulset: String,
    pub template: String,
    /// The size `volume-growth` recorded for the template (larger than the stored template's).
    pub size: Option<String>,
}

/// The claim owner of `claim` among `statefulsets` (all of one namespace).
pub fn claim_owner_among<'a>(
    statefulsets: impl IntoIterator<Item = &'a ClaimTemplates>,
    claim: &str,
) -> Option<ClaimOwner> {
    statefulsets.into_iter().find_map(|sts| {
        // A StatefulSet has a name; one without (a manifest given to `check`) owns nothing.
        let name = Some(sts.statefulset.as_str()).filter(|n| !n.is_empty())?;
        let template = sts.templates.iter().map(String::as_str).find(|template| {
            claim
                .strip_prefix(*template)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|rest| rest.strip_prefix(name))
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|ordinal| {
                    !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit())
                })
        })?;
        Some(ClaimOwner {
            statefulset: name.to_owned(),
            template: template.to_owned(),
            size: sts
                .sizes
                .iter()
                .find(|(t, _)| t == template)
                .map(|(_, size)| size.clone()),
        })
    })
}

/// A StorageClass reduced to what the rules read (name, provisioner, binding mode, reclaim
/// policy, expansion, the default-class annotations, the creation time that breaks ties).
pub fn storage_class_projection(sc: &mut StorageClass) {
    sc.metadata.managed_fields = None;
    sc.metadata.labels = None;
    if let Some(annotations) = &mut sc.metadata.annotations {
        annotations.retain(|k, _| DEFAULT_CLASS_ANNOTATIONS.contains(&k.as_str()));
    }
    sc.parameters = None;
    sc.mount_options = None;
}

/// A PriorityClass reduced to what the rules read (its name and value).
pub fn priority_class_projection(pc: &mut PriorityClass) {
    pc.metadata.managed_fields = None;
    pc.metadata.annotations = None;
    pc.metadata.labels = None;
    pc.description = None;
}

/// A Namespace reduced to its name and labels (what policy selection reads).
pub fn namespace_projection(ns: &mut Namespace) {
    ns.metadata.managed_fields = None;
    ns.metadata.annotations = None;
    ns.metadata.owner_references = None;
    ns.spec = None;
    ns.status = None;
}

/// The PriorityClasses every kube-apiserver creates itself (they exist in every cluster), with
/// the values it gives them.
pub fn built_in_priority_class(name: &str) -> Option<Arc<PriorityClass>> {
    let value = match name {
        "system-cluster-critical" => 2_000_000_000,
        "system-node-critical" => 2_000_001_000,
        _ => return None,
    };
    Some(Arc::new(PriorityClass {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        value: Some(value),
        ..Default::default()
    }))
}

/// Whether a StorageClass carries the default-class annotation.
pub fn is_default_class(sc: &StorageClass) -> bool {
    sc.metadata.annotations.as_ref().is_some_and(|a| {
        DEFAULT_CLASS_ANNOTATIONS
            .iter()
            .any(|key| a.get(*key).is_some_and(|v| v == "true"))
    })
}

/// A fixed set of objects: what `check` reads from its input, what tests build.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    known: bool,
    pdbs: ByNamespace<Pdb>,
    storage_classes: Vec<Arc<StorageClass>>,
    namespaces: Vec<Arc<Namespace>>,
    statefulsets: ByNamespace<ClaimTemplates>,
    priority_classes: Vec<Arc<PriorityClass>>,
    /// The classes are the cluster's whole list (read from it), not what some input held.
    classes_complete: bool,
}

impl Snapshot {
    /// Nothing is known about the cluster (no cluster connection).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// A known cluster holding exactly these objects.
    pub fn known(
        pdbs: Vec<PodDisruptionBudget>,
        storage_classes: Vec<StorageClass>,
        namespaces: Vec<Namespace>,
    ) -> Self {
        Self {
            known: true,
            pdbs: ByNamespace::kept(pdbs, Pdb::from),
            storage_classes: storage_classes.into_iter().map(Arc::new).collect(),
            namespaces: namespaces.into_iter().map(Arc::new).collect(),
            statefulsets: ByNamespace::default(),
            priority_classes: Vec::new(),
            classes_complete: false,
        }
    }

    /// The same, its StorageClasses and PriorityClasses being every one the cluster has (as
    /// listed from it): then a class it lacks does not exist, even when the list is empty.
    pub fn with_complete_classes(mut self) -> Self {
        self.classes_complete = true;
        self
    }

    /// The same, also knowing these PriorityClasses (besides the built-in ones). A snapshot
    /// given none answers no PriorityClass question, as one given no StorageClass.
    pub fn with_priority_classes(mut self, classes: Vec<PriorityClass>) -> Self {
        self.priority_classes = classes.into_iter().map(Arc::new).collect();
        self
    }

    /// The same, also knowing these StatefulSets.
    pub fn with_statefulsets(mut self, statefulsets: Vec<StatefulSet>) -> Self {
        self.statefulsets = ByNamespace::kept(statefulsets, ClaimTemplates::from);
        self
    }
}

impl ClusterView for Snapshot {
    fn is_known(&self) -> bool {
        self.known
    }
    fn storage_classes_known(&self) -> bool {
        self.known && (self.classes_complete || !self.storage_classes.is_empty())
    }
    fn pdbs(&self, namespace: &str) -> Vec<Arc<Pdb>> {
        self.pdbs.in_namespace(namespace)
    }
    fn storage_class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.storage_classes
            .iter()
            .find(|sc| sc.metadata.name.as_deref() == Some(name))
            .cloned()
    }
    fn storage_classes(&self) -> Vec<Arc<StorageClass>> {
        self.storage_classes.clone()
    }
    fn priority_classes_known(&self) -> bool {
        self.known && (self.classes_complete || !self.priority_classes.is_empty())
    }
    fn priority_class(&self, name: &str) -> Option<Arc<PriorityClass>> {
        self.priority_classes
            .iter()
            .find(|pc| pc.metadata.name.as_deref() == Some(name))
            .cloned()
            .or_else(|| built_in_priority_class(name))
    }
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .iter()
            .find(|ns| ns.metadata.name.as_deref() == Some(namespace))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }
    fn claim_owner(&self, namespace: &str, claim: &str) -> Option<ClaimOwner> {
        claim_owner_among(
            self.statefulsets
                .in_namespace(namespace)
                .iter()
                .map(|s| s.as_ref()),
            claim,
        )
    }
}

/// A view that adds what was just read live about one namespace on top of another view: its
/// PDBs (read once, on a cache miss, so a PDB created a moment before its StatefulSet never
/// causes a false denial) and its labels (a namespace created or relabelled a moment ago must
/// not fall through to a weaker policy).
pub struct WithLive<'a> {
    pub base: &'a dyn ClusterView,
    pub namespace: &'a str,
    pub pdbs: Option<Vec<Arc<Pdb>>>,
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

impl<'a> WithLive<'a> {
    /// Nothing read live yet: the base view.
    pub fn new(base: &'a dyn ClusterView, namespace: &'a str) -> Self {
        Self {
            base,
            namespace,
            pdbs: None,
            namespace_labels: None,
        }
    }
}

impl ClusterView for WithLive<'_> {
    fn is_known(&self) -> bool {
        self.base.is_known()
    }
    fn storage_classes_known(&self) -> bool {
        self.base.storage_classes_known()
    }
    fn pdbs(&self, namespace: &str) -> Vec<Arc<Pdb>> {
        match &self.pdbs {
            Some(pdbs) if namespace == self.namespace => pdbs.clone(),
            _ => self.base.pdbs(namespace),
        }
    }
    fn storage_class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.base.storage_class(name)
    }
    fn storage_classes(&self) -> Vec<Arc<StorageClass>> {
        self.base.storage_classes()
    }
    fn priority_classes_known(&self) -> bool {
        self.base.priority_classes_known()
    }
    fn priority_class(&self, name: &str) -> Option<Arc<PriorityClass>> {
        self.base.priority_class(name)
    }
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        match &self.namespace_labels {
            Some(labels) if namespace == self.namespace => Some(labels.clone()),
            _ => self.base.namespace_labels(namespace),
        }
    }
    fn claim_owner(&self, namespace: &str, claim: &str) -> Option<ClaimOwner> {
        self.base.claim_owner(namespace, claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn class(name: &str, default: bool, created_secs: i64) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: default.then(|| {
                    [(DEFAULT_CLASS_ANNOTATIONS[0].to_string(), "true".to_string())].into()
                }),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(created_secs).unwrap(),
                )),
                ..Default::default()
            },
            provisioner: "x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_class_is_the_newest_marked_one() {
        let snap = Snapshot::known(
            vec![],
            vec![
                class("old-default", true, 100),
                class("new-default", true, 200),
                class("fast", false, 300),
            ],
            vec![],
        );
        let default = snap.default_storage_class().unwrap();
        assert_eq!(default.metadata.name.as_deref(), Some("new-default"));
    }

    fn sts(name: &str, templates: &[&str]) -> StatefulSet {
        let mut sts = StatefulSet::default();
        sts.metadata.name = Some(name.into());
        sts.metadata.namespace = Some("db".into());
        sts.spec.volume_claim_templates = Some(
            templates
                .iter()
                .map(|t| k8s_openapi::api::core::v1::PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some((*t).into()),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .collect(),
        );
        sts
    }

    #[test]
    fn claims_are_matched_to_their_statefulset_by_template_name_and_ordinal() {
        let snap = Snapshot::known(vec![], vec![], vec![]).with_statefulsets(vec![
            sts("web", &["www", "logs"]),
            sts("web-a", &["www"]),
            sts("", &["www"]),
        ]);
        let owner = |claim| snap.claim_owner("db", claim);
        assert_eq!(
            owner("www-web-0"),
            Some(ClaimOwner {
                statefulset: "web".into(),
                template: "www".into(),
                size: None,
            })
        );
        assert_eq!(owner("logs-web-12").unwrap().template, "logs");
        // Hyphens in names: `www-web-a-1` is web-a's claim, not web's.
        assert_eq!(owner("www-web-a-1").unwrap().statefulset, "web-a");
        // Not an ordinal, no ordinal, another template, another namespace.
        assert_eq!(owner("www-web-x"), None);
        assert_eq!(owner("www-web-"), None);
        assert_eq!(owner("data-web-0"), None);
        // A StatefulSet without a name (a manifest given to `check`) owns no claim.
        assert_eq!(owner("www--0"), None);
        assert_eq!(snap.claim_owner("other", "www-web-0"), None);
    }

    #[test]
    fn projections_keep_what_the_rules_read() {
        let mut sc = class("fast", true, 7);
        sc.metadata.annotations.as_mut().unwrap().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "x".repeat(4096),
        );
        sc.volume_binding_mode = Some("WaitForFirstConsumer".into());
        sc.reclaim_policy = Some("Retain".into());
        let before = sc.clone();
        storage_class_projection(&mut sc);
        assert!(is_default_class(&sc));
        assert_eq!(sc.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!(
            sc.metadata.creation_timestamp,
            before.metadata.creation_timestamp
        );
        assert_eq!(
            (&sc.provisioner, &sc.volume_binding_mode, &sc.reclaim_policy),
            (
                &before.provisioner,
                &before.volume_binding_mode,
                &before.reclaim_policy
            )
        );

        let mut ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "labels": {"team": "db"}, "annotations": {"x": "y"}},
            "status": {"phase": "Active"}
        }))
        .unwrap();
        namespace_projection(&mut ns);
        let snap = Snapshot::known(vec![], vec![], vec![ns]);
        assert_eq!(
            snap.namespace_labels("n"),
            Some([("team".to_string(), "db".to_string())].into())
        );
    }

    #[test]
    fn no_default_class_when_none_is_marked() {
        let snap = Snapshot::known(vec![], vec![class("fast", false, 1)], vec![]);
        assert!(snap.default_storage_class().is_none());
    }
}
