//! Prometheus metrics (prometheus-client), served at `/metrics`.
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
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
    pub reason: Refusal,
}

/// Why a connection or a request was refused before evaluation
/// (`stateful_guard_refused_total{reason}`): with failurePolicy Ignore, the apiserver then
/// admits the object unchecked, so each is counted.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// A body larger than `--max-body-bytes` (413).
    TooLarge,
    /// A broken chunked body (400).
    BadBody,
    /// The client gave up on its request.
    Aborted,
    /// No room in the memory budget in time (503).
    Memory,
    /// Every evaluation slot taken (503).
    Overloaded,
    /// The body did not arrive within `--body-read-timeout` (408).
    BodyTimeout,
    /// `--max-connections` reached.
    Connections,
    /// `--max-connections-per-client` reached.
    ClientConnections,
    /// With `--client-names`: a client certificate naming none of them.
    ClientName,
    /// No request within `--header-read-timeout` of the connection.
    NoRequest,
    /// Idle for `--idle-timeout`.
    Idle,
    /// A review at a path without the webhook token (403).
    Unauthenticated,
}

impl Refusal {
    /// The label value, as dashboards and alerts know it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::BadBody => "bad_body",
            Self::Aborted => "aborted",
            Self::Memory => "memory",
            Self::Overloaded => "overloaded",
            Self::BodyTimeout => "body_timeout",
            Self::Connections => "connections",
            Self::ClientConnections => "client_connections",
            Self::ClientName => "client_name",
            Self::NoRequest => "no_request",
            Self::Idle => "idle",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
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

/// A claim's state against its recorded size (`grow`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `pending`, `growing`, `done`, `failed`
    pub state: &'static str,
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

/// Declares every instrument once: its field, type, constructor, name and help. The struct and
/// its registration are both generated from this table, so an instrument cannot be declared and
/// left unregistered.
macro_rules! instruments {
    ($($field:ident: $ty:ty = $ctor:expr, $name:literal, $help:literal;)*) => {
        /// Every instrument, registered once.
        pub struct Metrics {
            registry: Registry,
            $(pub $field: $ty,)*
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("stateful_guard");
                $(
                    let $field: $ty = $ctor;
                    registry.register($name, $help, $field.clone());
                )*
                Self { registry, $($field,)* }
            }
        }
    };
}

instruments! {
    requests: Family<RequestLabels, Counter> = Default::default(),
        "admission_requests",
        "AdmissionReviews answered, by endpoint, kind, operation and decision";
    bad_requests: Family<EndpointLabels, Counter> = Default::default(),
        "bad_requests",
        "Requests rejected before evaluation (not an AdmissionReview, too large)";
    latency: Family<EndpointLabels, Histogram> = Family::<EndpointLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
        "admission_duration_seconds",
        "Time to answer an AdmissionReview, body read to response encoded";
    findings: Family<FindingLabels, Counter> = Default::default(),
        "findings",
        "Validation findings, by rule and the action taken";
    mutations: Family<MutationLabels, Counter> = Default::default(),
        "mutations",
        "Mutations computed, by rule and whether they were applied (false: audit)";
    kept: Family<RuleLabels, Counter> = Default::default(),
        "kept_decisions",
        "Decisions made at creation that an update reverted and that were put back, by rule";
    policy_reloads: Family<ResultLabels, Counter> = Default::default(),
        "policy_reloads",
        "Policy source loads, by result (ok, error)";
    policy_errors: Family<SourceLabels, Counter> = Default::default(),
        "policy_errors",
        "Rejected policy documents, by source (the last good policy keeps serving)";
    policies_loaded: Gauge = Default::default(),
        "policies_loaded",
        "Policies currently in force";
    policy_sources_lost: Gauge = Default::default(),
        "policy_sources_lost",
        "1 while every policy source is gone and the last good policies keep serving (every response warns)";
    api_errors: Counter = Default::default(),
        "api_errors",
        "Kubernetes API calls that failed (5xx, 429, or no answer); each is retried with backoff";
    api_unavailable: Gauge = Default::default(),
        "api_unavailable",
        "1 while the Kubernetes API's last answer was a failure (admission answers from the caches)";
    log_lines_dropped: Gauge = Default::default(),
        "log_lines_dropped",
        "Log lines dropped so far because the log writer's buffer was full (logging never delays a response)";
    refused: Family<ReasonLabels, Counter> = Default::default(),
        "refused",
        "Requests and connections refused before evaluation, by reason (overloaded: 503, too_large: 413, body_timeout: 408, connections: closed at accept, no_request: HTTP/2 connection without a request in time)";
    live_reads: Family<LiveReadLabels, Counter> = Default::default(),
        "live_reads",
        "Live API reads reviews caused on a cache miss, by kind and result (read, coalesced: shared with a read in flight, remembered: a recent answer reused, rate_limited: refused, the cache decided, failed)";
    budget_capacity: Family<BudgetLabels, Gauge> = Default::default(),
        "memory_budget_capacity_bytes",
        "The memory budget reviews reserve from before they are read and decoded, by lane (small: bodies up to 64 KiB)";
    budget_used: Family<BudgetLabels, Gauge> = Default::default(),
        "memory_budget_used_bytes",
        "Memory reserved by the reviews being read or evaluated, by lane";
    budget_reservations: Family<BudgetResultLabels, Counter> = Default::default(),
        "memory_budget_reservations",
        "Reviews' reservations, by lane and result (at_once, after_waiting, refused: 503 after waiting, refused_body: 503, no room for the body)";
    cert_reloads: Family<ResultLabels, Counter> = Default::default(),
        "certificate_reloads",
        "Serving certificate reloads, by result (ok, error)";
    cert_not_after: Gauge = Default::default(),
        "certificate_not_after_seconds",
        "Expiry of the serving certificate, in seconds since the Unix epoch";
    existing_findings: Family<ExistingLabels, Gauge> = Default::default(),
        "existing_findings",
        "Findings on the objects that exist, from the last background audit scan, by namespace, rule and action";
    audit_last_completed: Gauge = Default::default(),
        "background_audit_last_completed_seconds",
        "When the last background audit scan completed, in seconds since the Unix epoch (0: none yet)";
    audit_duration: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::<f64, std::sync::atomic::AtomicU64>::default(),
        "background_audit_duration_seconds",
        "How long the last background audit scan took";
    audit_objects: Gauge = Default::default(),
        "background_audit_objects",
        "StatefulSets and PVCs evaluated by the last background audit scan";
    claims: Family<ClaimLabels, Gauge> = Default::default(),
        "claims",
        "With --grow-volumes: the claims of StatefulSets whose claim templates grew, by state against the recorded size (pending: not Bound yet, growing, done, failed)";
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
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}
