//! decode → evaluate → response, on arbitrary bodies, through both webhooks: no panic, and a
//! response whose size does not grow with the input beyond the object's own echo (the uid).
#![no_main]
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stateful_guard::admission::{Reviewer, Uninterpretable, response};
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::Phase;
use stateful_guard::policy::PolicySet;

static POLICIES: LazyLock<PolicySet> =
    LazyLock::new(|| PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap());
static CLUSTER: LazyLock<Snapshot> = LazyLock::new(|| Snapshot::known(vec![], vec![], vec![]));
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
});
static CONTROLLERS: LazyLock<Vec<String>> = LazyLock::new(|| {
    stateful_guard::admission::DEFAULT_STATEFULSET_CONTROLLERS
        .map(String::from)
        .to_vec()
});

/// The response may echo the request's uid (bounded by the body) and carries bounded
/// warnings, annotations, a bounded denial and a patch that only grows with the claim
/// templates and the selector it copies (both part of the body).
const FIXED_BUDGET: usize = 160 * 1024;

fuzz_target!(|body: &[u8]| {
    let reviewer = Reviewer {
        policies: &POLICIES,
        cluster: &*CLUSTER,
        live: None,
        uninterpretable: Uninterpretable::Allow,
        statefulset_controllers: &CONTROLLERS,
        live_claim_owners: false,
    };
    for phase in [Phase::Mutate, Phase::Validate] {
        let Ok((review, _)) = RUNTIME.block_on(reviewer.review(phase, body)) else {
            continue;
        };
        let wire = response::to_wire(review).expect("a response always encodes");
        assert!(
            wire.len() <= FIXED_BUDGET + 4 * body.len(),
            "response of {} bytes for a body of {}",
            wire.len(),
            body.len()
        );
    }
});
