//! What the namespaced caches keep of an object: a small type of our own per kind, made once
//! when the watch delivers the object, holding only what the rules read.
//!
//! At the scale the memory goals are set for (10,000 PDBs) the inline size of k8s-openapi's structs
//! (a `PodDisruptionBudget` with every other field empty is over 600 bytes, its `matchLabels`
//! map a 540-byte B-tree node) was most of the cache. A selector is kept as kube's own
//! [`Selector`], converted once, so matching a review's pods reads it without a copy.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};

/// A PodDisruptionBudget as the rules read it: its name, which pods it selects, its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Pdb {
    /// `?` for a PDB without one (only a manifest given to `check` can lack it).
    pub name: String,
    /// `None` when it selects no pod: policy/v1 gives a PDB without a selector none, and an
    /// operator the apiserver does not know selects nothing (as `LabelSelectorAsSelector`,
    /// which refuses it).
    selector: Option<Selector>,
    pub min_available: Option<IntOrString>,
    pub max_unavailable: Option<IntOrString>,
}

impl Pdb {
    /// Whether it selects a pod carrying `labels`. An empty selector (`{}`) selects every pod
    /// of the namespace.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

impl From<PodDisruptionBudget> for Pdb {
    fn from(pdb: PodDisruptionBudget) -> Self {
        let spec = pdb.spec.unwrap_or_default();
        Self {
            name: pdb.metadata.name.unwrap_or_else(|| "?".to_owned()),
            selector: spec.selector.and_then(selector),
            min_available: spec.min_available,
            max_unavailable: spec.max_unavailable,
        }
    }
}

/// kube's [`Selector`] for a LabelSelector, matching as [`crate::labels::matches`] does on
/// every selector: `In` and `NotIn` without values are taken with an empty list (kube's
/// conversion refuses them; the apiserver refuses them too, but `check` reads manifests that
/// never went through it), and an unknown operator gives `None`.
fn selector(mut selector: LabelSelector) -> Option<Selector> {
    for req in selector.match_expressions.iter_mut().flatten() {
        if matches!(req.operator.as_str(), "In" | "NotIn") && req.values.is_none() {
            req.values = Some(Vec::new());
        }
    }
    Selector::try_from(selector).ok()
}

/// A StatefulSet as the cache keeps it: its name and its claim templates' names, to recognise
/// the claims the StatefulSet controller creates (see [`super::ClaimOwner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTemplates {
    pub statefulset: String,
    pub templates: Vec<String>,
    /// The sizes `volume-growth` recorded for its claim templates (template, size), if any.
    pub sizes: Vec<(String, String)>,
    /// Its replicas: the ordinals `start..start + replicas` whose claims exist.
    pub replicas: i32,
    /// Its first ordinal (`spec.ordinals.start`, 0 unless set).
    pub start: i32,
    /// Its uid, for the Events about it (`kubectl describe` finds them by uid).
    pub uid: Option<String>,
}

impl ClaimTemplates {
    /// The ordinals of its pods and so of its claims (`<template>-<statefulset>-<ordinal>`): from
    /// `spec.ordinals.start`, as many as its replicas.
    pub fn ordinals(&self) -> std::ops::Range<i32> {
        self.start..self.start.saturating_add(self.replicas.max(0))
    }
}

