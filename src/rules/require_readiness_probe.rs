//! `require-readiness-probe`: every container that serves traffic has a readiness probe.
//!
//! Why: without one, a pod is Ready as soon as its process starts, so Services route traffic to
//! a database still replaying its log or not yet in the quorum.
//!
//! A container serves when it declares a `containerPort` or is the pod's only container (native
//! sidecars, init containers with `restartPolicy: Always`, count the same way). A sidecar with
//! no port (a config reloader, a log shipper) receives no traffic, so it is not asked for one.
//!
//! A container with a `startupProbe` but no readiness probe is warned, never denied: the startup
//! probe keeps it out of the Service until it has started once, which covers the start-up case,
//! but after that it stays Ready whatever happens (a replica that loses its quorum keeps taking
//! traffic).
use k8s_openapi::api::apps::v1::StatefulSet;

use super::{ValidationRule, Context, Finding, RuleId, probes};

/// Only an action (default `enforce`).
pub type Config = super::ActionOnly<super::EnforceByDefault>;

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequireReadinessProbe;

impl ValidationRule for RequireReadinessProbe {
    type Config = Config;
    fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
        probes::missing(
            sts,
            ctx,
            RuleId::RequireReadinessProbe,
            "readinessProbe",
            "otherwise traffic reaches pods that cannot serve yet",
            |c| c.readiness_probe.as_ref(),
        )
        .map(|(container, mut finding)| {
            if container.startup_probe.is_some() {
                finding.message.push_str(
                    "; its startupProbe only keeps it out of the Service until it first starts, after which it stays Ready whatever its state",
                );
                finding.advisory = true;
            }
            finding
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{ctx, sts_with_pod};

    #[test]
    fn names_every_container_and_sidecar_without_the_probe() {
        let cluster = Snapshot::unknown();
        let obj = sts_with_pod("zk", r#"
initContainers:
- {name: init-perms, image: busybox}
- {name: log-shipper, image: busybox, restartPolicy: Always, ports: [{containerPort: 24224}]}
- {name: backup-agent, image: busybox, restartPolicy: Always}
containers:
- {name: zookeeper, image: zk, readinessProbe: {tcpSocket: {port: 2181}}}
- {name: metrics, image: exporter, ports: [{containerPort: 9141}]}
- {name: config-reload, image: reloader}
"#);
        let findings = RequireReadinessProbe::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster));
        let subjects: Vec<_> = findings.iter().map(|f| f.part.to_string()).collect();
        assert_eq!(subjects, ["container/metrics", "container/log-shipper"]);
        assert!(
            findings[0]
                .message
                .contains("container \"metrics\" of StatefulSet default/zk has no readinessProbe")
        );
        assert!(findings.iter().all(|f| !f.advisory));
    }

    #[test]
    fn the_only_container_serves_even_without_a_port() {
        let cluster = Snapshot::unknown();
        let obj = sts_with_pod("worker", r#"
containers: [{name: worker, image: w}]
"#);
        let findings = RequireReadinessProbe::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(findings.len(), 1);
    }

    #[test]
    fn a_startup_probe_alone_is_advice_not_a_denial() {
        let cluster = Snapshot::unknown();
        let obj = sts_with_pod("rp", r#"
containers:
- {name: redpanda, image: rp, ports: [{containerPort: 9092}], startupProbe: {exec: {command: [rpk]}}}
"#);
        let findings = RequireReadinessProbe::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(findings.len(), 1);
        assert!(findings[0].advisory);
        assert!(findings[0].message.contains("startupProbe"));
    }
}
