//! HTTP routes: the two webhooks, health, readiness, metrics.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::{Instrument, field};

use super::budget::MemoryBudget;
use super::callers::{Caller, Callers};
use crate::admission::response::{headline, limits, truncate};
use crate::admission::{Outcome, Reviewer, Uninterpretable};
use crate::cluster::ClusterView;
use crate::cluster::cache::ClusterCache;
use crate::engine::{Evaluation, Phase};
use crate::metrics::{
    EndpointLabels, FindingLabels, Metrics, MutationLabels, ReasonLabels, Refusal, RequestLabels,
    RuleLabels,
};
use crate::policy::ValidateAction;
use crate::policy::source::PolicyStore;
use crate::rules::RuleId;

/// Everything the handlers share.
pub struct AppState {
    pub policies: Arc<PolicyStore>,
    pub cluster: Arc<dyn ClusterView>,
    pub live: Option<ClusterCache>,
    pub metrics: Arc<Metrics>,
    pub uninterpretable: Uninterpretable,
    pub statefulset_controllers: Vec<String>,
    /// Set on SIGTERM: readiness goes false while in-flight requests finish.
    pub shutting_down: AtomicBool,
    /// False while `--cert-bootstrap` serves its provisional certificate.
    pub certificate_ready: Arc<AtomicBool>,
    /// With `--background-audit`: its last scan.
    pub audit: Option<Arc<crate::audit::Results>>,
    /// With `--grow-volumes`: the claims being grown, as of the last round.
    pub growth: Option<Arc<crate::grow::Progress>>,
}

/// What bounds one admission request before it is evaluated.
#[derive(Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// Permits for reviews being evaluated (taken once the body has arrived).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The memory reviews reserve while they are read and evaluated.
    pub budget: Arc<MemoryBudget>,
}

/// How long a review may wait for memory when the apiserver says nothing of its timeout.
const DEFAULT_BUDGET_WAIT: Duration = Duration::from_secs(2);

/// How long a review may wait for room in the memory budget: half the time the apiserver gives
/// the webhook (`?timeout=5s`, its `timeoutSeconds`), at most 5 s, so that the answer still
/// arrives in time.
fn budget_wait(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|t| humantime::parse_duration(t).ok())
        .map_or(DEFAULT_BUDGET_WAIT, |t| (t / 2).min(Duration::from_secs(5)))
}

/// Why a body did not arrive whole.
fn body_error(error: axum::Error) -> (Refusal, StatusCode, String) {
    let inner = error.into_inner();
    if inner
        .downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        return (
            Refusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than --max-body-bytes".into(),
        );
    }
    if let Some(hyper) = inner.downcast_ref::<hyper::Error>() {
        let text = hyper.to_string();
        if hyper.is_canceled()
            || hyper.is_incomplete_message()
            || hyper.is_body_write_aborted()
            || text.contains("stream error")
            || text.contains("reset")
        {
            return (
                Refusal::Aborted,
                StatusCode::BAD_REQUEST,
                format!("the client stopped sending the request body: {text}"),
            );
        }
    }
    (
        Refusal::BadBody,
        StatusCode::BAD_REQUEST,
        format!("the request body is malformed: {inner}"),
    )
}

