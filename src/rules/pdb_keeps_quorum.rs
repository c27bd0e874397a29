//! `pdb-keeps-quorum`: for a StatefulSet that runs a quorum (etcd, ZooKeeper, Consul, a Raft or
//! Paxos database), the PodDisruptionBudget must never allow more pods down at once than keep a
//! majority up.
//!
//! Why: a PDB written as `maxUnavailable: 2` or `minAvailable: 50%` looks safe, but on three or
//! four replicas it lets a drain take the majority: the cluster loses its quorum and stops
//! accepting writes in the middle of a routine node upgrade. With N replicas a majority survives
//! at most ⌈N/2⌉−1 unavailable pods.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use super::pdb_allows_disruption::{scaled, show};
use super::require_pdb::matching_pdbs;
use super::{ValidationRule, Context, Finding, Part, RuleId, display_name, has_annotation};
use crate::labels;
use crate::policy::action::ValidateAction;

/// The annotation a StatefulSet declares its quorum with: `stateful-guard.io/quorum: majority`.
pub const QUORUM_ANNOTATION: &str = "stateful-guard.io/quorum";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: ValidateAction,
    /// StatefulSets that run a quorum, besides those annotated: label selectors on the
    /// StatefulSet's labels or its pods' (e.g. `app.kubernetes.io/name In (etcd, zookeeper)`).
    pub quorum_selectors: Vec<LabelSelector>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: ValidateAction::Warn,
            quorum_selectors: Vec::new(),
        }
    }
}

impl super::RuleConfig for Config {
    type Action = ValidateAction;
    fn action(&self) -> ValidateAction {
        self.action
    }
    fn check(&self) -> Result<(), String> {
        for (i, selector) in self.quorum_selectors.iter().enumerate() {
            labels::check(selector, &format!("quorumSelectors[{i}]"))?;
        }
        Ok(())
    }
}

/// Whether the StatefulSet declares a majority quorum.
fn declares_quorum(sts: &StatefulSet, cfg: &Config) -> bool {
    if has_annotation(&sts.metadata, QUORUM_ANNOTATION, "majority") {
        return true;
    }
    let empty = Default::default();
    let own = sts.metadata.labels.as_ref().unwrap_or(&empty);
    let pods = super::pod_labels(sts);
    cfg.quorum_selectors
        .iter()
        .any(|s| labels::matches(s, own) || labels::matches(s, pods))
}

