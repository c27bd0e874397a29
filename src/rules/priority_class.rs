//! `priority-class`: give stateful pods the policy's PriorityClass.
//!
//! Why: under node pressure or when a higher-priority pod needs room, the scheduler preempts the
//! pods of the lowest priority first, and a pod with no class has priority 0 (or the cluster's
//! `globalDefault`), the same as every batch job. A database replica preempted to make room for
//! a CI runner loses its cache and, with two more, its quorum. A PriorityClass for stateful
//! workloads makes them the last to go.
//!
//! Off by default: the class is the cluster's own choice (`className`), and it must exist.
use k8s_openapi::api::apps::v1::StatefulSet;
use serde::{Deserialize, Serialize};

use super::{MutationRule, Context, Mutation, patch};
use crate::policy::action::MutateAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: MutateAction,
    /// The PriorityClass to set on pod templates that name none. Required unless the action is
    /// `off`.
    pub class_name: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: MutateAction::Off,
            class_name: None,
        }
    }
}

impl super::RuleConfig for Config {
    type Action = MutateAction;
    fn action(&self) -> MutateAction {
        self.action
    }
    fn check(&self) -> Result<(), String> {
        match self.class_name.as_deref().filter(|c| !c.is_empty()) {
            None if self.action != MutateAction::Off => {
                Err("className: required unless action is off".into())
            }
            Some(name) if !is_dns_subdomain(name) => Err(format!(
                "className: {name:?} is not a valid PriorityClass name (a lowercase DNS subdomain)"
            )),
            _ => Ok(()),
        }
    }
}

/// A DNS-1123 subdomain, as kube-apiserver validates PriorityClass names.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct PriorityClass;

impl MutationRule for PriorityClass {
    type Config = Config;
    fn mutate(
        sts: &StatefulSet,
        cfg: &Config,
        _earlier: &super::Provided,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        // The class lives in the pod template: changing it on UPDATE would roll every pod.
        let Some(class) = cfg.class_name.as_deref().filter(|c| !c.is_empty()) else {
            return Ok(Mutation::none());
        };
        if !ctx.may_change_template() {
            return Ok(Mutation::none());
        }
        let Some(pod) = sts.spec.template.spec.as_ref() else {
            return Ok(Mutation::none());
        };
        if pod.priority_class_name.as_deref().is_some_and(|c| !c.is_empty()) {
            // The user's choice, whatever it is.
            return Ok(Mutation::none());
        }
        if let Some(priority) = pod.priority {
            // The Priority admission plugin refuses a pod whose `priority` differs from its class's
            // value: adding a class to a template that states a number would stop every pod.
            return Ok(Mutation::note(format!(
                "the pod template sets priority {priority} without a priorityClassName, so priorityClassName {class:?} was not added (the Priority admission plugin would refuse pods whose priority differs from their class's value)"
            )));
        }
        if ctx.cluster.priority_classes_known() && ctx.cluster.priority_class(class).is_none() {
            // A pod naming a missing class is refused: the StatefulSet would create no pod at all.
            return Ok(Mutation::note(format!(
                "PriorityClass {class:?} does not exist in this cluster, so no priorityClassName was set (pods naming a missing class are refused); create it or set className in the policy"
            )));
        }
        let present = pod.priority_class_name.is_some();
        Ok(Mutation {
            ops: vec![patch::set(
                &["spec", "template", "spec", "priorityClassName"],
                present,
                &class,
            )?],
            summary: format!(
                "set priorityClassName {class:?} so the pods are the last preempted or evicted under pressure, not the first"
            ),
            notes: vec![],
            refusal: None,
        })
    }
    /// On UPDATE of a StatefulSet this rule changed at CREATE: keeps the class when the update
    /// sends the template without one (`kubectl replace` or a GitOps PUT of the original manifest),
    /// which would otherwise roll every pod just to drop their priority. Another class is the
    /// user's choice and stays.
    fn keep(
        new: &StatefulSet,
        old: &StatefulSet,
        _config: Option<&Config>,
    ) -> Result<Mutation, serde_json::Error> {
        let Some(stored) = old
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.priority_class_name.as_deref())
            .filter(|c| !c.is_empty())
        else {
            return Ok(Mutation::none());
        };
        let Some(pod) = new.spec.template.spec.as_ref() else {
            return Ok(Mutation::none());
        };
        if pod.priority_class_name.as_deref().is_some_and(|c| !c.is_empty()) || pod.priority.is_some()
        {
            return Ok(Mutation::none());
        }
        Ok(Mutation {
            ops: vec![patch::set(
                &["spec", "template", "spec", "priorityClassName"],
                pod.priority_class_name.is_some(),
                &stored,
            )?],
            summary: format!(
                "kept priorityClassName {stored:?} set at creation (the update dropped it; without it every pod would be restarted at priority 0)"
            ),
            notes: vec![],
            refusal: None,
        })
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleConfig;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{keep, mutate, apply, basic_sts, ctx};
    use k8s_openapi::api::scheduling::v1::PriorityClass as Class;

    fn config(class: &str) -> Config {
        Config {
            action: MutateAction::Mutate,
            class_name: Some(class.into()),
        }
    }

