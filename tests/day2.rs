//! Day 2: every everyday update of a StatefulSet stateful-guard mutated must still work, and the
//! PVCs the StatefulSet controller creates follow their StatefulSet's claim template.
//!
//! The inputs are UPDATE reviews exactly as kube-apiserver sent them after a `kubectl apply`
//! create that the webhook mutated (see tests/fixtures/README.md). Without a patch the apiserver
//! rejected four of them ("spec: Forbidden: updates to statefulset spec for fields other than
//! ..."): the patch must give back every immutable field the stored object has. Patches are
//! applied by a second implementation (`kubectl patch --local`).
mod common;

use common::*;
use serde_json::{Value, json};
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::Phase;

/// The updates whose object reverted something the webhook set at creation.
const REVERTING: [&str; 4] = [
    "statefulset-update-after-mutation-apply.mutating.json",
    "statefulset-update-after-mutation-apply-scale.mutating.json",
    "statefulset-update-after-mutation-server-side-apply.mutating.json",
    "statefulset-update-after-mutation-replace.mutating.json",
];

/// The updates that revert nothing.
const UNTOUCHED: [&str; 2] = [
    "statefulset-update-after-mutation-set-image.mutating.json",
    "statefulset-update-after-mutation-rollout-restart.mutating.json",
];

fn old_object(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    v.pointer("/request/oldObject").cloned().unwrap()
}

/// The mutating webhook's patch applied by kubectl; the second pass must add nothing.
async fn mutate_update(
    name: &str,
    body: &[u8],
    policies: &stateful_guard::policy::PolicySet,
) -> (Value, Value) {
    let dir = tempfile::tempdir().unwrap();
    let object = request_object(body);
    let resp = review(Phase::Mutate, body, policies).await;
    assert!(allowed(&resp), "{name}: {}", resp["response"]);
    let patched = match patch(&resp) {
        Some(p) => kubectl_patch(dir.path(), &object, p),
        None => object.clone(),
    };
    kubernetes_validate(&patched);
    let again = review(Phase::Mutate, &with_object(body, &patched), policies).await;
    assert!(
        patch(&again).is_none(),
        "{name}: second pass patched again: {}",
        again["response"]
    );
    (patched, resp)
}

/// The fields the apiserver refuses to change on a StatefulSet, and the ones the webhook set.
fn assert_keeps_stored_decisions(name: &str, patched: &Value, old: &Value) {
    for field in [
        "podManagementPolicy",
        "volumeClaimTemplates",
        "selector",
        "serviceName",
    ] {
        assert_eq!(
            patched["spec"][field], old["spec"][field],
            "{name}: spec.{field} differs from the stored object's"
        );
    }
    let pod = &patched["spec"]["template"]["spec"];
    let stored = &old["spec"]["template"]["spec"];
    assert_eq!(pod["affinity"], stored["affinity"], "{name}: anti-affinity");
    assert_eq!(
        pod["topologySpreadConstraints"], stored["topologySpreadConstraints"],
        "{name}: spread"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["stateful-guard.io/mutated"],
        old["metadata"]["annotations"]["stateful-guard.io/mutated"],
        "{name}: the record of what was decided at creation"
    );
}

#[tokio::test]
async fn updates_that_revert_the_webhooks_decisions_get_them_back() {
    let policies = default_policies();
    for name in REVERTING {
        let body = review_fixture(name);
        let old = old_object(&body);
        let (patched, resp) = mutate_update(name, &body, &policies).await;
        assert!(patch(&resp).is_some(), "{name}: no patch");
        assert_keeps_stored_decisions(name, &patched, &old);
        let warnings = warnings(&resp);
        assert!(
            warnings.iter().any(|w| w
                == "stateful-guard: fast-storage-class: kept storageClassName \"fast-ssd\" on claim template \"content\" (set at creation; the field is immutable)"),
            "{name}: {warnings:?}"
        );
        assert_eq!(
            annotation(&resp, "kept")
                .as_deref()
                .map(|k| k.contains("fast-storage-class")),
            Some(true),
            "{name}"
        );
        // The validating webhook then sees the patched update, and lets it through.
        let verdict = review(Phase::Validate, &with_object(&body, &patched), &policies).await;
        assert!(allowed(&verdict), "{name}: {}", verdict["response"]);
    }
}

