//! deploy/: renders with `kubectl kustomize`, validates against Kubernetes' schemas, keeps the
//! webhook out of its own way, least-privilege RBAC, and the webhook's own Deployment passes
//! its own default policy.
mod common;

use common::*;
use serde_json::{Value, json};

const TARGETS: [&str; 3] = [
    "deploy/base",
    "deploy/overlays/audit",
    "deploy/overlays/cert-manager",
];

/// Every target renders and passes the schemas strictly, for the oldest and the newest
/// Kubernetes the README supports.
#[test]
fn every_target_renders_and_passes_the_schemas_strictly() {
    for target in TARGETS {
        let objects = kustomize(target);
        assert!(objects.len() >= 12, "{target}: {}", objects.len());
        // CRDs: no schema in Kubernetes' OpenAPI; cert-manager validates them itself.
        let objects: Vec<Value> = objects
            .into_iter()
            .filter(|o| {
                !o["apiVersion"]
                    .as_str()
                    .unwrap()
                    .starts_with("cert-manager.io/")
            })
            .collect();
        for version in [OLDEST_KUBERNETES, NEWEST_KUBERNETES] {
            if let Err(output) = kubernetes_validate_all(&objects, version) {
                panic!("{target} on Kubernetes {version}:\n{output}");
            }
        }
    }
}

/// The README's minimum is real: the release before it refuses the Deployment.
#[test]
fn the_release_before_the_supported_minimum_refuses_the_deployment() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let minor = OLDEST_KUBERNETES.rsplit_once('.').unwrap().0;
    assert!(
        readme.contains(&format!("Kubernetes {minor} or later")),
        "the README's install section states the minimum, {minor}"
    );
    let deployment: Vec<Value> = kustomize("deploy/base")
        .into_iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    let older = "1.28.0";
    let output = kubernetes_validate_all(&deployment, older)
        .expect_err("the Deployment must need the supported minimum");
    assert!(output.contains("sleep"), "{output}");
}

#[test]
fn webhooks_exclude_kube_system_and_their_own_namespace_and_speak_only_v1() {
    for target in TARGETS {
        let objects = kustomize(target);
        let configs: Vec<&Value> = objects
            .iter()
            .filter(|o| {
                o["kind"]
                    .as_str()
                    .unwrap()
                    .ends_with("WebhookConfiguration")
            })
            .collect();
        assert_eq!(configs.len(), 2, "{target}");
        for config in configs {
            for hook in config["webhooks"].as_array().unwrap() {
                assert_eq!(hook["admissionReviewVersions"], json!(["v1"]), "{target}");
                assert_eq!(hook["sideEffects"], "None");
                assert!(hook["timeoutSeconds"].as_i64().unwrap() <= 5);
                assert_eq!(hook["matchPolicy"], "Equivalent");
                let excluded = hook["namespaceSelector"]["matchExpressions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
                    .expect("a NotIn on the namespace name");
                for ns in ["kube-system", "stateful-guard"] {
                    assert!(
                        excluded["values"].as_array().unwrap().contains(&json!(ns)),
                        "{target}: {ns}"
                    );
                }
                assert_eq!(
                    hook["clientConfig"]["service"]["namespace"],
                    "stateful-guard"
                );
                if config["kind"] == "MutatingWebhookConfiguration" {
                    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
                    assert_eq!(
                        hook["failurePolicy"], "Ignore",
                        "a down mutating webhook must not block deploys"
                    );
                }
            }
        }
    }
}

#[test]
fn rbac_is_least_privilege() {
    for target in TARGETS {
        let objects = kustomize(target);
        for role in objects
            .iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        {
            for rule in role["rules"].as_array().unwrap() {
                if rule["nonResourceURLs"].is_array() {
                    // Read access to named URLs (/metrics, /report), nothing else.
                    assert_eq!(rule["verbs"], json!(["get"]), "{target}: {rule}");
                    assert!(
                        !rule["nonResourceURLs"]
                            .as_array()
                            .unwrap()
                            .contains(&json!("*")),
                        "{target}: {rule}"
                    );
                    continue;
                }
                for field in ["verbs", "resources", "apiGroups"] {
                    assert!(
                        !rule[field].as_array().unwrap().contains(&json!("*")),
                        "{target}: wildcard {field} in {}",
                        role["metadata"]["name"]
                    );
                }
                let verbs: Vec<&str> = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                let resources: Vec<&str> = rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                let writes = verbs
                    .iter()
                    .any(|v| ["update", "patch", "delete"].contains(v));
                if writes {
                    assert!(
                        rule["resourceNames"].is_array(),
                        "{target}: writes on {resources:?} without resourceNames"
                    );
                }
                assert!(
                    !verbs.contains(&"delete"),
                    "{target}: nothing is ever deleted"
                );
                if resources.contains(&"secrets") || resources.contains(&"configmaps") {
                    assert_eq!(
                        role["kind"], "Role",
                        "{target}: Secrets and ConfigMaps only in its own namespace"
                    );
                }
            }
        }
        let secret_rules = of_kind(&objects, "Role")
            .iter()
            .flat_map(|r| r["rules"].as_array().unwrap().clone())
            .filter(|r| r["resources"] == json!(["secrets"]))
            .count();
        let webhook_rules = of_kind(&objects, "ClusterRole")
            .iter()
            .flat_map(|r| r["rules"].as_array().unwrap().clone())
            .filter(|r| r["apiGroups"] == json!(["admissionregistration.k8s.io"]))
            .count();
        if target.ends_with("cert-manager") {
            assert_eq!(
                secret_rules, 0,
                "with cert-manager the webhook needs no Secret access"
            );
            assert_eq!(
                webhook_rules, 0,
                "with cert-manager the webhook needs no rights on its webhook configurations"
            );
        } else {
            assert_eq!(
                webhook_rules, 1,
                "{target}: the bootstrap keeps caBundle current"
            );
        }
    }
}

#[test]
fn the_deployment_is_highly_available_and_locked_down() {
    let objects = kustomize("deploy/base");
    let deploy = of_kind(&objects, "Deployment")[0];
    let spec = &deploy["spec"];
    assert!(spec["replicas"].as_i64().unwrap() >= 2);
    let pod = &spec["template"]["spec"];
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    assert!(pod["topologySpreadConstraints"].is_array());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert!(c["lifecycle"]["preStop"].is_object());
    assert_eq!(c["image"], "stateful-guard:0.1.0");
    let pdb = of_kind(&objects, "PodDisruptionBudget")[0];
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );
    let svc = of_kind(&objects, "Service")[0];
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
}

