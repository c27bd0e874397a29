//! `labels::matches` has the semantics of kube's own `Selector` (kube-core), proven over random
//! selectors and label sets: for every selector kube-apiserver accepts (`labels::validate`),
//! both answer the same for every label set, and kube can convert it. `labels.rs` stays because
//! kube's `Selector` is built by an owned conversion (`TryFrom<LabelSelector>`, a copy of every
//! key and value), which would be one allocation burst per PDB per review on the hot path,
//! and kube has no equivalent of the apiserver's selector validation that policies need.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::{Selector, SelectorExt};
use proptest::prelude::*;
use stateful_guard::labels;

const KEYS: [&str; 4] = ["app", "tier", "app.kubernetes.io/name", "zone"];
const VALUES: [&str; 4] = ["db", "web", "", "a-1"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(&KEYS[..]).prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(&VALUES[..]).prop_map(str::to_owned)
}

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    let operator = prop::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]);
    (key(), operator, prop::collection::vec(value(), 0..3)).prop_map(|(key, operator, values)| {
        LabelSelectorRequirement {
            key,
            operator: operator.to_owned(),
            values: Some(values),
        }
    })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        prop::option::of(prop::collection::btree_map(key(), value(), 0..3)),
        prop::option::of(prop::collection::vec(requirement(), 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn matches_as_kubes_selector_does(selector in selector(), sets in prop::collection::vec(label_set(), 1..6)) {
        // Only what kube-apiserver accepts can be stored (a PDB's or StatefulSet's selector)
        // or loaded (a policy's namespaceSelector).
        prop_assume!(labels::check(&selector, "selector").is_ok());
        let theirs = Selector::try_from(selector.clone())
            .expect("kube converts every selector the apiserver accepts");
        for set in &sets {
            prop_assert_eq!(
                labels::matches(&selector, set),
                theirs.matches(set),
                "selector {:?} on labels {:?}", selector, set
            );
        }
    }
}

/// The cases the random search must have covered for the proof to mean anything.
#[test]
fn the_operators_agree_on_hand_picked_cases() {
    let labels: BTreeMap<String, String> = [("app".to_owned(), "db".to_owned())].into();
    let case = |operator: &str, values: &[&str]| LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }]),
    };
    for (selector, expected) in [
        (case("In", &["db", "x"]), true),
        (case("In", &["x"]), false),
        (case("NotIn", &["db"]), false),
        (case("NotIn", &["x"]), true),
        (case("Exists", &[]), true),
        (case("DoesNotExist", &[]), false),
        (LabelSelector::default(), true),
    ] {
        assert!(labels::check(&selector, "s").is_ok(), "{selector:?}");
        let theirs = Selector::try_from(selector.clone()).unwrap();
        assert_eq!(
            labels::matches(&selector, &labels),
            expected,
            "{selector:?}"
        );
        assert_eq!(theirs.matches(&labels), expected, "{selector:?}");
    }
}
