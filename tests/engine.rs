//! The admission decisions a user sees: patches, denials, warnings and audit annotations, for
//! every action and mode, on the captured AdmissionReviews.
mod common;

use common::*;
use serde_json::{Value, json};
use stateful_guard::admission::Uninterpretable;
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::Phase;

const ZK_CREATE: &str = "statefulset-zookeeper-create.mutating.json";
const ZK_UPDATE_VALIDATING: &str = "statefulset-zookeeper-update.validating.json";

/// A policy from the default with `rules` replaced.
fn policy_with(mode: &str, rules: &str) -> stateful_guard::policy::PolicySet {
    policies(&format!(
        "apiVersion: stateful-guard.io/v1alpha1\nkind: Policy\nmetadata: {{name: p}}\nspec:\n  mode: {mode}\n  rules:\n{rules}"
    ))
}

/// A validating review of the zookeeper StatefulSet as a CREATE (3 replicas, a container
/// without probes, no PDB in the cluster).
fn zk_validating_create() -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&review_fixture(ZK_UPDATE_VALIDATING)).unwrap();
    let req = v.get_mut("request").unwrap();
    req["operation"] = json!("CREATE");
    req["oldObject"] = Value::Null;
    req["object"]["spec"]["replicas"] = json!(3);
    serde_json::to_vec(&v).unwrap()
}

fn no_pdbs() -> Snapshot {
    cluster("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}")
}

#[tokio::test]
async fn every_fixture_gets_a_well_formed_response_with_its_uid() {
    for (name, body) in review_fixtures() {
        let request: Value = serde_json::from_slice(&body).unwrap();
        let resp = review(phase_of(&name), &body, &default_policies()).await;
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1", "{name}");
        assert_eq!(resp["kind"], "AdmissionReview", "{name}");
        assert_eq!(resp["response"]["uid"], request["request"]["uid"], "{name}");
        if patch(&resp).is_some() {
            assert_eq!(resp["response"]["patchType"], "JSONPatch", "{name}");
        }
    }
}

#[tokio::test]
async fn mutate_action_patches_and_warns() {
    let body = review_fixture(ZK_CREATE);
    let resp = review(Phase::Mutate, &body, &policy_with("enforce", "    parallel-pod-management: {action: mutate}\n    pod-anti-affinity: {action: off}\n    topology-spread: {action: off}")).await;
    assert!(allowed(&resp));
    let patched = apply(&request_object(&body), patch(&resp).unwrap());
    assert_eq!(patched["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        patched["metadata"]["annotations"]["stateful-guard.io/mutated"],
        "parallel-pod-management"
    );
    assert!(
        patched["spec"]["template"]["spec"]["affinity"]
            .get("podAntiAffinity")
            .is_none(),
        "off rules do nothing"
    );
    let w = warnings(&resp);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "stateful-guard: parallel-pod-management: set podManagementPolicy Parallel"
        )
    );
    assert_eq!(
        annotation(&resp, "mutated").as_deref(),
        Some("parallel-pod-management")
    );
}

#[tokio::test]
async fn audit_action_on_a_mutation_records_without_patching() {
    let body = review_fixture(ZK_CREATE);
    let resp = review(Phase::Mutate, &body, &policy_with("enforce", "    parallel-pod-management: {action: audit}\n    pod-anti-affinity: {action: off}\n    topology-spread: {action: off}")).await;
    assert!(patch(&resp).is_none());
    assert!(warnings(&resp).is_empty(), "audit is silent to the user");
    let note = annotation(&resp, "parallel-pod-management").unwrap();
    assert!(
        note.starts_with("audit: would have set podManagementPolicy Parallel"),
        "{note}"
    );
    let would: Value = serde_json::from_str(&annotation(&resp, "would-patch").unwrap()).unwrap();
    let patched = apply(&request_object(&body), &would);
    assert_eq!(patched["spec"]["podManagementPolicy"], "Parallel");
}

