//! Prometheus metrics (prometheus-client), served at `/metrics`.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    /// A kind the webhook handles, or `other`.
    pub kind: &'static str,
    pub operation: &'static str,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub rule: &'static str,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MutationLabels {
    pub rule: &'static str,
    pub applied: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `overloaded`, `too_large`, `body_timeout`, `connections`, `no_request`
    pub reason: &'static str,
}

/// A lane of the memory budget (`server::budget`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// `small`, `large`
    pub lane: &'static str,
}

/// How a review's reservation went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetResultLabels {
    pub lane: &'static str,
    /// `at_once`, `after_waiting`, `refused`, `refused_body`
    pub result: &'static str,
}

/// A live read a review caused (`cluster::live`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LiveReadLabels {
    pub kind: &'static str,
    /// `read`, `coalesced`, `remembered`, `rate_limited`, `failed`
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// Every instrument, registered once.
/// A finding on an object that already exists (background audit).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExistingLabels {
    /// The object's namespace; past [`MAX_AUDIT_NAMESPACES`] namespaces, `other`.
    pub namespace: String,
    pub rule: &'static str,
    pub action: &'static str,
}

/// Namespaces the background audit's findings gauge names one by one; the rest are summed
/// under `other`, so the series stay bounded on any cluster.
pub const MAX_AUDIT_NAMESPACES: usize = 500;

pub struct Metrics {
    registry: Registry,
    pub existing_findings: Family<ExistingLabels, Gauge>,
    pub audit_last_completed: Gauge,
    pub audit_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub audit_objects: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub bad_requests: Family<EndpointLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub findings: Family<FindingLabels, Counter>,
    pub mutations: Family<MutationLabels, Counter>,
    pub kept: Family<RuleLabels, Counter>,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub policy_errors: Family<SourceLabels, Counter>,
    pub policies_loaded: Gauge,
    pub policy_sources_lost: Gauge,
    pub api_errors: Counter,
    pub api_unavailable: Gauge,
    pub log_lines_dropped: Gauge,
    pub refused: Family<ReasonLabels, Counter>,
    pub live_reads: Family<LiveReadLabels, Counter>,
    pub budget_capacity: Family<BudgetLabels, Gauge>,
    pub budget_used: Family<BudgetLabels, Gauge>,
    pub budget_reservations: Family<BudgetResultLabels, Counter>,
    pub cert_reloads: Family<ResultLabels, Counter>,
    pub cert_not_after: Gauge,
}

/// Latency buckets from 50µs: an evaluation takes tens of microseconds, and kube-apiserver's
/// own smallest bucket (5ms) would hide everything.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stateful_guard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "AdmissionReviews answered, by endpoint, kind, operation and decision",
            requests.clone(),
        );
        let bad_requests = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "bad_requests",
            "Requests rejected before evaluation (not an AdmissionReview, too large)",
            bad_requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "admission_duration_seconds",
            "Time to answer an AdmissionReview, body read to response encoded",
            latency.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Validation findings, by rule and the action taken",
            findings.clone(),
        );
        let mutations = Family::<MutationLabels, Counter>::default();
        registry.register(
            "mutations",
            "Mutations computed, by rule and whether they were applied (false: audit)",
            mutations.clone(),
        );
        let kept = Family::<RuleLabels, Counter>::default();
        registry.register(
            "kept_decisions",
            "Decisions made at creation that an update reverted and that were put back, by rule",
            kept.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy source loads, by result (ok, error)",
            policy_reloads.clone(),
        );
        let policy_errors = Family::<SourceLabels, Counter>::default();
        registry.register(
            "policy_errors",
            "Rejected policy documents, by source (the last good policy keeps serving)",
            policy_errors.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "policies_loaded",
            "Policies currently in force",
            policies_loaded.clone(),
        );
        let policy_sources_lost = Gauge::default();
        registry.register(
            "policy_sources_lost",
            "1 while every policy source is gone and the last good policies keep serving (every response warns)",
            policy_sources_lost.clone(),
        );
        let api_errors = Counter::default();
        registry.register(
            "api_errors",
            "Kubernetes API calls that failed (5xx, 429, or no answer); each is retried with backoff",
            api_errors.clone(),
        );
        let api_unavailable = Gauge::default();
        registry.register(
            "api_unavailable",
            "1 while the Kubernetes API's last answer was a failure (admission answers from the caches)",
            api_unavailable.clone(),
        );
        let log_lines_dropped = Gauge::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped so far because the log writer's buffer was full (logging never delays a response)",
            log_lines_dropped.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused",
            "Requests and connections refused before evaluation, by reason (overloaded: 503, too_large: 413, body_timeout: 408, connections: closed at accept, no_request: HTTP/2 connection without a request in time)",
            refused.clone(),
        );
        let live_reads = Family::<LiveReadLabels, Counter>::default();
        registry.register(
            "live_reads",
            "Live API reads reviews caused on a cache miss, by kind and result (read, coalesced: shared with a read in flight, remembered: a recent answer reused, rate_limited: refused, the cache decided, failed)",
            live_reads.clone(),
        );
        let budget_capacity = Family::<BudgetLabels, Gauge>::default();
        registry.register(
            "memory_budget_capacity_bytes",
            "The memory budget reviews reserve from before they are read and decoded, by lane (small: bodies up to 64 KiB)",
            budget_capacity.clone(),
        );
        let budget_used = Family::<BudgetLabels, Gauge>::default();
        registry.register(
            "memory_budget_used_bytes",
            "Memory reserved by the reviews being read or evaluated, by lane",
            budget_used.clone(),
        );
        let budget_reservations = Family::<BudgetResultLabels, Counter>::default();
        registry.register(
            "memory_budget_reservations",
            "Reviews' reservations, by lane and result (at_once, after_waiting, refused: 503 after waiting, refused_body: 503, no room for the body)",
            budget_reservations.clone(),
        );
        let cert_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads, by result (ok, error)",
            cert_reloads.clone(),
        );
        let cert_not_after = Gauge::default();
        registry.register(
            "certificate_not_after_seconds",
            "Expiry of the serving certificate, in seconds since the Unix epoch",
            cert_not_after.clone(),
        );
        let existing_findings = Family::<ExistingLabels, Gauge>::default();
        registry.register(
            "existing_findings",
            "Findings on the objects that exist, from the last background audit scan, by namespace, rule and action",
            existing_findings.clone(),
        );
        let audit_last_completed = Gauge::default();
        registry.register(
            "background_audit_last_completed_seconds",
            "When the last background audit scan completed, in seconds since the Unix epoch (0: none yet)",
            audit_last_completed.clone(),
        );
        let audit_duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "background_audit_duration_seconds",
            "How long the last background audit scan took",
            audit_duration.clone(),
        );
        let audit_objects = Gauge::default();
        registry.register(
            "background_audit_objects",
            "StatefulSets and PVCs evaluated by the last background audit scan",
            audit_objects.clone(),
        );
        Self {
            registry,
            existing_findings,
            audit_last_completed,
            audit_duration,
            audit_objects,
            requests,
            bad_requests,
            latency,
            findings,
            mutations,
            kept,
            policy_reloads,
            policy_errors,
            policies_loaded,
            policy_sources_lost,
            api_errors,
            api_unavailable,
            log_lines_dropped,
            refused,
            live_reads,
            budget_capacity,
            budget_used,
            budget_reservations,
            cert_reloads,
            cert_not_after,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.log_lines_dropped
            .set(crate::telemetry::dropped_lines() as i64);
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}
