//! `check` exists so that CI can predict admission: for every manifest in the fixtures it must
//! say exactly what the two webhooks answer when the same file goes through `kubectl apply`
//! (the review as kubectl builds it: the manifest plus its `last-applied-configuration`, with
//! the apiserver's defaults for the fields the rules read), with the same cluster state (the
//! PDBs and StorageClasses in the file). Same verdict, same findings, same mutated object.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};
use stateful_guard::admission::Uninterpretable;
use stateful_guard::engine::Phase;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["tests/fixtures/manifests", "tests/fixtures/agreement"] {
        for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// The CREATE review kube-apiserver sends for `kubectl apply -f` of `manifest`.
fn apply_review(manifest: &Value) -> (Value, Vec<u8>) {
    let mut object = manifest.clone();
    let mut applied = manifest.clone();
    applied["metadata"]["namespace"] = json!("default");
    object["metadata"]["namespace"] = json!("default");
    object["metadata"]["annotations"]
        .as_object_mut()
        .map(|_| ())
        .unwrap_or_else(|| object["metadata"]["annotations"] = json!({}));
    object["metadata"]["annotations"][LAST_APPLIED] = json!(applied.to_string());
    // The apiserver's defaults for what the rules read.
    let spec = object["spec"].as_object_mut().unwrap();
    spec.entry("podManagementPolicy")
        .or_insert(json!("OrderedReady"));
    spec.entry("replicas").or_insert(json!(1));
    let gvk = json!({"group": "apps", "version": "v1", "kind": "StatefulSet"});
    let gvr = json!({"group": "apps", "version": "v1", "resource": "statefulsets"});
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-00000000000a",
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": object["metadata"]["name"], "namespace": "default", "operation": "CREATE",
            "userInfo": {"username": "alice"}, "object": object, "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1",
                        "fieldManager": "kubectl-client-side-apply", "fieldValidation": "Strict"},
        }
    }))
    .unwrap();
    (object, body)
}

/// An object without the annotation kubectl adds, for comparison with `check --fix`.
fn without_last_applied(mut object: Value) -> Value {
    if let Some(annotations) = object["metadata"]["annotations"].as_object_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            object["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }
    }
    object
}

/// What the validating webhook recorded per rule: `action: headline`, as check reports it.
fn findings_of_webhook(resp: &Value) -> BTreeMap<String, String> {
    resp["response"]["auditAnnotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !["policy", "mutated", "kept", "would-patch"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn findings_of_check(object: &Value) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for f in object["findings"].as_array().unwrap() {
        let message = f["message"].as_str().unwrap();
        let head = message.split('\n').next().unwrap();
        let entry = format!("{}: {head}", f["action"].as_str().unwrap());
        out.entry(f["rule"].as_str().unwrap().to_owned())
            .and_modify(|v| {
                v.push_str(" | ");
                v.push_str(&entry);
            })
            .or_insert(entry);
    }
    out
}

#[tokio::test]
async fn check_says_what_the_webhooks_answer_to_kubectl_apply() {
    let policies = default_policies();
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = stateful_guard::check::parse_stream(&text, "test").unwrap();
        let cluster = stateful_guard::check::snapshot(&docs).unwrap();
        let out = Command::new(stateful_guard_binary())
            .args(["check", "-o", "json", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let fixed = Command::new(stateful_guard_binary())
            .args(["check", "--fix", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let fixed =
            stateful_guard::check::parse_stream(&String::from_utf8(fixed.stdout).unwrap(), "fix")
                .unwrap();
        let statefulsets = docs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.value["kind"] == "StatefulSet");
        for (index, doc) in statefulsets {
            let name = doc.value["metadata"]["name"].as_str().unwrap();
            let label = format!("{}: {name}", file.display());
            let checked = report["objects"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["kind"] == "StatefulSet" && o["name"] == name)
                .unwrap_or_else(|| panic!("{label}: not in check's report"));
            let (object, body) = apply_review(&doc.value);
            let mutate = review_with(
                Phase::Mutate,
                &body,
                &policies,
                &cluster,
                Uninterpretable::Allow,
            )
            .await;
            let mutated = match patch(&mutate) {
                Some(p) => kubectl_patch(dir.path(), &object, p),
                None => object.clone(),
            };
            // The same mutated object as `check --fix` prints (which has the file's own form:
            // no defaults beyond what the patch touched, no last-applied annotation).
            let mut ours = without_last_applied(mutated.clone());
            let mut theirs = fixed[index].value.clone();
            for o in [&mut ours, &mut theirs] {
                let spec = o["spec"].as_object_mut().unwrap();
                spec.remove("replicas");
                if spec.get("podManagementPolicy") == Some(&json!("OrderedReady")) {
                    spec.remove("podManagementPolicy");
                }
                o["metadata"].as_object_mut().unwrap().remove("namespace");
            }
            assert_eq!(
                ours, theirs,
                "{label}: the webhook and check --fix mutate differently"
            );
            assert_eq!(
                mutated["spec"]["podManagementPolicy"] == "Parallel",
                checked["mutations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["rule"] == "parallel-pod-management" && m["applied"] == true),
                "{label}: podManagementPolicy"
            );
            let validate = review_with(
                Phase::Validate,
                &with_object(&body, &mutated),
                &policies,
                &cluster,
                Uninterpretable::Allow,
            )
            .await;
            assert_eq!(
                allowed(&validate),
                checked["allowed"].as_bool().unwrap(),
                "{label}: verdict: {}",
                validate["response"]
            );
            assert_eq!(
                findings_of_webhook(&validate),
                findings_of_check(checked),
                "{label}: findings"
            );
            compared += 1;
        }
    }
    assert!(compared >= 5, "{compared}");
}

#[tokio::test]
async fn a_podmanagementpolicy_written_in_the_file_is_kept_by_both() {
    let file = "tests/fixtures/agreement/zookeeper-explicit-orderedready.yaml";
    let out = Command::new(stateful_guard_binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "-o", "json", "-f", file])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let object = &report["objects"][0];
    assert!(
        !object["patch"].to_string().contains("podManagementPolicy"),
        "{object}"
    );
    // Kept, and warned about: three replicas ordered that way can deadlock a full restart.
    let note = object["mutations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["rule"] == "parallel-pod-management")
        .map(|m| m["notes"].to_string())
        .unwrap_or_default();
    assert!(note.contains("deadlock"), "{object}");
    // And the webhook, on the review the real apiserver sent for `kubectl apply` of that file.
    let resp = review(
        Phase::Mutate,
        &review_fixture("statefulset-create-apply-explicit-orderedready.mutating.json"),
        &default_policies(),
    )
    .await;
    let ops = patch(&resp).cloned().unwrap_or(json!([]));
    assert!(!ops.to_string().contains("podManagementPolicy"), "{ops}");
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.contains("parallel-pod-management") && w.contains("deadlock")),
        "{:?}",
        warnings(&resp)
    );
}

#[tokio::test]
async fn the_webhook_leaves_a_statefulset_the_apiserver_rejects_alone() {
    let body = review_fixture("statefulset-create.mutating.json");
    let mut object = request_object(&body);
    object["spec"]["selector"] = json!({"matchLabels": {"app": "something-else"}});
    let resp = review(
        Phase::Mutate,
        &with_object(&body, &object),
        &default_policies(),
    )
    .await;
    assert!(allowed(&resp));
    assert!(patch(&resp).is_none(), "{}", resp["response"]);
    assert!(warnings(&resp).is_empty(), "{:?}", warnings(&resp));
}

fn stateful_guard_binary() -> &'static str {
    env!("CARGO_BIN_EXE_stateful-guard")
}
