//! Who may read `/metrics` and `/report` on the metrics listener (`--metrics-listen`).
//!
//! Both describe every namespace (the report lists each StatefulSet and PVC with its findings),
//! so they are not for any pod that reaches the port. As Kubernetes' own components and
//! kube-rbac-proxy do, the webhook delegates the decision to the apiserver: the caller's bearer
//! token is checked with a TokenReview, and the user it names must be allowed `get` on the
//! non-resource URL (`/metrics` or `/report`) by a SubjectAccessReview. A ClusterRole such as
//! `stateful-guard-metrics-reader` (in `deploy/`) grants it to Prometheus.
//!
//! Decisions are remembered for a minute (a refusal for ten seconds), by a hash of the token
//! and the path, for at most [`MAX_REMEMBERED`] tokens, so a scraper costs two API calls a
//! minute and a flood of bad tokens is bounded by the connection limits. Without a cluster
//! connection nothing can be delegated: the endpoints then answer loopback clients only, as
//! their copies on the webhook port always do (without `--metrics-listen`).
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// How long an allowed caller is remembered.
const ALLOWED_FOR: Duration = Duration::from_secs(60);
/// How long a refused one is.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Tokens remembered at most.
const MAX_REMEMBERED: usize = 1024;
/// How long the apiserver has to answer.
const REVIEW_BUDGET: Duration = Duration::from_secs(5);

/// How callers of the metrics listener are checked.
#[derive(Clone)]
pub enum MetricsAuth {
    /// TokenReview and SubjectAccessReview through this client.
    Delegated(Arc<Delegated>),
    /// Loopback clients only (no cluster connection to delegate to, or the webhook port's own
    /// copy); the refusal says why.
    LoopbackOnly(&'static str),
}

/// The metrics listener's refusal of a remote client when it has no cluster connection.
pub const NO_CLUSTER: &str = "without a cluster connection, only loopback clients may read this";

/// The webhook port's refusal of a remote client of `/metrics` or `/report`: both describe
/// every namespace, and any pod reaches that port.
pub const WEBHOOK_PORT: &str = "on the webhook port only loopback clients may read this; serve it with --metrics-listen, which asks the apiserver who may";

/// Delegated checks and what they decided lately.
pub struct Delegated {
    client: kube::Client,
    hasher: std::collections::hash_map::RandomState,
    decided: Mutex<HashMap<(u64, String), (Instant, bool)>>,
}

impl Delegated {
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            hasher: Default::default(),
            decided: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, token: &str, path: &str) -> (u64, String) {
        let mut h = self.hasher.build_hasher();
        h.write(token.as_bytes());
        (h.finish(), path.to_owned())
    }

    /// Whether the bearer of `token` may `get` `path`; an error when the apiserver could not
    /// say.
    pub async fn allowed(&self, token: &str, path: &str) -> Result<bool, kube::Error> {
        let key = self.key(token, path);
        if let Some(&(at, allowed)) = self
            .decided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            let fresh = if allowed { ALLOWED_FOR } else { REFUSED_FOR };
            if at.elapsed() < fresh {
                return Ok(allowed);
            }
        }
        let allowed = self.review(token, path).await?;
        let mut decided = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        if decided.len() >= MAX_REMEMBERED {
            decided.retain(|_, (at, allowed)| {
                at.elapsed() < if *allowed { ALLOWED_FOR } else { REFUSED_FOR }
            });
        }
        if decided.len() < MAX_REMEMBERED {
            decided.insert(key, (Instant::now(), allowed));
        }
        Ok(allowed)
    }

    async fn review(&self, token: &str, path: &str) -> Result<bool, kube::Error> {
        let tokens: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = tokio::time::timeout(
            REVIEW_BUDGET,
            tokens.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| timed_out())??;
        let Some(status) = reviewed.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(false);
        };
        let Some(user) = status.user else {
            return Ok(false);
        };
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let question = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answered = tokio::time::timeout(
            REVIEW_BUDGET,
            access.create(&PostParams::default(), &question),
        )
        .await
        .map_err(|_| timed_out())??;
        Ok(answered.status.is_some_and(|s| s.allowed))
    }
}

fn timed_out() -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the apiserver did not answer within 5 s",
    )))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The middleware: a request goes on only if its caller may read its path.
pub async fn require(State(auth): State<MetricsAuth>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    match &auth {
        MetricsAuth::LoopbackOnly(why) => {
            let loopback = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
            if !loopback {
                return refuse(StatusCode::FORBIDDEN, why);
            }
        }
        MetricsAuth::Delegated(delegated) => {
            let token = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 16 * 1024);
            let Some(token) = token else {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "a bearer token allowed to get this path is required",
                );
            };
            match delegated.allowed(token, &path).await {
                Ok(true) => {}
                Ok(false) => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "this token is not allowed to get this path (RBAC: nonResourceURLs, verb get)",
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot review a metrics caller's token");
                    return refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the apiserver could not check the token; retry",
                    );
                }
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    /// The requests a check sends, answered as an apiserver would (kube's mock client, as
    /// controller-rs tests its reconciler).
    async fn answer(
        handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
        path: &str,
        reply: serde_json::Value,
    ) -> serde_json::Value {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri().path(), path);
        let body = request.into_body().collect_bytes().await.unwrap();
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn a_token_is_reviewed_then_its_user_asked_and_the_answer_remembered() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let delegated = Delegated::new(kube::Client::new(service, "default"));
        let asking = {
            let delegated = delegated.clone();
            tokio::spawn(async move { delegated.allowed("secret-token", "/report").await })
        };
        let review = answer(
            &mut handle,
            "/apis/authentication.k8s.io/v1/tokenreviews",
            serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": "secret-token"},
                "status": {"authenticated": true, "user": {"username": "system:serviceaccount:monitoring:prometheus", "groups": ["system:serviceaccounts"]}}
            }),
        )
        .await;
        assert_eq!(review["spec"]["token"], "secret-token");
        let question = answer(
            &mut handle,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {}, "status": {"allowed": true}
            }),
        )
        .await;
        assert_eq!(
            question["spec"]["user"],
            "system:serviceaccount:monitoring:prometheus"
        );
        assert_eq!(
            question["spec"]["nonResourceAttributes"],
            serde_json::json!({"path": "/report", "verb": "get"})
        );
        assert!(asking.await.unwrap().unwrap());
        // Remembered: no request this time.
        assert!(delegated.allowed("secret-token", "/report").await.unwrap());
    }

    #[tokio::test]
    async fn an_unauthenticated_token_is_refused_without_asking_for_access() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let delegated = Delegated::new(kube::Client::new(service, "default"));
        let asking = {
            let delegated = delegated.clone();
            tokio::spawn(async move { delegated.allowed("stolen", "/metrics").await })
        };
        answer(
            &mut handle,
            "/apis/authentication.k8s.io/v1/tokenreviews",
            serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": "stolen"}, "status": {"authenticated": false}
            }),
        )
        .await;
        assert!(!asking.await.unwrap().unwrap());
    }
}
