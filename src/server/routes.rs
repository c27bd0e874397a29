//! HTTP routes: the two webhooks, health, readiness, metrics.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::{Instrument, field};

use crate::admission::{Outcome, Reviewer, Uninterpretable, response::headline};
use crate::cluster::ClusterView;
use crate::cluster::cache::ClusterCache;
use crate::engine::Phase;
use crate::metrics::{
    EndpointLabels, FindingLabels, Metrics, MutationLabels, RequestLabels, RuleLabels,
};
use crate::policy::source::PolicyStore;

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
}

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
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
        problems.push("serving certificate not bootstrapped yet");
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

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Phase::Mutate, "mutate", body).await
}

async fn validate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Phase::Validate, "validate", body).await
}

async fn handle(
    state: Arc<AppState>,
    phase: Phase,
    endpoint: &'static str,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let span = tracing::info_span!(
        "review",
        endpoint,
        uid = field::Empty,
        kind = field::Empty,
        namespace = field::Empty,
        name = field::Empty,
        operation = field::Empty,
        decision = field::Empty,
    );
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
        };
        match reviewer.review(phase, &body).await {
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

/// Logs and counts what a review decided, inside its span.
fn record(metrics: &Metrics, endpoint: &'static str, outcome: &Outcome) {
    let span = tracing::Span::current();
    span.record("uid", outcome.uid.as_str());
    span.record("kind", outcome.kind.as_str());
    span.record("namespace", outcome.namespace.as_str());
    span.record("name", outcome.name.as_str());
    span.record("operation", outcome.operation);
    span.record("decision", outcome.decision);
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            kind: outcome.kind.clone(),
            operation: outcome.operation,
            decision: outcome.decision,
        })
        .inc();
    let Some(eval) = &outcome.evaluation else {
        tracing::info!("admission review");
        return;
    };
    for m in &eval.mutations {
        if m.kept {
            metrics
                .kept
                .get_or_create(&RuleLabels {
                    rule: m.rule.as_str(),
                })
                .inc();
            tracing::info!(rule = m.rule.as_str(), summary = %m.mutation.summary, "kept a decision made at creation");
            continue;
        }
        let applied = if m.applied { "true" } else { "false" };
        metrics
            .mutations
            .get_or_create(&MutationLabels {
                rule: m.rule.as_str(),
                applied,
            })
            .inc();
        tracing::info!(rule = m.rule.as_str(), action = m.action.as_str(), applied = m.applied, summary = %m.mutation.summary, notes = ?m.mutation.notes, "mutation");
    }
    for r in &eval.findings {
        metrics
            .findings
            .get_or_create(&FindingLabels {
                rule: r.finding.rule.as_str(),
                action: r.action.as_str(),
            })
            .inc();
        tracing::info!(
            rule = r.finding.rule.as_str(),
            action = r.action.as_str(),
            mode = eval.mode.as_str(),
            message = headline(&r.finding.message),
            "finding"
        );
    }
    if let Some(reason) = &eval.skipped {
        tracing::info!(reason = %reason, "admission review skipped");
    } else {
        tracing::info!(
            policy = eval.policy_name(),
            mode = eval.mode.as_str(),
            "admission review"
        );
    }
}