#[tokio::test]
async fn a_replace_keeps_the_whole_template_but_the_users_change() {
    let name = "statefulset-update-after-mutation-replace.mutating.json";
    let body = review_fixture(name);
    let old = old_object(&body);
    let (patched, resp) = mutate_update(name, &body, &default_policies()).await;
    // The stored template with the user's own change (the image, if the manifest changed it):
    // the pods roll for that change only, if at all, and keep their spreading.
    let mut expected = old["spec"]["template"].clone();
    expected["spec"]["containers"][0]["image"] =
        request_object(&body)["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(
        patched["spec"]["template"], expected,
        "the replace dropped the spreading; only the user's change may roll the pods"
    );
    let warnings = warnings(&resp).join("\n");
    for kept in [
        "parallel-pod-management: kept podManagementPolicy Parallel",
        "pod-anti-affinity: kept the pod anti-affinity",
        "topology-spread: kept the topology spread constraints",
    ] {
        assert!(warnings.contains(kept), "{kept} missing in:\n{warnings}");
    }
}

#[tokio::test]
async fn updates_that_revert_nothing_get_no_patch() {
    for name in UNTOUCHED {
        let resp = review(Phase::Mutate, &review_fixture(name), &default_policies()).await;
        assert!(allowed(&resp), "{name}");
        assert!(patch(&resp).is_none(), "{name}: {}", resp["response"]);
        assert!(warnings(&resp).is_empty(), "{name}: {:?}", warnings(&resp));
    }
}

#[tokio::test]
async fn keeping_a_decision_is_not_a_new_mutation_so_audit_mode_and_off_keep_it_too() {
    let audit = policies(include_str!("../policies/audit.yaml"));
    let off = policies(
        r#"
apiVersion: stateful-guard.io/v1alpha1
kind: Policy
metadata: {name: rules-off}
spec:
  mode: enforce
  rules:
    fast-storage-class: {action: off}
    pod-anti-affinity: {action: off}
    topology-spread: {action: off}
    parallel-pod-management: {action: off}
"#,
    );
    // And with no policy for the namespace at all.
    let none = policies(
        r#"
apiVersion: stateful-guard.io/v1alpha1
kind: Policy
metadata: {name: elsewhere}
spec:
  match: {namespaces: [elsewhere]}
"#,
    );
    for (label, policy) in [("audit", &audit), ("off", &off), ("none", &none)] {
        for name in REVERTING {
            let body = review_fixture(name);
            let (patched, _) = mutate_update(name, &body, policy).await;
            assert_keeps_stored_decisions(
                &format!("{label}: {name}"),
                &patched,
                &old_object(&body),
            );
        }
    }
}

