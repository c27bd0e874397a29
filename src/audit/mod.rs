//! The background audit: what already runs, evaluated as the webhooks would admit it.
//!
//! An admission webhook sees only what is created or changed after it is installed. `serve
//! --background-audit=INTERVAL` re-evaluates every StatefulSet and PVC the caches hold (the same
//! evaluation as `check --cluster`, on the same reflector caches admission reads, no extra API
//! call) every interval, and shortly after any of them (or a PDB) changes. Every replica scans and serves
//! the results: `GET /report` (JSON in `check`'s format) and the gauge
//! `stateful_guard_existing_findings{namespace,rule,action}`.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde::Serialize;

pub mod lease;
pub mod reports;

use crate::check::evaluate::{Origin, evaluate_all};
use crate::check::{Document, Report};
use crate::cluster::ClusterView;
use crate::cluster::cache::ClusterCache;
use crate::metrics::{ExistingLabels, MAX_AUDIT_NAMESPACES, Metrics};
use crate::policy::source::PolicyStore;

/// After a change, wait this long for more (a rollout changes many objects) before rescanning.
const SETTLE: Duration = Duration::from_secs(2);
/// Never two scans closer than this, however often objects change.
const MIN_GAP: Duration = Duration::from_secs(10);

/// One completed scan.
#[derive(Debug, Clone, Serialize)]
pub struct Scan {
    /// When it completed, in seconds since the Unix epoch.
    pub completed: u64,
    /// How long it took, in seconds.
    pub duration_seconds: f64,
    #[serde(flatten)]
    pub report: Report,
}

/// The last completed scan, shared by the scanner and the `/report` handler.
#[derive(Default)]
pub struct Results {
    last: ArcSwapOption<Scan>,
}

impl Results {
    pub fn last(&self) -> Option<Arc<Scan>> {
        self.last.load_full()
    }
}

/// Evaluates `statefulsets` and `pvcs` under `policies` as a CREATE, against `cluster`.
pub fn scan(
    statefulsets: &[Arc<StatefulSet>],
    pvcs: &[Arc<PersistentVolumeClaim>],
    cluster: &dyn ClusterView,
    policies: &crate::policy::PolicySet,
) -> Report {
    let mut documents: Vec<Document> = Vec::with_capacity(statefulsets.len() + pvcs.len());
    let values = statefulsets
        .iter()
        .map(|s| serde_json::to_value(s.as_ref()))
        .chain(pvcs.iter().map(|p| serde_json::to_value(p.as_ref())));
    for value in values {
        match value {
            Ok(value) => documents.push(Document {
                path: crate::check::cluster::CLUSTER_FILE.to_owned(),
                index: documents.len() + 1,
                value,
            }),
            Err(error) => tracing::warn!(%error, "background audit: an object does not encode"),
        }
    }
    match evaluate_all(&documents, policies, "default", cluster, Origin::Cluster) {
        Ok((report, _)) => report,
        // Origin::Cluster reports objects that do not evaluate instead of failing.
        Err(error) => {
            tracing::error!(%error, "background audit scan failed");
            Report {
                objects: vec![],
                summary: Default::default(),
            }
        }
    }
}

/// Sets the findings gauge from `report`: one series per (namespace, rule, action), the
/// namespaces past [`MAX_AUDIT_NAMESPACES`] summed under `other`; series of the previous scan
/// that are gone are removed.
pub fn record(metrics: &Metrics, report: &Report) {
    let mut counts: HashMap<ExistingLabels, i64> = HashMap::new();
    let mut namespaces: BTreeMap<&str, ()> = BTreeMap::new();
    for object in &report.objects {
        for finding in &object.findings {
            let named = namespaces.len() < MAX_AUDIT_NAMESPACES
                || namespaces.contains_key(object.namespace.as_str());
            if named {
                namespaces.insert(&object.namespace, ());
            }
            let action = finding.action;
            *counts
                .entry(ExistingLabels {
                    namespace: if named {
                        object.namespace.clone()
                    } else {
                        "other".to_owned()
                    },
                    rule: finding.rule.as_str(),
                    action: action.as_str(),
                })
                .or_default() += 1;
        }
    }
    metrics.existing_findings.clear();
    for (labels, count) in counts {
        metrics.existing_findings.get_or_create(&labels).set(count);
    }
    metrics.audit_objects.set(report.objects.len() as i64);
}

/// Writes each scan's PolicyReports while this replica holds the Lease.
pub struct Writer {
    pub client: kube::Client,
    pub leadership: lease::Leadership,
    /// The last outcome said in the log: each is said once, not every scan.
    said: Option<String>,
}

/// One write round's budget.
const WRITE_BUDGET: Duration = Duration::from_secs(60);

impl Writer {
    pub fn new(client: kube::Client, leadership: lease::Leadership) -> Self {
        Self {
            client,
            leadership,
            said: None,
        }
    }

    async fn write(&mut self, report: &Report) {
        if !self.leadership.is_leader() {
            return;
        }
        let outcome =
            tokio::time::timeout(WRITE_BUDGET, reports::write(&self.client, report)).await;
        let (say, line) = match outcome {
            Ok(Ok(reports::Written::Current { changed })) => {
                if changed > 0 {
                    tracing::info!(changed, "PolicyReports updated");
                }
                (false, "ok".to_owned())
            }
            Ok(Ok(reports::Written::NoCrd)) => (
                true,
                "the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is not installed: no PolicyReports are written (install deploy/components/policy-reports); /report and the metrics still have every result".to_owned(),
            ),
            Ok(Ok(reports::Written::Forbidden)) => (
                true,
                "not allowed to write PolicyReports (the RBAC of deploy/components/policy-reports is not installed); /report and the metrics still have every result".to_owned(),
            ),
            Ok(Err(error)) => (true, format!("writing PolicyReports failed: {error}; retrying after the next scan")),
            Err(_) => (true, format!("writing PolicyReports took longer than {WRITE_BUDGET:?}; retrying after the next scan")),
        };
        if say && self.said.as_deref() != Some(line.as_str()) {
            tracing::warn!("{line}");
        }
        self.said = Some(line);
    }
}

