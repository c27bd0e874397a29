//! `parallel-pod-management`: create and restart a StatefulSet's pods in parallel.
//!
//! Why: with `OrderedReady`, pod N+1 starts only once pod N is Ready. A quorum-based database
//! whose readiness needs a quorum never comes back after all its pods die at once (a full
//! cluster restart): pod 0 waits for a quorum, and the other pods wait for pod 0.
//!
//! An `OrderedReady` the user wrote is a choice and stays, but on a StatefulSet of two or more
//! replicas it is exactly that deadlock, so the rule says so (a warning naming the one-line fix
//! and the opt-out annotation, which silences it). `podManagementPolicy: ""`, a chart's empty
//! value, is no choice: the apiserver defaults it as if it were absent.
use k8s_openapi::api::apps::v1::StatefulSet;

use super::explicit::{Provenance, provenance, provenance_in};
use super::{MutationRule, Context, Mutation, Operation, has_annotation, patch};

/// Opt-out annotation for apps that truly need ordered bootstrap:
/// `stateful-guard.io/pod-management-policy: OrderedReady`.
pub const OPT_OUT_ANNOTATION: &str = "stateful-guard.io/pod-management-policy";

/// Only an action (default `mutate`).
pub type Config = super::ActionOnly<super::MutateByDefault>;
/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct ParallelPodManagement;

impl MutationRule for ParallelPodManagement {
    type Config = Config;
    fn mutate(
        sts: &StatefulSet,
        _cfg: &Config,
        _earlier: &super::Provided,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        // podManagementPolicy is immutable: only CREATE.
        let spec = &sts.spec;
        if ctx.operation != Operation::Create
            || has_annotation(&sts.metadata, OPT_OUT_ANNOTATION, "OrderedReady")
        {
            return Ok(Mutation::none());
        }
        let current = spec.pod_management_policy.as_deref();
        if !matches!(current, None | Some("OrderedReady")) {
            return Ok(Mutation::none());
        }
        // OrderedReady is the default, so the value alone says nothing; but a server-side or
        // client-side apply tells us when the user wrote it, and then it stays.
        if provenance_in(ctx, &sts.metadata, &["spec", "podManagementPolicy"]) == Provenance::UserSet
            && !written_empty(ctx, &sts.metadata)
        {
            let replicas = spec.replicas.unwrap_or(1);
            if replicas < 2 {
                return Ok(Mutation::none());
            }
            let name = sts.metadata.name.as_deref().unwrap_or("NAME");
            return Ok(Mutation::note(format!(
                "podManagementPolicy OrderedReady kept as written, but with {replicas} replicas it can deadlock a full restart: pod 1 waits for pod 0 to be Ready while pod 0 waits for a quorum of its peers. Fix: set spec.podManagementPolicy: Parallel (immutable: kubectl delete statefulset {name} --cascade=orphan, then apply; pods and volumes stay). If ordered start-up is really needed, say so with the annotation {OPT_OUT_ANNOTATION}: OrderedReady"
            )));
        }
        Ok(Mutation {
            ops: vec![patch::set(
                &["spec", "podManagementPolicy"],
                current.is_some(),
                &"Parallel",
            )?],
            summary: format!(
                "set podManagementPolicy Parallel so the pods can all restart together after a full outage (opt out with annotation {OPT_OUT_ANNOTATION}: OrderedReady)"
            ),
            notes: vec![],
            refusal: None,
        })
    }
    /// On UPDATE of a StatefulSet this rule changed at CREATE: keeps `Parallel` when the update
    /// sends the default back (`kubectl replace` of the original manifest, a PUT by a GitOps tool).
    /// `podManagementPolicy` is immutable, so without this the update fails. `OrderedReady` that the
    /// user wrote (in the applied manifest, or owned by a server-side applier) or the opt-out
    /// annotation is a choice: it stays, and the apiserver reports the real conflict.
    fn keep(
        new: &StatefulSet,
        old: &StatefulSet,
        _config: Option<&Config>,
    ) -> Result<Mutation, serde_json::Error> {
        let incoming = new.spec.pod_management_policy.as_deref();
        if old.spec.pod_management_policy.as_deref() != Some("Parallel")
            || !matches!(incoming, None | Some("OrderedReady"))
            || has_annotation(&new.metadata, OPT_OUT_ANNOTATION, "OrderedReady")
            || provenance(&new.metadata, &["spec", "podManagementPolicy"]) == Provenance::UserSet
        {
            return Ok(Mutation::none());
        }
        Ok(Mutation {
            ops: vec![patch::set(
                &["spec", "podManagementPolicy"],
                incoming.is_some(),
                &"Parallel",
            )?],
            summary: "kept podManagementPolicy Parallel (set at creation; the field is immutable)"
                .into(),
            notes: vec![],
            refusal: None,
        })
    }
}

