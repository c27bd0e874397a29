//! A property test of decode -> evaluate -> response, on the stable toolchain, in the normal
//! suite (the fuzz target in fuzz/ does the same with libFuzzer, at length): captured reviews
//! with arbitrary JSON put at the places the webhook reads. No panic, through both webhooks;
//! a response that always encodes, whose size stays bounded, for a request that always gets one.
mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use stateful_guard::admission::{Reviewer, Uninterpretable, response};
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::Phase;

/// Where arbitrary values go: what the webhook decodes, dispatches on, or copies into output.
const PLACES: [&str; 16] = [
    "/request/kind/kind",
    "/request/operation",
    "/request/uid",
    "/request/name",
    "/request/namespace",
    "/request/subResource",
    "/request/userInfo/username",
    "/request/object/metadata/annotations",
    "/request/object/metadata/managedFields",
    "/request/object/spec/replicas",
    "/request/object/spec/selector",
    "/request/object/spec/podManagementPolicy",
    "/request/object/spec/template/spec/containers",
    "/request/object/spec/volumeClaimTemplates",
    "/request/object/spec/storageClassName",
    "/request/oldObject",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        (0usize..200_000).prop_map(|n| Value::String("x".repeat(n))),
        Just(json!("OrderedReady")),
        Just(json!("StatefulSet")),
        Just(json!("UPDATE")),
        Just(json!({"name": "c", "image": "i"})),
        Just(json!({"matchLabels": {"app": "nginx"}})),
    ];
    leaf.prop_recursive(3, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
        map.insert(key.to_owned(), value);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_review_gets_a_bounded_answer_and_never_a_panic(
        fixture in 0usize..64,
        edits in prop::collection::vec((0usize..PLACES.len(), arb_json()), 0..4),
    ) {
        let fixtures = review_fixtures();
        let (_, body) = &fixtures[fixture % fixtures.len()];
        let mut doc: Value = serde_json::from_slice(body).unwrap();
        for (place, value) in edits {
            set(&mut doc, PLACES[place], value);
        }
        let body = serde_json::to_vec(&doc).unwrap();
        let policies = default_policies();
        let cluster = Snapshot::known(vec![], vec![], vec![]);
        let reviewer = Reviewer {
            policies: &policies,
            cluster: &cluster,
            live: None,
            uninterpretable: Uninterpretable::Allow,
            statefulset_controllers: &STATEFULSET_CONTROLLERS,
            live_claim_owners: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for phase in [Phase::Mutate, Phase::Validate] {
            match runtime.block_on(reviewer.review(phase, &body)) {
                Ok((review, _)) => {
                    let wire = response::to_wire(review).expect("a response always encodes");
                    // The uid is echoed (bounded by the body); everything else is capped.
                    prop_assert!(
                        wire.len() <= 160 * 1024 + 2 * body.len(),
                        "{} bytes for a body of {}", wire.len(), body.len()
                    );
                    let v: Value = serde_json::from_slice(&wire).unwrap();
                    prop_assert!(v["response"]["allowed"].is_boolean());
                }
                // Not an AdmissionReview at all: HTTP 400, with the reason.
                Err(bad) => prop_assert!(!bad.to_string().is_empty()),
            }
        }
    }
}
