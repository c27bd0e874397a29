//! `selectors-match-pods`: a pod anti-affinity term or a topology spread constraint that the
//! user wrote to spread the StatefulSet's own pods, but that cannot select them.
//!
//! Why: a term on `app In (db)` while the pods are labelled `app.kubernetes.io/name: db` (a slip
//! found in widely copied examples) looks safe in review and keeps nothing apart: every replica
//! can land on one node or in one zone.
//!
//! The heuristic: a term is a finding when its topology key is a node or zone label (its evident
//! purpose is spreading), it selects within the StatefulSet's namespace, it does not select the
//! pods, and every requirement it fails names a label key the pods do not carry. A term whose
//! failing requirement names a key the pods do carry, with another value (`app In (cache)` on
//! pods labelled `app: db`), deliberately selects another workload: not a finding.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{ValidationRule, Context, Finding, Part, RuleId, display_name};
use crate::labels;

/// Only an action (default `warn`).
pub type Config = super::ActionOnly<super::WarnByDefault>;

/// Topology keys whose purpose is spreading replicas.
const SPREADING_KEYS: [&str; 3] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];

/// The label keys whose absence from `pods` makes `selector` fail, if absence is the only reason.
fn only_missing_keys(selector: &LabelSelector, pods: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let mut missing = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        match pods.get(key) {
            Some(v) if v == value => {}
            Some(_) => return None,
            None => missing.push(key.clone()),
        }
    }
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default();
        let present = pods.get(&req.key);
        let holds = match req.operator.as_str() {
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            _ => return None,
        };
        if holds {
            continue;
        }
        if present.is_some() {
            return None;
        }
        missing.push(req.key.clone());
    }
    (!missing.is_empty()).then_some(missing)
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct SelectorsMatchPods;

impl ValidationRule for SelectorsMatchPods {
    type Config = Config;
    fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let Some(pod) = sts.spec.template.spec.as_ref() else {
            return vec![];
        };
        let pods = super::pod_labels(sts);
        let name = display_name(&sts.metadata, ctx.namespace);
        // (what, topology key, selector, selects within the namespace)
        let mut terms: Vec<(String, &str, &LabelSelector)> = Vec::new();
        if let Some(anti) = pod.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()) {
            let required = anti
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, t)| (format!("podAntiAffinity required term {i}"), t));
            let preferred = anti
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, w)| (format!("podAntiAffinity preferred term {i}"), &w.pod_affinity_term));
            for (what, term) in required.chain(preferred) {
                let own_namespace = term.namespace_selector.is_none()
                    && term
                        .namespaces
                        .as_ref()
                        .is_none_or(|n| n.is_empty() || n.iter().any(|n| n == ctx.namespace));
                if let (Some(selector), true) = (&term.label_selector, own_namespace) {
                    terms.push((what, term.topology_key.as_str(), selector));
                }
            }
        }
        for (i, c) in pod.topology_spread_constraints.iter().flatten().enumerate() {
            if let Some(selector) = &c.label_selector {
                terms.push((
                    format!("topologySpreadConstraints[{i}]"),
                    c.topology_key.as_str(),
                    selector,
                ));
            }
        }
        terms
            .into_iter()
            .filter(|(_, key, selector)| {
                SPREADING_KEYS.contains(key) && !labels::matches(selector, pods)
            })
            .filter_map(|(what, key, selector)| {
                let missing = only_missing_keys(selector, pods)?;
                let shown: Vec<String> = pods.iter().map(|(k, v)| format!("{k}={v}")).collect();
                Some(Finding::new(
                    RuleId::SelectorsMatchPods,
                    Part::Field(what.clone()),
                    format!(
                        "the {what} of StatefulSet {name} spreads over {key} pods selected by {}, but its pods carry no label {} (they are labelled {}): it keeps nothing apart, so replicas can still fail together; select on the pods' own labels",
                        labels::display(selector),
                        missing.join(", "),
                        if shown.is_empty() { "with nothing".to_owned() } else { shown.join(",") }
                    ),
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{ctx, sts};

    fn with_affinity(affinity: &str) -> StatefulSet {
        sts(&format!(
            r#"
metadata: {{name: db}}
spec:
  serviceName: db
  selector: {{matchLabels: {{app.kubernetes.io/name: db}}}}
  template:
    metadata: {{labels: {{app.kubernetes.io/name: db}}}}
    spec:
      containers: [{{name: db, image: db}}]
      {affinity}
"#
        ))
    }

    fn found(s: &StatefulSet) -> Vec<Finding> {
        let cluster = Snapshot::unknown();
        SelectorsMatchPods::validate(s, &Config::default(), &ctx(Operation::Create, &cluster))
    }

    #[test]
    fn a_term_on_a_label_the_pods_do_not_carry_is_a_finding() {
        let f = found(&with_affinity(
            "affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, labelSelector: {matchExpressions: [{key: app, operator: In, values: [db]}]}}]}}",
        ));
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("carry no label app (they are labelled app.kubernetes.io/name=db)"),
            "{}",
            f[0].message
        );
        let f = found(&with_affinity(
            "topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: db}}}]",
        ));
        assert_eq!(f[0].part.to_string(), "topologySpreadConstraints[0]");
    }

    #[test]
    fn terms_that_select_the_pods_or_deliberately_another_workload_pass() {
        for affinity in [
            // Selects the pods.
            "affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app.kubernetes.io/name: db}}}]}}",
            // Another app, on a key the pods carry: deliberate.
            "affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app.kubernetes.io/name: cache}}}]}}",
            // Not spreading: a rack label.
            "affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: example.com/rack, labelSelector: {matchLabels: {app: db}}}]}}",
            // Another namespace.
            "affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, namespaces: [other], labelSelector: {matchLabels: {app: db}}}]}}",
        ] {
            assert!(found(&with_affinity(affinity)).is_empty(), "{affinity}");
        }
    }
}
