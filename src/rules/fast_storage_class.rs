//! `fast-storage-class`: put data on the policy's fast StorageClass.
//!
//! Why: the cluster default class is often a slow network disk (`standard`, `pd-standard`,
//! `gp2`); databases on it miss fsync deadlines and fail over under load.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde::{Deserialize, Serialize};

use super::explicit::{Provenance, any_manager_owns, provenance_in};
use super::{MutationRule, Context, Mutation, has_annotation, patch};
use crate::policy::action::MutateAction;

/// Opt-out annotation: `stateful-guard.io/storage-class: keep` on the StatefulSet (all its claim
/// templates), on one claim template, or on a PVC.
pub const OPT_OUT_ANNOTATION: &str = "stateful-guard.io/storage-class";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: MutateAction,
    /// The class to set. Required unless the action is `off`.
    pub fast_class: Option<String>,
    /// Classes replaced by the fast one even when named explicitly.
    pub slow_classes: Vec<String>,
    /// On PVC CREATE, replace the cluster's default class when there is no evidence the user
    /// chose it (managedFields show whether DefaultStorageClass filled it in).
    pub replace_default_class: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: MutateAction::Mutate,
            fast_class: None,
            slow_classes: vec!["standard".into(), "pd-standard".into(), "gp2".into()],
            replace_default_class: true,
        }
    }
}

impl super::RuleConfig for Config {
    type Action = MutateAction;
    fn action(&self) -> MutateAction {
        self.action
    }
    fn check(&self) -> Result<(), String> {
        match &self.fast_class {
            None if self.action != MutateAction::Off => {
                Err("fastClass: required unless action is off".into())
            }
            Some(class) if class.is_empty() => Err("fastClass: must not be empty".into()),
            Some(class) if self.slow_classes.contains(class) => Err(format!(
                "fastClass: {class:?} is also listed in slowClasses"
            )),
            _ => Ok(()),
        }
    }
}

/// Why a claim's class is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    NoClass,
    Slow,
    FilledDefault,
}

impl Reason {
    fn describe(self, old: Option<&str>) -> String {
        match (self, old) {
            (Reason::NoClass, _) | (_, None) => "no storageClassName".into(),
            (Reason::Slow, Some(c)) => format!("slow class {c:?}"),
            (Reason::FilledDefault, Some(c)) => {
                format!("cluster default {c:?} filled in by DefaultStorageClass")
            }
        }
    }
}

/// The class a claim template of `sts` will have once this rule has run with `cfg` (used by
/// `topology-spread` to look at the binding mode of the classes pods will really use).
pub fn template_class_after<'a>(
    sts: &'a StatefulSet,
    index: usize,
    cfg: Option<&'a Config>,
    ctx: &Context,
) -> Option<&'a str> {
    let vct = sts.spec.volume_claim_templates.as_ref()?.get(index)?;
    let current = vct
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref());
    match cfg.and_then(|cfg| template_reason(sts, index, cfg, ctx).map(|_| cfg)) {
        Some(cfg) => cfg.fast_class.as_deref(),
        None => current,
    }
}

fn template_reason(sts: &StatefulSet, index: usize, cfg: &Config, ctx: &Context) -> Option<Reason> {
    let fast = cfg.fast_class.as_deref()?;
    if ctx.operation != super::Operation::Create
        || has_annotation(&sts.metadata, OPT_OUT_ANNOTATION, "keep")
    {
        return None;
    }
    let vct = sts.spec.volume_claim_templates.as_ref()?.get(index)?;
    if has_annotation(&vct.metadata, OPT_OUT_ANNOTATION, "keep") {
        return None;
    }
    match vct
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
    {
        None if default_is(ctx, fast) => None,
        None => Some(Reason::NoClass),
        Some(c) if c != fast && cfg.slow_classes.iter().any(|s| s == c) => Some(Reason::Slow),
        Some(_) => None,
    }
}

fn default_is(ctx: &Context, class: &str) -> bool {
    ctx.cluster
        .default_storage_class()
        .is_some_and(|sc| sc.metadata.name.as_deref() == Some(class))
}

/// Whether the fast class is known to be missing: then nothing is changed (pods would stay
/// Pending forever on a class that does not exist).
fn fast_class_missing(ctx: &Context, fast: &str) -> bool {
    ctx.cluster.storage_classes_known() && ctx.cluster.storage_class(fast).is_none()
}

fn missing_note(fast: &str, what: &str) -> String {
    format!(
        "StorageClass {fast:?} does not exist in this cluster, so {what} was left unchanged; create it or set fastClass in the policy"
    )
}

