//! The background audit: what already runs, evaluated as the webhooks would admit it.
//!
//! An admission webhook sees only what is created or changed after it is installed. `serve
//! --background-audit=INTERVAL` re-evaluates every StatefulSet and PVC that exists (the same
//! evaluation as `check --cluster`, against the reflector caches admission reads; the objects
//! themselves are listed 200 at a time, so a scan holds one page, whatever the cluster's size)
//! every interval, and shortly after a StatefulSet or PDB changes. Every replica scans and serves
//! the results: `GET /report` (JSON in `check`'s format) and the gauge
//! `stateful_guard_existing_findings{namespace,rule,action}`.
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde::Serialize;

pub mod lease;
pub mod reports;

use kube::api::Api;

use crate::check::evaluate::{Origin, evaluate_document};
use crate::check::{Document, ObjectReport, Report, Summary};
use crate::cluster::ClusterView;
use crate::cluster::cache::ClusterCache;
use crate::cluster::pages::{PageError, Pages};
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
    /// Objects with something to report past the [`MAX_KEPT`] listed (the summary counts them).
    pub omitted_objects: usize,
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

/// Objects per list page: a scan holds one page of objects at a time, never the whole cluster.
/// A zookeeper StatefulSet decodes to tens of KiB, so a page of 200 cost about 17 MiB more of
/// the webhook's memory after a scan than a page of 50 (`cargo bench --bench apiserver`); 5,000
/// StatefulSets are then 100 list calls every interval.
pub const PAGE: u32 = 50;

/// Verdicts a scan keeps for /report and the PolicyReports; past it, objects are counted (in
/// the summary, the gauge and `omitted_objects`) but not kept, so a scan's memory is bounded
/// whatever the cluster's size.
pub const MAX_KEPT: usize = 1_000;

/// A scan in progress: the verdicts worth keeping (objects with a finding, a change it would
/// make, a note, or that could not be evaluated; [`MAX_KEPT`] at most), the totals over every
/// object, and the findings gauge's counts.
#[derive(Debug, Default)]
pub struct Tally {
    kept: Vec<ObjectReport>,
    omitted: usize,
    summary: Summary,
    counts: HashMap<ExistingLabels, i64>,
    namespaces: BTreeSet<String>,
}

/// A completed scan's results.
#[derive(Debug)]
pub struct Finished {
    pub report: Report,
    /// Objects worth reporting past [`MAX_KEPT`].
    pub omitted: usize,
    /// The findings gauge: by namespace ([`MAX_AUDIT_NAMESPACES`] by name, then `other`),
    /// rule and action.
    pub counts: HashMap<ExistingLabels, i64>,
}

impl Tally {
    /// Evaluates one page of objects (StatefulSets and PVCs, as the API returns them) as a
    /// CREATE, against `cluster`, under `policies`.
    pub fn add_page<T: Serialize>(
        &mut self,
        page: &[T],
        cluster: &dyn ClusterView,
        policies: &crate::policy::PolicySet,
    ) {
        for object in page {
            let value = match serde_json::to_value(object) {
                Ok(value) => value,
                Err(error) => {
                    tracing::warn!(%error, "background audit: an object does not encode");
                    continue;
                }
            };
            let doc = Document {
                path: crate::check::cluster::CLUSTER_FILE.to_owned(),
                line: 0,
                index: self.summary.objects + 1,
                value,
            };
            // Origin::Cluster reports an object that does not evaluate instead of failing.
            let Ok(Some((report, _))) =
                evaluate_document(&doc, policies, "default", cluster, Origin::Cluster)
            else {
                continue;
            };
            self.summary.objects += 1;
            self.summary.denied += usize::from(!report.allowed);
            self.summary.mutated += usize::from(!report.patch.is_empty());
            self.summary.findings += report.findings.len();
            let worth = !report.findings.is_empty()
                || report
                    .mutations
                    .iter()
                    .any(|m| !m.summary.is_empty() || !m.notes.is_empty())
                || report
                    .skipped
                    .as_deref()
                    .is_some_and(|s| s.starts_with("not evaluated"));
            for finding in &report.findings {
                let named = self.namespaces.len() < MAX_AUDIT_NAMESPACES
                    || self.namespaces.contains(&report.namespace);
                if named && !self.namespaces.contains(&report.namespace) {
                    self.namespaces.insert(report.namespace.clone());
                }
                *self
                    .counts
                    .entry(ExistingLabels {
                        namespace: if named {
                            report.namespace.clone()
                        } else {
                            "other".to_owned()
                        },
                        rule: finding.rule.as_str(),
                        action: finding.action.as_str(),
                    })
                    .or_default() += 1;
            }
            if worth && self.kept.len() < MAX_KEPT {
                self.kept.push(report);
            } else if worth {
                self.omitted += 1;
            }
        }
    }

    pub fn finish(self) -> Finished {
        Finished {
            report: Report {
                objects: self.kept,
                summary: self.summary,
            },
            omitted: self.omitted,
            counts: self.counts,
        }
    }
}