#[tokio::test]
async fn validation_actions_have_their_exact_effect() {
    let body = zk_validating_create();
    // Every other validation rule off, whichever the registry has.
    let rules = |action: &str| {
        let mut text = format!("    require-readiness-probe: {{action: {action}}}");
        for rule in stateful_guard::rules::RuleId::ALL {
            if !rule.is_mutation() && rule.as_str() != "require-readiness-probe" {
                text.push_str(&format!("\n    {rule}: {{action: off}}"));
            }
        }
        text
    };

    let resp = review(
        Phase::Validate,
        &body,
        &policy_with("enforce", &rules("enforce")),
    )
    .await;
    assert!(!allowed(&resp));
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("[require-readiness-probe] container \"metrics\" of StatefulSet default/zk has no readinessProbe"), "{msg}");

    let resp = review(
        Phase::Validate,
        &body,
        &policy_with("enforce", &rules("warn")),
    )
    .await;
    assert!(allowed(&resp));
    let w = warnings(&resp);
    assert_eq!(w.len(), 1);
    assert!(
        w[0].starts_with("stateful-guard: require-readiness-probe: container \"metrics\""),
        "{w:?}"
    );

    let resp = review(
        Phase::Validate,
        &body,
        &policy_with("enforce", &rules("audit")),
    )
    .await;
    assert!(allowed(&resp));
    assert!(warnings(&resp).is_empty());
    assert!(
        annotation(&resp, "require-readiness-probe")
            .unwrap()
            .starts_with("audit: container \"metrics\"")
    );

    let resp = review(
        Phase::Validate,
        &body,
        &policy_with("enforce", &rules("off")),
    )
    .await;
    assert!(allowed(&resp));
    assert!(warnings(&resp).is_empty());
    assert!(annotation(&resp, "require-readiness-probe").is_none());
}

#[tokio::test]
async fn require_pdb_denies_with_a_manifest_and_passes_with_a_matching_pdb() {
    let body = zk_validating_create();
    let p = default_policies();
    let resp = review_with(
        Phase::Validate,
        &body,
        &p,
        &no_pdbs(),
        Uninterpretable::Allow,
    )
    .await;
    assert!(!allowed(&resp));
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "[require-pdb] StatefulSet default/zk has 3 replicas but no PodDisruptionBudget"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("kind: PodDisruptionBudget") && msg.contains("maxUnavailable: 1"),
        "{msg}"
    );

    let with_pdb = cluster(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: zk, namespace: default}\nspec:\n  maxUnavailable: 1\n  selector: {matchExpressions: [{key: app.kubernetes.io/name, operator: In, values: [zookeeper]}]}",
    );
    let resp = review_with(
        Phase::Validate,
        &body,
        &p,
        &with_pdb,
        Uninterpretable::Allow,
    )
    .await;
    let msg = resp["response"]["status"]["message"].as_str().unwrap_or("");
    assert!(!msg.contains("require-pdb"), "{msg}");
}

#[tokio::test]
async fn without_cluster_state_require_pdb_warns_instead_of_denying() {
    let body = zk_validating_create();
    let p = policy_with("enforce", "    require-readiness-probe: {action: off}");
    let resp = review(Phase::Validate, &body, &p).await;
    assert!(allowed(&resp));
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.contains("require-pdb: cannot check") && w.contains("no cluster state"))
    );
}