/// Scans every `interval`, and [`SETTLE`] after a change (at most every [`MIN_GAP`]), until the
/// process ends. Each scan runs off the async workers. With a `writer`, the replica that holds
/// the Lease also writes the PolicyReports.
pub async fn run(
    cache: ClusterCache,
    policies: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    interval: Duration,
    results: Arc<Results>,
    mut writer: Option<Writer>,
) {
    let Some(changes) = cache.changes() else {
        tracing::error!("background audit: the caches do not keep what it evaluates; not running");
        return;
    };
    while !cache.is_synced() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The initial lists notified too: the first scan covers them.
    let _ = tokio::time::timeout(Duration::ZERO, changes.notified()).await;
    tracing::info!(?interval, "background audit started");
    loop {
        let started = Instant::now();
        let (cache_for_scan, set) = (cache.clone(), policies.current());
        let report = match tokio::task::spawn_blocking(move || {
            let (statefulsets, pvcs) = (cache_for_scan.statefulsets(), cache_for_scan.pvcs());
            scan(&statefulsets, &pvcs, &cache_for_scan, &set)
        })
        .await
        {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(%error, "background audit scan panicked");
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        let took = started.elapsed();
        let completed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        record(&metrics, &report);
        metrics.audit_last_completed.set(completed as i64);
        metrics.audit_duration.set(took.as_secs_f64());
        tracing::info!(
            objects = report.summary.objects,
            denied = report.summary.denied,
            mutated = report.summary.mutated,
            findings = report.summary.findings,
            seconds = took.as_secs_f64(),
            "background audit scan completed"
        );
        let scan = Arc::new(Scan {
            completed,
            duration_seconds: took.as_secs_f64(),
            report,
        });
        results.last.store(Some(scan.clone()));
        if let Some(writer) = &mut writer {
            writer.write(&scan.report).await;
        }
        // The next scan: at the interval, or after a change (once it settles, and never
        // within MIN_GAP of this one), whichever comes first. Changes during the scan are picked
        // up by the next one.
        let deadline = tokio::time::Instant::from(started + took.max(interval));
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = changes.notified() => {
                let settled = tokio::time::Instant::now() + SETTLE;
                let gap = tokio::time::Instant::from(started + MIN_GAP);
                tokio::time::sleep_until(settled.max(gap).min(deadline.max(settled))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;
    use crate::rules::testing::basic_sts;

    fn gauge(metrics: &Metrics, namespace: &str, rule: &'static str, action: &'static str) -> i64 {
        metrics
            .existing_findings
            .get_or_create(&ExistingLabels {
                namespace: namespace.into(),
                rule,
                action,
            })
            .get()
    }

    #[test]
    fn a_scan_finds_what_already_runs_and_a_fix_clears_it_at_the_next_scan() {
        let policies = PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap();
        let metrics = Metrics::new();
        let mut sts = basic_sts();
        sts.spec.pod_management_policy = Some("OrderedReady".into());
        let statefulsets = vec![Arc::new(sts.clone())];
        let cluster = crate::cluster::Snapshot::known(vec![], vec![], vec![]);
        let report = scan(&statefulsets, &[], &cluster, &policies);
        assert_eq!(report.summary.objects, 1);
        let object = &report.objects[0];
        assert_eq!(
            (object.namespace.as_str(), object.name.as_str()),
            ("default", "db")
        );
        assert!(!object.allowed, "no PDB, no readiness probe: {object:?}");
        assert!(!object.patch.is_empty(), "it would be mutated");
        record(&metrics, &report);
        assert_eq!(gauge(&metrics, "default", "require-pdb", "enforce"), 1);
        // The PDB is created: the next scan has no require-pdb finding, and its series is gone.
        let pdb = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "db"}}}
        }))
        .unwrap();
        let cluster = crate::cluster::Snapshot::known(vec![pdb], vec![], vec![]);
        let report = scan(&statefulsets, &[], &cluster, &policies);
        assert!(
            report.objects[0]
                .findings
                .iter()
                .all(|f| f.rule != crate::rules::RuleId::RequirePdb)
        );
        record(&metrics, &report);
        let text = metrics.encode();
        assert!(!text.contains("rule=\"require-pdb\""), "{text}");
        assert!(text.contains("rule=\"require-readiness-probe\""), "{text}");
    }

    #[test]
    fn the_findings_gauge_names_a_bounded_number_of_namespaces() {
        let policies = PolicySet::embedded_default(vec![]).unwrap();
        let statefulsets: Vec<Arc<StatefulSet>> = (0..MAX_AUDIT_NAMESPACES + 20)
            .map(|i| {
                let mut sts = basic_sts();
                sts.metadata.namespace = Some(format!("ns-{i:04}"));
                Arc::new(sts)
            })
            .collect();
        let cluster = crate::cluster::Snapshot::known(vec![], vec![], vec![]);
        let report = scan(&statefulsets, &[], &cluster, &policies);
        let metrics = Metrics::new();
        record(&metrics, &report);
        let text = metrics.encode();
        let namespaces: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("stateful_guard_existing_findings{"))
            .filter_map(|l| l.split("namespace=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            namespaces.len(),
            MAX_AUDIT_NAMESPACES + 1,
            "the rest as other"
        );
        assert!(namespaces.contains("other"));
        assert_eq!(gauge(&metrics, "other", "require-pdb", "enforce"), 20);
    }
}
