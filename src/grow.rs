//! The resize of existing claims after a claim template grew (`serve --grow-volumes`).
//!
//! `volume-growth` records the size a manifest asks for on the StatefulSet
//! (`stateful-guard.io/claim-sizes`); new replicas' claims get it at admission. The claims that
//! already exist are resized here, by the replica that holds the Lease (the same election as the
//! background audit's PolicyReports): each claim `<template>-<statefulset>-<ordinal>` below its
//! recorded size is patched to it, when it is Bound (the apiserver resizes nothing else). It
//! never shrinks and never deletes anything. Each claim's state (pending, growing, done,
//! failed) is counted in `stateful_guard_claims{state}`, each change of it is an Event on the
//! StatefulSet, and a refusal (a class without expansion, a quota) is retried with backoff (5 s
//! doubling to 10 min); a grown claim is looked at again every 10 minutes. `/report` lists every
//! claim's state under `growth`, and with `--background-audit` each StatefulSet's progress is a
//! result of its namespace's PolicyReport (`audit::reports`).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::audit::lease::Leadership;
use crate::claim_sizes::{bytes, storage};
use crate::cluster::cache::ClusterCache;
use crate::cluster::cached::ClaimTemplates;
use crate::metrics::{ClaimLabels, Metrics};

/// How often the claims are looked at: a claim is asked for its new size within seconds of the
/// manifest's change.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How often a claim already grown is looked at again.
const DONE_RECHECK: Duration = Duration::from_secs(600);
/// The longest wait before a failed claim is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Where a claim stands against its recorded size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimState {
    /// Not Bound yet (or not created yet): nothing to resize.
    Pending(String),
    /// Requested at the recorded size; the volume is not that large yet.
    Growing,
    /// Its capacity is the recorded size.
    Done,
    /// The apiserver refused the resize, in its words.
    Failed(String),
}

impl ClaimState {
    pub const PENDING: &'static str = "pending";
    pub const GROWING: &'static str = "growing";
    pub const DONE: &'static str = "done";
    pub const FAILED: &'static str = "failed";
    /// Every state's label, as `stateful_guard_claims{state}` and the PolicyReports count them.
    pub const LABELS: [&'static str; 4] = [Self::PENDING, Self::GROWING, Self::DONE, Self::FAILED];

    pub const fn label(&self) -> &'static str {
        match self {
            ClaimState::Pending(_) => Self::PENDING,
            ClaimState::Growing => Self::GROWING,
            ClaimState::Done => Self::DONE,
            ClaimState::Failed(_) => Self::FAILED,
        }
    }
}

fn storage_of(pvc: &PersistentVolumeClaim) -> (Option<u128>, Option<u128>) {
    let requested = storage(pvc.spec.as_ref()).and_then(bytes);
    let capacity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| bytes(&q.0));
    (requested, capacity)
}

/// One claim: read it, and ask for `size` if it is Bound and smaller. The requests it sends are
/// a GET and, when needed, one merge PATCH of `spec.resources.requests.storage`.
pub async fn grow_claim(
    api: &Api<PersistentVolumeClaim>,
    claim: &str,
    size: &str,
) -> Result<ClaimState, kube::Error> {
    let Some(wanted) = bytes(size) else {
        return Ok(ClaimState::Failed(format!("{size:?} is not a quantity")));
    };
    let Some(pvc) = api.get_opt(claim).await? else {
        return Ok(ClaimState::Pending("not created yet".into()));
    };
    let (requested, capacity) = storage_of(&pvc);
    if requested.is_some_and(|r| r >= wanted) {
        return Ok(if capacity.is_some_and(|c| c >= wanted) {
            ClaimState::Done
        } else {
            ClaimState::Growing
        });
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Bound") {
        return Ok(ClaimState::Pending(format!(
            "phase {}: only a Bound claim can be resized",
            phase.unwrap_or("unknown")
        )));
    }
    let body = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
    match api
        .patch(claim, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(ClaimState::Growing),
        Err(kube::Error::Api(status)) => Ok(ClaimState::Failed(status.message)),
        Err(other) => Err(other),
    }
}

