//! `volume-growth`: raising a claim template's storage in the manifest grows the database's disks.
//!
//! Why: a StatefulSet's claim templates are immutable, so the one-line manifest edit a team makes
//! when a disk fills up (`storage: 1Gi` to `2Gi`) is refused by the apiserver, by `kubectl apply`,
//! server-side apply and GitOps tools alike. Today every team resizes each claim by hand,
//! re-creates the StatefulSet with `--cascade=orphan` and hopes nobody scales in between.
//!
//! On an UPDATE whose only claim-template change is a larger `resources.requests.storage`
//! (templates matched by name), the mutating webhook puts the stored size back, so that the
//! apiserver accepts the rest of the update, and records the requested sizes on the object
//! (`stateful-guard.io/claim-sizes: data=2Gi`). A claim the StatefulSet controller creates later
//! (a scale-up) gets the recorded size, and with `serve --grow-volumes` the leader resizes the
//! existing claims. The webhook itself writes nothing (`sideEffects: None`; a dry run changes
//! nothing). A template that shrinks, or whose StorageClass does not allow expansion, is refused
//! with what to do. Any other claim-template change is left to the apiserver.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec};

use super::{Context, Mutation, MutationRule, Operation, patch};
use crate::claim_sizes::SIZES_ANNOTATION;
use crate::claim_sizes::{bytes, recorded_sizes, storage};
use crate::cluster::{ClaimOwner, ClusterView};

/// Only an action (default `mutate`).
pub type Config = super::ActionOnly<super::MutateByDefault>;

/// A template's spec as JSON, without its storage request and, when the update leaves it out,
/// its class (which `fast-storage-class` keeps): what must not differ for a pure growth.
fn rest_of(spec: Option<&PersistentVolumeClaimSpec>, drop_class: bool) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let Some(requests) = value
        .pointer_mut("/resources/requests")
        .and_then(|r| r.as_object_mut())
    {
        requests.remove("storage");
    }
    if drop_class && let Some(spec) = value.as_object_mut() {
        spec.remove("storageClassName");
    }
    value
}

/// The class a template's claims use: its own, or the cluster's default.
fn class_of(spec: Option<&PersistentVolumeClaimSpec>, cluster: &dyn ClusterView) -> Option<String> {
    match spec.and_then(|s| s.storage_class_name.as_deref()) {
        Some(class) => Some(class.to_owned()),
        None => cluster
            .default_storage_class()
            .and_then(|c| c.metadata.name.clone()),
    }
}

