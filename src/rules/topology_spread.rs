//! `topology-spread`: spread a StatefulSet's pods over zones.
//!
//! Why: anti-affinity keeps replicas off one node, but a zone outage still takes them all when
//! they share a zone.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use serde::{Deserialize, Serialize};

use super::{MutationRule, Context, Mutation, fast_storage_class, patch};
use crate::policy::action::MutateAction;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WhenUnsatisfiable {
    #[default]
    ScheduleAnyway,
    DoNotSchedule,
}

impl WhenUnsatisfiable {
    pub const fn as_str(self) -> &'static str {
        match self {
            WhenUnsatisfiable::ScheduleAnyway => "ScheduleAnyway",
            WhenUnsatisfiable::DoNotSchedule => "DoNotSchedule",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: MutateAction,
    pub topology_key: String,
    pub max_skew: i32,
    pub when_unsatisfiable: WhenUnsatisfiable,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: MutateAction::Mutate,
            topology_key: "topology.kubernetes.io/zone".into(),
            max_skew: 1,
            when_unsatisfiable: WhenUnsatisfiable::ScheduleAnyway,
        }
    }
}

impl super::RuleConfig for Config {
    type Action = MutateAction;
    fn action(&self) -> MutateAction {
        self.action
    }
    fn check(&self) -> Result<(), String> {
        if self.max_skew < 1 {
            return Err(format!(
                "maxSkew: must be at least 1, got {}",
                self.max_skew
            ));
        }
        if self.topology_key.is_empty() {
            return Err("topologyKey: must not be empty".into());
        }
        Ok(())
    }
}

/// Why a hard constraint is unsafe for this StatefulSet, if it is.
fn hard_constraint_risk(
    sts: &StatefulSet,
    storage: Option<&fast_storage_class::Config>,
    ctx: &Context,
) -> Option<String> {
    let templates = sts.spec.volume_claim_templates.as_ref().map_or(0, Vec::len);
    if templates == 0 {
        return None;
    }
    if !ctx.cluster.storage_classes_known() {
        return Some(
            "the StorageClasses' volumeBindingMode cannot be checked without cluster state".into(),
        );
    }
    for i in 0..templates {
        let class = match fast_storage_class::template_class_after(sts, i, storage, ctx) {
            Some("") => continue, // statically bound volumes: nothing is provisioned
            Some(name) => ctx.cluster.storage_class(name),
            None => ctx.cluster.default_storage_class(),
        };
        let Some(class) = class else {
            return Some(
                "a volumeClaimTemplate's StorageClass is not known to this cluster".into(),
            );
        };
        let mode = class.volume_binding_mode.as_deref().unwrap_or("Immediate");
        if mode != "WaitForFirstConsumer" {
            let name = class.metadata.name.as_deref().unwrap_or("?");
            return Some(format!(
                "StorageClass {name:?} binds volumes Immediately (not WaitForFirstConsumer), so volumes are created in a zone before the pod is scheduled and a hard zone constraint can leave pods Pending"
            ));
        }
    }
    None
}

/// The rule, as the registry in `rules/mod.rs` lists it. Its declared input: the classes
/// `fast-storage-class` will set ([`super::Provided::storage`]).
pub struct TopologySpread;

impl MutationRule for TopologySpread {
    type Config = Config;
    fn mutate(
        sts: &StatefulSet,
        cfg: &Config,
        earlier: &super::Provided,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        let storage = earlier.storage;
        let spec = &sts.spec;
        let Some(pod) = spec.template.spec.as_ref() else {
            return Ok(Mutation::none());
        };
        if pod
            .topology_spread_constraints
            .as_ref()
            .is_some_and(|c| !c.is_empty())
            || !ctx.may_change_template()
        {
            return Ok(Mutation::none());
        }
        let mut notes = Vec::new();
        let mut when = cfg.when_unsatisfiable;
        if when == WhenUnsatisfiable::DoNotSchedule
            && let Some(why) = hard_constraint_risk(sts, storage, ctx)
        {
            when = WhenUnsatisfiable::ScheduleAnyway;
            notes.push(format!(
                "added the zone spread as ScheduleAnyway instead of DoNotSchedule: {why}"
            ));
        }
        let constraint = TopologySpreadConstraint {
            label_selector: Some(spec.selector.clone()),
            max_skew: cfg.max_skew,
            topology_key: cfg.topology_key.clone(),
            when_unsatisfiable: when.as_str().into(),
            ..Default::default()
        };
        let op = patch::set(
            &["spec", "template", "spec", "topologySpreadConstraints"],
            pod.topology_spread_constraints.is_some(),
            &[constraint],
        )?;
        Ok(Mutation {
            ops: vec![op],
            summary: format!(
                "added a topology spread constraint over {} (maxSkew {}, {}) so one zone outage cannot take every replica",
                cfg.topology_key,
                cfg.max_skew,
                when.as_str()
            ),
            notes,
            refusal: None,
        })
    }
    /// On UPDATE of a StatefulSet this rule changed at CREATE: when the update drops every
    /// topology spread constraint (a `kubectl replace` or PUT of the original manifest), keeps the
    /// stored ones, so the pods keep their spreading. Constraints the update sends are the user's.
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
            .and_then(|p| p.topology_spread_constraints.as_ref())
            .filter(|c| !c.is_empty())
        else {
            return Ok(Mutation::none());
        };
        let Some(pod) = new.spec.template.spec.as_ref() else {
            return Ok(Mutation::none());
        };
        if pod
            .topology_spread_constraints
            .as_ref()
            .is_some_and(|c| !c.is_empty())
        {
            return Ok(Mutation::none());
        }
        Ok(Mutation {
            ops: vec![patch::set(
                &["spec", "template", "spec", "topologySpreadConstraints"],
                pod.topology_spread_constraints.is_some(),
                stored,
            )?],
            summary: "kept the topology spread constraints set at creation (the update dropped them; without them one zone outage can take every replica)".into(),
            notes: vec![],
            refusal: None,
        })
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Provided;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{apply, basic_sts, ctx};
    use k8s_openapi::api::storage::v1::StorageClass;