/// Whether the manifest wrote `podManagementPolicy: ""` (or null): the apiserver defaults that
/// exactly like an absent field, so it is no choice. Read from the manifest `check` was given,
/// or from a client-side apply's last-applied configuration (compact JSON, as kubectl writes
/// it).
fn written_empty(ctx: &Context, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    if let Some(manifest) = ctx.written {
        return manifest
            .pointer("/spec/podManagementPolicy")
            .is_some_and(|v| v.is_null() || v.as_str() == Some(""));
    }
    meta.annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/last-applied-configuration"))
        .is_some_and(|m| {
            m.contains(r#""podManagementPolicy":"""#) || m.contains(r#""podManagementPolicy":null"#)
        })
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::testing::{mutate, apply, basic_sts, ctx};

    #[test]
    fn ordered_ready_default_becomes_parallel() {
        let cluster = Snapshot::unknown();
        let obj = basic_sts();
        let m = mutate::<ParallelPodManagement>(&obj, &Config::default(), &ctx(Operation::Create, &cluster)).unwrap();
        let out = apply(&obj, &m);
        assert_eq!(out.spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert!(
            mutate::<ParallelPodManagement>(&out, &Config::default(), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn opt_out_annotation_keeps_ordered_ready() {
        let cluster = Snapshot::unknown();
        let mut obj = basic_sts();
        obj.metadata.annotations =
            Some([(OPT_OUT_ANNOTATION.to_string(), "OrderedReady".to_string())].into());
        assert!(
            mutate::<ParallelPodManagement>(&obj, &Config::default(), &ctx(Operation::Create, &cluster))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn explicitly_applied_ordered_ready_is_kept() {
        let cluster = Snapshot::unknown();
        // The StatefulSet as `kubectl apply` of `manifest` sends it, and what the rule makes of it.
        let applied = |manifest: &str| {
            let mut obj = basic_sts();
            obj.metadata.annotations = Some(
                [(
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    manifest.to_string(),
                )]
                .into(),
            );
            obj
        };
        let mutation = |obj: &StatefulSet| {
            mutate::<ParallelPodManagement>(obj, &Config::default(), &ctx(Operation::Create, &cluster))
                .unwrap()
        };
        let obj = applied(r#"{"spec":{"podManagementPolicy":"OrderedReady"}}"#);
        // Kept, with a warning naming the deadlock, the fix and the opt-out (3 replicas).
        let m = mutation(&obj);
        assert!(m.ops.is_empty());
        assert_eq!(m.notes.len(), 1);
        assert!(m.notes[0].contains("deadlock"), "{}", m.notes[0]);
        assert!(m.notes[0].contains("podManagementPolicy: Parallel"));
        assert!(m.notes[0].contains(OPT_OUT_ANNOTATION));
        // One replica cannot deadlock: nothing to say.
        let mut single = obj.clone();
        single.spec.replicas = Some(1);
        assert!(mutation(&single).is_empty());
        // A chart's empty value is no choice: changed like an absent field.
        let empty = applied(r#"{"spec":{"podManagementPolicy":""}}"#);
        assert_eq!(mutation(&empty).ops.len(), 1);
        // Same manifest without the field: the value was defaulted, so it is changed.
        let absent = applied(r#"{"spec":{"replicas":3}}"#);
        assert_eq!(mutation(&absent).ops.len(), 1);
    }

    #[test]
    fn never_on_update_the_field_is_immutable() {
        let cluster = Snapshot::unknown();
        assert!(
            mutate::<ParallelPodManagement>(
                &basic_sts(),
                &Config::default(),
                &ctx(Operation::Update, &cluster)
            )
            .unwrap()
            .is_empty()
        );
    }
}
