//! Policy documents: precise errors, the shipped policies, live reload from files (the
//! ConfigMap-volume way) and from ConfigMap watch events, reload under concurrent requests.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::server::SecretVolume;
use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::Event;
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::{self, Input, Object, Phase};
use stateful_guard::metrics::Metrics;
use stateful_guard::policy::source::{ConfigMapSource, FileSource, PolicyStore};
use stateful_guard::policy::{Mode, PolicyError, parse_documents};
use stateful_guard::rules::Operation;

const HEAD: &str =
    "apiVersion: stateful-guard.io/v1alpha1\nkind: Policy\nmetadata:\n  name: p\nspec:\n";

fn error_of(text: &str) -> String {
    parse_documents(text, "policies/broken.yaml")
        .unwrap_err()
        .to_string()
}

#[test]
fn the_shipped_policies_load_and_the_embedded_default_is_default_yaml() {
    for file in ["default.yaml", "audit.yaml", "strict.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(file);
        let docs = parse_documents(&std::fs::read_to_string(&path).unwrap(), file)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(docs.len(), 1, "{file}");
    }
    let audit = parse_documents(include_str!("../policies/audit.yaml"), "audit").unwrap();
    assert_eq!(audit[0].spec.mode, Mode::Audit);
    assert_eq!(
        parse_documents(stateful_guard::policy::EMBEDDED_DEFAULT, "embedded").unwrap(),
        parse_documents(include_str!("../policies/default.yaml"), "file").unwrap()
    );
}

#[test]
fn unknown_fields_are_errors_naming_file_line_and_field() {
    let err = error_of(&format!(
        "{HEAD}  rules:\n    require-pdb:\n      action: enforce\n      minReplica: 2\n"
    ));
    assert_eq!(
        err,
        "policies/broken.yaml: document 1 (line 9): spec.rules.require-pdb.minReplica: unknown field `minReplica`, expected `action` or `minReplicas`"
    );
    let err = error_of(&format!(
        "{HEAD}  rules:\n    require-pbd: {{action: warn}}\n"
    ));
    assert!(
        err.contains("(line 7): spec.rules.require-pbd: unknown field `require-pbd`"),
        "{err}"
    );
}

#[test]
fn wrong_values_are_errors_naming_the_field() {
    let err = error_of(&format!(
        "{HEAD}  rules:\n    require-pdb: {{action: deny}}\n"
    ));
    assert!(err.contains("spec.rules.require-pdb.action: unknown variant `deny`, expected one of `enforce`, `warn`, `audit`, `off`"), "{err}");
    let err = error_of(&format!("{HEAD}  mode: dry-run\n"));
    assert!(
        err.contains("spec.mode: unknown variant `dry-run`"),
        "{err}"
    );
    let err = error_of(&format!(
        "{HEAD}  rules:\n    pod-anti-affinity: {{weight: 0}}\n"
    ));
    assert!(
        err.contains("policy \"p\": spec.rules.pod-anti-affinity.weight: must be 1 to 100"),
        "{err}"
    );
    let err = error_of(&format!(
        "{HEAD}  rules:\n    fast-storage-class: {{action: mutate}}\n"
    ));
    assert!(
        err.contains("spec.rules.fast-storage-class.fastClass: required"),
        "{err}"
    );
    // Namespace selectors are validated as the apiserver validates LabelSelectors: `NotIn`
    // with no values would otherwise match every namespace, `In` with none no namespace.
    for (selector, expected) in [
        (
            "{matchExpressions: [{key: team, operator: NotIn}]}",
            "spec.match.namespaceSelector.matchExpressions[0].values: Required value",
        ),
        (
            "{matchExpressions: [{key: team, operator: In, values: []}]}",
            "values: Required value",
        ),
        (
            "{matchExpressions: [{key: team, operator: Exists, values: [a]}]}",
            "values: Forbidden",
        ),
        (
            "{matchExpressions: [{key: team, operator: Within, values: [a]}]}",
            "operator: Invalid value: \"Within\"",
        ),
    ] {
        let err = error_of(&format!(
            "{HEAD}  match: {{namespaceSelector: {selector}}}\n"
        ));
        assert!(err.contains(expected), "{selector}: {err}");
    }
    let err = error_of(&HEAD.replace("v1alpha1", "v1"));
    assert!(
        err.contains("apiVersion: expected \"stateful-guard.io/v1alpha1\""),
        "{err}"
    );
}