#[tokio::test]
async fn audit_mode_admits_every_fixture_unchanged_and_records_findings() {
    let audit = policies(include_str!("../policies/audit.yaml"));
    let mut recorded = 0;
    for (name, body) in review_fixtures() {
        let resp = review_with(
            phase_of(&name),
            &body,
            &audit,
            &no_pdbs(),
            Uninterpretable::Allow,
        )
        .await;
        assert!(allowed(&resp), "{name}: audit mode never denies");
        if annotation(&resp, "kept").is_some() {
            // An update that reverted a decision made at creation gets it back, in audit mode
            // too (tests/day2.rs): that patch and nothing new.
            assert!(
                annotation(&resp, "mutated").is_none(),
                "{name}: {}",
                resp["response"]
            );
            // Anything new (a claim template's growth) is only recorded, never applied.
            if let Some(would) = annotation(&resp, "would-patch") {
                let would: Value = serde_json::from_str(&would).unwrap();
                let sent = patch(&resp).cloned().unwrap_or_default();
                for op in would.as_array().unwrap() {
                    assert!(
                        !sent.as_array().unwrap().contains(op),
                        "{name}: {op} applied in audit mode"
                    );
                }
            }
            continue;
        }
        assert!(patch(&resp).is_none(), "{name}: audit mode never patches");
        assert_eq!(
            annotation(&resp, "policy").as_deref(),
            Some("audit (audit)"),
            "{name}"
        );
        if let Some(would) = annotation(&resp, "would-patch") {
            // The recorded patch is exactly what enforce mode would send, and it applies.
            let enforce = review_with(
                phase_of(&name),
                &body,
                &default_policies(),
                &no_pdbs(),
                Uninterpretable::Allow,
            )
            .await;
            let would: Value = serde_json::from_str(&would).unwrap();
            let mut enforce_patch = patch(&enforce).cloned().unwrap();
            // fastClass differs from default.yaml only if someone edits one of them: same here.
            assert_eq!(
                would.as_array().unwrap().len(),
                enforce_patch.as_array_mut().unwrap().len(),
                "{name}"
            );
            apply(&request_object(&body), &would);
            assert!(
                warnings(&resp)
                    .iter()
                    .any(|w| w.starts_with("stateful-guard (audit mode): ")
                        && w.contains("would have")),
                "{name}"
            );
            recorded += 1;
        }
    }
    assert!(
        recorded >= 6,
        "mutations recorded for the CREATE fixtures: {recorded}"
    );
    // A would-be denial is reported to the user and in the audit log.
    let resp = review_with(
        Phase::Validate,
        &zk_validating_create(),
        &audit,
        &no_pdbs(),
        Uninterpretable::Allow,
    )
    .await;
    assert!(allowed(&resp));
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.starts_with("stateful-guard (audit mode): would deny: require-pdb:"))
    );
    assert!(
        annotation(&resp, "require-pdb")
            .unwrap()
            .starts_with("enforce: StatefulSet default/zk")
    );
}

#[tokio::test]
async fn update_reports_only_what_the_update_introduces() {
    // zk scaled 3 -> 5 with no PDB and a container without probes: an existing database must
    // stay scalable during an incident.
    let body = review_fixture(ZK_UPDATE_VALIDATING);
    let resp = review_with(
        Phase::Validate,
        &body,
        &default_policies(),
        &no_pdbs(),
        Uninterpretable::Allow,
    )
    .await;
    assert!(allowed(&resp), "{resp}");
    // With `updates.validate: all`, the same update is denied.
    let strict = policies(include_str!("../policies/strict.yaml"));
    let resp = review_with(
        Phase::Validate,
        &body,
        &strict,
        &no_pdbs(),
        Uninterpretable::Allow,
    )
    .await;
    assert!(!allowed(&resp));
    // A serving container added without a readiness probe is new: reported even with
    // new-findings.
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["request"]["object"]["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "backup", "image": "backup:1", "ports": [{"containerPort": 8081}]}));
    let resp = review_with(
        Phase::Validate,
        &serde_json::to_vec(&v).unwrap(),
        &default_policies(),
        &no_pdbs(),
        Uninterpretable::Allow,
    )
    .await;
    assert!(!allowed(&resp));
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("container \"backup\"") && !msg.contains("\"metrics\""),
        "{msg}"
    );
}