/// Before a review is evaluated, in this order:
/// - a body announced larger than the limit is refused at once (413, from `Content-Length`,
///   nothing read);
/// - the body reserves its bytes from the memory budget, waiting for room up to half the
///   review's timeout (503), and must then arrive whole within the read timeout (408); a malformed body (a broken chunk size) is a 400 of
///   its own, and a client that gives up on its request is counted apart;
/// - the review reserves its estimated cost, waiting for room up to half its timeout (503);
/// - it takes an evaluation slot (503 when all are taken: never an unbounded queue).
///
/// No slot is held while a body arrives: slow senders hold only their connection and the bytes
/// they announced. Each refusal is logged and counted: with failurePolicy Ignore, the apiserver
/// then admits the object unchecked.
async fn admission_limits(
    State((limits, metrics)): State<(Limits, Arc<Metrics>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let refuse = |reason: Refusal, status: StatusCode, message: String| {
        metrics
            .refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
        tracing::warn!(reason = reason.as_str(), %message, "review refused before evaluation");
        error(status, message)
    };
    let no_room = |what: String| {
        refuse(
            Refusal::Memory,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no room in the memory budget {what} (--memory-budget); retry"),
        )
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return refuse(
            Refusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {} bytes is larger than --max-body-bytes ({})",
                announced.unwrap_or_default(),
                limits.max_body_bytes
            ),
        );
    }
    let wait = budget_wait(request.uri().query());
    let Ok(reading) = limits
        .budget
        .for_body(announced.map(|n| n as usize), limits.max_body_bytes, wait)
        .await
    else {
        return no_room(format!("for the request body within {wait:?}"));
    };
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(
        limits.body_read_timeout,
        axum::body::to_bytes(body, limits.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            let (reason, status, message) = body_error(error);
            return refuse(reason, status, message);
        }
        Err(_) => {
            let mut response = refuse(
                Refusal::BodyTimeout,
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?} (--body-read-timeout)",
                    limits.body_read_timeout
                ),
            );
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    let Ok(_reserved) = limits
        .budget
        .for_evaluation(reading, body.len(), wait)
        .await
    else {
        return no_room(format!(
            "to evaluate a review of {} bytes within {wait:?}",
            body.len()
        ));
    };
    let Ok(_permit) = limits.in_flight.clone().try_acquire_owned() else {
        return refuse(
            Refusal::Overloaded,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many reviews in flight (--max-in-flight); retry".into(),
        );
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(body),
    ))
    .await
}

/// The webhook port's routes: the two webhooks and the health probes, and `/metrics` and
/// `/report` when they have no listener of their own (`with_metrics`), for loopback clients
/// only: both describe every namespace, and any pod reaches this port.
///
/// The webhooks answer at `/mutate` and `/validate`, and at `/mutate/<token>` and
/// `/validate/<token>` for the webhook token ([`super::callers`], checked first).
pub fn router(
    state: Arc<AppState>,
    callers: Arc<Callers>,
    limits: Limits,
    with_metrics: bool,
) -> Router {
    let max_body_bytes = limits.max_body_bytes;
    let admission = Router::new()
        .route("/mutate", post(mutate))
        .route("/mutate/{token}", post(mutate))
        .route("/validate", post(validate))
        .route("/validate/{token}", post(validate))
        .layer(axum::middleware::from_fn_with_state(
            (limits, state.metrics.clone()),
            admission_limits,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (callers, state.metrics.clone()),
            super::callers::require,
        ));
    let mut router = Router::new()
        .merge(admission)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_metrics {
        let local = Router::new()
            .route("/metrics", get(metrics))
            .route("/report", get(report))
            .layer(axum::middleware::from_fn_with_state(
                super::auth::MetricsAuth::LoopbackOnly(super::auth::WEBHOOK_PORT),
                super::auth::require,
            ));
        router = router.merge(local);
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The probe listener's routes (`--probe-listen`, plain HTTP): health and readiness only, on a
/// port of their own so that no client of the webhook port can starve kubelet's probes.
pub fn probe_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// The metrics listener's routes (`--metrics-listen`): `/metrics` and `/report`, for callers the
/// apiserver says may read them ([`super::auth`]).
pub fn metrics_router(state: Arc<AppState>, auth: super::auth::MetricsAuth) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/report", get(report))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            auth,
            super::auth::require,
        ))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint: use POST /mutate, POST /validate, GET /healthz, /readyz or /metrics",
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut problems = Vec::new();
    if state.shutting_down.load(Ordering::Acquire) {
        problems.push("shutting down");
    }
    if !state.certificate_ready.load(Ordering::Acquire) {
        problems.push(
            "serving certificate not bootstrapped yet, or not trusted by the webhook configurations' caBundle or not named by their paths",
        );
    }
    if !state.policies.is_loaded() {
        problems.push("no policy loaded");
    }
    if state.live.as_ref().is_some_and(|c| !c.is_synced()) {
        problems.push("cluster caches not synced");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join(", ")),
        )
            .into_response()
    }
}

