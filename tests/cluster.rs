//! The cluster side of a review when the apiserver is overloaded (every request answered 503,
//! which kube's client retries for minutes): reviews are still answered in time.
mod common;

use std::time::Duration;

use common::unavailable::Unavailable;
use common::*;
use stateful_guard::admission::{Reviewer, Uninterpretable, response};
use stateful_guard::cluster::Snapshot;
use stateful_guard::cluster::cache::ClusterCache;
use stateful_guard::engine::Phase;

/// Before a require-pdb denial, one live list looks for a PDB the cache may not have seen yet.
/// Against an overloaded apiserver that list gives up after its budget and the cache decides,
/// so the review is answered, denied, within the webhooks' 5 s timeout (past it,
/// kube-apiserver applies the failurePolicy, Ignore, and the denial would be lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_denial_does_not_wait_for_an_overloaded_apiserver() {
    let apiserver = Unavailable::start().await;
    let live = ClusterCache::start(apiserver.client());
    let policies = default_policies();
    // What the cache held when it last synced: no PDB in the namespace.
    let cached = Snapshot::known(vec![], vec![], vec![]);
    let reviewer = Reviewer {
        policies: &policies,
        cluster: &cached,
        live: Some(&live),
        uninterpretable: Uninterpretable::Allow,
        statefulset_controllers: &STATEFULSET_CONTROLLERS,
        live_claim_owners: false,
    };
    // A captured review, its StatefulSet scaled to a quorum (3), so require-pdb applies.
    let captured = review_fixture("statefulset-create.validating.json");
    let mut object = request_object(&captured);
    object["spec"]["replicas"] = 3.into();
    let body = with_object(&captured, &object);
    let (review, _) = tokio::time::timeout(
        Duration::from_secs(4),
        reviewer.review(Phase::Validate, &body),
    )
    .await
    .expect("no answer within 4 s; kube-apiserver gives up on the webhook after 5 s")
    .expect("a review");
    let resp = decode_wire(&response::to_wire(review).unwrap());
    assert!(!allowed(&resp), "{resp}");
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("[require-pdb]"),
        "{resp}"
    );
    let namespace = request_object(&body)["metadata"]["namespace"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| "default".into());
    let live_list = format!("/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets");
    assert!(
        apiserver
            .requests()
            .iter()
            .any(|(method, uri)| method == "GET" && uri.starts_with(&live_list)),
        "the live list was not tried: {:?}",
        apiserver.requests()
    );
}