fn mutate_templates(
    sts: &StatefulSet,
    cfg: &Config,
    ctx: &Context,
) -> Result<Mutation, serde_json::Error> {
    let Some(fast) = cfg.fast_class.as_deref() else {
        return Ok(Mutation::none());
    };
    let templates = sts
        .spec
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default();
    let mut out = Mutation::none();
    let mut changed = Vec::new();
    for (i, vct) in templates.iter().enumerate() {
        let Some(reason) = template_reason(sts, i, cfg, ctx) else {
            continue;
        };
        let name = vct.metadata.name.as_deref().unwrap_or("?");
        if fast_class_missing(ctx, fast) {
            out.notes
                .push(missing_note(fast, &format!("volumeClaimTemplate {name:?}")));
            continue;
        }
        let index = i.to_string();
        let current = vct
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref());
        let base = ["spec", "volumeClaimTemplates", index.as_str()];
        out.ops.push(if vct.spec.is_some() {
            patch::set(
                &[&base[..], &["spec", "storageClassName"]].concat(),
                current.is_some(),
                &fast,
            )?
        } else {
            patch::add_creating(&base, &["spec", "storageClassName"], &fast)?
        });
        changed.push(format!("{name:?} ({})", reason.describe(current)));
    }
    if !changed.is_empty() {
        out.summary = format!(
            "set storageClassName {fast:?} on volumeClaimTemplates {}",
            changed.join(", ")
        );
    }
    Ok(out)
}

fn mutate_claim(
    pvc: &PersistentVolumeClaim,
    cfg: &Config,
    ctx: &Context,
) -> Result<Mutation, serde_json::Error> {
    let (Some(fast), Some(spec)) = (cfg.fast_class.as_deref(), pvc.spec.as_ref()) else {
        return Ok(Mutation::none());
    };
    if ctx.operation != super::Operation::Create
        || has_annotation(&pvc.metadata, OPT_OUT_ANNOTATION, "keep")
        // Pre-bound to a volume: the class must match that volume's.
        || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        // Clones and snapshot restores: many CSI drivers require the source's class.
        || spec.data_source.is_some()
        || spec.data_source_ref.is_some()
    {
        return Ok(Mutation::none());
    }
    let current = spec.storage_class_name.as_deref();
    let reason = match current {
        None if default_is(ctx, fast) => return Ok(Mutation::none()),
        None => Reason::NoClass,
        Some("") => return Ok(Mutation::none()),
        Some(c) if c == fast => return Ok(Mutation::none()),
        Some(c) if cfg.slow_classes.iter().any(|s| s == c) => Reason::Slow,
        Some(c) => {
            let path = ["spec", "storageClassName"];
            let filled = match any_manager_owns(&pvc.metadata, &path) {
                // A manifest that does not name the class: the default was filled in.
                _ if ctx.written.is_some() => {
                    provenance_in(ctx, &pvc.metadata, &path) == Provenance::Defaulted
                }
                // No manager owns the class: DefaultStorageClass filled it in after the
                // managedFields were computed. That is "no class".
                Some(owned) => !owned,
                // No managedFields: fall back to "is it the class marked default?".
                None => cfg.replace_default_class && default_is(ctx, c),
            };
            if !filled {
                return Ok(Mutation::none());
            }
            Reason::FilledDefault
        }
    };
    if fast_class_missing(ctx, fast) {
        return Ok(Mutation::note(missing_note(fast, "the claim's class")));
    }
    Ok(Mutation {
        ops: vec![patch::set(
            &["spec", "storageClassName"],
            current.is_some(),
            &fast,
        )?],
        summary: format!(
            "set storageClassName {fast:?} (was {})",
            reason.describe(current)
        ),
        notes: vec![],
        refusal: None,
    })
}