#[tokio::test]
async fn an_update_that_leaves_its_pdb_is_denied_with_the_manifest_to_create() {
    // The old pods carry `tier: quorum`, which the namespace's one PDB selects; the update drops
    // the label. The finding is new, so it is reported whole, manifest included (the old
    // object's findings are only compared, without one). Keeping the label keeps the PDB.
    let mut left: Value = serde_json::from_slice(&review_fixture(ZK_UPDATE_VALIDATING)).unwrap();
    left["request"]["oldObject"]["spec"]["template"]["metadata"]["labels"]["tier"] =
        json!("quorum");
    let mut kept = left.clone();
    kept["request"]["object"]["spec"]["template"]["metadata"]["labels"]["tier"] = json!("quorum");
    let with_pdb = cluster(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: zk, namespace: default}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {tier: quorum}}",
    );
    for (body, admitted) in [(left, false), (kept, true)] {
        let resp = review_with(
            Phase::Validate,
            &serde_json::to_vec(&body).unwrap(),
            &default_policies(),
            &with_pdb,
            Uninterpretable::Allow,
        )
        .await;
        assert_eq!(allowed(&resp), admitted, "{resp}");
        if !admitted {
            let msg = resp["response"]["status"]["message"].as_str().unwrap();
            assert!(
                msg.contains("[require-pdb] StatefulSet default/zk has 5 replicas")
                    && msg.contains("Create this PodDisruptionBudget first")
                    && msg.contains("kind: PodDisruptionBudget"),
                "{msg}"
            );
        }
    }
}

#[tokio::test]
async fn update_reports_existing_problems_of_a_container_it_touches() {
    // The zk update changes the zookeeper container (which has probes); the metrics container
    // (no probes) is untouched and not reported. Changing metrics' image touches it.
    let body = review_fixture(ZK_UPDATE_VALIDATING);
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    let containers = v["request"]["object"]["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap();
    let metrics = containers
        .iter_mut()
        .find(|c| c["name"] == "metrics")
        .unwrap();
    metrics["image"] = json!("prom/exporter:2");
    let resp = review_with(
        Phase::Validate,
        &serde_json::to_vec(&v).unwrap(),
        &default_policies(),
        &no_pdbs(),
        Uninterpretable::Allow,
    )
    .await;
    assert!(!allowed(&resp));
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("[require-readiness-probe] container \"metrics\""),
        "{msg}"
    );
    assert!(
        !msg.contains("require-pdb"),
        "scaling without a PDB stays possible: {msg}"
    );
}

#[tokio::test]
async fn update_never_patches_immutable_fields_or_the_template() {
    let body = review_fixture("statefulset-zookeeper-update.mutating.json");
    let resp = review(Phase::Mutate, &body, &default_policies()).await;
    assert!(allowed(&resp));
    assert!(patch(&resp).is_none(), "{resp}");
}

#[tokio::test]
async fn dry_run_requests_are_evaluated_normally() {
    let resp = review(
        Phase::Mutate,
        &review_fixture("statefulset-create-dry-run.mutating.json"),
        &default_policies(),
    )
    .await;
    assert!(patch(&resp).is_some());
}

#[tokio::test]
async fn generate_name_pvc_is_mutated() {
    let body = review_fixture("pvc-create-generate-name.mutating.json");
    let resp = review(Phase::Mutate, &body, &default_policies()).await;
    let patched = apply(&request_object(&body), patch(&resp).unwrap());
    assert_eq!(patched["spec"]["storageClassName"], "fast-ssd");
}

#[tokio::test]
async fn pvc_class_chosen_explicitly_is_kept_and_a_filled_in_default_is_replaced() {
    // Same PVC, same class on the wire; managedFields tell who set it.
    let explicit = review(
        Phase::Mutate,
        &review_fixture("pvc-create.mutating.json"),
        &default_policies(),
    )
    .await;
    assert!(
        patch(&explicit).is_none(),
        "the user's kubectl-create owns f:storageClassName"
    );
    let body = review_fixture("pvc-create-default-class-filled.mutating.json");
    let filled = review(Phase::Mutate, &body, &default_policies()).await;
    let patched = apply(&request_object(&body), patch(&filled).unwrap());
    assert_eq!(patched["spec"]["storageClassName"], "fast-ssd");
    assert!(warnings(&filled)[0].contains("filled in by DefaultStorageClass"));
}