#[test]
fn errors_in_later_documents_and_bad_yaml_say_where() {
    let two = format!(
        "{HEAD}  mode: audit\n---\n{}",
        HEAD.replace("name: p", "name: q") + "  mode: sometimes\n"
    );
    let err = error_of(&two);
    assert!(err.contains("document 2 (line 13): spec.mode"), "{err}");
    let err = error_of(&format!("{HEAD}  rules: [unclosed\n"));
    assert!(
        err.starts_with("policies/broken.yaml: document 1 (line"),
        "{err}"
    );
    assert!(matches!(
        parse_documents("# only a comment\n", "x"),
        Err(PolicyError::Empty { .. })
    ));
}

fn store() -> PolicyStore {
    PolicyStore::new(vec!["stateful-guard".into()], Arc::new(Metrics::new()))
}

fn mode_of(store: &PolicyStore) -> Option<Mode> {
    store.current().policies().first().map(|p| p.spec.mode)
}

fn policy_text(mode: &str) -> String {
    format!("{HEAD}  mode: {mode}\n")
}

#[test]
fn configmap_volume_updates_are_picked_up_and_broken_ones_keep_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let mut vol = SecretVolume::new(
        dir.path(),
        &[("policy.yaml", policy_text("enforce").as_bytes())],
    );
    let store = store();
    let mut source = FileSource::new(dir.path().to_owned());
    assert!(source.sync(&store).is_empty());
    assert_eq!(
        store.current().policies().len(),
        1,
        "dot-entries (..data, ..2026_...) are not policies"
    );
    assert_eq!(mode_of(&store), Some(Mode::Enforce));

    vol.update(&[("policy.yaml", policy_text("audit").as_bytes())]);
    assert!(source.sync(&store).is_empty());
    assert_eq!(mode_of(&store), Some(Mode::Audit));

    vol.update(&[("policy.yaml", policy_text("sometimes").as_bytes())]);
    let errors = source.sync(&store);
    assert_eq!(errors.len(), 1);
    let err = errors[0].to_string();
    assert!(
        err.contains("policy.yaml: document 1 (line 6): spec.mode"),
        "{err}"
    );
    assert_eq!(
        mode_of(&store),
        Some(Mode::Audit),
        "the last good policy keeps serving"
    );
    assert!(store.is_loaded(), "readiness stays true");
}

fn configmap(name: &str, key: &str, text: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "stateful-guard", "labels": {"stateful-guard.io/policy": "true"}},
        "data": {key: text, "README": "not a policy"}
    }))
    .unwrap()
}

#[test]
fn configmap_watch_events_drive_the_policies() {
    let store = store();
    let mut source = ConfigMapSource::default();
    source.handle(&store, Event::Init);
    source.handle(
        &store,
        Event::InitApply(configmap("guard", "policy.yaml", &policy_text("audit"))),
    );
    assert!(
        !store.is_loaded(),
        "nothing applied before the initial list is complete"
    );
    source.handle(&store, Event::InitDone);
    assert_eq!(mode_of(&store), Some(Mode::Audit));

    // An operator edits the ConfigMap: audit -> enforce, live.
    source.handle(
        &store,
        Event::Apply(configmap("guard", "policy.yaml", &policy_text("enforce"))),
    );
    assert_eq!(mode_of(&store), Some(Mode::Enforce));
    // A typo is rejected; the last good policy stays.
    source.handle(
        &store,
        Event::Apply(configmap("guard", "policy.yaml", &policy_text("enforcing"))),
    );
    assert_eq!(mode_of(&store), Some(Mode::Enforce));
    // A relist (watch restarted) with the typo still there keeps the last good policy too.
    source.handle(&store, Event::Init);
    source.handle(
        &store,
        Event::InitApply(configmap("guard", "policy.yaml", &policy_text("enforcing"))),
    );
    source.handle(&store, Event::InitDone);
    assert_eq!(mode_of(&store), Some(Mode::Enforce));
    // Deleting the only policy ConfigMap (or dropping its label, which a `kubectl apply` of
    // a regenerated ConfigMap does) never leaves admission unchecked: the last good policy
    // keeps serving, and every response says why.
    assert!(store.current().orphaned_warning().is_none());
    source.handle(&store, Event::Delete(configmap("guard", "policy.yaml", "")));
    assert_eq!(mode_of(&store), Some(Mode::Enforce));
    let warning = store.current().orphaned_warning().map(str::to_owned);
    assert!(
        warning
            .as_deref()
            .is_some_and(|w| w.contains("every policy source is gone") && w.contains("mode: off")),
        "{warning:?}"
    );
    // Back: the new policy replaces it, and the warning is gone.
    source.handle(
        &store,
        Event::Apply(configmap("guard", "policy.yaml", &policy_text("audit"))),
    );
    assert_eq!(mode_of(&store), Some(Mode::Audit));
    assert!(store.current().orphaned_warning().is_none());
}

