//! `require-liveness-probe`: every container that serves traffic has a liveness probe.
//!
//! Why: a deadlocked database process keeps its pod Running forever; only a liveness probe lets
//! the kubelet restart it. The containers asked are those `require-readiness-probe` asks (a
//! declared `containerPort`, or the pod's only container): a port-less sidecar such as a config
//! reloader is not the database, and a chart that ships one without probes is not wrong.
use k8s_openapi::api::apps::v1::StatefulSet;

use super::{ValidationRule, Context, Finding, RuleId, probes};

/// Only an action (default `warn`).
pub type Config = super::ActionOnly<super::WarnByDefault>;

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequireLivenessProbe;

impl ValidationRule for RequireLivenessProbe {
    type Config = Config;
    fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
        probes::missing(
            sts,
            ctx,
            RuleId::RequireLivenessProbe,
            "livenessProbe",
            "otherwise a hung process is never restarted",
            |c| c.liveness_probe.as_ref(),
        )
        .map(|(_, finding)| finding)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx, sts_with_pod};

    #[test]
    fn container_without_liveness_probe_is_named() {
        let cluster = Snapshot::unknown();
        let findings = RequireLivenessProbe::validate(
            &basic_sts(),
            &Config::default(),
            &ctx(Operation::Create, &cluster),
        );
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].part, crate::rules::Part::Container("db".into()));
        assert!(findings[0].message.contains("has no livenessProbe"));
    }

    #[test]
    fn container_with_liveness_probe_passes_and_plain_init_containers_are_ignored() {
        let cluster = Snapshot::unknown();
        let obj = sts_with_pod("db", r#"
initContainers: [{name: init, image: busybox}]
containers: [{name: db, image: pg, livenessProbe: {exec: {command: [pg_isready]}}}]
"#);
        assert!(RequireLivenessProbe::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
    }
}