/// On UPDATE of a StatefulSet this rule changed at CREATE: keeps the class stored on each claim
/// template when the update re-sends the template without one (every apply re-sends the list
/// whole, as the manifest wrote it) or with a class this rule replaces. `volumeClaimTemplates`
/// is immutable, so without this every `kubectl apply`, `replace` or `helm upgrade` fails.
/// A different class named explicitly is the user's choice: it stays, and the apiserver reports
/// the real conflict.
fn keep_classes(
    new: &StatefulSet,
    old: &StatefulSet,
    cfg: Option<&Config>,
) -> Result<Mutation, serde_json::Error> {
    let old_templates = old
        .spec
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default();
    let templates = new
        .spec
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default();
    let mut out = Mutation::none();
    let mut kept = Vec::new();
    for (i, vct) in templates.iter().enumerate() {
        let Some(name) = vct.metadata.name.as_deref() else {
            continue;
        };
        let Some(stored) = old_templates
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(name))
            .and_then(|o| o.spec.as_ref()?.storage_class_name.as_deref())
            .filter(|c| !c.is_empty())
        else {
            continue;
        };
        let incoming = vct
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref());
        let revert = match incoming {
            None => true,
            Some(c) if c == stored => false,
            Some(c) => cfg.is_some_and(|cfg| cfg.slow_classes.iter().any(|s| s == c)),
        };
        if !revert {
            continue;
        }
        let index = i.to_string();
        let base = ["spec", "volumeClaimTemplates", index.as_str()];
        out.ops.push(if vct.spec.is_some() {
            patch::set(
                &[&base[..], &["spec", "storageClassName"]].concat(),
                incoming.is_some(),
                &stored,
            )?
        } else {
            patch::add_creating(&base, &["spec", "storageClassName"], &stored)?
        });
        kept.push(format!("{stored:?} on claim template {name:?}"));
    }
    if !kept.is_empty() {
        out.summary = format!(
            "kept storageClassName {} (set at creation; the field is immutable)",
            kept.join(", ")
        );
    }
    Ok(out)
}

/// The rule, as the registry in `rules/mod.rs` lists it. Its section in a policy is optional:
/// absent means off (the rule needs the name of the cluster's fast class).
pub struct FastStorageClass;

impl MutationRule for FastStorageClass {
    type Config = Option<Config>;
    fn mutate(
        sts: &StatefulSet,
        config: &Option<Config>,
        _earlier: &super::Provided,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        match config {
            Some(config) => mutate_templates(sts, config, ctx),
            None => Ok(Mutation::none()),
        }
    }
    fn mutate_pvc(
        pvc: &PersistentVolumeClaim,
        config: &Option<Config>,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        match config {
            Some(config) => mutate_claim(pvc, config, ctx),
            None => Ok(Mutation::none()),
        }
    }
    fn keep(
        new: &StatefulSet,
        old: &StatefulSet,
        config: Option<&Option<Config>>,
    ) -> Result<Mutation, serde_json::Error> {
        keep_classes(new, old, config.and_then(Option::as_ref))
    }
    fn provide<'a>(config: &'a Option<Config>, earlier: &mut super::Provided<'a>) {
        earlier.storage = config.as_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleConfig;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{mutate, apply, basic_sts, ctx, pvc, sts};
    use k8s_openapi::api::storage::v1::StorageClass;

    fn cfg() -> Config {
        Config {
            fast_class: Some("fast-ssd".into()),
            ..Config::default()
        }
    }

    fn class(name: &str, default: bool) -> StorageClass {
        serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, annotations: {{storageclass.kubernetes.io/is-default-class: '{default}'}}}}\nprovisioner: x"
        ))
        .unwrap()
    }

    fn classes_of(s: &StatefulSet) -> Vec<Option<String>> {
        s.spec
            .volume_claim_templates
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.spec.as_ref().unwrap().storage_class_name.clone())
            .collect()
    }

    const TWO_TEMPLATES: &str = r#"
metadata: {name: zk}
spec:
  serviceName: zk
  selector: {matchLabels: {app: zk}}
  template: {metadata: {labels: {app: zk}}, spec: {containers: [{name: zk, image: zk}]}}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
  - metadata: {name: logs}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}, storageClassName: standard}
  - metadata: {name: local}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}, storageClassName: ""}
  - metadata: {name: chosen}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}, storageClassName: premium}
