//! `require-priority-class`: a StatefulSet important enough for a PodDisruptionBudget has a
//! PriorityClass, and the class it names exists.
//!
//! Why: a PDB protects pods from drains, not from preemption. When the scheduler needs room for
//! a pod of higher priority it preempts the lowest-priority pods first, PDB or not (it only
//! prefers victims whose PDB allows it). A database replica with no class has priority 0, the
//! same as every batch job, so it is among the first to go. And a pod naming a PriorityClass
//! that does not exist is refused at creation: the StatefulSet would run no pod at all.
//!
//! The two findings do not weigh the same. A class that does not exist stops every pod, and
//! takes the rule's `action` (`warn` by default). No class at all is a cluster-wide choice that
//! no public chart makes for its users (none sets a class), so reporting it on every
//! StatefulSet is noise that teaches a team to ignore warnings: it takes `withoutClass`,
//! `audit` by default (recorded, not shown) and `warn` in the strict policy.
//!
//! The `priority-class` mutation sets the policy's class where it is on; this rule reports what
//! remains.
use k8s_openapi::api::apps::v1::StatefulSet;
use serde::{Deserialize, Serialize};

use super::require_pdb::matching_pdbs;
use super::{ValidationRule, Aspect, Context, Finding, Part, RuleId, display_name};
use crate::policy::action::ValidateAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// The rule's action, and that of a named class that does not exist (default `warn`);
    /// `off` turns the whole rule off.
    pub action: ValidateAction,
    /// The action for a StatefulSet covered by a PDB whose pods name no class (default
    /// `audit`).
    pub without_class: ValidateAction,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: ValidateAction::Warn,
            without_class: ValidateAction::Audit,
        }
    }
}

impl super::RuleConfig for Config {
    type Action = ValidateAction;
    fn action(&self) -> ValidateAction {
        self.action
    }
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequirePriorityClass;

impl ValidationRule for RequirePriorityClass {
    type Config = Config;
    fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let Some(pod) = sts.spec.template.spec.as_ref() else {
            return vec![];
        };
        let name = display_name(&sts.metadata, ctx.namespace);
        match pod.priority_class_name.as_deref().filter(|c| !c.is_empty()) {
            Some(class) => {
                if ctx.cluster.priority_classes_known() && ctx.cluster.priority_class(class).is_none()
                {
                    return vec![Finding::new(
                        RuleId::RequirePriorityClass,
                        Part::Whole(Aspect::PriorityClassMissing),
                        format!(
                            "StatefulSet {name} names PriorityClass {class:?}, which does not exist: the Priority admission plugin refuses every pod that names a missing class, so no replica would start; create the class or fix spec.template.spec.priorityClassName"
                        ),
                    )];
                }
                vec![]
            }
            None if pod.priority.is_some() => vec![],
            None => {
                let pdbs = matching_pdbs(sts, ctx);
                let Some(pdb) = pdbs.first().map(|p| p.name.as_str()) else {
                    return vec![];
                };
                vec![Finding::new(
                    RuleId::RequirePriorityClass,
                    Part::Whole(Aspect::NoPriorityClass),
                    format!(
                        "StatefulSet {name} is covered by PodDisruptionBudget {pdb} but its pods have no priorityClassName: a PDB does not stop preemption, and at priority 0 its replicas are preempted before any prioritised pod; set spec.template.spec.priorityClassName to a class for stateful workloads"
                    ),
                )]
            }
        }
    }
    fn action_of(config: &Config, finding: &Finding) -> ValidateAction {
        match finding.part {
            Part::Whole(Aspect::NoPriorityClass) => config.without_class,
            _ => config.action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::scheduling::v1::PriorityClass;

    fn pdb(app: &str) -> PodDisruptionBudget {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-pdb", "namespace": "default"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": app}}}
        }))
        .unwrap()
    }

    fn class(name: &str) -> PriorityClass {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "value": 1000}))
            .unwrap()
    }

    #[test]
    fn a_statefulset_with_a_pdb_and_no_class_is_reported() {
        let cluster = Snapshot::known(vec![pdb("db")], vec![], vec![]);
        let found = RequirePriorityClass::validate(&basic_sts(), &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].part, Part::Whole(Aspect::NoPriorityClass));
        assert!(found[0].message.contains("db-pdb"), "{}", found[0].message);
        assert!(found[0].message.contains("preempted"));
        // Recorded, not shown, under the default policy; a missing class is warned.
        use crate::rules::ValidationRule;
        assert_eq!(
            RequirePriorityClass::action_of(&Config::default(), &found[0]),
            ValidateAction::Audit
        );
    }

    #[test]
    fn no_pdb_or_a_class_passes() {
        // No PDB selects the pods (another app's PDB): require-pdb's business, not this rule's.
        let cluster = Snapshot::known(vec![pdb("other")], vec![], vec![]);
        assert!(
            RequirePriorityClass::validate(&basic_sts(), &Config::default(), &ctx(Operation::Create, &cluster))
                .is_empty()
        );
        let cluster = Snapshot::known(vec![pdb("db")], vec![], vec![]);
        let mut sts = basic_sts();
        sts.spec.template.spec.as_mut().unwrap().priority_class_name =
            Some("system-cluster-critical".into());
        assert!(RequirePriorityClass::validate(&sts, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
        // A template that states its priority as a number chose it.
        let mut sts = basic_sts();
        sts.spec.template.spec.as_mut().unwrap().priority = Some(1000);
        assert!(RequirePriorityClass::validate(&sts, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
    }

    #[test]
    fn a_class_known_to_be_missing_is_reported_with_or_without_a_pdb() {
        let mut sts = basic_sts();
        sts.spec.template.spec.as_mut().unwrap().priority_class_name = Some("stateful".into());
        let cluster =
            Snapshot::known(vec![], vec![], vec![]).with_priority_classes(vec![class("other")]);
        let found = RequirePriorityClass::validate(&sts, &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].part, Part::Whole(Aspect::PriorityClassMissing));
        assert!(found[0].message.contains("\"stateful\", which does not exist"));
        // Known to exist, or nothing known about classes: no finding.
        let cluster =
            Snapshot::known(vec![], vec![], vec![]).with_priority_classes(vec![class("stateful")]);
        assert!(RequirePriorityClass::validate(&sts, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
        let cluster = Snapshot::known(vec![], vec![], vec![]);
        assert!(RequirePriorityClass::validate(&sts, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
    }
}
