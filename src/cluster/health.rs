//! Is the Kubernetes API answering? Observed on every API call the webhook makes (reflectors,
//! the live reads, certificate bootstrap, the policy ConfigMap watch).
//!
//! kube's own client logs an ERROR for every failed attempt (`failed with status 503`), and
//! retries 429/503/504 itself, then its watchers retry with backoff: during an apiserver outage
//! that is a flood, which hides what matters. Here an outage is one WARN when it starts and one
//! when it ends, plus `stateful_guard_api_errors_total` and `stateful_guard_api_unavailable`;
//! admission keeps answering from the caches throughout. Failed attempts are seen where kube
//! reports them (its trace layer's events, through [`KubeFailures`], a tracing layer, since its
//! retries happen below any layer we could add), answers through [`ApiHealthLayer`] on the
//! client.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Where kube's client reports each failed attempt.
pub const KUBE_CLIENT_TARGET: &str = "kube_client::client::builder";

/// The API's state as the webhook saw it last.
pub struct ApiHealth {
    down: AtomicBool,
    failures: AtomicU64,
    metrics: std::sync::OnceLock<Arc<Metrics>>,
}

/// The process's one view of the API (kube's failure events carry no client identity).
pub fn global() -> &'static Arc<ApiHealth> {
    static HEALTH: std::sync::LazyLock<Arc<ApiHealth>> = std::sync::LazyLock::new(ApiHealth::new);
    &HEALTH
}

impl ApiHealth {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            down: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Where the counts go (set once, when serving starts).
    pub fn attach(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Whether the last API call failed (5xx, 429 or no answer).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub fn failed(&self, reason: &dyn std::fmt::Display) {
        if let Some(m) = self.metrics.get() {
            m.api_errors.inc();
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            if let Some(m) = self.metrics.get() {
                m.api_unavailable.set(1);
            }
            tracing::warn!(
                %reason,
                "Kubernetes API unavailable: admission answers from the caches; API calls are retried with backoff"
            );
        }
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            if let Some(m) = self.metrics.get() {
                m.api_unavailable.set(0);
            }
            let failed = self.failures.swap(0, Ordering::Relaxed);
            tracing::warn!(failed_requests = failed, "Kubernetes API available again");
        } else {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

/// The layer to put on the kube client.
#[derive(Clone)]
pub struct ApiHealthLayer(pub Arc<ApiHealth>);

impl<S> Layer<S> for ApiHealthLayer {
    type Service = ApiHealthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiHealthService {
            inner,
            health: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiHealthService<S> {
    inner: S,
    health: Arc<ApiHealth>,
}

impl<S, Req, B> Service<Req> for ApiHealthService<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let call = self.inner.call(req);
        let health = self.health.clone();
        Box::pin(async move {
            let result = call.await;
            // A failed attempt was already counted by KubeFailures; an answer ends an outage.
            if let Ok(response) = &result {
                let status = response.status();
                if !status.is_server_error() && status != http::StatusCode::TOO_MANY_REQUESTS {
                    health.answered();
                }
            }
            result
        })
    }
}

/// The tracing layer that turns kube's per-attempt ERROR events into [`ApiHealth::failed`]
/// (the events themselves are filtered out of the logs by `telemetry`).
pub struct KubeFailures;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for KubeFailures {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == KUBE_CLIENT_TARGET && *meta.level() == tracing::Level::ERROR {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            global().failed(&message.0);
        }
    }
}

/// A kube client for `config` whose calls are observed by `health`.
pub fn client(config: kube::Config, health: &Arc<ApiHealth>) -> Result<kube::Client, kube::Error> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&ApiHealthLayer(health.clone()))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outage_is_one_transition_each_way_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let health = ApiHealth::new();
        health.attach(metrics.clone());
        let status = |code: u16| {
            http::Response::builder()
                .status(code)
                .body(())
                .map_err(|e| e.to_string())
        };
        let mut service =
            ApiHealthLayer(health.clone()).layer(tower::service_fn(move |code: u16| async move {
                status(code)
            }));
        service.call(200).await.unwrap();
        for _ in 0..4 {
            // What KubeFailures does for each of kube's "failed with status" events.
            health.failed(&"failed with status 503");
            service.call(503).await.unwrap();
        }
        assert!(health.is_down());
        let text = metrics.encode();
        assert!(text.contains("stateful_guard_api_errors_total 4"), "{text}");
        assert!(text.contains("stateful_guard_api_unavailable 1"), "{text}");
        service.call(404).await.unwrap();
        assert!(!health.is_down(), "a 404 is an answer");
        assert!(
            metrics
                .encode()
                .contains("stateful_guard_api_unavailable 0")
        );
    }
}