"#;

    #[test]
    fn sets_fast_class_on_missing_and_slow_templates_only() {
        let cluster = Snapshot::unknown();
        let obj = sts(TWO_TEMPLATES);
        let m = mutate::<FastStorageClass>(&obj, &Some(cfg()), &ctx(Operation::Create, &cluster)).unwrap();
        assert_eq!(
            classes_of(&apply(&obj, &m)),
            vec![
                Some("fast-ssd".into()),
                Some("fast-ssd".into()),
                Some("".into()),
                Some("premium".into())
            ]
        );
        assert!(m.summary.contains("\"data\"") && m.summary.contains("slow class \"standard\""));
        // Idempotent.
        assert!(
            mutate::<FastStorageClass>(&apply(&obj, &m), &Some(cfg()), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn does_not_mutate_when_the_fast_class_is_missing_from_a_known_cluster() {
        let cluster = Snapshot::known(vec![], vec![class("standard", true)], vec![]);
        let obj = basic_sts();
        let m = mutate::<FastStorageClass>(&obj, &Some(cfg()), &ctx(Operation::Create, &cluster)).unwrap();
        assert!(m.ops.is_empty());
        assert!(
            m.notes[0].contains("\"fast-ssd\" does not exist"),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn no_change_when_the_default_class_is_already_the_fast_one() {
        let cluster = Snapshot::known(vec![], vec![class("fast-ssd", true)], vec![]);
        assert!(
            mutate::<FastStorageClass>(&basic_sts(), &Some(cfg()), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn opt_out_and_update_leave_templates_alone() {
        let cluster = Snapshot::unknown();
        let mut obj = basic_sts();
        assert!(
            mutate::<FastStorageClass>(&obj, &Some(cfg()), &ctx(Operation::Update, &cluster))
                .unwrap()
                .is_empty()
        );
        obj.metadata.annotations =
            Some([(OPT_OUT_ANNOTATION.to_string(), "keep".to_string())].into());
        assert!(
            mutate::<FastStorageClass>(&obj, &Some(cfg()), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    const PVC_FILLED: &str = r#"
metadata:
  name: data
  managedFields:
  - manager: kubectl-create
    operation: Update
    fieldsType: FieldsV1
    fieldsV1: {"f:spec": {"f:accessModes": {}, "f:resources": {"f:requests": {".": {}, "f:storage": {}}}}}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}, storageClassName: e2e-standard}
"#;

    #[test]
    fn pvc_class_filled_in_by_default_storage_class_is_replaced() {
        let cluster = Snapshot::unknown();
        let obj = pvc(PVC_FILLED);
        let m = FastStorageClass::mutate_pvc(&obj, &Some(cfg()), &ctx(Operation::Create, &cluster)).unwrap();
        let out = apply(&obj, &m);
        assert_eq!(
            out.spec.unwrap().storage_class_name.as_deref(),
            Some("fast-ssd")
        );
        assert!(
            m.summary.contains("filled in by DefaultStorageClass"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn pvc_class_chosen_by_the_user_is_kept() {
        let cluster = Snapshot::unknown();
        let obj = pvc(&PVC_FILLED.replace(
            r#""f:accessModes": {}"#,
            r#""f:accessModes": {}, "f:storageClassName": {}"#,
        ));
        assert!(
            FastStorageClass::mutate_pvc(&obj, &Some(cfg()), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn pvc_without_managed_fields_replaces_the_marked_default_only_when_allowed() {
        let cluster = Snapshot::known(
            vec![],
            vec![class("e2e-standard", true), class("fast-ssd", false)],
            vec![],
        );
        let obj = pvc("metadata: {name: d}\nspec: {storageClassName: e2e-standard}");
        assert_eq!(
            FastStorageClass::mutate_pvc(&obj, &Some(cfg()), &ctx(Operation::Create, &cluster))
                .unwrap()
                .ops
                .len(),
            1
        );
        let keep = Config {
            replace_default_class: false,
            ..cfg()
        };
        assert!(
            FastStorageClass::mutate_pvc(&obj, &Some(keep), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn pvc_edge_cases_are_never_touched() {
        let cluster = Snapshot::unknown();
        for yaml in [
            "metadata: {name: d}\nspec: {storageClassName: ''}",
            "metadata: {name: d}\nspec: {storageClassName: standard, volumeName: pv-1}",
            "metadata: {name: d}\nspec: {dataSource: {kind: PersistentVolumeClaim, name: src}}",
            "metadata: {name: d, annotations: {stateful-guard.io/storage-class: keep}}\nspec: {storageClassName: standard}",
            "metadata: {name: d}\nspec: {storageClassName: fast-ssd}",
        ] {
            assert!(
                FastStorageClass::mutate_pvc(&pvc(yaml), &Some(cfg()), &ctx(Operation::Create, &cluster))
                    .unwrap()
                    .is_empty(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn pvc_with_slow_or_no_class_gets_the_fast_class() {
        let cluster = Snapshot::unknown();
        for (yaml, path_op) in [
            (
                "metadata: {name: d}\nspec: {storageClassName: gp2}",
                "replace",
            ),
            (
                "metadata: {name: d}\nspec: {accessModes: [ReadWriteOnce]}",
                "add",
            ),
        ] {
            let obj = pvc(yaml);
            let m = FastStorageClass::mutate_pvc(&obj, &Some(cfg()), &ctx(Operation::Create, &cluster)).unwrap();
            let op = serde_json::to_value(&m.ops[0]).unwrap();
            assert_eq!(op["op"], path_op);
            assert_eq!(
                apply(&obj, &m).spec.unwrap().storage_class_name.as_deref(),
                Some("fast-ssd")
            );
        }
    }

    #[test]
    fn config_requires_a_fast_class() {
        assert!(
            Config::default()
                .check()
                .unwrap_err()
                .contains("fastClass")
        );
        assert!(
            Config {
                action: MutateAction::Off,
                ..Config::default()
            }
            .check()
            .is_ok()
        );
    }
}
