//! `require-pdb`: a replicated StatefulSet needs a PodDisruptionBudget covering its pods.
//!
//! Why: without one, a node drain (cluster upgrade, autoscaler scale-down) may evict several
//! replicas at once and take out a quorum.
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::{ValidationRule, Aspect, Context, Detail, Finding, Part, RuleId, display_name};
use crate::cluster::Pdb;
use crate::labels;
use crate::policy::action::ValidateAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: ValidateAction,
    /// StatefulSets with fewer replicas are not checked.
    pub min_replicas: i32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: ValidateAction::Enforce,
            min_replicas: 2,
        }
    }
}

impl super::RuleConfig for Config {
    type Action = ValidateAction;
    fn action(&self) -> ValidateAction {
        self.action
    }
    fn check(&self) -> Result<(), String> {
        if self.min_replicas < 1 {
            return Err(format!(
                "minReplicas: must be at least 1, got {}",
                self.min_replicas
            ));
        }
        Ok(())
    }
}

/// The PDBs of the StatefulSet's namespace whose selector selects its pods. In policy/v1 an
/// empty selector selects every pod of the namespace and a missing one selects none.
pub fn matching_pdbs(sts: &StatefulSet, ctx: &Context) -> Vec<Arc<Pdb>> {
    let pod_labels = super::pod_labels(sts);
    let mut found: Vec<_> = ctx
        .cluster
        .pdbs(ctx.namespace)
        .into_iter()
        .filter(|pdb| pdb.selects(pod_labels))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// A PDB for the StatefulSet that allows one voluntary disruption at a time.
pub fn suggested_pdb(sts: &StatefulSet, namespace: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-pdb",
                sts.metadata
                    .name
                    .as_deref()
                    .or(sts
                        .metadata
                        .generate_name
                        .as_deref()
                        .map(|p| p.trim_end_matches('-')))
                    .unwrap_or("statefulset")
            )),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(sts.spec.selector.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequirePdb;

impl ValidationRule for RequirePdb {
    type Config = Config;
    fn validate(sts: &StatefulSet, cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let spec = &sts.spec;
        let replicas = spec.replicas.unwrap_or(1);
        if replicas < cfg.min_replicas {
            return vec![];
        }
        let name = display_name(&sts.metadata, ctx.namespace);
        if !ctx.cluster.is_known() {
            return vec![Finding {
                unverified: true,
                advisory: false,
                ..Finding::new(
                    RuleId::RequirePdb,
                    Part::Whole(Aspect::Pdb),
                    format!(
                        "cannot check that a PodDisruptionBudget covers StatefulSet {name}: no cluster state"
                    ),
                )
            }];
        }
        if !matching_pdbs(sts, ctx).is_empty() {
            return vec![];
        }
        let mut message = format!(
            "StatefulSet {name} has {replicas} replicas but no PodDisruptionBudget selects its pods ({}): a node drain can evict several at once and break quorum.",
            labels::display(&spec.selector)
        );
        // The manifest is most of the finding's cost (a YAML rendering): only for a message read.
        if ctx.detail == Detail::Full {
            let manifest = serde_yaml_ng::to_string(&suggested_pdb(sts, ctx.namespace))
                .unwrap_or_else(|e| format!("# could not render a PodDisruptionBudget: {e}\n"));
            message.push_str(" Create this PodDisruptionBudget first:\n---\n");
            message.push_str(&manifest);
        }
        vec![Finding {
            abridged: ctx.detail == Detail::Compared,
            ..Finding::new(RuleId::RequirePdb, Part::Whole(Aspect::Pdb), message)
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx};

    pub(crate) fn pdb(yaml: &str) -> PodDisruptionBudget {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn missing_pdb_is_a_finding_with_an_applicable_manifest() {
        let cluster = Snapshot::known(vec![], vec![], vec![]);
        let findings = RequirePdb::validate(
            &basic_sts(),
            &Config::default(),
            &ctx(Operation::Create, &cluster),
        );
        assert_eq!(findings.len(), 1);
        let msg = &findings[0].message;
        assert!(msg.contains("default/db has 3 replicas"), "{msg}");
        let manifest = msg.split("---\n").nth(1).unwrap();
        let suggested: PodDisruptionBudget = serde_yaml_ng::from_str(manifest).unwrap();
        let spec = suggested.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.selector, Some(basic_sts().spec.selector));
        assert!(
            manifest.contains("apiVersion: policy/v1")
                && manifest.contains("kind: PodDisruptionBudget")
        );
    }

    #[test]
    fn a_finding_only_compared_has_the_same_key_without_the_manifest() {
        let cluster = Snapshot::known(vec![], vec![], vec![]);
        let full = ctx(Operation::Update, &cluster);
        let compared = Context {
            detail: Detail::Compared,
            ..full
        };
        let reported = RequirePdb::validate(&basic_sts(), &Config::default(), &full);
        let only_compared = RequirePdb::validate(&basic_sts(), &Config::default(), &compared);
        assert_eq!(reported.len(), 1);
        assert_eq!(only_compared.len(), 1);
        let (r, c) = (&reported[0], &only_compared[0]);
        assert_eq!((r.rule, &r.part), (c.rule, &c.part));
        assert!(r.message.contains("kind: PodDisruptionBudget"), "{}", r.message);
        assert!(!c.message.contains("---"), "{}", c.message);
        assert!(r.message.starts_with(&c.message), "{}", c.message);
        assert!(c.abridged && !r.abridged, "the engine knows to ask again");
    }

    #[test]
    fn a_matching_pdb_satisfies_the_rule() {
        for selector in [
            "{matchLabels: {app: db}}",
            "{matchExpressions: [{key: app, operator: In, values: [db, cache]}]}",
            "{matchExpressions: [{key: app, operator: Exists}]}",
            "{}",
        ] {
            let cluster = Snapshot::known(
                vec![pdb(&format!(
                    "metadata: {{name: p, namespace: default}}\nspec: {{maxUnavailable: 1, selector: {selector}}}"
                ))],
                vec![],
                vec![],
            );
            assert!(
                RequirePdb::validate(
                    &basic_sts(),
                    &Config::default(),
                    &ctx(Operation::Create, &cluster)
                )
                .is_empty(),
                "{selector}"
            );
        }
    }

    #[test]
    fn non_matching_pdbs_do_not_count() {
        for (ns, selector) in [
            ("default", "{matchLabels: {app: web}}"),
            ("other", "{matchLabels: {app: db}}"),
            (
                "default",
                "{matchExpressions: [{key: app, operator: NotIn, values: [db]}]}",
            ),
            (
                "default",
                "{matchExpressions: [{key: app, operator: DoesNotExist}]}",
            ),
        ] {
            let cluster = Snapshot::known(
                vec![pdb(&format!(
                    "metadata: {{name: p, namespace: {ns}}}\nspec: {{maxUnavailable: 1, selector: {selector}}}"
                ))],
                vec![],
                vec![],
            );
            assert_eq!(
                RequirePdb::validate(
                    &basic_sts(),
                    &Config::default(),
                    &ctx(Operation::Create, &cluster)
                )
                .len(),
                1,
                "{ns} {selector}"
            );
        }
        // A PDB without a selector selects nothing in policy/v1.
        let cluster = Snapshot::known(
            vec![pdb(
                "metadata: {name: p, namespace: default}\nspec: {maxUnavailable: 1}",
            )],
            vec![],
            vec![],
        );
        assert_eq!(
            RequirePdb::validate(
                &basic_sts(),
                &Config::default(),
                &ctx(Operation::Create, &cluster)
            )
            .len(),
            1
        );
    }

    #[test]
    fn small_statefulsets_are_not_checked() {
        let cluster = Snapshot::known(vec![], vec![], vec![]);
        let mut obj = basic_sts();
        obj.spec.replicas = Some(1);
        assert!(RequirePdb::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
        assert_eq!(
            RequirePdb::validate(
                &obj,
                &Config {
                    min_replicas: 1,
                    ..Config::default()
                },
                &ctx(Operation::Create, &cluster)
            )
            .len(),
            1
        );
    }

    #[test]
    fn without_cluster_state_the_finding_is_unverified() {
        let cluster = Snapshot::unknown();
        let findings = RequirePdb::validate(
            &basic_sts(),
            &Config::default(),
            &ctx(Operation::Create, &cluster),
        );
        assert!(findings[0].unverified);
        assert!(findings[0].message.contains("no cluster state"));
    }
}