#[test]
fn renaming_a_configmap_key_swaps_its_policy_atomically() {
    let store = Arc::new(store());
    let mut source = ConfigMapSource::default();
    source.handle(
        &store,
        Event::Apply(configmap("guard", "policy.yaml", &policy_text("enforce"))),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let current = store.current();
                assert_eq!(current.policies().len(), 1, "exactly one policy, always");
                assert!(current.orphaned_warning().is_none(), "never orphaned");
                seen += 1;
            }
            seen
        })
    };
    for i in 0..200 {
        let (key, mode) = if i % 2 == 0 {
            ("renamed.yaml", "audit")
        } else {
            ("policy.yaml", "enforce")
        };
        source.handle(
            &store,
            Event::Apply(configmap("guard", key, &policy_text(mode))),
        );
        let expected = if i % 2 == 0 {
            Mode::Audit
        } else {
            Mode::Enforce
        };
        assert_eq!(mode_of(&store), Some(expected));
        assert_eq!(store.source_ids().len(), 1, "{:?}", store.source_ids());
    }
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.join().expect("no moment without the policy") > 0);
}

#[test]
fn a_relist_forgets_configmaps_deleted_while_the_watch_was_down() {
    let store = store();
    let mut source = ConfigMapSource::default();
    source.handle(
        &store,
        Event::Apply(configmap("old", "a.yaml", &policy_text("audit"))),
    );
    assert!(store.is_loaded());
    let other = "apiVersion: stateful-guard.io/v1alpha1\nkind: Policy\nmetadata:\n  name: other\nspec:\n  mode: enforce\n";
    source.handle(&store, Event::Init);
    source.handle(&store, Event::InitApply(configmap("new", "b.yaml", other)));
    source.handle(&store, Event::InitDone);
    let names: Vec<String> = store
        .current()
        .policies()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["other"], "the deleted ConfigMap's policy is gone");
    assert!(store.current().orphaned_warning().is_none());
}

#[test]
fn reload_under_concurrent_requests_never_fails_a_request() {
    let store = Arc::new(store());
    store.set_source("test", parse_documents(&policy_text("enforce"), "test"));
    let body = review_fixture("statefulset-zookeeper-create.mutating.json");
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let sts: k8s_openapi::api::apps::v1::StatefulSet =
        serde_json::from_value(request["request"]["object"].clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (enforced, audited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (store, sts, stop, enforced, audited) = (
                store.clone(),
                sts.clone(),
                stop.clone(),
                enforced.clone(),
                audited.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let policies = store.current();
                    let input = Input {
                        operation: Operation::Create,
                        namespace: "default",
                        object: Object::StatefulSet(&sts),
                        old: None,
                        claim_owner: None,
                        written: None,
                    };
                    let eval =
                        engine::evaluate(Phase::Mutate, &input, &policies, &Snapshot::unknown());
                    // Each evaluation sees one whole policy: all applied, or none.
                    let applied = eval.mutations.iter().filter(|m| m.applied).count();
                    match eval.mode {
                        Mode::Enforce => {
                            assert_eq!(applied, eval.mutations.len());
                            enforced.fetch_add(1, Ordering::Relaxed)
                        }
                        Mode::Audit => {
                            assert_eq!(applied, 0);
                            audited.fetch_add(1, Ordering::Relaxed)
                        }
                        Mode::Off => unreachable!("the test's policies are never off"),
                    };
                    assert!(!eval.mutations.is_empty(), "a policy was always in force");
                }
            })
        })
        .collect();
    for i in 0..400 {
        let mode = if i % 2 == 0 { "audit" } else { "enforce" };
        store.set_source("test", parse_documents(&policy_text(mode), "test"));
        if i % 50 == 0 {
            store.set_source("test", parse_documents(&policy_text("broken"), "test"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("no evaluation failed");
    }
    assert!(enforced.load(Ordering::Relaxed) > 0 && audited.load(Ordering::Relaxed) > 0);
}