/// Why a scan did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Page(#[from] PageError),
    #[error("evaluating a page: {0}")]
    Evaluate(#[source] tokio::task::JoinError),
}

/// Lists every `K` page by page and evaluates each page off the async workers.
async fn scan_kind<K>(
    cache: &ClusterCache,
    policies: &Arc<crate::policy::PolicySet>,
    what: &'static str,
    mut tally: Tally,
) -> Result<Tally, ScanError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    let mut pages = Pages::new(Api::<K>::all(cache.client().clone()), what, PAGE);
    while let Some(page) = pages.next().await? {
        let (cache, policies) = (cache.clone(), policies.clone());
        tally = tokio::task::spawn_blocking(move || {
            tally.add_page(&page, &cache, &policies);
            tally
        })
        .await
        .map_err(ScanError::Evaluate)?;
    }
    Ok(tally)
}

/// One scan: every StatefulSet and PVC, listed page by page, evaluated against the caches.
pub async fn scan(
    cache: &ClusterCache,
    policies: Arc<crate::policy::PolicySet>,
) -> Result<Finished, ScanError> {
    let tally =
        scan_kind::<StatefulSet>(cache, &policies, "statefulsets", Tally::default()).await?;
    let tally =
        scan_kind::<PersistentVolumeClaim>(cache, &policies, "persistentvolumeclaims", tally)
            .await?;
    Ok(tally.finish())
}

/// Sets the findings gauge from a scan's counts; series of the previous scan that are gone are
/// removed.
pub fn record(metrics: &Metrics, finished: &Finished) {
    metrics.existing_findings.clear();
    for (labels, count) in &finished.counts {
        metrics.existing_findings.get_or_create(labels).set(*count);
    }
    metrics
        .audit_objects
        .set(finished.report.summary.objects as i64);
}

/// Writes each scan's PolicyReports while this replica holds the Lease.
pub struct Writer {
    pub client: kube::Client,
    pub leadership: lease::Leadership,
    /// The claims' growth (`--grow-volumes`), reported with the findings.
    pub growth: Option<Arc<crate::grow::Progress>>,
    /// The last outcome said in the log: each is said once, not every scan.
    said: Option<String>,
}

/// One write round's budget.
const WRITE_BUDGET: Duration = Duration::from_secs(60);

impl Writer {
    pub fn new(
        client: kube::Client,
        leadership: lease::Leadership,
        growth: Option<Arc<crate::grow::Progress>>,
    ) -> Self {
        Self {
            client,
            leadership,
            growth,
            said: None,
        }
    }

