//! `require-persistent-storage`: a StatefulSet should keep its data on a PersistentVolume.
//!
//! Why: data in `emptyDir` or in the container's own filesystem is lost whenever the pod is
//! rescheduled; a StatefulSet without durable storage is usually a mistake.
use k8s_openapi::api::apps::v1::StatefulSet;

use super::{Aspect, Context, Finding, Part, RuleId, display_name};
use crate::policy::action::ValidateAction;

/// Only an action (default `warn`).
pub type Config = super::ActionOnly<super::WarnByDefault>;

pub fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
    let spec = &sts.spec;
    let has_templates = spec
        .volume_claim_templates
        .as_ref()
        .is_some_and(|v| !v.is_empty());
    let has_pvc_volume = spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())
        .is_some_and(|vols| vols.iter().any(|v| v.persistent_volume_claim.is_some()));
    if has_templates || has_pvc_volume {
        return vec![];
    }
    vec![Finding::new(
        RuleId::RequirePersistentStorage,
        Part::Whole(Aspect::Storage),
        format!(
            "StatefulSet {} has no volumeClaimTemplates and mounts no PersistentVolumeClaim: its data lives in emptyDir or the container and is lost when a pod moves; add spec.volumeClaimTemplates",
            display_name(&sts.metadata, ctx.namespace)
        ),
    )]
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequirePersistentStorage;

impl super::Rule for RequirePersistentStorage {
    type Config = Config;
}

impl super::ValidationRule for RequirePersistentStorage {
    fn action(config: &Config) -> ValidateAction {
        config.action
    }
    fn validate(sts: &StatefulSet, config: &Config, ctx: &Context) -> Vec<Finding> {
        validate(sts, config, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx, sts};

    #[test]
    fn statefulset_without_durable_storage_is_found() {
        let cluster = Snapshot::unknown();
        let obj = sts(r#"
metadata: {name: cache}
spec:
  serviceName: cache
  selector: {matchLabels: {app: cache}}
  template:
    metadata: {labels: {app: cache}}
    spec:
      volumes: [{name: data, emptyDir: {}}]
      containers: [{name: c, image: redis, volumeMounts: [{name: data, mountPath: /data}]}]
"#);
        let f = validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message
                .contains("default/cache has no volumeClaimTemplates")
        );
    }

    #[test]
    fn claim_templates_or_pvc_volumes_pass() {
        let cluster = Snapshot::unknown();
        assert!(
            validate(
                &basic_sts(),
                &Config::default(),
                &ctx(Operation::Create, &cluster)
            )
            .is_empty()
        );
        let obj = sts(r#"
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      volumes: [{name: data, persistentVolumeClaim: {claimName: shared}}]
      containers: [{name: c, image: pg}]
"#);
        assert!(validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
    }
}