#[tokio::test]
async fn namespaces_exempt_by_policy_or_as_the_webhooks_own_are_skipped() {
    for ns in ["kube-system", "stateful-guard"] {
        let mut v: Value = serde_json::from_slice(&review_fixture(ZK_CREATE)).unwrap();
        v["request"]["namespace"] = json!(ns);
        let resp = review(
            Phase::Mutate,
            &serde_json::to_vec(&v).unwrap(),
            &default_policies(),
        )
        .await;
        assert!(allowed(&resp));
        assert!(patch(&resp).is_none(), "{ns}");
        assert!(resp["response"].get("auditAnnotations").is_none(), "{ns}");
    }
}

fn with_exempt_annotation(value: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&review_fixture(ZK_CREATE)).unwrap();
    v["request"]["object"]["metadata"]["annotations"]["stateful-guard.io/exempt"] = json!(value);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn object_exemptions_are_off_unless_the_policy_allows_them() {
    let body = with_exempt_annotation("parallel-pod-management");
    let resp = review(Phase::Mutate, &body, &default_policies()).await;
    let patched = apply(&request_object(&body), patch(&resp).unwrap());
    assert_eq!(
        patched["spec"]["podManagementPolicy"], "Parallel",
        "not allowed by default"
    );

    let allow_some = policies(
        "apiVersion: stateful-guard.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  objectExemptions: {allow: true, rules: [parallel-pod-management]}",
    );
    let resp = review(Phase::Mutate, &body, &allow_some).await;
    let patched = apply(&request_object(&body), patch(&resp).unwrap());
    assert_eq!(
        patched["spec"]["podManagementPolicy"], "OrderedReady",
        "exempted"
    );
    // A rule the policy does not let objects exempt themselves from still applies.
    let body = with_exempt_annotation("pod-anti-affinity");
    let resp = review(Phase::Mutate, &body, &allow_some).await;
    let patched = apply(&request_object(&body), patch(&resp).unwrap());
    assert!(patched["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
}

#[tokio::test]
async fn the_most_specific_policy_governs_a_namespace() {
    let set = policies(
        r#"apiVersion: stateful-guard.io/v1alpha1
kind: Policy
metadata: {name: a-everything}
spec: {rules: {parallel-pod-management: {action: mutate}}}
---
apiVersion: stateful-guard.io/v1alpha1
kind: Policy
metadata: {name: b-by-label}
spec:
  match: {namespaceSelector: {matchLabels: {tier: db}}}
  rules: {parallel-pod-management: {action: off}}
---
apiVersion: stateful-guard.io/v1alpha1
kind: Policy
metadata: {name: c-by-name}
spec:
  match: {namespaces: [payments]}
  mode: audit
"#,
    );
    let ns = cluster(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {tier: db}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: payments, labels: {tier: db}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}",
    );
    let body_in = |namespace: &str| {
        let mut v: Value = serde_json::from_slice(&review_fixture(ZK_CREATE)).unwrap();
        v["request"]["namespace"] = json!(namespace);
        serde_json::to_vec(&v).unwrap()
    };
    for (namespace, expected) in [
        ("payments", "c-by-name (audit)"),
        ("default", "b-by-label (enforce)"),
        ("web", "a-everything (enforce)"),
    ] {
        let resp = review_with(
            Phase::Mutate,
            &body_in(namespace),
            &set,
            &ns,
            Uninterpretable::Allow,
        )
        .await;
        assert_eq!(
            annotation(&resp, "policy").as_deref(),
            Some(expected),
            "{namespace}"
        );
    }
    // Without namespace labels (no cluster), a selector cannot match: the catch-all applies.
    let resp = review(Phase::Mutate, &body_in("default"), &set).await;
    assert_eq!(
        annotation(&resp, "policy").as_deref(),
        Some("a-everything (enforce)")
    );
}

#[tokio::test]
async fn unknown_kinds_follow_the_configured_default() {
    let mut v: Value = serde_json::from_slice(&review_fixture(ZK_CREATE)).unwrap();
    v["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let body = serde_json::to_vec(&v).unwrap();
    let resp = review_with(
        Phase::Mutate,
        &body,
        &default_policies(),
        &Snapshot::unknown(),
        Uninterpretable::Allow,
    )
    .await;
    assert!(allowed(&resp));
    assert_eq!(resp["response"]["uid"], v["request"]["uid"]);
    assert!(warnings(&resp)[0].contains("does not handle apps/v1 Deployment"));
    let resp = review_with(
        Phase::Mutate,
        &body,
        &default_policies(),
        &Snapshot::unknown(),
        Uninterpretable::Deny,
    )
    .await;
    assert!(!allowed(&resp));
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("does not handle apps/v1 Deployment")
    );
}

#[tokio::test]
async fn an_undecodable_object_gets_a_clear_well_formed_answer() {
    let mut v: Value = serde_json::from_slice(&review_fixture(ZK_CREATE)).unwrap();
    v["request"]["object"]["spec"]["replicas"] = json!("three");
    let resp = review(
        Phase::Mutate,
        &serde_json::to_vec(&v).unwrap(),
        &default_policies(),
    )
    .await;
    assert!(allowed(&resp));
    assert_eq!(resp["response"]["uid"], v["request"]["uid"]);
    assert!(
        warnings(&resp)[0].contains("does not decode as its kind"),
        "{resp}"
    );
}

/// The decode order follows a hint in the body's first bytes (`request.kind` as kube-apiserver
/// writes it); a body whose first bytes mislead it is answered exactly as one that does not.
#[tokio::test]
async fn a_review_that_misleads_the_decode_order_is_answered_the_same() {
    const PVC_KIND: &str = r#""kind":{"group":"","version":"v1","kind":"PersistentVolumeClaim"}"#;
    for (name, from, to) in [
        // A StatefulSet's review that names a PVC's kind first, in a field nobody reads.
        (
            ZK_CREATE,
            r#""request":{"#.to_owned(),
            format!(r#""request":{{"unread":{{{PVC_KIND}}},"#),
        ),
        // A PVC's review with its kind's keys in another order.
        (
            "pvc-create-default-class-filled.mutating.json",
            PVC_KIND.to_owned(),
            r#""kind":{"kind":"PersistentVolumeClaim","group":"","version":"v1"}"#.to_owned(),
        ),
    ] {
        let body = review_fixture(name);
        let plain = review(Phase::Mutate, &body, &default_policies()).await;
        assert!(patch(&plain).is_some(), "{name} is mutated: {plain}");
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.contains(PVC_KIND), name.starts_with("pvc"), "{name}");
        let misled = text.replacen(&from, &to, 1);
        assert_eq!(
            misled.contains(PVC_KIND),
            !name.starts_with("pvc"),
            "{name}"
        );
        let resp = review(Phase::Mutate, misled.as_bytes(), &default_policies()).await;
        assert_eq!(resp, plain, "{name}");
    }
}

#[tokio::test]
async fn fast_class_missing_from_the_cluster_is_a_warning_not_a_patch() {
    let body = review_fixture("pvc-create-default-class-filled.mutating.json");
    let only_standard = cluster(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: e2e-standard, annotations: {storageclass.kubernetes.io/is-default-class: 'true'}}\nprovisioner: x",
    );
    let resp = review_with(
        Phase::Mutate,
        &body,
        &default_policies(),
        &only_standard,
        Uninterpretable::Allow,
    )
    .await;
    assert!(patch(&resp).is_none());
    assert!(
        warnings(&resp)[0].contains("StorageClass \"fast-ssd\" does not exist"),
        "{:?}",
        warnings(&resp)
    );
}
