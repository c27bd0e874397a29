//! What both benchmarks run: the captured reviews, and the hot path from request body to
//! response body (decode, evaluate, encode) with the embedded default policy.
use stateful_guard::admission::{Reviewer, Uninterpretable, response};
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::Phase;
use stateful_guard::policy::PolicySet;

/// The cases: a large StatefulSet CREATE (four mutations), its UPDATE on the validating side
/// (old and new objects), and a PVC.
pub const CASES: [(&str, Phase); 3] = [
    ("statefulset-zookeeper-create.mutating.json", Phase::Mutate),
    (
        "statefulset-zookeeper-update.validating.json",
        Phase::Validate,
    ),
    (
        "pvc-create-default-class-filled.mutating.json",
        Phase::Mutate,
    ),
];

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/admission-reviews/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The policies and cluster view a review is evaluated against.
pub struct HotPath {
    policies: PolicySet,
    cluster: Snapshot,
    runtime: tokio::runtime::Runtime,
}

impl HotPath {
    pub fn new() -> Self {
        Self {
            policies: PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap(),
            cluster: Snapshot::known(vec![], vec![], vec![]),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        }
    }

    /// One review: body in, response body out.
    pub fn review(&self, phase: Phase, body: &[u8]) -> Vec<u8> {
        let reviewer = Reviewer {
            policies: &self.policies,
            cluster: &self.cluster,
            live: None,
            uninterpretable: Uninterpretable::Allow,
            statefulset_controllers: &[],
        };
        self.runtime.block_on(async {
            let (review, _) = reviewer.review(phase, body).await.unwrap();
            response::to_wire(review).unwrap()
        })
    }
}