    fn class(name: &str) -> Class {
        Class {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            value: Some(1_000_000),
            ..Default::default()
        }
    }

    fn class_of(sts: &StatefulSet) -> Option<&str> {
        sts.spec.template.spec.as_ref()?.priority_class_name.as_deref()
    }

    #[test]
    fn sets_the_class_when_the_template_names_none_and_it_exists() {
        let cluster =
            Snapshot::known(vec![], vec![], vec![]).with_priority_classes(vec![class("stateful")]);
        let obj = basic_sts();
        let m = mutate::<PriorityClass>(&obj, &config("stateful"), &ctx(Operation::Create, &cluster)).unwrap();
        let out = apply(&obj, &m);
        assert_eq!(class_of(&out), Some("stateful"));
        assert!(m.summary.contains("\"stateful\""));
        // A second pass changes nothing (reinvocation).
        let again = mutate::<PriorityClass>(&out, &config("stateful"), &ctx(Operation::Create, &cluster)).unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn a_class_the_user_chose_is_never_replaced() {
        let cluster = Snapshot::unknown();
        let mut obj = basic_sts();
        obj.spec.template.spec.as_mut().unwrap().priority_class_name = Some("mine".into());
        let m = mutate::<PriorityClass>(&obj, &config("stateful"), &ctx(Operation::Create, &cluster)).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn a_missing_class_is_not_set_and_the_note_says_why() {
        let cluster =
            Snapshot::known(vec![], vec![], vec![]).with_priority_classes(vec![class("other")]);
        let m = mutate::<PriorityClass>(&basic_sts(), &config("stateful"), &ctx(Operation::Create, &cluster))
            .unwrap();
        assert!(m.ops.is_empty());
        assert!(m.notes[0].contains("\"stateful\" does not exist"), "{m:?}");
        // The built-in classes always exist, whatever the view lists.
        let m = mutate::<PriorityClass>(
            &basic_sts(),
            &config("system-cluster-critical"),
            &ctx(Operation::Create, &cluster),
        )
        .unwrap();
        assert_eq!(m.ops.len(), 1);
    }

    #[test]
    fn an_unknown_cluster_gets_the_class() {
        // Offline (`check` with no PriorityClass in its input): nothing says it is missing.
        let cluster = Snapshot::unknown();
        let m = mutate::<PriorityClass>(&basic_sts(), &config("stateful"), &ctx(Operation::Create, &cluster))
            .unwrap();
        assert_eq!(m.ops.len(), 1);
    }

    #[test]
    fn a_template_stating_a_priority_number_is_left_alone() {
        let cluster = Snapshot::unknown();
        let mut obj = basic_sts();
        obj.spec.template.spec.as_mut().unwrap().priority = Some(1000);
        let m = mutate::<PriorityClass>(&obj, &config("stateful"), &ctx(Operation::Create, &cluster)).unwrap();
        assert!(m.ops.is_empty());
        assert!(m.notes[0].contains("priority 1000"));
    }

    #[test]
    fn never_on_update_unless_the_policy_allows_template_changes() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        assert!(
            mutate::<PriorityClass>(&obj, &config("stateful"), &ctx(Operation::Update, &cluster))
                .unwrap()
                .is_empty()
        );
        let mut update = ctx(Operation::Update, &cluster);
        update.mutate_template_on_update = true;
        assert_eq!(
            mutate::<PriorityClass>(&obj, &config("stateful"), &update).unwrap().ops.len(),
            1
        );
    }

    #[test]
    fn keep_puts_back_a_class_an_update_dropped_and_leaves_a_new_choice() {
        let cluster = Snapshot::unknown();
        let created = basic_sts();
        let stored = apply(
            &created,
            &mutate::<PriorityClass>(&created, &config("stateful"), &ctx(Operation::Create, &cluster)).unwrap(),
        );
        // `kubectl replace` of the original manifest: no class.
        let kept = keep::<PriorityClass>(&created, &stored).unwrap();
        assert_eq!(class_of(&apply(&created, &kept)), Some("stateful"));
        assert!(kept.summary.contains("kept"));
        // The user names another class: theirs.
        let mut changed = created.clone();
        changed.spec.template.spec.as_mut().unwrap().priority_class_name = Some("mine".into());
        assert!(keep::<PriorityClass>(&changed, &stored).unwrap().is_empty());
        // Nothing to keep when the stored object has no class.
        assert!(keep::<PriorityClass>(&created, &created).unwrap().is_empty());
    }

    #[test]
    fn the_class_name_is_required_and_validated_unless_off() {
        assert!(Config::default().check().is_ok());
        let mut cfg = Config {
            action: MutateAction::Mutate,
            class_name: None,
        };
        assert!(cfg.check().unwrap_err().contains("required"));
        cfg.class_name = Some("Not_A_Name".into());
        assert!(cfg.check().unwrap_err().contains("not a valid"));
        cfg.class_name = Some("stateful-critical".into());
        assert!(cfg.check().is_ok());
        cfg.action = MutateAction::Audit;
        cfg.class_name = Some(String::new());
        assert!(cfg.check().is_err());
    }
}