    fn class(name: &str, binding: &str) -> StorageClass {
        serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, annotations: {{storageclass.kubernetes.io/is-default-class: 'true'}}}}\nprovisioner: x\nvolumeBindingMode: {binding}"
        ))
        .unwrap()
    }

    fn hard() -> Config {
        Config {
            when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
            ..Config::default()
        }
    }

    fn constraint_of(s: &StatefulSet) -> TopologySpreadConstraint {
        s.spec
            .clone()
            .template
            .spec
            .unwrap()
            .topology_spread_constraints
            .unwrap()
            .remove(0)
    }

    #[test]
    fn adds_a_soft_zone_spread_by_default() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        let m = TopologySpread::mutate(
            &obj,
            &Config::default(),
            &Provided::default(),
            &ctx(Operation::Create, &cluster),
        )
        .unwrap();
        let c = constraint_of(&apply(&obj, &m));
        assert_eq!(c.topology_key, "topology.kubernetes.io/zone");
        assert_eq!(c.max_skew, 1);
        assert_eq!(c.when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(c.label_selector, Some(obj.spec.selector));
        assert!(m.notes.is_empty());
    }

    #[test]
    fn hard_spread_when_every_class_waits_for_first_consumer() {
        let cluster = Snapshot::known(vec![], vec![class("wffc", "WaitForFirstConsumer")], vec![]);
        let obj = basic_sts();
        let m = TopologySpread::mutate(&obj, &hard(), &Provided::default(), &ctx(Operation::Create, &cluster)).unwrap();
        assert_eq!(
            constraint_of(&apply(&obj, &m)).when_unsatisfiable,
            "DoNotSchedule"
        );
        assert!(m.notes.is_empty());
    }

    #[test]
    fn immediate_binding_downgrades_to_soft_with_a_warning() {
        let cluster = Snapshot::known(vec![], vec![class("standard", "Immediate")], vec![]);
        let obj = basic_sts();
        let m = TopologySpread::mutate(&obj, &hard(), &Provided::default(), &ctx(Operation::Create, &cluster)).unwrap();
        assert_eq!(
            constraint_of(&apply(&obj, &m)).when_unsatisfiable,
            "ScheduleAnyway"
        );
        assert!(
            m.notes[0].contains("\"standard\" binds volumes Immediately"),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn the_class_fast_storage_class_will_set_is_the_one_checked() {
        let mut fast = class("fast-ssd", "WaitForFirstConsumer");
        fast.metadata.annotations = None;
        let cluster = Snapshot::known(vec![], vec![class("standard", "Immediate"), fast], vec![]);
        let storage = fast_storage_class::Config {
            fast_class: Some("fast-ssd".into()),
            ..Default::default()
        };
        let obj = basic_sts();
        let m = TopologySpread::mutate(
            &obj,
            &hard(),
            &Provided { storage: Some(&storage) },
            &ctx(Operation::Create, &cluster),
        )
        .unwrap();
        assert_eq!(
            constraint_of(&apply(&obj, &m)).when_unsatisfiable,
            "DoNotSchedule"
        );
    }

    #[test]
    fn unknown_cluster_is_conservative() {
        let cluster = Snapshot::unknown();
        let m = TopologySpread::mutate(
            &basic_sts(),
            &hard(),
            &Provided::default(),
            &ctx(Operation::Create, &cluster),
        )
        .unwrap();
        assert!(m.notes[0].contains("cannot be checked"));
    }

    #[test]
    fn existing_constraints_and_updates_are_left_alone() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        let once = apply(
            &obj,
            &TopologySpread::mutate(
                &obj,
                &Config::default(),
                &Provided::default(),
                &ctx(Operation::Create, &cluster),
            )
            .unwrap(),
        );
        assert!(
            TopologySpread::mutate(&once, &hard(), &Provided::default(), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
        assert!(
            TopologySpread::mutate(
                &obj,
                &Config::default(),
                &Provided::default(),
                &ctx(Operation::Update, &cluster)
            )
            .unwrap()
            .is_empty()
        );
    }
}