/// The background audit's last scan, in `check`'s JSON format (plus when it completed and how
/// long it took).
async fn report(State(state): State<Arc<AppState>>) -> Response {
    let mut body = match (&state.audit, &state.growth) {
        (None, None) => {
            return error(
                StatusCode::NOT_FOUND,
                "the background audit is off (serve --background-audit=INTERVAL, with a cluster connection), and so is --grow-volumes",
            );
        }
        (Some(audit), _) => match audit.last() {
            Some(scan) => match serde_json::to_value(scan.as_ref()) {
                Ok(value) => value,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            None if state.growth.is_none() => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no background audit scan has completed yet",
                );
            }
            None => json!({}),
        },
        (None, Some(_)) => json!({}),
    };
    // The claims `--grow-volumes` is growing, with their state.
    if let (Some(growth), Some(map)) = (&state.growth, body.as_object_mut()) {
        map.insert("growth".into(), json!(growth.claims()));
    }
    match serde_json::to_vec(&body) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .log_lines_dropped
        .set(crate::telemetry::dropped_lines() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn mutate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, caller, Phase::Mutate, "mutate", body).await
}

async fn validate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, caller, Phase::Validate, "validate", body).await
}

async fn handle(
    state: Arc<AppState>,
    caller: Caller,
    phase: Phase,
    endpoint: &'static str,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    // The span names only the endpoint: the review's own fields are known once it is decoded,
    // and go on its one event (`record`). Recorded into the span one by one, they would make the
    // JSON formatter re-read and re-write the span's fields at each.
    let span = tracing::info_span!("review", endpoint);
    async move {
        let labels = EndpointLabels { endpoint };
        let body = match body {
            Ok(body) => body,
            Err(rejection) => {
                state.metrics.bad_requests.get_or_create(&labels).inc();
                tracing::warn!(status = %rejection.status(), reason = %rejection.body_text(), "request body rejected");
                return error(rejection.status(), rejection.body_text());
            }
        };
        let policies = state.policies.current();
        let reviewer = Reviewer {
            policies: &policies,
            cluster: state.cluster.as_ref(),
            live: state.live.as_ref(),
            uninterpretable: state.uninterpretable,
            statefulset_controllers: &state.statefulset_controllers,
            live_claim_owners: caller == Caller::Apiserver,
        };
        let answer = if body.len() > LARGE_BODY
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread
        {
            // A large object takes milliseconds to decode and evaluate: off the async workers,
            // so that /healthz, /readyz and other reviews keep being answered meanwhile.
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(reviewer.review(phase, &body))
            })
        } else {
            reviewer.review(phase, &body).await
        };
        match answer {
            Ok((review, outcome)) => {
                record(&state.metrics, endpoint, &outcome);
                let encoded = crate::admission::response::to_wire(review);
                state
                    .metrics
                    .latency
                    .get_or_create(&labels)
                    .observe(start.elapsed().as_secs_f64());
                match encoded {
                    Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the response: {e}")),
                }
            }
            Err(bad) => {
                state.metrics.bad_requests.get_or_create(&labels).inc();
                tracing::warn!(error = %bad, "bad request");
                error(StatusCode::BAD_REQUEST, bad.to_string())
            }
        }
    }
    .instrument(span)
    .await
}

/// Bodies larger than this are decoded and evaluated off the async worker threads. Captured
/// reviews are 1.4 to 17 KB; a StatefulSet near etcd's 1.5 MiB object limit takes tens of ms.
const LARGE_BODY: usize = 256 * 1024;

/// Debug events (one per mutation or finding) logged for one review at most.
const DETAIL_EVENTS: usize = 20;
/// Deny and warn messages carried by a review's log event at most.
const LOGGED_MESSAGES: usize = 5;