/// The growth an UPDATE asks for, if it asks for one.
fn growth(new: &StatefulSet, old: &StatefulSet, cluster: &dyn ClusterView) -> Mutation {
    let (Some(new_templates), Some(old_templates)) = (
        new.spec.volume_claim_templates.as_deref(),
        old.spec.volume_claim_templates.as_deref(),
    ) else {
        return Mutation::none();
    };
    if new_templates.len() != old_templates.len() {
        return Mutation::none();
    }
    let name = |t: &PersistentVolumeClaim| t.metadata.name.clone().unwrap_or_default();
    let stored: BTreeMap<String, &PersistentVolumeClaim> =
        old_templates.iter().map(|t| (name(t), t)).collect();
    let mut recorded: BTreeMap<String, String> =
        recorded_sizes(&old.metadata).into_iter().collect();
    let mut ops = Vec::new();
    let mut grown = Vec::new();
    let mut notes = Vec::new();
    for (i, template) in new_templates.iter().enumerate() {
        let template_name = name(template);
        let Some(before) = stored.get(&template_name) else {
            return Mutation::none();
        };
        let (Some(wanted), Some(was)) = (
            storage(template.spec.as_ref()),
            storage(before.spec.as_ref()),
        ) else {
            return Mutation::none();
        };
        if wanted == was {
            // The stored size again, below a recorded one (a rollback to the manifest from
            // before the growth): the template does not change, so the update goes through as
            // the apiserver would take it, and the claims keep the recorded size.
            if let Some(size) = recorded.get(&template_name)
                && bytes(size) > bytes(wanted)
            {
                notes.push(format!(
                    "claim template {template_name:?} asks for {wanted}, but its claims were grown to {size} ({SIZES_ANNOTATION}): a PersistentVolumeClaim cannot shrink, so they stay {size} and new replicas get {size}; set {size} in the manifest"
                ));
            }
            continue;
        }
        // Only for a size that changed (not on every UPDATE): the rest of the template, as JSON.
        let drop_class = template
            .spec
            .as_ref()
            .is_none_or(|s| s.storage_class_name.is_none());
        let same_rest = rest_of(template.spec.as_ref(), drop_class)
            == rest_of(before.spec.as_ref(), drop_class)
            && template.metadata.name == before.metadata.name
            && template.metadata.labels == before.metadata.labels
            && template.metadata.annotations == before.metadata.annotations;
        if !same_rest {
            // Another change besides the size: the apiserver decides, as it always has.
            return Mutation::none();
        }
        let (Some(wanted_bytes), Some(was_bytes)) = (bytes(wanted), bytes(was)) else {
            return Mutation::none();
        };
        let floor = recorded
            .get(&template_name)
            .and_then(|r| bytes(r))
            .unwrap_or(was_bytes)
            .max(was_bytes);
        if wanted_bytes < floor {
            let current = recorded.get(&template_name).map_or(was, String::as_str);
            return Mutation::refuse(format!(
                "claim template {template_name:?} of StatefulSet {}: storage {wanted} is smaller than {current}: a PersistentVolumeClaim cannot shrink; keep {current} (or larger) in the manifest",
                new.metadata.name.as_deref().unwrap_or("?")
            ));
        }
        if cluster.storage_classes_known()
            && let Some(class) = class_of(before.spec.as_ref(), cluster)
            && let Some(sc) = cluster.storage_class(&class)
            && sc.allow_volume_expansion != Some(true)
        {
            return Mutation::refuse(format!(
                "claim template {template_name:?}: StorageClass {class:?} does not allow volume expansion, so its claims cannot grow to {wanted}: if its CSI driver supports expansion, enable it with `kubectl patch storageclass {class} -p '{{\"allowVolumeExpansion\": true}}'`, then apply again"
            ));
        }
        let index = i.to_string();
        match patch::replace(
            &[
                "spec",
                "volumeClaimTemplates",
                &index,
                "spec",
                "resources",
                "requests",
                "storage",
            ],
            &was,
        ) {
            Ok(op) => ops.push(op),
            Err(_) => return Mutation::none(),
        }
        if recorded.get(&template_name).map(String::as_str) != Some(wanted) {
            grown.push(format!("{template_name} to {wanted}"));
        }
        recorded.insert(template_name, wanted.to_owned());
    }
    // An update that drops the record (a `replace` of the manifest) keeps it.
    let value = recorded
        .iter()
        .map(|(t, s)| format!("{t}={s}"))
        .collect::<Vec<_>>()
        .join(",");
    let carried = new
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIZES_ANNOTATION));
    if !recorded.is_empty() && carried != Some(&value) {
        let op = match &new.metadata.annotations {
            Some(_) => patch::set(
                &["metadata", "annotations", SIZES_ANNOTATION],
                carried.is_some(),
                &value,
            ),
            None => patch::add_creating(&["metadata"], &["annotations", SIZES_ANNOTATION], &value),
        };
        if let Ok(op) = op {
            ops.push(op);
        }
    }
    if ops.is_empty() {
        return Mutation {
            notes,
            ..Mutation::none()
        };
    }
    let name = new.metadata.name.as_deref().unwrap_or("?");
    let summary = if grown.is_empty() {
        format!("kept the stored claim templates and the recorded sizes ({value})")
    } else {
        format!(
            "claim templates grow: {} (recorded in {SIZES_ANNOTATION}; the stored templates keep their size, being immutable). New replicas' claims get the new size; existing claims are resized by `serve --grow-volumes`, or by hand: kubectl patch pvc <template>-{name}-<ordinal> -p '{{\"spec\":{{\"resources\":{{\"requests\":{{\"storage\":\"SIZE\"}}}}}}}}'",
            grown.join(", ")
        )
    };
    Mutation {
        ops,
        summary,
        notes,
        refusal: None,
    }
}

