//! `pdb-allows-disruption`: the PodDisruptionBudget covering a StatefulSet must let a drain
//! through.
//!
//! Why: a PDB that never allows an eviction (`maxUnavailable: 0`, `minAvailable` equal to the
//! replicas) makes every node drain and cluster upgrade hang forever; two PDBs covering the same
//! pods make evictions fail outright.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::require_pdb::matching_pdbs;
use super::{ValidationRule, Aspect, Context, Finding, Part, RuleId, display_name};
use crate::cluster::Pdb;

/// Only an action (default `warn`).
pub type Config = super::ActionOnly<super::WarnByDefault>;

/// Resolves an int-or-percent against `total`, rounding up as the disruption controller does.
pub(crate) fn scaled(value: &IntOrString, total: i32) -> Option<i32> {
    match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            Some(((pct * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// Why this PDB can never allow an eviction of a StatefulSet with `replicas` pods, if so.
pub fn blocks_every_eviction(pdb: &Pdb, replicas: i32) -> Option<String> {
    if let Some(max) = &pdb.max_unavailable
        && scaled(max, replicas) == Some(0)
    {
        return Some(format!("maxUnavailable is {}", show(max)));
    }
    if let Some(min) = &pdb.min_available
        && scaled(min, replicas).is_some_and(|m| m >= replicas)
    {
        return Some(format!(
            "minAvailable is {} of {replicas} replicas",
            show(min)
        ));
    }
    None
}

pub(crate) fn show(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct PdbAllowsDisruption;

impl ValidationRule for PdbAllowsDisruption {
    type Config = Config;
    fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let spec = &sts.spec;
        let replicas = spec.replicas.unwrap_or(1);
        if replicas < 1 || !ctx.cluster.is_known() {
            return vec![];
        }
        let name = display_name(&sts.metadata, ctx.namespace);
        let pdbs = matching_pdbs(sts, ctx);
        let mut findings = Vec::new();
        if pdbs.len() > 1 {
            let names: Vec<&str> = pdbs.iter().map(|p| p.name.as_str()).collect();
            findings.push(Finding::new(
                RuleId::PdbAllowsDisruption,
                Part::Whole(Aspect::MultiplePdbs),
                format!(
                    "the pods of StatefulSet {name} are selected by {} PodDisruptionBudgets ({}): the eviction API refuses to evict pods covered by more than one, so drains fail; keep one",
                    pdbs.len(),
                    names.join(", ")
                ),
            ));
        }
        for pdb in &pdbs {
            if let Some(why) = blocks_every_eviction(pdb, replicas) {
                let pdb_name = &pdb.name;
                findings.push(Finding::new(
                    RuleId::PdbAllowsDisruption,
                    Part::Pdb(pdb_name.to_owned()),
                    format!(
                        "PodDisruptionBudget {pdb_name} never allows evicting a pod of StatefulSet {name} ({why}): node drains and upgrades would hang; use maxUnavailable: 1"
                    ),
                ));
            }
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx};

    fn pdb(name: &str, budget: &str) -> PodDisruptionBudget {
        serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, namespace: default}}\nspec: {{{budget}, selector: {{matchLabels: {{app: db}}}}}}"
        ))
        .unwrap()
    }

    fn check(pdbs: Vec<PodDisruptionBudget>) -> Vec<Finding> {
        let cluster = Snapshot::known(pdbs, vec![], vec![]);
        PdbAllowsDisruption::validate(
            &basic_sts(),
            &Config::default(),
            &ctx(Operation::Create, &cluster),
        )
    }

    #[test]
    fn budgets_that_block_every_eviction_are_found() {
        // basic_sts has 3 replicas.
        for budget in [
            "maxUnavailable: 0",
            "maxUnavailable: '0%'",
            "minAvailable: 3",
            "minAvailable: 5",
            "minAvailable: '100%'",
            "minAvailable: '90%'",
        ] {
            let f = check(vec![pdb("p", budget)]);
            assert_eq!(f.len(), 1, "{budget}");
            assert!(
                f[0].message.contains("never allows evicting"),
                "{}",
                f[0].message
            );
        }
    }

    #[test]
    fn budgets_that_allow_a_drain_pass() {
        for budget in [
            "maxUnavailable: 1",
            "maxUnavailable: '10%'",
            "minAvailable: 2",
            "minAvailable: '50%'",
        ] {
            assert!(check(vec![pdb("p", budget)]).is_empty(), "{budget}");
        }
    }

    #[test]
    fn two_pdbs_on_the_same_pods_are_found() {
        let f = check(vec![
            pdb("a", "maxUnavailable: 1"),
            pdb("b", "maxUnavailable: 1"),
        ]);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("2 PodDisruptionBudgets (a, b)"),
            "{}",
            f[0].message
        );
    }
}