#[tokio::test]
async fn a_different_explicit_choice_is_left_to_the_apiserver() {
    let name = "statefulset-update-after-mutation-replace.mutating.json";
    let body = review_fixture(name);
    let mut object = request_object(&body);
    // The user names another (non-slow) class, and opts out of Parallel.
    object["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = json!("premium");
    object["metadata"]["annotations"] =
        json!({"stateful-guard.io/pod-management-policy": "OrderedReady"});
    let resp = review(
        Phase::Mutate,
        &with_object(&body, &object),
        &default_policies(),
    )
    .await;
    let ops = patch(&resp).cloned().unwrap_or(json!([]));
    let paths: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("storageClassName") || p.contains("podManagementPolicy")),
        "{paths:?}"
    );
    // A slow class named again (the manifest's `standard`, replaced at creation) is kept fast.
    object["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = json!("standard");
    let resp = review(
        Phase::Mutate,
        &with_object(&body, &object),
        &default_policies(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let patched = kubectl_patch(dir.path(), &object, patch(&resp).unwrap());
    assert_eq!(
        patched["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast-ssd"
    );
}

/// The StatefulSets of the `ctrl` namespace the controller-created claims were captured from.
fn controller_cluster() -> Snapshot {
    let sts = |name: &str| {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ctrl"},
            "spec": {
                "selector": {"matchLabels": {"app": "nginx"}},
                "serviceName": "nginx",
                "template": {"metadata": {"labels": {"app": "nginx"}}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"}}]
            }
        }))
        .unwrap()
    };
    cluster(
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: standard, annotations: {storageclass.kubernetes.io/is-default-class: "true"}}
provisioner: x
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast-ssd}
provisioner: x
"#,
    )
    .with_statefulsets(vec![sts("keepsts"), sts("plain")])
}

async fn mutate_with(body: &[u8], cluster: &Snapshot) -> Value {
    review_with(
        Phase::Mutate,
        body,
        &default_policies(),
        cluster,
        stateful_guard::admission::Uninterpretable::Allow,
    )
    .await
}

fn as_user(body: &[u8], username: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v["request"]["userInfo"] = json!({"username": username, "groups": ["system:authenticated"]});
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn claims_the_statefulset_controller_creates_follow_their_template() {
    let cluster = controller_cluster();
    for name in [
        "pvc-create-by-statefulset-controller.mutating.json",
        "pvc-create-by-statefulset-controller-fast-template.mutating.json",
    ] {
        let body = review_fixture(name);
        let resp = mutate_with(&body, &cluster).await;
        assert!(allowed(&resp), "{name}");
        assert!(patch(&resp).is_none(), "{name}: {}", resp["response"]);
        // Without --use-service-account-credentials the controller is kube-controller-manager.
        let resp = mutate_with(&as_user(&body, "system:kube-controller-manager"), &cluster).await;
        assert!(patch(&resp).is_none(), "{name}: {}", resp["response"]);
    }
}

#[tokio::test]
async fn the_same_claim_from_anyone_else_or_for_an_unknown_statefulset_gets_the_fast_class() {
    let cluster = controller_cluster();
    let body = review_fixture("pvc-create-by-statefulset-controller.mutating.json");
    let fast = json!([{"op": "replace", "path": "/spec/storageClassName", "value": "fast-ssd"}]);
    let by_user = mutate_with(&as_user(&body, "alice"), &cluster).await;
    assert_eq!(patch(&by_user).map(|p| p[0].clone()), Some(fast[0].clone()));
    // The controller's identity, but no StatefulSet of the namespace has that claim template.
    let mut object = request_object(&body);
    object["metadata"]["name"] = json!("www-nosuchsts-0");
    let unknown = mutate_with(&with_object(&body, &object), &cluster).await;
    assert_eq!(patch(&unknown).map(|p| p[0].clone()), Some(fast[0].clone()));
}

/// A replace that drops the PriorityClass `priority-class` set at creation gets it back (else
/// every pod would roll to priority 0); another class the user names stays theirs.
#[tokio::test]
async fn a_replace_keeps_the_priority_class_set_at_creation() {
    let name = "statefulset-update-after-mutation-replace.mutating.json";
    let mut captured: Value = serde_json::from_slice(&review_fixture(name)).unwrap();
    let old = &mut captured["request"]["oldObject"];
    old["spec"]["template"]["spec"]["priorityClassName"] = json!("stateful-critical");
    let recorded = old["metadata"]["annotations"]["stateful-guard.io/mutated"]
        .as_str()
        .unwrap()
        .to_owned();
    old["metadata"]["annotations"]["stateful-guard.io/mutated"] =
        json!(format!("{recorded},priority-class"));
    assert!(
        captured["request"]["object"]["spec"]["template"]["spec"]
            .get("priorityClassName")
            .is_none(),
        "the replaced manifest names no class"
    );
    let body = serde_json::to_vec(&captured).unwrap();
    let (patched, resp) = mutate_update(name, &body, &default_policies()).await;
    assert_eq!(
        patched["spec"]["template"]["spec"]["priorityClassName"],
        "stateful-critical"
    );
    let mut expected = captured["request"]["oldObject"]["spec"]["template"].clone();
    expected["spec"]["containers"][0]["image"] =
        captured["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(
        patched["spec"]["template"], expected,
        "the pods roll once, for the image, and keep their priority"
    );
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.contains("priority-class: kept priorityClassName \"stateful-critical\"")),
        "{:?}",
        warnings(&resp)
    );
    // The user names another class: no patch touches it.
    let mut object = request_object(&body);
    object["spec"]["template"]["spec"]["priorityClassName"] = json!("mine");
    let resp = review(
        Phase::Mutate,
        &with_object(&body, &object),
        &default_policies(),
    )
    .await;
    let ops = patch(&resp).cloned().unwrap_or(json!([]));
    assert!(!ops.to_string().contains("priorityClassName"), "{ops}");
}

