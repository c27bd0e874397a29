//! The rule registry (`src/rules/mod.rs`) is the one list every rule is derived from. These
//! tests walk it and check what the compiler cannot: every rule is documented and shipped, and
//! the defaults in Rust are the defaults the shipped policy writes out.
use std::collections::BTreeSet;

use serde_json::Value;
use stateful_guard::policy::parse_documents;
use stateful_guard::rules::{Action, RuleId, Rules, fast_storage_class};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_rule_is_in_the_shipped_policies_and_the_docs() {
    let default: Value = serde_yaml_ng::from_str(&read("policies/default.yaml")).unwrap();
    let policies_readme = read("policies/README.md");
    let readme = read("README.md");
    for rule in RuleId::ALL {
        let id = rule.as_str();
        assert!(
            default["spec"]["rules"].get(id).is_some(),
            "policies/default.yaml must set every rule explicitly: {id} is missing"
        );
        assert!(
            policies_readme.contains(&format!("| `{id}` |")),
            "policies/README.md's rules table has no row for {id}"
        );
        assert!(
            readme.contains(&format!("| `{id}` |")),
            "README.md's table of rules has no row for {id}"
        );
        assert_eq!(RuleId::parse(id), Some(*rule));
    }
    let listed: BTreeSet<&str> = default["spec"]["rules"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let known: BTreeSet<&str> = RuleId::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(listed, known);
}

#[test]
fn the_rust_defaults_are_the_defaults_default_yaml_writes_out() {
    let docs = parse_documents(&read("policies/default.yaml"), "default.yaml").unwrap();
    let shipped = &docs[0].spec.rules;
    // The one parameter without a default: the cluster's fast class (the rule is off without).
    let expected = Rules {
        fast_storage_class: Some(fast_storage_class::Config {
            fast_class: Some("fast-ssd".into()),
            ..fast_storage_class::Config::default()
        }),
        ..Rules::default()
    };
    assert_eq!(shipped, &expected);
}

#[test]
fn names_actions_and_the_policy_schema_come_from_the_same_list() {
    let rules = Rules::default();
    let schema = serde_json::to_value(&rules).unwrap();
    let keys: BTreeSet<&str> = schema
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let ids: BTreeSet<&str> = RuleId::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(keys, ids, "the policy's rules: keys are the rule ids");
    for rule in RuleId::ALL {
        assert_eq!(
            serde_json::to_value(rule).unwrap(),
            Value::String(rule.as_str().into())
        );
        match rules.action(*rule) {
            Action::Mutate(_) => assert!(rule.is_mutation(), "{rule}"),
            Action::Validate(_) => assert!(!rule.is_mutation(), "{rule}"),
        }
    }
    // Mutation rules run in the listed order: the class is decided before the spread reads it.
    assert_eq!(
        RuleId::MUTATIONS,
        &[
            RuleId::FastStorageClass,
            RuleId::VolumeGrowth,
            RuleId::PodAntiAffinity,
            RuleId::TopologySpread,
            RuleId::ParallelPodManagement,
            RuleId::PriorityClass
        ]
    );
    let err = serde_json::from_value::<RuleId>(Value::String("require-pbd".into())).unwrap_err();
    assert!(err.to_string().contains("expected one of"), "{err}");
}
