//! The memory a review may take, reserved before it is read and decoded.
//!
//! Decoding a review builds k8s-openapi structs several times the size of its JSON (a
//! container's struct is 2,336 bytes whatever its JSON holds; `admission::decode` refuses
//! more than 256 of them), and an UPDATE carries two objects. Without a bound, sixteen
//! concurrent 1 MB reviews took 1.4 GiB and every replica was OOM-killed, which with
//! `failurePolicy: Ignore` means nothing is checked. So each review reserves its estimated cost
//! from a byte budget:
//! - while its body arrives and until it may be evaluated, the bytes it announced (or the
//!   largest body, for a chunked one), from the lane's share for bodies ([`BODY_SHARE`]), so
//!   that bodies can never take the room evaluations need. Until there is room the body is not
//!   read (the client waits, holding only its connection), at most as long as an evaluation
//!   may wait;
//! - to be decoded and evaluated, [`COST_PER_BODY_BYTE`] times its size plus
//!   [`COST_PER_REVIEW`] (at most the lane's share for evaluations): a large review waits for
//!   room (within the time the apiserver gives it) rather than piling up.
//!
//! Small reviews (a PVC is 1.5 KB, a StatefulSet 5 to 20 KB) have a lane of their own, so that
//! their latency holds while large ones queue. `stateful_guard_memory_budget_*` shows both lanes.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{BudgetLabels, Metrics};

/// A review's estimated peak memory, per byte of its body, beyond [`COST_PER_REVIEW`]: lists
/// of small structs (env, ports, mounts) decode into 25 to 30 times their JSON (measured with
/// the release binary: 74 MB for a 2.9 MB UPDATE of 40,000 env vars a side, 24 MB for 825 KB of
/// 990 containers with 12 each).
pub const COST_PER_BODY_BYTE: usize = 32;

/// What any review may take besides: its pod templates' containers, at most
/// `admission::decode::MAX_CONTAINERS` a side, decode into 2,336 bytes each whatever their JSON.
pub const COST_PER_REVIEW: usize = 2 * 1024 * 1024;

/// The part of each lane that bodies may hold while they arrive and wait; the rest is for
/// evaluations.
pub const BODY_SHARE: f64 = 0.25;

/// Bodies up to this size take the small lane.
pub const SMALL_BODY: usize = 64 * 1024;

/// The budget is counted in KiB (a semaphore's permits are `u32`).
const UNIT: usize = 1024;

/// Which lane a review takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Small,
    Large,
}

impl Lane {
    pub const fn as_str(self) -> &'static str {
        match self {
            Lane::Small => "small",
            Lane::Large => "large",
        }
    }
}

/// Why a review got no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No room for the body as it arrives.
    Body,
    /// No room for its evaluation within the time allowed.
    Evaluation,
}

/// One lane: room for bodies, and room for evaluations, in KiB.
struct Pool {
    lane: Lane,
    bodies: Part,
    evaluations: Part,
}

struct Part {
    capacity: usize,
    semaphore: Arc<Semaphore>,
}

impl Part {
    fn new(bytes: usize) -> Self {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Self {
            capacity: units,
            semaphore: Arc::new(Semaphore::new(units)),
        }
    }

    fn units(&self, bytes: usize) -> u32 {
        bytes.div_ceil(UNIT).clamp(1, self.capacity) as u32
    }
}

/// Both lanes.
pub struct MemoryBudget {
    small: Pool,
    large: Pool,
    metrics: Arc<Metrics>,
}

/// Memory reserved by one review; given back when dropped.
pub struct Reservation {
    lane: Lane,
    permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics
            .budget_used
            .get_or_create(&BudgetLabels {
                lane: self.lane.as_str(),
            })
            .dec_by((self.permit.num_permits() * UNIT) as i64);
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes, `small` of them the small lane's.
    pub fn new(total: usize, small: usize, metrics: Arc<Metrics>) -> Self {
        let small = small.min(total / 2).max(UNIT);
        let large = total.saturating_sub(small).max(UNIT);
        let pool = |lane: Lane, bytes: usize| {
            metrics
                .budget_capacity
                .get_or_create(&BudgetLabels {
                    lane: lane.as_str(),
                })
                .set(bytes as i64);
            let for_bodies = (bytes as f64 * BODY_SHARE) as usize;
            Pool {
                lane,
                bodies: Part::new(for_bodies),
                evaluations: Part::new(bytes - for_bodies),
            }
        };
        Self {
            small: pool(Lane::Small, small),
            large: pool(Lane::Large, large),
            metrics,
        }
    }

    fn pool(&self, body: usize) -> &Pool {
        if body <= SMALL_BODY {
            &self.small
        } else {
            &self.large
        }
    }

    fn count(&self, lane: Lane, result: &'static str) {
        self.metrics
            .budget_reservations
            .get_or_create(&crate::metrics::BudgetResultLabels {
                lane: lane.as_str(),
                result,
            })
            .inc();
    }