    async fn write(&mut self, report: &Report) {
        if !self.leadership.is_leader_now() {
            return;
        }
        let growth = self.growth.as_ref().map(|g| g.claims()).unwrap_or_default();
        let outcome =
            tokio::time::timeout(WRITE_BUDGET, reports::write(&self.client, report, &growth)).await;
        let (say, line) = match outcome {
            Ok(Ok(reports::Written::Current { changed })) => {
                if changed > 0 {
                    tracing::info!(changed, "PolicyReports updated");
                }
                (false, "ok".to_owned())
            }
            Ok(Ok(reports::Written::NoCrd)) => (
                true,
                "the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is not installed: no PolicyReports are written (install deploy/components/policy-report-crd, or the chart's backgroundAudit.policyReports); /report and the metrics still have every result".to_owned(),
            ),
            Ok(Ok(reports::Written::Forbidden)) => (
                true,
                "not allowed to write PolicyReports: no PolicyReports are written (install deploy/components/policy-reports, with deploy/components/policy-report-crd unless the cluster has the CRD, or the chart's backgroundAudit.policyReports); /report and the metrics still have every result".to_owned(),
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

/// Resolves when the writer's replica becomes the Lease holder; never without a writer.
async fn elected(writer: &mut Option<Writer>) {
    match writer {
        Some(writer) => writer.leadership.elected().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the claims' growth changed (`--grow-volumes`); never without it.
async fn growth_changed(growth: Option<&crate::grow::Progress>) {
    match growth {
        Some(growth) => growth.changed().await,
        None => std::future::pending().await,
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
        tracing::error!(
            "background audit: the caches were started without change notifications (Watches::Audit); not running"
        );
        return;
    };
    while !cache.is_synced() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The initial lists notified too: the first scan covers them, and the policies it reads.
    let _ = tokio::time::timeout(Duration::ZERO, changes.notified()).await;
    let mut policy_changes = policies.subscribe();
    policy_changes.mark_unchanged();
    let growth = writer.as_ref().and_then(|w| w.growth.clone());
    tracing::info!(?interval, "background audit started");
    loop {
        let started = Instant::now();
        let finished = match scan(&cache, policies.current()).await {
            Ok(finished) => finished,
            Err(error) => {
                tracing::warn!(%error, "background audit scan failed; retrying at the next interval");
                tokio::time::sleep(interval.min(Duration::from_secs(60))).await;
                continue;
            }
        };
        let took = started.elapsed();
        let completed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        record(&metrics, &finished);
        let Finished {
            report, omitted, ..
        } = finished;
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
            omitted_objects: omitted,
            report,
        });
        results.last.store(Some(scan.clone()));
        if let Some(writer) = &mut writer {
            writer.write(&scan.report).await;
        }
        // The next scan: at the interval, or after a change of an object or of the policies
        // (once it settles, and never within MIN_GAP of this one), whichever comes first.
        // Changes during the scan are picked up by the next one.
        let deadline = tokio::time::Instant::from(started + took.max(interval));
        let changed = loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break false,
                () = changes.notified() => break true,
                // Err: the store is gone, so the process is ending; the interval still applies.
                Ok(()) = policy_changes.changed() => break true,
                // Newly elected (the holder died or stepped down): this scan's reports at
                // once, not after the next scan.
                () = elected(&mut writer) => {
                    if let Some(writer) = &mut writer {
                        writer.write(&scan.report).await;
                    }
                }
                // A claim grew (or failed to): the reports say so without waiting for a scan,
                // since the growth is not an object the scans see change.
                () = growth_changed(growth.as_deref()) => {
                    if let Some(writer) = &mut writer {
                        writer.write(&scan.report).await;
                    }
                }
            }
        };
        if changed {
            let settled = tokio::time::Instant::now() + SETTLE;
            let gap = tokio::time::Instant::from(started + MIN_GAP);
            tokio::time::sleep_until(settled.max(gap).min(deadline.max(settled))).await;
        }
        policy_changes.mark_unchanged();
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
        let statefulsets = vec![sts.clone()];
        let cluster = crate::cluster::Snapshot::known(vec![], vec![], vec![]);
        let scan = |cluster: &crate::cluster::Snapshot| {
            let mut tally = Tally::default();
            tally.add_page(&statefulsets, cluster, &policies);
            tally.finish()
        };
        let finished = scan(&cluster);
        let report = &finished.report;
        assert_eq!(report.summary.objects, 1);
        let object = &report.objects[0];
        assert_eq!(
            (object.namespace.as_str(), object.name.as_str()),
            ("default", "db")
        );
        assert!(!object.allowed, "no PDB, no readiness probe: {object:?}");
        assert!(!object.patch.is_empty(), "it would be mutated");
        record(&metrics, &finished);
        assert_eq!(gauge(&metrics, "default", "require-pdb", "enforce"), 1);
        // The PDB is created: the next scan has no require-pdb finding, and its series is gone.
        let pdb = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "db"}}}
        }))
        .unwrap();
        let cluster = crate::cluster::Snapshot::known(vec![pdb], vec![], vec![]);
        let finished = scan(&cluster);
        let report = &finished.report;
        assert!(
            report.objects[0]
                .findings
                .iter()
                .all(|f| f.rule != crate::rules::RuleId::RequirePdb)
        );
        record(&metrics, &finished);
        let text = metrics.encode();
        assert!(!text.contains("rule=\"require-pdb\""), "{text}");
        assert!(text.contains("rule=\"require-readiness-probe\""), "{text}");
    }

    #[test]
    fn the_findings_gauge_names_a_bounded_number_of_namespaces() {
        let policies = PolicySet::embedded_default(vec![]).unwrap();
        let statefulsets: Vec<StatefulSet> = (0..MAX_AUDIT_NAMESPACES + 20)
            .map(|i| {
                let mut sts = basic_sts();
                sts.metadata.namespace = Some(format!("ns-{i:04}"));
                sts
            })
            .collect();
        let cluster = crate::cluster::Snapshot::known(vec![], vec![], vec![]);
        let mut tally = Tally::default();
        // Two pages.
        tally.add_page(&statefulsets[..300], &cluster, &policies);
        tally.add_page(&statefulsets[300..], &cluster, &policies);
        let finished = tally.finish();
        assert_eq!(finished.report.summary.objects, MAX_AUDIT_NAMESPACES + 20);
        let metrics = Metrics::new();
        record(&metrics, &finished);
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

#[cfg(test)]
mod tally_tests {
    use super::*;
    use crate::policy::PolicySet;

    #[test]
    fn clean_objects_are_counted_but_not_kept() {
        let policies = PolicySet::embedded_default(vec![]).unwrap();
        // A claim the StatefulSet controller made for a known StatefulSet: skipped, nothing to
        // say; and an object of the webhook's own namespace: exempt.
        let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data-db-0", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap();
        let sts = crate::rules::testing::basic_sts();
        let cluster =
            crate::cluster::Snapshot::known(vec![], vec![], vec![]).with_statefulsets(vec![sts]);
        let mut tally = Tally::default();
        tally.add_page(&[claim], &cluster, &policies);
        let report = tally.finish().report;
        assert_eq!(report.summary.objects, 1);
        assert!(report.objects.is_empty(), "{:?}", report.objects);
    }
}