impl From<StatefulSet> for ClaimTemplates {
    fn from(sts: StatefulSet) -> Self {
        Self {
            sizes: crate::claim_sizes::recorded_sizes(&sts.metadata),
            replicas: sts.spec.replicas.unwrap_or(1),
            start: sts.spec.ordinals.and_then(|o| o.start).unwrap_or(0).max(0),
            uid: sts.metadata.uid,
            statefulset: sts.metadata.name.unwrap_or_default(),
            templates: sts
                .spec
                .volume_claim_templates
                .into_iter()
                .flatten()
                .filter_map(|t| t.metadata.name)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "n", "labels": {"a": "b"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": spec,
            "status": {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1, "expectedPods": 3}
        }))
        .unwrap()
    }

    #[test]
    fn a_pdb_keeps_its_name_and_budget() {
        let kept = Pdb::from(pdb(serde_json::json!({
            "maxUnavailable": "25%", "selector": {"matchLabels": {"app": "db"}}
        })));
        assert_eq!(kept.name, "db");
        assert_eq!(
            kept.max_unavailable,
            Some(IntOrString::String("25%".into()))
        );
        assert_eq!(kept.min_available, None);
        let kept = Pdb::from(pdb(serde_json::json!({"minAvailable": 2})));
        assert_eq!(kept.min_available, Some(IntOrString::Int(2)));
    }

    #[test]
    fn a_pdb_without_a_selector_or_with_an_unknown_operator_selects_nothing() {
        let labels = [("app".to_string(), "db".to_string())].into();
        let selects = |spec| Pdb::from(pdb(spec)).selects(&labels);
        assert!(!selects(serde_json::json!({"maxUnavailable": 1})));
        assert!(selects(serde_json::json!({"selector": {}})));
        assert!(!selects(
            serde_json::json!({"selector": {"matchExpressions": [
            {"key": "app", "operator": "Equals", "values": ["db"]}]}})
        ));
        assert!(selects(
            serde_json::json!({"selector": {"matchExpressions": [
            {"key": "app", "operator": "NotIn"}]}})
        ));
        assert!(!selects(
            serde_json::json!({"selector": {"matchExpressions": [
            {"key": "app", "operator": "In"}]}})
        ));
    }

    fn label_selector() -> impl Strategy<Value = LabelSelector> {
        let word = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
        let operator = prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Bogus"]);
        let requirement = (
            word.clone(),
            operator,
            prop::option::of(prop::collection::vec(word.clone(), 0..3)),
        )
            .prop_map(|(key, operator, values)| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key,
                    operator: operator.into(),
                    values,
                }
            });
        (
            prop::option::of(prop::collection::btree_map(word.clone(), word, 0..3)),
            prop::option::of(prop::collection::vec(requirement, 0..3)),
        )
            .prop_map(|(match_labels, match_expressions)| LabelSelector {
                match_labels,
                match_expressions,
            })
    }

    proptest! {
        /// The kept selector selects exactly the pods that the selector itself does, as
        /// `labels::matches` reads it (itself checked against kube's `Selector` and the
        /// apiserver's semantics in `tests/labels.rs`), whatever the selector.
        #[test]
        fn the_kept_selector_selects_what_the_selector_does(
            selector in label_selector(),
            labels in prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
                prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
                0..3,
            ),
        ) {
            let kept = Pdb::from(PodDisruptionBudget {
                spec: Some(k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec {
                    selector: Some(selector.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            prop_assert_eq!(kept.selects(&labels), crate::labels::matches(&selector, &labels));
        }
    }

    #[test]
    fn a_statefulset_keeps_its_name_and_claim_template_names() {
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "db"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "serviceName": "web",
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
                     "volumeClaimTemplates": [{"metadata": {"name": "www"}}, {"metadata": {"name": "logs"}}]}
        }))
        .unwrap();
        assert_eq!(
            ClaimTemplates::from(sts),
            ClaimTemplates {
                statefulset: "web".into(),
                templates: vec!["www".into(), "logs".into()],
                sizes: vec![],
                replicas: 1,
                start: 0,
                uid: None,
            }
        );
    }

    /// The controller names claims from `spec.ordinals.start` (beta and on by default from 1.27).
    #[test]
    fn claims_are_counted_from_the_first_ordinal() {
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "uid": "u-1"},
            "spec": {"selector": {}, "serviceName": "db", "replicas": 2, "ordinals": {"start": 3},
                     "template": {"spec": {"containers": []}}}
        }))
        .unwrap();
        let owner = ClaimTemplates::from(sts);
        assert_eq!(owner.ordinals(), 3..5);
        assert_eq!(owner.uid.as_deref(), Some("u-1"));
        let none: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db"},
            "spec": {"selector": {}, "serviceName": "db", "replicas": 0,
                     "template": {"spec": {"containers": []}}}
        }))
        .unwrap();
        assert!(ClaimTemplates::from(none).ordinals().is_empty());
    }
}