    /// Room for a body of `announced` bytes (at most `max_body` for one of unknown length)
    /// while it arrives, waiting at most `wait`.
    pub async fn for_body(
        &self,
        announced: Option<usize>,
        max_body: usize,
        wait: Duration,
    ) -> Result<Reservation, Refusal> {
        let bytes = announced.unwrap_or(max_body);
        let pool = self.pool(bytes);
        let units = pool.bodies.units(bytes);
        let semaphore = pool.bodies.semaphore.clone();
        if let Ok(permit) = semaphore.clone().try_acquire_many_owned(units) {
            return Ok(self.reserved(pool.lane, permit));
        }
        match tokio::time::timeout(wait, semaphore.acquire_many_owned(units)).await {
            Ok(Ok(permit)) => Ok(self.reserved(pool.lane, permit)),
            _ => {
                self.count(pool.lane, "refused_body");
                Err(Refusal::Body)
            }
        }
    }

    fn reserved(&self, lane: Lane, permit: OwnedSemaphorePermit) -> Reservation {
        self.metrics
            .budget_used
            .get_or_create(&BudgetLabels {
                lane: lane.as_str(),
            })
            .inc_by((permit.num_permits() * UNIT) as i64);
        Reservation {
            lane,
            permit,
            metrics: self.metrics.clone(),
        }
    }

    /// Room to decode and evaluate a body of `len` bytes, waiting at most `wait`; the body's
    /// own reservation is held until then, and given back once the evaluation's is taken.
    pub async fn for_evaluation(
        &self,
        body: Reservation,
        len: usize,
        wait: Duration,
    ) -> Result<Reservation, Refusal> {
        let pool = self.pool(len);
        let units = pool
            .evaluations
            .units(len.saturating_mul(COST_PER_BODY_BYTE) + COST_PER_REVIEW);
        let semaphore = pool.evaluations.semaphore.clone();
        if let Ok(permit) = semaphore.clone().try_acquire_many_owned(units) {
            drop(body);
            self.count(pool.lane, "at_once");
            return Ok(self.reserved(pool.lane, permit));
        }
        let waited = tokio::time::timeout(wait, semaphore.acquire_many_owned(units)).await;
        drop(body);
        match waited {
            Ok(Ok(permit)) => {
                self.count(pool.lane, "after_waiting");
                Ok(self.reserved(pool.lane, permit))
            }
            _ => {
                self.count(pool.lane, "refused");
                Err(Refusal::Evaluation)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_reviews_wait_their_turn_and_small_ones_keep_their_lane() {
        let metrics = Arc::new(Metrics::new());
        let budget = Arc::new(MemoryBudget::new(
            100 * 1024 * 1024,
            10 * 1024 * 1024,
            metrics.clone(),
        ));
        let mb = 1024 * 1024;
        // A 3 MB review's cost (98 MB) takes the large lane's room for evaluations (67 MB).
        let first = budget
            .for_body(Some(3 * mb), 8 * mb, Duration::ZERO)
            .await
            .unwrap();
        let first = budget
            .for_evaluation(first, 3 * mb, Duration::from_millis(10))
            .await
            .unwrap();
        // A second waits, and gets room as soon as the first is done.
        let second_body = budget
            .for_body(Some(3 * mb), 8 * mb, Duration::ZERO)
            .await
            .unwrap();
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget
                    .for_evaluation(second_body, 3 * mb, Duration::from_secs(5))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Meanwhile small reviews are not held up.
        for _ in 0..100 {
            let body = budget
                .for_body(Some(2000), 8 * mb, Duration::ZERO)
                .await
                .unwrap();
            let r = budget
                .for_evaluation(body, 2000, Duration::ZERO)
                .await
                .unwrap();
            drop(r);
        }
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap());
        // One that cannot get room in time is refused, not queued for ever.
        let hog = budget
            .for_body(Some(3 * mb), 8 * mb, Duration::ZERO)
            .await
            .unwrap();
        let _hog = budget
            .for_evaluation(hog, 3 * mb, Duration::ZERO)
            .await
            .unwrap();
        let late = budget
            .for_body(Some(3 * mb), 8 * mb, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            budget
                .for_evaluation(late, 3 * mb, Duration::from_millis(20))
                .await
                .err(),
            Some(Refusal::Evaluation)
        );
        let text = metrics.encode();
        assert!(
            text.contains("stateful_guard_memory_budget_used_bytes{lane=\"large\"}"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_reserve_the_largest_and_are_refused_without_room() {
        let metrics = Arc::new(Metrics::new());
        // Bodies may hold a quarter of the large lane: 8 MiB of 32.
        let budget = MemoryBudget::new(40 * 1024 * 1024, 8 * 1024 * 1024, metrics);
        let mb = 1024 * 1024;
        let wait = Duration::from_millis(20);
        let held = budget.for_body(None, 8 * mb, wait).await.unwrap();
        assert_eq!(
            budget.for_body(None, 8 * mb, wait).await.err(),
            Some(Refusal::Body)
        );
        drop(held);
        assert!(budget.for_body(None, 8 * mb, wait).await.is_ok());
    }
}
