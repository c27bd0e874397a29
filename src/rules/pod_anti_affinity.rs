//! `pod-anti-affinity`: spread a StatefulSet's own pods over nodes.
//!
//! Why: replicas that land on one node die together when it fails or is drained, and a
//! replicated database loses its quorum with them.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{self as core, PodAffinityTerm, WeightedPodAffinityTerm};
use serde::{Deserialize, Serialize};

use super::{MutationRule, Context, Mutation, patch};
use crate::policy::action::MutateAction;

/// `preferred` lets the scheduler co-locate when it must; `required` never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strength {
    #[default]
    Preferred,
    Required,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: MutateAction,
    /// `preferred` (weight `weight`) or `required`.
    pub mode: Strength,
    /// The node label to spread over.
    pub topology_key: String,
    /// Weight of the preferred term, 1 to 100.
    pub weight: i32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: MutateAction::Mutate,
            mode: Strength::Preferred,
            topology_key: "kubernetes.io/hostname".into(),
            weight: 100,
        }
    }
}

impl super::RuleConfig for Config {
    type Action = MutateAction;
    fn action(&self) -> MutateAction {
        self.action
    }
    fn check(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.weight) {
            return Err(format!("weight: must be 1 to 100, got {}", self.weight));
        }
        if self.topology_key.is_empty() {
            return Err("topologyKey: must not be empty".into());
        }
        Ok(())
    }
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct PodAntiAffinity;

impl MutationRule for PodAntiAffinity {
    type Config = Config;
    fn mutate(
        sts: &StatefulSet,
        cfg: &Config,
        _earlier: &super::Provided,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        let spec = &sts.spec;
        let pod = spec.template.spec.as_ref();
        let affinity = pod.and_then(|p| p.affinity.as_ref());
        if affinity.is_some_and(|a| a.pod_anti_affinity.is_some()) || !ctx.may_change_template() {
            return Ok(Mutation::none());
        }
        if pod.is_none() {
            return Ok(Mutation::none());
        }
        let selector = &spec.selector;
        if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|e| e.is_empty())
        {
            return Ok(Mutation::note(
                "spec.selector is empty, so an anti-affinity term would repel every pod in the namespace; none added",
            ));
        }
        let term = PodAffinityTerm {
            label_selector: Some(selector.clone()),
            topology_key: cfg.topology_key.clone(),
            ..Default::default()
        };
        let anti = match cfg.mode {
            Strength::Preferred => core::PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: cfg.weight,
                        pod_affinity_term: term,
                    },
                ]),
                ..Default::default()
            },
            Strength::Required => core::PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![term]),
                ..Default::default()
            },
        };
        let base = ["spec", "template", "spec"];
        let op = if affinity.is_some() {
            patch::add_creating(
                &[&base[..], &["affinity"]].concat(),
                &["podAntiAffinity"],
                &anti,
            )?
        } else {
            patch::add_creating(&base, &["affinity", "podAntiAffinity"], &anti)?
        };
        let how = match cfg.mode {
            Strength::Preferred => "prefers",
            Strength::Required => "requires",
        };
        Ok(Mutation {
            ops: vec![op],
            summary: format!(
                "added pod anti-affinity that {how} one pod per {} so replicas do not fail together",
                cfg.topology_key
            ),
            notes: vec![],
            refusal: None,
        })
    }
    /// On UPDATE of a StatefulSet this rule changed at CREATE: when the update drops the pod
    /// anti-affinity altogether (a `kubectl replace` or PUT of the original manifest), keeps the
    /// stored one, so the pod template ends up as the stored template plus the user's own change
    /// and the pods keep their spreading. An anti-affinity the update sends is the user's: it stays.
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
            .and_then(|p| p.affinity.as_ref()?.pod_anti_affinity.as_ref())
        else {
            return Ok(Mutation::none());
        };
        let Some(pod) = new.spec.template.spec.as_ref() else {
            return Ok(Mutation::none());
        };
        let base = ["spec", "template", "spec"];
        let op = match &pod.affinity {
            Some(a) if a.pod_anti_affinity.is_some() => return Ok(Mutation::none()),
            Some(_) => patch::add_creating(
                &[&base[..], &["affinity"]].concat(),
                &["podAntiAffinity"],
                stored,
            )?,
            None => patch::add_creating(&base, &["affinity", "podAntiAffinity"], stored)?,
        };
        Ok(Mutation {
            ops: vec![op],
            summary: "kept the pod anti-affinity set at creation (the update dropped it; without it replicas can land on one node)".into(),
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
    use crate::rules::testing::{mutate, apply, basic_sts, ctx, sts_with_pod};

    #[test]
    fn adds_preferred_anti_affinity_on_the_statefulsets_own_selector() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        let m = mutate::<PodAntiAffinity>(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).unwrap();
        let out = apply(&obj, &m);
        let anti = out
            .spec
            .template
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .pod_anti_affinity
            .unwrap();
        let terms = anti
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].weight, 100);
        assert_eq!(
            terms[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert_eq!(
            terms[0].pod_affinity_term.label_selector,
            Some(obj.spec.selector)
        );
        assert!(
            anti.required_during_scheduling_ignored_during_execution
                .is_none()
        );
    }

    #[test]
    fn required_mode_adds_a_hard_term() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        let cfg = Config {
            mode: Strength::Required,
            ..Config::default()
        };
        let out = apply(
            &obj,
            &mutate::<PodAntiAffinity>(&obj, &cfg, &ctx(Operation::Create, &cluster)).unwrap(),
        );
        let anti = out
            .spec
            .template
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .pod_anti_affinity
            .unwrap();
        assert_eq!(
            anti.required_during_scheduling_ignored_during_execution
                .unwrap()
                .len(),
            1
        );
        assert!(
            anti.preferred_during_scheduling_ignored_during_execution
                .is_none()
        );
    }

    #[test]
    fn keeps_existing_node_affinity() {
        let cluster = Snapshot::unknown();
        let obj = sts_with_pod("db", r#"
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}]
containers: [{name: db, image: x}]
"#);
        let m = mutate::<PodAntiAffinity>(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).unwrap();
        assert_eq!(
            patch::path_of(&m.ops[0]),
            "/spec/template/spec/affinity/podAntiAffinity"
        );
        let affinity = apply(&obj, &m)
            .spec
            .template
            .spec
            .unwrap()
            .affinity
            .unwrap();
        assert!(affinity.node_affinity.is_some());
        assert!(affinity.pod_anti_affinity.is_some());
    }

    #[test]
    fn never_overrides_an_existing_anti_affinity() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        let once = apply(
            &obj,
            &mutate::<PodAntiAffinity>(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).unwrap(),
        );
        let cfg = Config {
            mode: Strength::Required,
            ..Config::default()
        };
        assert!(
            mutate::<PodAntiAffinity>(&once, &cfg, &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn leaves_the_template_alone_on_update_unless_allowed() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        assert!(
            mutate::<PodAntiAffinity>(&obj, &Config::default(), &ctx(Operation::Update, &cluster))
                .unwrap()
                .is_empty()
        );
        let mut c = ctx(Operation::Update, &cluster);
        c.mutate_template_on_update = true;
        assert_eq!(mutate::<PodAntiAffinity>(&obj, &Config::default(), &c).unwrap().ops.len(), 1);
    }

    #[test]
    fn invalid_weight_is_rejected() {
        assert!(
            Config {
                weight: 0,
                ..Config::default()
            }
            .check()
            .unwrap_err()
            .contains("weight")
        );
    }
}
