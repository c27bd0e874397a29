//! What bounds the live reads a review may cause.
//!
//! The caches answer every review. A few questions are read live when the cache misses (a PDB
//! or a namespace created a moment ago): without a bound, any tenant who can create
//! StatefulSets (dry runs included) could make the webhook's ServiceAccount send thousands of
//! LISTs a second. So each live read is:
//! - **de-duplicated**: one read in flight per question (kind and namespace); the reviews that
//!   ask meanwhile share its answer;
//! - **remembered briefly** ([`REMEMBER`]) when it found nothing (no PDB, no such namespace,
//!   no StatefulSet): the answer a flood of hostile reviews would get. An answer that found
//!   something is not remembered, so a change right after it (a relabelled namespace) is seen
//!   by the next read, and the watch brings it into the cache anyway;
//! - **rate limited** globally ([`RATE`] a second, bursts of [`BURST`]); past it, the review is
//!   answered from the cache, as when the apiserver does not answer;
//! - **paged** ([`PAGE`] objects, at most [`MAX_PAGES`] pages) and bounded in time by the caller.
//!
//! `stateful_guard_live_reads_total{kind, result}` counts them.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::metrics::{LiveReadLabels, Metrics};

/// How long a live answer is reused.
pub const REMEMBER: Duration = Duration::from_secs(2);
/// Live reads a second, across every kind, in the long run.
pub const RATE: f64 = 10.0;
/// Live reads allowed at once after a quiet time.
pub const BURST: f64 = 20.0;
/// Objects per page of a live list.
pub const PAGE: u32 = 100;
/// Pages of one live list; past them the list is treated as failed (the cache decides).
pub const MAX_PAGES: usize = 20;
/// Questions remembered at most; past it, answers are not remembered until old ones expire.
const MAX_REMEMBERED: usize = 4096;

/// What a live read is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveKind {
    PodDisruptionBudgets,
    Namespace,
    StatefulSets,
}

impl LiveKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            LiveKind::PodDisruptionBudgets => "poddisruptionbudgets",
            LiveKind::Namespace => "namespace",
            LiveKind::StatefulSets => "statefulsets",
        }
    }
}

/// How a live question was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveResult {
    /// Read from the apiserver.
    Read,
    /// Shared with a read already in flight.
    Coalesced,
    /// A recent answer reused.
    Remembered,
    /// Refused by the rate limit: the cache decides.
    Limited,
    /// The apiserver did not answer in time, or refused.
    Failed,
}

impl LiveResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            LiveResult::Read => "read",
            LiveResult::Coalesced => "coalesced",
            LiveResult::Remembered => "remembered",
            LiveResult::Limited => "rate_limited",
            LiveResult::Failed => "failed",
        }
    }
}

/// Why a live read gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LiveError {
    #[error("live {} reads are rate limited ({RATE}/s); the cache decides", .0.as_str())]
    Limited(LiveKind),
    #[error("{0}")]
    Failed(Arc<str>),
}

type Key = (LiveKind, String);
type Answer<V> = Result<V, LiveError>;

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The bounds shared by every live read of one process.
pub struct Guard {
    bucket: Mutex<Bucket>,
    metrics: Option<Arc<Metrics>>,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Guard {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                at: Instant::now(),
            }),
            metrics,
        }
    }

    fn count(&self, kind: LiveKind, result: LiveResult) {
        if let Some(metrics) = &self.metrics {
            metrics
                .live_reads
                .get_or_create(&LiveReadLabels {
                    kind: kind.as_str(),
                    result: result.as_str(),
                })
                .inc();
        }
    }

    fn allow(&self) -> bool {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now())
    }
}

/// One kind of live question: its reads in flight and its recent answers.
pub struct Questions<V: Clone + Send + Sync + 'static> {
    kind: LiveKind,
    guard: Arc<Guard>,
    /// Whether an answer found nothing (and may be remembered).
    empty: fn(&V) -> bool,
    #[allow(clippy::type_complexity)]
    state: Mutex<State<V>>,
}

struct State<V: Clone + Send + Sync + 'static> {
    in_flight: HashMap<Key, Shared<BoxFuture<'static, Answer<V>>>>,
    remembered: HashMap<Key, (Instant, V)>,
}

