//! Leader election on a `coordination.k8s.io/v1` Lease: of the webhook's replicas, only the
//! holder writes PolicyReports (every replica scans and serves its results).
//!
//! As client-go's leader election does, expiry is judged by this process's own clock: a Lease
//! held by another replica is taken over only after its record has not changed for a whole
//! lease duration as observed here, so clock skew between nodes cannot split the leadership.
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// The Lease's name, in the webhook's namespace.
pub const LEASE_NAME: &str = "stateful-guard-audit";
/// How long a holder's Lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and others look.
const RETRY: Duration = Duration::from_secs(5);
/// One Lease API call's budget.
const CALL_BUDGET: Duration = Duration::from_secs(5);

/// Whether this replica holds the Lease, kept current by [`Elector::run`].
#[derive(Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Whether this replica holds the Lease now, marking the state seen: [`Self::elected`] then
    /// waits for the next election.
    pub fn is_leader_now(&mut self) -> bool {
        *self.0.borrow_and_update()
    }

    /// Waits until this replica becomes the holder (at once if it became one since the last
    /// call). Never returns once the elector has stopped.
    pub async fn elected(&mut self) {
        loop {
            if self.0.changed().await.is_err() {
                return std::future::pending().await;
            }
            if *self.0.borrow_and_update() {
                return;
            }
        }
    }
}

/// What identifies one state of the Lease: its holder and last renewal.
type Record = (Option<String>, Option<MicroTime>);

pub struct Elector {
    api: Api<Lease>,
    identity: String,
    leader: watch::Sender<bool>,
    /// The holder and renew time last seen, and when they were first seen so.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(client: kube::Client, namespace: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
            leader: watch::Sender::new(false),
            observed: None,
        }
    }

    pub fn leadership(&self) -> Leadership {
        Leadership(self.leader.subscribe())
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: create, renew or take over the Lease. Whether this replica holds it now.
    async fn round(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(LEASE_NAME.to_owned()),
                    ..Default::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone();
        let record = (holder.clone(), spec.renew_time.clone());
        let now = Instant::now();
        let unchanged_since = match &self.observed {
            Some((seen, since)) if *seen == record => *since,
            _ => now,
        };
        self.observed = Some((record, unchanged_since));
        let duration = spec
            .lease_duration_seconds
            .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(1) as u64));
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let expired = holder.as_deref().is_none_or(str::is_empty)
            || now.duration_since(unchanged_since) > duration;
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(transitions, acquired));
        // The resourceVersion read above makes this a compare-and-swap: of two replicas taking
        // over at once, one gets 409.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (holder empty), so another replica takes over at its next round
    /// instead of after a whole lease duration, as client-go's ReleaseOnCancel does.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        self.api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// Elects until `stop` (the process's shutdown), then gives the Lease up if it holds it.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut logged_error = false;
        let mut first = true;
        loop {
            let now = match tokio::time::timeout(CALL_BUDGET, self.round()).await {
                Ok(Ok(leader)) => {
                    logged_error = false;
                    leader
                }
                Ok(Err(error)) => {
                    if !logged_error {
                        tracing::warn!(%error, lease = LEASE_NAME, "background audit: leader election failed; not writing PolicyReports until it succeeds");
                        logged_error = true;
                    }
                    false
                }
                Err(_) => false,
            };
            let changed = self
                .leader
                .send_if_modified(|leader| std::mem::replace(leader, now) != now);
            if changed || first {
                first = false;
                tracing::info!(
                    identity = %self.identity,
                    leader = now,
                    "background audit: PolicyReport writer {}",
                    if now { "elected" } else { "is another replica" }
                );
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = &mut stop => break,
            }
        }
        self.leader.send_replace(false);
        match tokio::time::timeout(CALL_BUDGET, self.release()).await {
            Ok(Ok(())) => {
                tracing::info!(identity = %self.identity, "background audit: shutting down, the PolicyReport writer's Lease is released")
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "background audit: could not release the Lease; another replica takes over when it expires")
            }
            Err(_) => tracing::warn!(
                "background audit: releasing the Lease timed out; another replica takes over when it expires"
            ),
        }
    }
}