/// What a claim the StatefulSet controller creates gets: the size recorded for its template when
/// it is larger than what the stored template says (a scale-up after a growth).
pub fn claim_size(pvc: &PersistentVolumeClaim, owner: &ClaimOwner) -> Mutation {
    let Some(size) = owner.size.as_deref() else {
        return Mutation::none();
    };
    let current = storage(pvc.spec.as_ref());
    if current.and_then(bytes) >= bytes(size) {
        return Mutation::none();
    }
    let op = match current {
        Some(_) => patch::replace(&["spec", "resources", "requests", "storage"], &size),
        None => return Mutation::none(),
    };
    match op {
        Ok(op) => Mutation {
            ops: vec![op],
            summary: format!(
                "set storage {size}, the size recorded for claim template {:?} of StatefulSet {} ({SIZES_ANNOTATION})",
                owner.template, owner.statefulset
            ),
            notes: vec![],
            refusal: None,
        },
        Err(_) => Mutation::none(),
    }
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct VolumeGrowth;

impl MutationRule for VolumeGrowth {
    type Config = Config;
    fn mutate(
        sts: &StatefulSet,
        _config: &Config,
        _provided: &super::Provided,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        match (ctx.operation, ctx.old) {
            (Operation::Update, Some(old)) => Ok(growth(sts, old, ctx.cluster)),
            _ => Ok(Mutation::none()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::testing::{apply, basic_sts, ctx};
    use k8s_openapi::api::storage::v1::StorageClass;

    fn with_size(sts: &StatefulSet, size: &str) -> StatefulSet {
        let mut sts = sts.clone();
        let spec = sts.spec.volume_claim_templates.as_mut().unwrap()[0]
            .spec
            .as_mut()
            .unwrap();
        spec.resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(
                "storage".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()),
            );
        sts
    }

    fn update<'a>(cluster: &'a Snapshot, old: &'a StatefulSet) -> Context<'a> {
        Context {
            old: Some(old),
            ..ctx(Operation::Update, cluster)
        }
    }

    fn class(name: &str, expand: Option<bool>) -> StorageClass {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "csi.example.com", "allowVolumeExpansion": expand
        }))
        .unwrap()
    }

    #[test]
    fn a_larger_size_is_recorded_and_the_stored_one_kept() {
        let cluster = Snapshot::unknown();
        let old = basic_sts();
        let new = with_size(&old, "2Gi");
        let m = VolumeGrowth::mutate(&new, &Config::default(), &Default::default(), &update(&cluster, &old))
            .unwrap();
        assert!(m.refusal.is_none());
        let patched = apply(&new, &m);
        assert_eq!(storage(patched.spec.volume_claim_templates.as_ref().unwrap()[0].spec.as_ref()), Some("1Gi"));
        assert_eq!(recorded_sizes(&patched.metadata), [("data".into(), "2Gi".into())]);
        assert!(m.summary.contains("data to 2Gi"), "{}", m.summary);
        // A later apply that sends 2Gi again: the same patch, nothing new to say.
        let stored = patched;
        let again = with_size(&stored, "2Gi");
        let m = VolumeGrowth::mutate(&again, &Config::default(), &Default::default(), &update(&cluster, &stored))
            .unwrap();
        let patched = apply(&again, &m);
        assert_eq!(storage(patched.spec.volume_claim_templates.as_ref().unwrap()[0].spec.as_ref()), Some("1Gi"));
        assert!(!m.summary.contains("grow:"), "{}", m.summary);
        // Below the recorded size is a shrink.
        let smaller = with_size(&stored, "1500Mi");
        let m = VolumeGrowth::mutate(&smaller, &Config::default(), &Default::default(), &update(&cluster, &stored))
            .unwrap();
        assert!(m.refusal.unwrap().contains("cannot shrink"));
        // The stored size itself (a rollback to the manifest from before the growth): the
        // template does not change, so the update is not blocked; it is told the claims stay.
        let rollback = with_size(&stored, "1Gi");
        let m = VolumeGrowth::mutate(&rollback, &Config::default(), &Default::default(), &update(&cluster, &stored))
            .unwrap();
        assert!(m.refusal.is_none());
        assert!(m.ops.is_empty(), "the annotation is carried: {:?}", m.ops);
        assert!(m.notes[0].contains("cannot shrink, so they stay 2Gi"), "{:?}", m.notes);
    }

    #[test]
    fn a_shrink_or_a_class_without_expansion_is_refused_and_other_changes_left_alone() {
        let cluster = Snapshot::unknown();
        let old = basic_sts();
        let m = VolumeGrowth::mutate(&with_size(&old, "500Mi"), &Config::default(), &Default::default(), &update(&cluster, &old))
            .unwrap();
        assert!(m.refusal.as_deref().unwrap().contains("smaller than 1Gi"));
        let fixed = Snapshot::known(vec![], vec![class("standard", None)], vec![]);
        let m = VolumeGrowth::mutate(&with_size(&old, "2Gi"), &Config::default(), &Default::default(), &update(&fixed, &old))
            .unwrap();
        let why = m.refusal.unwrap();
        assert!(why.contains("\"standard\" does not allow volume expansion") && why.contains("kubectl patch storageclass standard"), "{why}");
        let growing = Snapshot::known(vec![], vec![class("standard", Some(true))], vec![]);
        let m = VolumeGrowth::mutate(&with_size(&old, "2Gi"), &Config::default(), &Default::default(), &update(&growing, &old))
            .unwrap();
        assert!(m.refusal.is_none() && !m.ops.is_empty());
        // Another change to the template (its access modes) besides the size: not ours.
        let mut other = with_size(&old, "2Gi");
        other.spec.volume_claim_templates.as_mut().unwrap()[0].spec.as_mut().unwrap().access_modes =
            Some(vec!["ReadWriteMany".into()]);
        assert!(VolumeGrowth::mutate(&other, &Config::default(), &Default::default(), &update(&cluster, &old))
            .unwrap()
            .is_empty());
        // A CREATE is not a growth.
        assert!(VolumeGrowth::mutate(&old, &Config::default(), &Default::default(), &ctx(Operation::Create, &cluster))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_new_replicas_claim_gets_the_recorded_size() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data-db-3"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap();
        let owner = ClaimOwner {
            statefulset: "db".into(),
            template: "data".into(),
            size: Some("2Gi".into()),
        };
        let m = claim_size(&pvc, &owner);
        let patched = apply(&pvc, &m);
        assert_eq!(storage(patched.spec.as_ref()), Some("2Gi"));
        let none = ClaimOwner { size: None, ..owner };
        assert!(claim_size(&pvc, &none).is_empty());
    }
}