impl<V: Clone + Send + Sync + 'static> Questions<V> {
    /// Questions of `kind`; `empty` says which answers found nothing.
    pub fn new(kind: LiveKind, guard: Arc<Guard>, empty: fn(&V) -> bool) -> Self {
        Self {
            kind,
            guard,
            empty,
            state: Mutex::new(State {
                in_flight: HashMap::new(),
                remembered: HashMap::new(),
            }),
        }
    }

    /// The answer about `namespace`: remembered, shared with a read in flight, or read now by
    /// `read` if the rate limit allows.
    pub async fn ask<F, Fut, E>(&self, namespace: &str, read: F) -> Answer<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let key: Key = (self.kind, namespace.to_owned());
        let (shared, result) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if let Some((at, value)) = state.remembered.get(&key)
                && now.saturating_duration_since(*at) < REMEMBER
            {
                let value = value.clone();
                drop(state);
                self.guard.count(self.kind, LiveResult::Remembered);
                return Ok(value);
            }
            match state.in_flight.get(&key) {
                Some(shared) => (shared.clone(), LiveResult::Coalesced),
                None => {
                    if !self.guard.allow() {
                        drop(state);
                        self.guard.count(self.kind, LiveResult::Limited);
                        return Err(LiveError::Limited(self.kind));
                    }
                    let fut = read();
                    let shared = async move {
                        fut.await
                            .map_err(|e| LiveError::Failed(Arc::from(e.to_string())))
                    }
                    .boxed()
                    .shared();
                    state.in_flight.insert(key.clone(), shared.clone());
                    (shared, LiveResult::Read)
                }
            }
        };
        let answer = shared.await;
        if result == LiveResult::Read {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.in_flight.remove(&key);
            if let Ok(value) = &answer
                && (self.empty)(value)
            {
                let now = Instant::now();
                if state.remembered.len() >= MAX_REMEMBERED {
                    state
                        .remembered
                        .retain(|_, (at, _)| now.saturating_duration_since(*at) < REMEMBER);
                }
                if state.remembered.len() < MAX_REMEMBERED {
                    state.remembered.insert(key, (now, value.clone()));
                }
            }
        }
        let counted = match (&answer, result) {
            (Err(_), LiveResult::Read) => LiveResult::Failed,
            (_, result) => result,
        };
        self.guard.count(self.kind, counted);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_read_in_flight_per_question_then_remembered() {
        let guard = Arc::new(Guard::default());
        let questions: Arc<Questions<Vec<u8>>> = Arc::new(Questions::new(
            LiveKind::PodDisruptionBudgets,
            guard,
            Vec::is_empty,
        ));
        let reads = Arc::new(AtomicUsize::new(0));
        let ask = |ns: &'static str| {
            let (questions, reads) = (questions.clone(), reads.clone());
            async move {
                questions
                    .ask(ns, move || async move {
                        reads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(if ns == "full" { vec![1] } else { vec![] })
                    })
                    .await
            }
        };
        let answers = futures::future::join_all((0..10).map(|_| ask("a"))).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(v) if v.is_empty())));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "ten reviews, one read");
        // "Nothing" is answered from memory now; another namespace is another question.
        assert!(ask("a").await.is_ok());
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(ask("b").await.is_ok());
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // An answer that found something is read again next time.
        assert_eq!(ask("full").await.unwrap(), vec![1]);
        assert_eq!(ask("full").await.unwrap(), vec![1]);
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_rate_limit_refuses_past_the_burst() {
        let guard = Arc::new(Guard::default());
        let questions: Questions<()> = Questions::new(LiveKind::Namespace, guard, |_| false);
        let mut limited = 0;
        for i in 0..(BURST as usize + 10) {
            let ns = format!("ns-{i}");
            match questions.ask(&ns, || async { Ok::<_, String>(()) }).await {
                Err(LiveError::Limited(_)) => limited += 1,
                Ok(()) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(limited >= 9, "{limited}");
    }

    #[tokio::test]
    async fn failures_are_not_remembered() {
        let questions: Questions<()> =
            Questions::new(LiveKind::StatefulSets, Arc::new(Guard::default()), |_| true);
        let answer = questions
            .ask("a", || async { Err::<(), _>("refused") })
            .await;
        assert!(matches!(answer, Err(LiveError::Failed(ref m)) if &**m == "refused"));
        assert!(
            questions
                .ask("a", || async { Ok::<_, String>(()) })
                .await
                .is_ok()
        );
    }
}
