//! `require-resources`: every long-running container of a StatefulSet has CPU and memory
//! requests and a memory limit; optionally requests equal limits (QoS `Guaranteed`).
//!
//! Why: without requests the scheduler packs a database next to anything, and under node memory
//! pressure the kubelet evicts pods without requests (`BestEffort`) first, then those using more
//! than they requested; without a memory limit one process can exhaust the node. With requests
//! equal to limits the pod is `Guaranteed`, the last to be evicted.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;
use serde::{Deserialize, Serialize};

use super::probes::long_running_containers;
use super::{ValidationRule, Context, Finding, Part, RuleId, display_name};
use crate::policy::action::ValidateAction;

/// The QoS class the policy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Qos {
    /// Requests for CPU and memory, and a memory limit.
    #[default]
    Burstable,
    /// Also: limits for CPU and memory, equal to the requests.
    Guaranteed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: ValidateAction,
    pub qos: Qos,
    /// Also check init containers that run to completion (sidecars always are).
    pub init_containers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: ValidateAction::Warn,
            qos: Qos::Burstable,
            init_containers: false,
        }
    }
}

impl super::RuleConfig for Config {
    type Action = ValidateAction;
    fn action(&self) -> ValidateAction {
        self.action
    }
}

/// What a container lacks, in the words of its spec.
fn missing(c: &Container, qos: Qos) -> Vec<String> {
    let resources = c.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let has = |m: Option<&std::collections::BTreeMap<String, _>>, k: &str| m.is_some_and(|m| m.contains_key(k));
    let mut out = Vec::new();
    for (kind, key) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
        let map = if kind == "requests" { requests } else { limits };
        if !has(map, key) {
            out.push(format!("resources.{kind}.{key}"));
        }
    }
    if qos == Qos::Guaranteed {
        if !has(limits, "cpu") {
            out.push("resources.limits.cpu".into());
        }
        for key in ["cpu", "memory"] {
            let request = requests.and_then(|r| r.get(key));
            let limit = limits.and_then(|l| l.get(key));
            if let (Some(r), Some(l)) = (request, limit)
                && r != l
            {
                out.push(format!("resources.requests.{key} equal to resources.limits.{key}"));
            }
        }
    }
    out
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequireResources;

impl ValidationRule for RequireResources {
    type Config = Config;
    fn validate(sts: &StatefulSet, cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let name = display_name(&sts.metadata, ctx.namespace);
        let one_shot = sts
            .spec
            .template
            .spec
            .iter()
            .flat_map(|p| p.init_containers.iter().flatten())
            .filter(|c| cfg.init_containers && c.restart_policy.as_deref() != Some("Always"));
        long_running_containers(sts)
            .chain(one_shot)
            .filter_map(|c| {
                let lacks = missing(c, cfg.qos);
                (!lacks.is_empty()).then(|| {
                    Finding::new(
                        RuleId::RequireResources,
                        Part::Container(c.name.clone()),
                        format!(
                            "container {:?} of StatefulSet {name} has no {}: set them so the scheduler reserves room for it and the kubelet does not evict it first under node pressure",
                            c.name,
                            lacks.join(", ")
                        ),
                    )
                })
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

    fn with(resources: &str, init: &str) -> StatefulSet {
        sts(&format!(
            r#"
metadata: {{name: db}}
spec:
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      initContainers: [{init}]
      containers:
      - name: db
        image: db
        resources: {resources}
"#
        ))
    }

    fn messages(s: &StatefulSet, cfg: &Config) -> Vec<String> {
        let cluster = Snapshot::unknown();
        RequireResources::validate(s, cfg, &ctx(Operation::Create, &cluster))
            .into_iter()
            .map(|f| f.message)
            .collect()
    }

    const COMPLETE: &str = "{requests: {cpu: 500m, memory: 1Gi}, limits: {memory: 1Gi}}";

    #[test]
    fn requests_and_a_memory_limit_pass_and_what_lacks_is_named() {
        assert!(messages(&with(COMPLETE, ""), &Config::default()).is_empty());
        let m = messages(&with("{requests: {cpu: 500m, memory: 1Gi}}", ""), &Config::default());
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("container \"db\"") && m[0].contains("resources.limits.memory"), "{}", m[0]);
        let m = messages(&with("{}", ""), &Config::default());
        assert!(m[0].contains("resources.requests.cpu, resources.requests.memory, resources.limits.memory"), "{}", m[0]);
    }

    #[test]
    fn guaranteed_needs_limits_equal_to_requests() {
        let cfg = Config {
            qos: Qos::Guaranteed,
            ..Config::default()
        };
        let m = messages(&with(COMPLETE, ""), &cfg);
        assert!(m[0].contains("resources.limits.cpu"), "{}", m[0]);
        let m = messages(&with("{requests: {cpu: 1, memory: 1Gi}, limits: {cpu: 2, memory: 1Gi}}", ""), &cfg);
        assert!(m[0].contains("resources.requests.cpu equal to resources.limits.cpu"), "{}", m[0]);
        assert!(messages(&with("{requests: {cpu: 1, memory: 1Gi}, limits: {cpu: 1, memory: 1Gi}}", ""), &cfg).is_empty());
    }

    #[test]
    fn sidecars_always_count_and_init_containers_only_when_asked() {
        let sidecar = "{name: proxy, image: p, restartPolicy: Always, resources: {}}";
        assert_eq!(messages(&with(COMPLETE, sidecar), &Config::default()).len(), 1);
        let init = "{name: migrate, image: m}";
        assert!(messages(&with(COMPLETE, init), &Config::default()).is_empty());
        let cfg = Config {
            init_containers: true,
            ..Config::default()
        };
        assert!(messages(&with(COMPLETE, init), &cfg)[0].contains("\"migrate\""));
    }
}