/// One claim's progress, as `/report` shows it under `growth`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClaimProgress {
    pub namespace: String,
    pub statefulset: String,
    pub claim: String,
    /// The size recorded for its template.
    pub size: String,
    /// `pending`, `growing`, `done` or `failed`.
    pub state: &'static str,
    /// Why it is pending or failed, in the apiserver's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The last round's progress of every claim being grown, for `/report` and the PolicyReports.
#[derive(Debug, Default)]
pub struct Progress {
    claims: std::sync::Mutex<Vec<ClaimProgress>>,
    changed: tokio::sync::Notify,
}

impl Progress {
    pub fn claims(&self) -> Vec<ClaimProgress> {
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves once the progress changed since the last time it resolved (a change while
    /// nobody waits is kept for the next wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn set(&self, claims: Vec<ClaimProgress>) {
        let mut current = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if *current != claims {
            *current = claims;
            self.changed.notify_one();
        }
    }
}

/// What the grower remembers of each claim between rounds.
#[derive(Default)]
struct Seen {
    state: Option<ClaimState>,
    failures: u32,
    next_try: Option<Instant>,
}

/// Runs until the process ends: every [`INTERVAL`], while this replica leads, each StatefulSet
/// with recorded sizes has its claims brought to them.
pub async fn run(
    cache: ClusterCache,
    client: kube::Client,
    mut leadership: Leadership,
    metrics: Arc<Metrics>,
    identity: String,
    progress: Arc<Progress>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "stateful-guard".into(),
            instance: Some(identity),
        },
    );
    let mut seen: HashMap<(String, String), Seen> = HashMap::new();
    loop {
        tokio::time::sleep(INTERVAL).await;
        if !leadership.is_leader_now() || !cache.is_synced() {
            continue;
        }
        let mut shown = Vec::new();
        for (namespace, owner) in cache.grown_statefulsets() {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
            for ordinal in owner.ordinals() {
                for (template, size) in &owner.sizes {
                    let claim = format!("{template}-{}-{ordinal}", owner.statefulset);
                    let key = (namespace.clone(), claim.clone());
                    let entry = seen.entry(key).or_default();
                    let show = |state: &ClaimState| ClaimProgress {
                        namespace: namespace.clone(),
                        statefulset: owner.statefulset.clone(),
                        claim: claim.clone(),
                        size: size.clone(),
                        state: state.label(),
                        detail: match state {
                            ClaimState::Pending(why) | ClaimState::Failed(why) => {
                                Some(why.chars().take(512).collect())
                            }
                            _ => None,
                        },
                    };
                    if entry.next_try.is_some_and(|t| Instant::now() < t) {
                        if let Some(state) = &entry.state {
                            shown.push(show(state));
                        }
                        continue;
                    }
                    let state = match grow_claim(&api, &claim, size).await {
                        Ok(state) => state,
                        Err(error) => ClaimState::Failed(error.to_string()),
                    };
                    shown.push(show(&state));
                    match state {
                        ClaimState::Failed(_) => {
                            entry.failures += 1;
                            let backoff = INTERVAL
                                .saturating_mul(1 << entry.failures.min(7))
                                .min(MAX_BACKOFF);
                            entry.next_try = Some(Instant::now() + backoff);
                        }
                        ClaimState::Done => {
                            entry.failures = 0;
                            entry.next_try = Some(Instant::now() + DONE_RECHECK);
                        }
                        _ => {
                            entry.failures = 0;
                            entry.next_try = None;
                        }
                    }
                    if entry.state.as_ref() != Some(&state) {
                        report(&recorder, &namespace, &owner, &claim, size, &state).await;
                        entry.state = Some(state);
                    }
                }
            }
        }
        for state in ClaimState::LABELS {
            let count = shown.iter().filter(|c| c.state == state).count();
            metrics
                .claims
                .get_or_create(&ClaimLabels { state })
                .set(count as i64);
        }
        // Claims no StatefulSet asks for any more (deleted, scaled in, its growth recorded
        // elsewhere) are forgotten: the memory holds this round's claims only.
        let current: std::collections::HashSet<(&str, &str)> = shown
            .iter()
            .map(|c| (c.namespace.as_str(), c.claim.as_str()))
            .collect();
        seen.retain(|(namespace, claim), _| {
            current.contains(&(namespace.as_str(), claim.as_str()))
        });
        progress.set(shown);
    }
}

