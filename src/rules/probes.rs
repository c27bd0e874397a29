//! What the probe rules share: which containers serve traffic or must stay alive.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, Probe};

use super::{Context, Finding, Part, RuleId, display_name};

/// Every regular container, and every init container with `restartPolicy: Always` (a sidecar,
/// which runs for the pod's lifetime and is probed like a regular container).
pub fn long_running_containers(sts: &StatefulSet) -> impl Iterator<Item = &Container> {
    let pod = sts.spec.template.spec.as_ref();
    let sidecars = pod
        .and_then(|p| p.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    pod.map(|p| p.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .chain(sidecars)
}

/// The long-running containers that serve: each declares a `containerPort`, or is the pod's
/// only long-running container. A sidecar that exposes no port (a config reloader, a log
/// shipper, a backup agent) receives no traffic from a Service, so a readiness probe on it
/// protects nobody, and an official chart that ships one is not wrong.
pub fn serving_containers(sts: &StatefulSet) -> impl Iterator<Item = &Container> {
    let only = long_running_containers(sts).nth(1).is_none();
    long_running_containers(sts)
        .filter(move |c| only || c.ports.as_ref().is_some_and(|p| !p.is_empty()))
}

/// One finding per serving container that lacks the probe `get` returns, with the container.
pub fn missing<'s>(
    sts: &'s StatefulSet,
    ctx: &Context,
    rule: RuleId,
    field: &'static str,
    why: &'static str,
    get: fn(&Container) -> Option<&Probe>,
) -> impl Iterator<Item = (&'s Container, Finding)> {
    let name = display_name(&sts.metadata, ctx.namespace);
    serving_containers(sts)
        .filter(move |c| get(c).is_none())
        .map(move |c| {
            let finding = Finding::new(
                rule,
                Part::Container(c.name.clone()),
                format!(
                    "container {:?} of StatefulSet {name} has no {field}: add one to spec.template.spec containers[name={:?}].{field} ({why})",
                    c.name, c.name
                ),
            );
            (c, finding)
        })
}