/// The webhook's own pods, judged by its own default policy: the Deployment's pod template as
/// a StatefulSet, with the rendered PDB as cluster state.
#[test]
fn the_webhooks_own_deployment_passes_its_own_default_policy() {
    let objects = kustomize("deploy/base");
    let deploy = of_kind(&objects, "Deployment")[0];
    let as_statefulset = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": deploy["metadata"]["name"], "namespace": "stateful-guard-selftest"},
        "spec": {
            "replicas": deploy["spec"]["replicas"], "selector": deploy["spec"]["selector"],
            "serviceName": "stateful-guard", "template": deploy["spec"]["template"],
        }
    });
    let mut pdb = of_kind(&objects, "PodDisruptionBudget")[0].clone();
    pdb["metadata"]["namespace"] = json!("stateful-guard-selftest");
    let docs = vec![
        stateful_guard::check::Document {
            path: "deployment".into(),
            index: 1,
            line: 0,
            value: as_statefulset,
        },
        stateful_guard::check::Document {
            path: "pdb".into(),
            index: 2,
            line: 0,
            value: pdb,
        },
    ];
    let checked =
        stateful_guard::check::check(&docs, &default_policies(), "stateful-guard-selftest");
    assert!(checked.errors.is_empty(), "{:?}", checked.errors);
    let report = checked.report;
    let o = &report.objects[0];
    assert!(o.allowed, "{o:?}");
    let rules: Vec<&str> = o.findings.iter().map(|f| f.rule.as_str()).collect();
    // A webhook keeps no data, so it is not told to add storage: nothing is found.
    assert!(rules.is_empty(), "{:?}", o.findings);
    let mutated: Vec<&str> = o
        .mutations
        .iter()
        .filter(|m| m.applied)
        .map(|m| m.rule.as_str())
        .collect();
    assert_eq!(
        mutated,
        ["parallel-pod-management"],
        "anti-affinity and spreading are already there"
    );
}

#[test]
fn the_deployed_policies_are_the_shipped_ones() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(
        read("deploy/base/policy.yaml"),
        read("policies/default.yaml"),
        "copy policies/default.yaml to deploy/base/policy.yaml"
    );
    assert_eq!(
        read("deploy/overlays/audit/policy.yaml"),
        read("policies/audit.yaml"),
        "copy policies/audit.yaml to deploy/overlays/audit/policy.yaml"
    );
    for (target, mode) in [
        ("deploy/base", "enforce"),
        ("deploy/overlays/audit", "audit"),
    ] {
        let objects = kustomize(target);
        let cm = of_kind(&objects, "ConfigMap")[0];
        assert_eq!(cm["metadata"]["labels"]["stateful-guard.io/policy"], "true");
        let docs = stateful_guard::policy::parse_documents(
            cm["data"]["policy.yaml"].as_str().unwrap(),
            target,
        )
        .unwrap();
        assert_eq!(docs[0].spec.mode.as_str(), mode, "{target}");
    }
}

/// The optional components: the PolicyReport CRD, and RBAC for PolicyReports only, each valid
/// for the supported Kubernetes versions, and nothing else.
#[test]
fn the_policy_report_components_add_the_crd_and_rights_on_policyreports_only() {
    let dir = base_with_components(&["policy-report-crd", "policy-reports"]);
    let with = kustomize(dir.path().to_str().unwrap());
    let base = kustomize("deploy/base");
    assert_eq!(
        with.len(),
        base.len() + 3,
        "a CRD, a ClusterRole and its binding"
    );
    let crd = of_kind(&with, "CustomResourceDefinition");
    assert_eq!(crd[0]["metadata"]["name"], "policyreports.wgpolicyk8s.io");
    assert_eq!(crd[0]["spec"]["versions"][0]["name"], "v1alpha2");
    let role = named(&with, "ClusterRole", "stateful-guard-policy-reports");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["wgpolicyk8s.io"], "resources": ["policyreports"], "verbs": ["list", "create", "update", "delete"]}])
    );
    let binding = named(&with, "ClusterRoleBinding", "stateful-guard-policy-reports");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "stateful-guard", "namespace": "stateful-guard"}])
    );
    let added: Vec<Value> = with.iter().filter(|o| !base.contains(o)).cloned().collect();
    for version in [OLDEST_KUBERNETES, NEWEST_KUBERNETES] {
        if let Err(output) = kubernetes_validate_all(&added, version) {
            panic!("Kubernetes {version}:\n{output}");
        }
    }
}