/// How many of `replicas` healthy pods the budget lets the eviction API take down at once, as
/// the disruption controller computes it (percentages rounded up).
fn allowed_disruptions(pdb: &crate::cluster::Pdb, replicas: i32) -> Option<(i32, String)> {
    if let Some(max) = &pdb.max_unavailable {
        return Some((scaled(max, replicas)?, format!("maxUnavailable: {}", show(max))));
    }
    let min = pdb.min_available.as_ref()?;
    let desired = scaled(min, replicas)?;
    Some(((replicas - desired).max(0), format!("minAvailable: {}", show(min))))
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct PdbKeepsQuorum;

impl ValidationRule for PdbKeepsQuorum {
    type Config = Config;
    fn validate(sts: &StatefulSet, cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let replicas = sts.spec.replicas.unwrap_or(1);
        if !declares_quorum(sts, cfg) || !ctx.cluster.is_known() || replicas < 1 {
            return vec![];
        }
        // A majority of N survives ⌈N/2⌉−1 unavailable pods.
        let tolerated = (replicas + 1) / 2 - 1;
        let name = display_name(&sts.metadata, ctx.namespace);
        let mut findings = Vec::new();
        for pdb in matching_pdbs(sts, ctx) {
            let Some((allowed, budget)) = allowed_disruptions(&pdb, replicas) else {
                continue;
            };
            if allowed <= tolerated {
                continue;
            }
            let pdb_name = &pdb.name;
            let fix = if tolerated == 0 {
                format!(
                    "with {replicas} replicas no pod can be lost without losing the majority: run at least 3 replicas, then set maxUnavailable: 1"
                )
            } else {
                format!(
                    "set maxUnavailable: {tolerated} (or minAvailable: {})",
                    replicas - tolerated
                )
            };
            findings.push(Finding::new(
                RuleId::PdbKeepsQuorum,
                Part::Pdb(pdb_name.to_owned()),
                format!(
                    "PodDisruptionBudget {pdb_name} ({budget}) lets a drain take {allowed} of the {replicas} pods of StatefulSet {name} at once, but its majority quorum survives at most {tolerated}: the database stops in the middle of a node upgrade; {fix}"
                ),
            ));
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleConfig;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;

    fn pdb(budget: &str) -> PodDisruptionBudget {
        serde_yaml_ng::from_str(&format!(
            "metadata: {{name: db, namespace: default}}\nspec: {{selector: {{matchLabels: {{app: db}}}}, {budget}}}"
        ))
        .unwrap()
    }

    fn quorum(replicas: i32) -> StatefulSet {
        let mut sts = basic_sts();
        sts.spec.replicas = Some(replicas);
        sts.metadata.annotations =
            Some([(QUORUM_ANNOTATION.to_string(), "majority".to_string())].into());
        sts
    }

    fn findings(sts: &StatefulSet, budget: &str, cfg: &Config) -> Vec<Finding> {
        let cluster = Snapshot::known(vec![pdb(budget)], vec![], vec![]);
        PdbKeepsQuorum::validate(sts, cfg, &ctx(Operation::Create, &cluster))
    }

    #[test]
    fn a_budget_that_can_take_the_majority_is_a_finding_whatever_its_form() {
        let cfg = Config::default();
        // 3 replicas survive 1; 5 survive 2; 4 survive 1.
        for (replicas, budget) in [
            (3, "maxUnavailable: 2"),
            (3, "minAvailable: 1"),
            (5, "maxUnavailable: 50%"), // ceil(2.5) = 3 > 2
            (4, "maxUnavailable: 2"),
            (4, "minAvailable: 50%"), // 2 must stay, 2 may go > 1
        ] {
            let found = findings(&quorum(replicas), budget, &cfg);
            assert_eq!(found.len(), 1, "{replicas} {budget}");
            assert!(
                found[0].message.contains(&format!("survives at most {}", (replicas + 1) / 2 - 1)),
                "{}",
                found[0].message
            );
        }
        let found = findings(&quorum(5), "maxUnavailable: 3", &cfg);
        assert!(
            found[0].message.contains("set maxUnavailable: 2 (or minAvailable: 3)"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_budget_that_keeps_the_majority_passes() {
        let cfg = Config::default();
        for (replicas, budget) in [
            (3, "maxUnavailable: 1"),
            (3, "minAvailable: 2"),
            (3, "minAvailable: 50%"), // rounded up, as the disruption controller does: 2 stay
            (5, "maxUnavailable: 2"),
            (5, "minAvailable: 60%"),
            (5, "maxUnavailable: 40%"),
        ] {
            assert!(findings(&quorum(replicas), budget, &cfg).is_empty(), "{replicas} {budget}");
        }
    }

    #[test]
    fn only_statefulsets_that_declare_a_quorum_are_checked() {
        let mut plain = quorum(3);
        plain.metadata.annotations = None;
        assert!(findings(&plain, "maxUnavailable: 2", &Config::default()).is_empty());
        let by_selector = Config {
            quorum_selectors: vec![serde_yaml_ng::from_str("matchLabels: {app: db}").unwrap()],
            ..Config::default()
        };
        assert_eq!(findings(&plain, "maxUnavailable: 2", &by_selector).len(), 1);
        let two = findings(&quorum(2), "maxUnavailable: 1", &Config::default());
        assert!(two[0].message.contains("run at least 3 replicas"), "{}", two[0].message);
        let bad = Config {
            quorum_selectors: vec![
                serde_yaml_ng::from_str("matchExpressions: [{key: app, operator: In}]").unwrap(),
            ],
            ..Config::default()
        };
        assert!(bad.check().unwrap_err().contains("quorumSelectors[0]"));
    }
}
