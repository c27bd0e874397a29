//! `data-retention`: warn when an everyday operation would lose a StatefulSet's data.
//!
//! Why: the data of a database outlives its pods only if nothing deletes its volumes. Three
//! settings do it quietly: `persistentVolumeClaimRetentionPolicy` set to `Delete` (deleting the
//! StatefulSet, or scaling it down, deletes the claims); a StorageClass with `reclaimPolicy:
//! Delete` (the default: deleting a claim, by hand, by that policy or with its namespace,
//! deletes the volume); and a class without `allowVolumeExpansion` (a growing database whose disk
//! fills up cannot be given a bigger one).
use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use serde::{Deserialize, Serialize};

use super::{ValidationRule, Aspect, ClassAspect, Context, Finding, Part, RuleId, display_name};
use crate::policy::action::ValidateAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: ValidateAction,
    /// `persistentVolumeClaimRetentionPolicy.whenDeleted` or `whenScaled` is `Delete`.
    pub retention_policy: bool,
    /// A claim template's StorageClass has `reclaimPolicy: Delete` (when the cluster view knows
    /// the class).
    pub reclaim_policy: bool,
    /// A claim template's StorageClass does not allow volume expansion.
    pub volume_expansion: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: ValidateAction::Warn,
            retention_policy: true,
            reclaim_policy: true,
            volume_expansion: true,
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
pub struct DataRetention;

impl ValidationRule for DataRetention {
    type Config = Config;
    fn validate(sts: &StatefulSet, cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let name = display_name(&sts.metadata, ctx.namespace);
        let mut findings = Vec::new();
        if cfg.retention_policy
            && let Some(policy) = &sts.spec.persistent_volume_claim_retention_policy
        {
            if policy.when_deleted.as_deref() == Some("Delete") {
                findings.push(Finding::new(
                    RuleId::DataRetention,
                    Part::Whole(Aspect::RetentionWhenDeleted),
                    format!(
                        "deleting StatefulSet {name} deletes its PersistentVolumeClaims and their data (persistentVolumeClaimRetentionPolicy.whenDeleted: Delete): a mistaken `kubectl delete` or a GitOps prune loses the database; use Retain"
                    ),
                ));
            }
            if policy.when_scaled.as_deref() == Some("Delete") {
                findings.push(Finding::new(
                    RuleId::DataRetention,
                    Part::Whole(Aspect::RetentionWhenScaled),
                    format!(
                        "scaling StatefulSet {name} down deletes the claims of the removed replicas (persistentVolumeClaimRetentionPolicy.whenScaled: Delete): scaling back up starts them empty, and a replica scaled away during an incident is gone; use Retain"
                    ),
                ));
            }
        }
        if !(cfg.reclaim_policy || cfg.volume_expansion) || !ctx.cluster.storage_classes_known() {
            return findings;
        }
        // Each class once, whatever the number of templates using it.
        let mut classes = BTreeSet::new();
        for template in sts.spec.volume_claim_templates.iter().flatten() {
            let class = match template
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
            {
                Some("") => continue, // statically provisioned: no class decides
                Some(class) => ctx.cluster.storage_class(class),
                None => ctx.cluster.default_storage_class(),
            };
            if let Some(class) = class {
                classes.insert(class.metadata.name.clone().unwrap_or_default());
            }
        }
        for class_name in classes {
            let Some(class) = ctx.cluster.storage_class(&class_name) else {
                continue;
            };
            if cfg.reclaim_policy && class.reclaim_policy.as_deref().unwrap_or("Delete") == "Delete" {
                findings.push(Finding::new(
                    RuleId::DataRetention,
                    Part::StorageClass(class_name.to_owned(), ClassAspect::Reclaim),
                    format!(
                        "StatefulSet {name} keeps its data on StorageClass {class_name:?}, whose reclaimPolicy is Delete: when a claim is deleted (by hand, by a retention policy, with its namespace) the volume and its data are deleted with it; use a class with reclaimPolicy: Retain"
                    ),
                ));
            }
            if cfg.volume_expansion && class.allow_volume_expansion != Some(true) {
                findings.push(Finding::new(
                    RuleId::DataRetention,
                    Part::StorageClass(class_name.to_owned(), ClassAspect::Expansion),
                    format!(
                        "StatefulSet {name} keeps its data on StorageClass {class_name:?}, which does not allow volume expansion: when the database fills its disk, the claim cannot be resized; use a class with allowVolumeExpansion: true"
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
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx, sts};
    use k8s_openapi::api::storage::v1::StorageClass;

    fn class(yaml: &str) -> StorageClass {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn subjects(f: &[Finding]) -> Vec<String> {
        f.iter().map(|f| f.part.to_string()).collect()
    }

    #[test]
    fn delete_retention_policies_are_findings() {
        let obj = sts(r#"
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template: {metadata: {labels: {app: db}}, spec: {containers: [{name: db, image: db}]}}
  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete, whenScaled: Delete}
"#);
        let cluster = Snapshot::unknown();
        let found = DataRetention::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(subjects(&found), ["retention/whenDeleted", "retention/whenScaled"]);
        let off = Config {
            retention_policy: false,
            ..Config::default()
        };
        assert!(DataRetention::validate(&obj, &off, &ctx(Operation::Create, &cluster)).is_empty());
    }

    #[test]
    fn the_class_of_each_template_is_checked_once() {
        let cluster = Snapshot::known(
            vec![],
            vec![
                class("metadata: {name: std, annotations: {storageclass.kubernetes.io/is-default-class: 'true'}}\nprovisioner: x"),
                class("metadata: {name: safe}\nprovisioner: x\nreclaimPolicy: Retain\nallowVolumeExpansion: true"),
            ],
            vec![],
        );
        // basic_sts: one template without a class, so the default `std` (Delete, no expansion).
        let obj = basic_sts();
        let found = DataRetention::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(subjects(&found), ["class/std/reclaim", "class/std/expansion"]);
        assert!(found[0].message.contains("reclaimPolicy is Delete"));
        let only_expansion = Config {
            reclaim_policy: false,
            ..Config::default()
        };
        let found = DataRetention::validate(&obj, &only_expansion, &ctx(Operation::Create, &cluster));
        assert_eq!(subjects(&found), ["class/std/expansion"]);
        // Two templates on the safe class: nothing.
        let mut safe = basic_sts();
        let templates = safe.spec.volume_claim_templates.as_mut().unwrap();
        templates[0].spec.as_mut().unwrap().storage_class_name = Some("safe".into());
        templates.push(templates[0].clone());
        assert!(DataRetention::validate(&safe, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
        // Unknown cluster: no class finding.
        let unknown = Snapshot::unknown();
        assert!(DataRetention::validate(&obj, &Config::default(), &ctx(Operation::Create, &unknown)).is_empty());
    }
}