/// The apiserver's limit on an Event's note, in bytes (`NoteLengthLimit`).
const NOTE_BYTES: usize = 1024;

/// `s` cut to at most `max` bytes, at a character boundary (the apiserver counts a note's
/// bytes, and a reason from a third party's denial may hold any character).
fn cut_to_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An Event on the StatefulSet for a claim whose state changed.
async fn report(
    recorder: &Recorder,
    namespace: &str,
    owner: &ClaimTemplates,
    claim: &str,
    size: &str,
    state: &ClaimState,
) {
    let statefulset = owner.statefulset.as_str();
    let (type_, reason, note) = match state {
        ClaimState::Pending(why) => (
            EventType::Normal,
            "ClaimGrowthPending",
            format!("claim {claim} is not resized to {size} yet: {why}"),
        ),
        ClaimState::Growing => (
            EventType::Normal,
            "ClaimGrowing",
            format!("claim {claim} requested at {size}; waiting for the volume to grow"),
        ),
        ClaimState::Done => (
            EventType::Normal,
            "ClaimGrown",
            format!("claim {claim} is {size}"),
        ),
        ClaimState::Failed(why) => (
            EventType::Warning,
            "ClaimGrowthFailed",
            format!("claim {claim} cannot be resized to {size}: {why} (retried with backoff)"),
        ),
    };
    // Regarding the StatefulSet, with its uid (`kubectl describe` selects Events by uid);
    // related to the claim, which also keeps one claim's Events apart from another's (kube's
    // Recorder merges Events with the same key into a series, and a series keeps its first note).
    let reference = ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("StatefulSet".into()),
        name: Some(statefulset.into()),
        namespace: Some(namespace.into()),
        uid: owner.uid.clone(),
        ..Default::default()
    };
    let related = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: Some(claim.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(cut_to_bytes(&note, NOTE_BYTES).to_owned()),
        action: "Resize".into(),
        secondary: Some(related),
    };
    if let Err(error) = recorder.publish(&event, &reference).await {
        tracing::warn!(%error, statefulset, claim, "cannot record an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn claim(storage: &str, phase: &str, capacity: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-db-0", "namespace": "grow"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
            "status": {"phase": phase, "capacity": capacity.map(|c| serde_json::json!({"storage": c}))}
        })
    }

    /// Answers the next request, checking its method and path; returns its body.
    async fn answer(
        handle: &mut Handle,
        method: http::Method,
        path: &str,
        status: u16,
        reply: serde_json::Value,
    ) -> serde_json::Value {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), method);
        assert_eq!(request.uri().path(), path);
        let body = request.into_body().collect_bytes().await.unwrap();
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        }
    }

    const PATH: &str = "/api/v1/namespaces/grow/persistentvolumeclaims/data-db-0";

    fn mock_api() -> (Api<PersistentVolumeClaim>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (
            Api::namespaced(kube::Client::new(service, "default"), "grow"),
            handle,
        )
    }

    /// `grow_claim` to 2Gi started, and its GET answered with `current`.
    async fn growing(
        current: serde_json::Value,
    ) -> (
        tokio::task::JoinHandle<Result<ClaimState, kube::Error>>,
        Handle,
    ) {
        let (api, mut handle) = mock_api();
        let grow = tokio::spawn(async move { grow_claim(&api, "data-db-0", "2Gi").await });
        answer(&mut handle, http::Method::GET, PATH, 200, current).await;
        (grow, handle)
    }

    #[tokio::test]
    async fn a_bound_claim_below_its_size_is_patched_to_it() {
        let (grow, mut handle) = growing(claim("1Gi", "Bound", Some("1Gi"))).await;
        let patch = answer(
            &mut handle,
            http::Method::PATCH,
            PATH,
            200,
            claim("2Gi", "Bound", Some("1Gi")),
        )
        .await;
        assert_eq!(
            patch,
            serde_json::json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
        );
        assert_eq!(grow.await.unwrap().unwrap(), ClaimState::Growing);
    }

    #[tokio::test]
    async fn a_claim_not_bound_is_only_read_and_a_grown_one_is_done() {
        let (grow, _handle) = growing(claim("1Gi", "Pending", None)).await;
        assert!(
            matches!(grow.await.unwrap().unwrap(), ClaimState::Pending(why) if why.contains("Bound"))
        );
        let (grow, _handle) = growing(claim("2Gi", "Bound", Some("2Gi"))).await;
        assert_eq!(grow.await.unwrap().unwrap(), ClaimState::Done);
        // Never shrinks: a claim larger than the recorded size is left as it is.
        let (grow, _handle) = growing(claim("5Gi", "Bound", Some("5Gi"))).await;
        assert_eq!(grow.await.unwrap().unwrap(), ClaimState::Done);
    }

    #[tokio::test]
    async fn a_refusal_is_reported_in_the_apiservers_words() {
        let (grow, mut handle) = growing(claim("1Gi", "Bound", Some("1Gi"))).await;
        let message = "persistentvolumeclaims \"data-db-0\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";
        answer(
            &mut handle,
            http::Method::PATCH,
            PATH,
            403,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": "Forbidden", "code": 403}),
        )
        .await;
        assert_eq!(
            grow.await.unwrap().unwrap(),
            ClaimState::Failed(message.into())
        );
    }

    /// The Event `kubectl describe statefulset` shows: regarding the StatefulSet by uid, related
    /// to the claim, its note within the apiserver's 1024 bytes whatever the reason's characters.
    #[tokio::test]
    async fn an_event_names_the_statefulset_by_uid_and_the_claim() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let recorder = Recorder::new(
            kube::Client::new(service, "default"),
            Reporter {
                controller: "stateful-guard".into(),
                instance: Some("pod-1".into()),
            },
        );
        let owner = ClaimTemplates {
            statefulset: "db".into(),
            templates: vec!["data".into()],
            sizes: vec![("data".into(), "2Gi".into())],
            replicas: 1,
            start: 0,
            uid: Some("u-1".into()),
        };
        let why = "é".repeat(2000);
        let state = ClaimState::Failed(why);
        let publish = async move {
            report(&recorder, "grow", &owner, "data-db-0", "2Gi", &state).await;
        };
        let apiserver = async move {
            answer(
                &mut handle,
                http::Method::POST,
                "/apis/events.k8s.io/v1/namespaces/grow/events",
                201,
                serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "grow"}, "eventTime": "2026-12-06T00:00:00.000000Z"}),
            )
            .await
        };
        let ((), event) = tokio::join!(publish, apiserver);
        assert_eq!(event["regarding"]["kind"], "StatefulSet");
        assert_eq!(event["regarding"]["uid"], "u-1");
        assert_eq!(event["related"]["kind"], "PersistentVolumeClaim");
        assert_eq!(event["related"]["name"], "data-db-0");
        assert_eq!(event["reason"], "ClaimGrowthFailed");
        let note = event["note"].as_str().unwrap();
        assert!(note.len() <= 1024, "{} bytes", note.len());
        assert!(note.starts_with("claim data-db-0 cannot be resized to 2Gi: é"));
    }

    #[tokio::test]
    async fn a_change_of_progress_is_announced_and_an_unchanged_round_is_not() {
        let progress = Progress::default();
        let claim = ClaimProgress {
            namespace: "db".into(),
            statefulset: "pg".into(),
            claim: "data-pg-0".into(),
            size: "2Gi".into(),
            state: ClaimState::GROWING,
            detail: None,
        };
        // Set while nobody waits (the audit was writing): kept for its next wait.
        progress.set(vec![claim.clone()]);
        tokio::time::timeout(Duration::from_secs(5), progress.changed())
            .await
            .expect("the change is announced");
        progress.set(vec![claim.clone()]);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), progress.changed())
                .await
                .is_err(),
            "the same progress again is no change"
        );
        progress.set(vec![ClaimProgress {
            state: ClaimState::DONE,
            ..claim
        }]);
        tokio::time::timeout(Duration::from_secs(5), progress.changed())
            .await
            .expect("a claim done is a change");
    }
}
