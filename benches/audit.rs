//! The background audit at cluster scale: `cargo bench --bench audit`. One scan of 5,000
//! StatefulSets (the zookeeper example, in 100 namespaces) and their 15,000 claims, with 2,500
//! PDBs cached, evaluated in pages of `audit::PAGE` as the webhook lists them: its time (the
//! median of 5 scans) and its memory, counted by the allocator (the cluster view, and the peak a
//! scan adds: one page of objects and the verdicts it keeps). Then the caches at the performance
//! issue's scale (10,000 PDBs, 2,000 namespaces, 50 StorageClasses), whole and as kept.
//! A benchmark, not a test: it prints, and asserts nothing.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use stateful_guard::cluster::Snapshot;
use stateful_guard::policy::PolicySet;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn grew(by: i64) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as i64);
        // SAFETY: the caller's contract for `layout` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as i64 - layout.size() as i64);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const STATEFULSETS: usize = 5_000;
const NAMESPACES: usize = 100;

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Page `p` of the cluster's StatefulSets (and their claims), as a list response would hold it.
fn page(template: &StatefulSet, p: usize) -> (Vec<StatefulSet>, Vec<PersistentVolumeClaim>) {
    let per_page = stateful_guard::audit::PAGE as usize;
    let mut statefulsets = Vec::with_capacity(per_page);
    let mut pvcs = Vec::with_capacity(per_page * 3);
    for i in p * per_page..((p + 1) * per_page).min(STATEFULSETS) {
        let (name, namespace) = names(i);
        let mut sts = template.clone();
        sts.metadata.name = Some(name.clone());
        sts.metadata.namespace = Some(namespace.clone());
        for ordinal in 0..3 {
            pvcs.push(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("datadir-{name}-{ordinal}"), "namespace": namespace},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                             "resources": {"requests": {"storage": "10Gi"}}}
                }))
                .unwrap(),
            );
        }
        statefulsets.push(sts);
    }
    (statefulsets, pvcs)
}

fn names(i: usize) -> (String, String) {
    (format!("zk-{i}"), format!("team-{}", i % NAMESPACES))
}

fn main() {
    let review: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/admission-reviews/statefulset-zookeeper-create.mutating.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let template: StatefulSet =
        serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    // The cluster view as the caches keep it (`cluster::cached`): PDBs, and StatefulSets' claim
    // templates.
    let mut pdbs = Vec::new();
    let mut statefulsets = Vec::new();
    for i in 0..STATEFULSETS {
        let (name, namespace) = names(i);
        if i % 2 == 0 {
            let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "zk"}}}
            }))
            .unwrap();
            pdbs.push(pdb);
        }
        let mut sts = template.clone();
        sts.metadata.name = Some(name);
        sts.metadata.namespace = Some(namespace);
        statefulsets.push(sts);
    }
    let cluster = Snapshot::known(pdbs, vec![], vec![]).with_statefulsets(statefulsets);
    let cached = LIVE.load(Ordering::Relaxed) - before;
    let policies = PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap();
    let pages = STATEFULSETS.div_ceil(stateful_guard::audit::PAGE as usize);

    let mut times = Vec::new();
    let mut added = 0;
    let mut summary = None;
    for _ in 0..5 {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let started = Instant::now();
        let mut tally = stateful_guard::audit::Tally::default();
        for p in 0..pages {
            let (statefulsets, pvcs) = page(&template, p);
            tally.add_page(&statefulsets, &cluster, &policies);
            tally.add_page(&pvcs, &cluster, &policies);
        }
        let finished = tally.finish();
        times.push(started.elapsed());
        added = added.max(PEAK.load(Ordering::Relaxed) - base);
        summary = Some((
            finished.report.summary.clone(),
            finished.report.objects.len(),
            finished.omitted,
        ));
        drop(finished);
    }
    times.sort();
    let (summary, kept, omitted) = summary.unwrap();
    println!(
        "background audit scan: {STATEFULSETS} StatefulSets and {} PVCs in {NAMESPACES} namespaces, pages of {}: {} objects evaluated, {kept} kept in the report and {omitted} counted only ({} findings)",
        STATEFULSETS * 3,
        stateful_guard::audit::PAGE,
        summary.objects,
        summary.findings
    );
    println!(
        "  time: median {:.0} ms (min {:.0}, max {:.0}), on one core",
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3
    );
    println!(
        "  heap: the cluster view (2,500 PDBs, 5,000 StatefulSets as kept) {:.1} MiB; a scan adds at most {:.1} MiB while it runs (one page and the report)",
        mib(cached),
        mib(added)
    );

    cluster_view_at_scale();
}

/// The cache's memory at the performance issue's scale: 10,000 PDBs, 2,000 namespaces and 50
/// StorageClasses as the API returns them (labels, managedFields, status): the decoded objects
/// alone, then as the caches keep them (`cluster::cached`, projections of the cluster-wide kinds).
fn cluster_view_at_scale() {
    let pdb = |i: usize| -> PodDisruptionBudget {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("db-{i}"), "namespace": format!("team-{}", i % 2000),
                "uid": "8f9a6a2c-7f0e-4c43-9b1e-2f7d3b0c1a11", "resourceVersion": "123456",
                "creationTimestamp": "2026-11-01T10:00:00Z",
                "labels": {"app.kubernetes.io/name": "db", "app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "db", "meta.helm.sh/release-namespace": "team"},
                "managedFields": [{"manager": "helm", "operation": "Update", "apiVersion": "policy/v1",
                    "time": "2026-11-01T10:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app.kubernetes.io/name": {}}},
                                 "f:spec": {"f:maxUnavailable": {}, "f:selector": {}}}}]
            },
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "db", "app.kubernetes.io/instance": format!("db-{i}")}}},
            "status": {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1, "expectedPods": 3, "observedGeneration": 1}
        }))
        .unwrap()
    };
    let namespace = |i: usize| -> k8s_openapi::api::core::v1::Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("team-{i}"), "labels": {"kubernetes.io/metadata.name": format!("team-{i}"), "tier": "db"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}}}]},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
        }))
        .unwrap()
    };
    let class = |i: usize| -> k8s_openapi::api::storage::v1::StorageClass {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("class-{i}"), "annotations": {"storageclass.kubernetes.io/is-default-class": if i == 0 { "true" } else { "false" }}},
            "provisioner": "ebs.csi.aws.com", "parameters": {"type": "gp3", "iops": "3000"},
            "reclaimPolicy": "Retain", "allowVolumeExpansion": true, "volumeBindingMode": "WaitForFirstConsumer"
        }))
        .unwrap()
    };
    let base = LIVE.load(Ordering::Relaxed);
    let pdbs: Vec<_> = (0..10_000).map(pdb).collect();
    let mut namespaces: Vec<_> = (0..2_000).map(namespace).collect();
    let mut classes: Vec<_> = (0..50).map(class).collect();
    println!(
        "cluster view, 10,000 PDBs, 2,000 namespaces, 50 StorageClasses, whole: {:.1} MiB of heap",
        mib(LIVE.load(Ordering::Relaxed) - base)
    );
    namespaces
        .iter_mut()
        .for_each(stateful_guard::cluster::namespace_projection);
    classes
        .iter_mut()
        .for_each(stateful_guard::cluster::storage_class_projection);
    let view = Snapshot::known(pdbs, classes, namespaces);
    println!(
        "cluster view, 10,000 PDBs, 2,000 namespaces, 50 StorageClasses, as the caches keep them (what cluster::cached keeps of a PDB, projections of the others): {:.1} MiB of heap",
        mib(LIVE.load(Ordering::Relaxed) - base)
    );
    drop(view);
}
