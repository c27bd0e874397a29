//! `probes-differ`: a container's liveness probe should not be its readiness probe.
//!
//! Why: readiness may depend on dependencies (replication lag, quorum); when liveness checks the
//! same thing, a slow dependency makes the kubelet restart healthy pods, turning a slowdown into
//! an outage. Liveness should only check that the process itself is alive.
use k8s_openapi::api::apps::v1::StatefulSet;

use super::{ValidationRule, Context, Finding, Part, RuleId, display_name, probes};

/// Only an action (default `warn`).
pub type Config = super::ActionOnly<super::WarnByDefault>;

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct ProbesDiffer;

impl ValidationRule for ProbesDiffer {
    type Config = Config;
    fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
        probes::long_running_containers(sts)
            .filter(|c| c.liveness_probe.is_some() && c.liveness_probe == c.readiness_probe)
            .map(|c| {
                Finding::new(
                    RuleId::ProbesDiffer,
                    Part::Container(c.name.clone()),
                    format!(
                        "container {:?} of StatefulSet {} uses the same check for livenessProbe and readinessProbe: a slow dependency would restart healthy pods; make the liveness probe check only the process",
                        c.name,
                        display_name(&sts.metadata, ctx.namespace)
                    ),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{ctx, sts};

    fn with_probes(liveness: &str, readiness: &str) -> StatefulSet {
        sts(&format!(
            r#"
metadata: {{name: db}}
spec:
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: db, image: pg, livenessProbe: {liveness}, readinessProbe: {readiness}}}]
"#
        ))
    }

    #[test]
    fn identical_probes_are_found() {
        let cluster = Snapshot::unknown();
        let p = "{exec: {command: [pg_isready]}, periodSeconds: 10}";
        let f = ProbesDiffer::validate(
            &with_probes(p, p),
            &Config::default(),
            &ctx(Operation::Create, &cluster),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].part, Part::Container("db".into()));
    }

    #[test]
    fn different_probes_pass() {
        let cluster = Snapshot::unknown();
        let obj = with_probes(
            "{tcpSocket: {port: 5432}}",
            "{exec: {command: [pg_isready]}}",
        );
        assert!(ProbesDiffer::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
        // Same handler, different timing: still the same check, but a deliberate choice; pass.
        let obj = with_probes(
            "{exec: {command: [a]}, periodSeconds: 30}",
            "{exec: {command: [a]}, periodSeconds: 5}",
        );
        assert!(ProbesDiffer::validate(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).is_empty());
    }
}
