//! `require-readiness-probe`: every long-running container has a readiness probe.
//!
//! Why: without one, a pod is Ready as soon as its process starts, so Services route traffic to
//! a database still replaying its log or not yet in the quorum.
use k8s_openapi::api::apps::v1::StatefulSet;

use super::{Context, Finding, RuleId, probes};
use crate::policy::action::ValidateAction;

/// Only an action (default `enforce`).
pub type Config = super::ActionOnly<super::EnforceByDefault>;

pub fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
    probes::missing(
        sts,
        ctx,
        RuleId::RequireReadinessProbe,
        "readinessProbe",
        "otherwise traffic reaches pods that cannot serve yet",
        |c| c.readiness_probe.as_ref(),
    )
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequireReadinessProbe;

impl super::Rule for RequireReadinessProbe {
    type Config = Config;
}

impl super::ValidationRule for RequireReadinessProbe {
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
    use crate::rules::testing::{ctx, sts};

    #[test]
    fn names_every_container_and_sidecar_without_the_probe() {
        let cluster = Snapshot::unknown();
        let obj = sts(r#"
metadata: {name: zk}
spec:
  serviceName: zk
  selector: {matchLabels: {app: zk}}
  template:
    metadata: {labels: {app: zk}}
    spec:
      initContainers:
      - {name: init-perms, image: busybox}
      - {name: log-shipper, image: busybox, restartPolicy: Always}
      containers:
      - {name: zookeeper, image: zk, readinessProbe: {tcpSocket: {port: 2181}}}
      - {name: metrics, image: exporter}
"#);
        let findings = validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster));
        let subjects: Vec<_> = findings.iter().map(|f| f.subject.to_string()).collect();
        assert_eq!(subjects, ["container/metrics", "container/log-shipper"]);
        assert!(
            findings[0]
                .message
                .contains("container \"metrics\" of StatefulSet default/zk has no readinessProbe")
        );
    }
}