/// The captured updates that raise a claim template from 1Gi to 2Gi (`kubectl apply`, and
/// server-side apply as a GitOps tool sends it), which the apiserver refuses on its own.
const GROWING: [&str; 2] = [
    "statefulset-update-grow-claim-apply.mutating.json",
    "statefulset-update-grow-claim-server-side-apply.mutating.json",
];

/// Raising `storage` in the manifest: the stored template is put back (so the apiserver accepts
/// the update: the claim templates end up exactly as stored, the fields it refuses to change), the
/// new size is recorded, and the user is told what happens; the same request as a dry run gets
/// the same answer (the webhook writes nothing itself).
#[tokio::test]
async fn a_claim_template_that_grows_is_recorded_and_the_stored_one_kept() {
    let policies = default_policies();
    for name in GROWING {
        let body = review_fixture(name);
        let old = old_object(&body);
        let (patched, resp) = mutate_update(name, &body, &policies).await;
        for field in ["podManagementPolicy", "volumeClaimTemplates", "selector"] {
            assert_eq!(
                patched["spec"][field], old["spec"][field],
                "{name}: spec.{field}"
            );
        }
        assert_eq!(
            patched["metadata"]["annotations"]["stateful-guard.io/claim-sizes"], "data=2Gi",
            "{name}"
        );
        let warnings = warnings(&resp);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("volume-growth") && w.contains("data to 2Gi")),
            "{name}: {warnings:?}"
        );
        // The validating webhook then sees the patched update, and lets it through.
        let verdict = review(Phase::Validate, &with_object(&body, &patched), &policies).await;
        assert!(allowed(&verdict), "{name}: {}", verdict["response"]);
        // A dry run: the same answer, nothing else.
        let mut dry: Value = serde_json::from_slice(&body).unwrap();
        dry["request"]["dryRun"] = json!(true);
        let dry = review(Phase::Mutate, &serde_json::to_vec(&dry).unwrap(), &policies).await;
        assert_eq!(patch(&dry), patch(&resp), "{name}");
    }
}

/// Lowering it is refused, with why and what to do; the apiserver would have answered a bare
/// "Forbidden: updates to statefulset spec ...".
#[tokio::test]
async fn a_claim_template_that_shrinks_is_refused_with_what_to_do() {
    let body = review_fixture("statefulset-update-shrink-claim-apply.mutating.json");
    let resp = review(Phase::Mutate, &body, &default_policies()).await;
    assert!(!allowed(&resp), "{}", resp["response"]);
    let message = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("[volume-growth]")
            && message.contains("storage 500Mi is smaller than 1Gi")
            && message.contains("cannot shrink"),
        "{message}"
    );
}