/// Logs and counts what a review decided, inside its span: one event at info.
fn record(metrics: &Metrics, endpoint: &'static str, outcome: &Outcome) {
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            kind: crate::admission::kind_label(&outcome.kind),
            operation: outcome.operation,
            decision: outcome.decision.as_str(),
        })
        .inc();
    let summary = outcome
        .evaluation
        .as_ref()
        .map(|eval| summarize(metrics, outcome, eval));
    let summary = summary.as_ref();
    // One event per review at info, whatever the object's size (a review not evaluated has
    // only the first six fields).
    tracing::info!(
        uid = outcome.uid,
        kind = outcome.kind,
        namespace = outcome.namespace,
        name = outcome.name,
        operation = outcome.operation,
        decision = outcome.decision.as_str(),
        policy = summary.map(|s| s.policy),
        mode = summary.map(|s| s.mode),
        skipped = summary.and_then(|s| s.skipped),
        mutations = summary.map(|s| s.mutations.as_str()),
        findings = summary.map(|s| s.findings.as_str()),
        messages = summary.map(|s| field::debug(&s.messages)),
        "admission review"
    );
}

/// What a review's event says of its evaluation.
struct Summary<'a> {
    policy: &'a str,
    mode: &'static str,
    skipped: Option<&'a str>,
    /// Rules that changed (or would have changed, or kept) the object, comma-separated.
    mutations: String,
    /// `rule:action` of each finding, with a count when more than one, comma-separated.
    findings: String,
    /// Messages of the findings that deny or warn, at most [`LOGGED_MESSAGES`].
    messages: Vec<String>,
}

/// Counts the mutations and findings in the metrics and logs them at debug (bounded), and sums
/// them up for the review's event.
fn summarize<'a>(metrics: &Metrics, outcome: &Outcome, eval: &'a Evaluation) -> Summary<'a> {
    let mut detailed = 0;
    let mut detail = || {
        detailed += 1;
        detailed <= DETAIL_EVENTS
    };
    let mut changes: Vec<String> = Vec::new();
    for m in &eval.mutations {
        if m.mutation.ops.is_empty() {
            continue;
        }
        if m.kept {
            metrics
                .kept
                .get_or_create(&RuleLabels {
                    rule: m.rule.as_str(),
                })
                .inc();
            changes.push(format!("{}(kept)", m.rule));
        } else {
            let applied = if m.applied { "true" } else { "false" };
            metrics
                .mutations
                .get_or_create(&MutationLabels {
                    rule: m.rule.as_str(),
                    applied,
                })
                .inc();
            changes.push(if m.applied {
                m.rule.to_string()
            } else {
                format!("{}(would)", m.rule)
            });
        }
        if detail() {
            tracing::debug!(uid = outcome.uid, rule = m.rule.as_str(), action = m.action.as_str(), applied = m.applied, kept = m.kept, summary = %m.mutation.summary, notes = ?m.mutation.notes, "mutation");
        }
    }
    // (rule, action) -> count, in rule order; messages only of findings that deny or warn.
    let mut counts: std::collections::BTreeMap<(RuleId, &str), usize> = Default::default();
    let mut messages: Vec<String> = Vec::new();
    for r in &eval.findings {
        metrics
            .findings
            .get_or_create(&FindingLabels {
                rule: r.finding.rule.as_str(),
                action: r.action.as_str(),
            })
            .inc();
        *counts
            .entry((r.finding.rule, r.action.as_str()))
            .or_default() += 1;
        let speaks = matches!(r.action, ValidateAction::Enforce | ValidateAction::Warn);
        if speaks && messages.len() < LOGGED_MESSAGES {
            messages.push(truncate(headline(&r.finding.message), limits::ITEM).into_owned());
        }
        if detail() {
            tracing::debug!(
                uid = outcome.uid,
                rule = r.finding.rule.as_str(),
                action = r.action.as_str(),
                mode = eval.mode.as_str(),
                message = %truncate(headline(&r.finding.message), limits::ITEM),
                "finding"
            );
        }
    }
    let findings: Vec<String> = counts
        .into_iter()
        .map(|((rule, action), n)| match n {
            1 => format!("{rule}:{action}"),
            n => format!("{rule}:{action}x{n}"),
        })
        .collect();
    Summary {
        policy: eval.policy_name(),
        mode: eval.mode.as_str(),
        skipped: eval.skipped.as_deref(),
        mutations: changes.join(","),
        findings: findings.join(","),
        messages,
    }
}
