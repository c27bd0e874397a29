//! Every mutation checked by a second implementation: the patch applied by `kubectl patch
//! --local --type=json` gives exactly our patched object, which passes Kubernetes' own OpenAPI
//! schemas (`kubernetes-validate --strict`), and a second pass over it yields no patch. Covers
//! every captured CREATE review and every StatefulSet of the shared manifests, through both
//! webhooks.
mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};
use stateful_guard::engine::Phase;

/// An AdmissionReview request as kube-apiserver sends it for a CREATE of `object` (already
/// defaulted where the rules can tell).
fn create_review(object: &Value) -> Vec<u8> {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", object["apiVersion"].as_str().unwrap()),
    };
    let kind = object["kind"].as_str().unwrap();
    let resource = if kind == "StatefulSet" {
        "statefulsets"
    } else {
        "persistentvolumeclaims"
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": resource});
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": object["metadata"]["name"], "namespace": "default", "operation": "CREATE",
            "userInfo": {"username": "test"}, "object": object, "oldObject": null, "dryRun": false,
        }
    }))
    .unwrap()
}

/// The whole check for one review body; returns the mutated object and the validating verdict.
async fn check_mutation(label: &str, body: &[u8], dir: &Path) -> (Value, Value) {
    check_mutation_under(label, body, dir, &default_policies()).await
}

/// The same under `policies`.
async fn check_mutation_under(
    label: &str,
    body: &[u8],
    dir: &Path,
    policies: &stateful_guard::policy::PolicySet,
) -> (Value, Value) {
    let object = request_object(body);
    let resp = review(Phase::Mutate, body, policies).await;
    let patched = match patch(&resp) {
        Some(p) => {
            let ours = apply(&object, p);
            let theirs = kubectl_patch(dir, &object, p);
            assert_eq!(
                ours, theirs,
                "{label}: kubectl applies our patch differently"
            );
            kubernetes_validate(&theirs);
            ours
        }
        None => object.clone(),
    };
    let again = review(Phase::Mutate, &with_object(body, &patched), policies).await;
    assert!(
        patch(&again).is_none(),
        "{label}: second pass patched again: {}",
        again["response"]
    );
    let verdict = review(Phase::Validate, &with_object(body, &patched), policies).await;
    (patched, verdict)
}

#[tokio::test]
async fn captured_create_reviews() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (name, body) in review_fixtures() {
        let request: Value = serde_json::from_slice(&body).unwrap();
        if request["request"]["operation"] != "CREATE" || phase_of(&name) != Phase::Mutate {
            continue;
        }
        let (patched, verdict) = check_mutation(&name, &body, dir.path()).await;
        checked += 1;
        if request["request"]["kind"]["kind"] == "StatefulSet" {
            let spec = &patched["spec"]["template"]["spec"];
            assert!(spec["affinity"]["podAntiAffinity"].is_object(), "{name}");
            assert_eq!(
                spec["topologySpreadConstraints"][0]["topologyKey"], "topology.kubernetes.io/zone",
                "{name}"
            );
            // The zookeeper example writes OrderedReady itself (last-applied shows it): kept.
            let policy = if name.contains("explicit-orderedready") {
                "OrderedReady"
            } else {
                "Parallel"
            };
            assert_eq!(patched["spec"]["podManagementPolicy"], policy, "{name}");
            // A container without a readiness probe is denied; with probes everywhere, the
            // rest only warns (no cluster state for require-pdb).
            let unprobed = spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c.get("readinessProbe").is_none());
            assert_eq!(
                allowed(&verdict),
                !unprobed,
                "{name}: {}",
                verdict["response"]
            );
            if unprobed {
                let msg = verdict["response"]["status"]["message"].as_str().unwrap();
                assert!(msg.contains("[require-readiness-probe]"), "{name}: {msg}");
            }
        }
    }
    assert!(checked >= 8, "{checked}");
}

#[tokio::test]
async fn shared_manifests() {
    let dir = tempfile::tempdir().unwrap();
    // (file, readiness-probe denial expected, podManagementPolicy after mutation)
    for (file, denied) in [
        ("web.yaml", true),
        ("mysql-statefulset.yaml", true),
        ("cassandra-statefulset.yaml", false),
        ("zookeeper-statefulset.yaml", true),
    ] {
        let path = fixtures().join("manifests").join(file);
        let docs =
            stateful_guard::check::parse_stream(&std::fs::read_to_string(&path).unwrap(), file)
                .unwrap();
        let mut found = 0;
        for doc in docs.iter().filter(|d| d.value["kind"] == "StatefulSet") {
            let mut object = doc.value.clone();
            object["metadata"]["namespace"] = json!("default");
            object["spec"]["podManagementPolicy"] = object["spec"]
                .get("podManagementPolicy")
                .cloned()
                .unwrap_or(json!("OrderedReady"));
            let (patched, verdict) =
                check_mutation(file, &create_review(&object), dir.path()).await;
            assert_eq!(patched["spec"]["podManagementPolicy"], "Parallel", "{file}");
            assert!(
                patched["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object(),
                "{file}"
            );
            assert_eq!(
                allowed(&verdict),
                !denied,
                "{file}: {}",
                verdict["response"]
            );
            // No cluster here: require-pdb says it could not check, and never denies.
            assert!(
                warnings(&verdict)
                    .iter()
                    .any(|w| w.contains("require-pdb: cannot check")),
                "{file}"
            );
            found += 1;
        }
        assert_eq!(found, 1, "{file}");
    }
}

/// The rules that are off by default, switched on: `priority-class` sets the class on every
/// captured StatefulSet CREATE whose template names none, and kubectl agrees on the patch.
#[tokio::test]
async fn captured_create_reviews_with_priority_class() {
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/default.yaml"
    ))
    .unwrap();
    let yaml = default.replace(
        "      action: off\n      # className: stateful-critical\n",
        "      action: mutate\n      className: system-cluster-critical\n",
    );
    assert_ne!(
        yaml, default,
        "policies/default.yaml still has the priority-class entry"
    );
    let policies = policies(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let mut set = 0;
    for (name, body) in review_fixtures() {
        let request: Value = serde_json::from_slice(&body).unwrap();
        if request["request"]["operation"] != "CREATE"
            || phase_of(&name) != Phase::Mutate
            || request["request"]["kind"]["kind"] != "StatefulSet"
        {
            continue;
        }
        let before = request_object(&body);
        let (patched, _) = check_mutation_under(&name, &body, dir.path(), &policies).await;
        let class = &patched["spec"]["template"]["spec"]["priorityClassName"];
        match before["spec"]["template"]["spec"].get("priorityClassName") {
            Some(theirs) => assert_eq!(class, theirs, "{name}: the user's class stays"),
            None => {
                assert_eq!(class, "system-cluster-critical", "{name}");
                set += 1;
            }
        }
    }
    assert!(set >= 4, "{set}");
}
