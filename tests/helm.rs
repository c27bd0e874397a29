//! deploy/helm/stateful-guard, with a real helm: it installs what the kustomize targets install
//! (compared object by object), deploy/ is rendered from it and current, it lints strictly, every
//! manifest it renders passes Kubernetes' schemas, and each value reaches the objects it is
//! documented to change. (Install, upgrade and uninstall against a real apiserver are not here:
//! they need the apiserver harness of the integration tests.)
mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};

/// The labels only a Helm release carries; the one difference the chart-vs-kustomize comparisons
/// ignore, besides the Namespace object (a chart leaves the namespace to
/// `helm install --create-namespace`). Names are not ignored: the chart's names are fixed, as
/// deploy/'s are.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

/// Objects by `apiVersion kind namespace/name`, without [`HELM_LABELS`].
fn keyed(objects: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for mut o in objects {
        if let Some(labels) = o["metadata"]["labels"].as_object_mut() {
            for label in HELM_LABELS {
                labels.remove(label);
            }
        }
        let key = format!(
            "{} {} {}/{}",
            o["apiVersion"].as_str().unwrap(),
            o["kind"].as_str().unwrap(),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap()
        );
        assert!(out.insert(key.clone(), o).is_none(), "{key} twice");
    }
    out
}

/// Asserts `helm template ARGS` renders the objects `kubectl kustomize TARGET` renders, apart
/// from the Namespace object and [`HELM_LABELS`]; `normalize` is applied to both sides first.
fn assert_chart_renders_target(args: &[&str], target: &str, normalize: fn(&mut Value)) {
    let mut kustomized = kustomize(target);
    let namespaces = of_kind(&kustomized, "Namespace").len();
    assert_eq!(namespaces, 1, "{target}");
    kustomized.retain(|o| o["kind"] != "Namespace");
    let chart = helm_template(args);
    assert!(
        of_kind(&chart, "Namespace").is_empty(),
        "the chart makes no Namespace"
    );
    let (mut chart, mut kustomized) = (keyed(chart), keyed(kustomized));
    chart.values_mut().for_each(normalize);
    kustomized.values_mut().for_each(normalize);
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>(),
        "helm template {args:?} vs kubectl kustomize {target}: different objects"
    );
    for (key, object) in &chart {
        let mut differences = Vec::new();
        differ(object, &kustomized[key], String::new(), &mut differences);
        assert!(
            differences.is_empty(),
            "{key}: helm template {args:?} vs kubectl kustomize {target}:\n{}",
            differences.join("\n")
        );
    }
}

/// Where `chart` and `kustomized` differ, one line per JSON pointer.
fn differ(chart: &Value, kustomized: &Value, at: String, out: &mut Vec<String>) {
    match (chart, kustomized) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let (x, y) = (&a.get(key), &b.get(key));
                let at = format!("{at}/{key}");
                match (x, y) {
                    (Some(x), Some(y)) => differ(x, y, at, out),
                    _ => out.push(format!("{at}: chart {x:?}, kustomize {y:?}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differ(x, y, format!("{at}/{i}"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{at}: chart {a}, kustomize {b}")),
        _ => {}
    }
}

fn unchanged(_: &mut Value) {}

#[test]
fn default_values_render_what_the_kustomize_base_renders() {
    assert_chart_renders_target(&[], "deploy/base", unchanged);
}

/// The audit overlay ships policies/audit.yaml; the chart sets `spec.mode: audit` in its policy
/// (policies/default.yaml). They are compared as stateful-guard reads them (the parsed
/// documents, every default filled in), apart from the policy's name (`audit` vs `default`).
#[test]
fn mode_audit_renders_what_the_audit_overlay_renders() {
    fn policy_as_read(o: &mut Value) {
        if o["kind"] != "ConfigMap" {
            return;
        }
        let text = o["data"]["policy.yaml"].as_str().unwrap();
        let docs = stateful_guard::policy::parse_documents(text, "ConfigMap").unwrap();
        let mut docs = serde_json::to_value(docs).unwrap();
        for doc in docs.as_array_mut().unwrap() {
            doc["metadata"].as_object_mut().unwrap().remove("name");
        }
        o["data"]["policy.yaml"] = docs;
    }
    assert_chart_renders_target(
        &["--set", "mode=audit"],
        "deploy/overlays/audit",
        policy_as_read,
    );
    let chart = helm_template(&["--set", "mode=audit"]);
    let text = of_kind(&chart, "ConfigMap")[0]["data"]["policy.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let docs = stateful_guard::policy::parse_documents(&text, "chart").unwrap();
    assert_eq!(docs[0].spec.mode.as_str(), "audit");
    let default = std::fs::read_to_string(root().join("policies/default.yaml")).unwrap();
    assert_eq!(
        text,
        default.replace("  mode: enforce\n", "  mode: audit\n"),
        "only spec.mode changes: the comments stay"
    );
}

#[test]
fn cert_manager_mode_renders_what_the_cert_manager_overlay_renders() {
    assert_chart_renders_target(
        &["--set", "certificates.mode=cert-manager"],
        "deploy/overlays/cert-manager",
        unchanged,
    );
}

/// `volumeGrowth.enabled` installs what deploy/base with the volume-growth component installs:
/// the flag, and a ClusterRole that may read and resize claims and record Events, nothing more.
#[test]
fn volume_growth_renders_what_the_volume_growth_component_renders() {
    let dir = base_with_components(&["volume-growth"]);
    let target = dir.path().to_str().unwrap();
    assert_chart_renders_target(&["--set", "volumeGrowth.enabled=true"], target, unchanged);
    let objects = kustomize(target);
    let args =
        &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--grow-volumes"),
        "{args}"
    );
    let role = named(&objects, "ClusterRole", "stateful-guard-volume-growth");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "patch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
        ])
    );
    let base = helm_template(&[]);
    assert!(
        !base
            .iter()
            .any(|o| o["metadata"]["name"] == "stateful-guard-volume-growth"),
        "off by default: no right to patch claims"
    );
}

/// deploy/base's manifests and the cert-manager overlay's Certificates are rendered from the
/// chart; an edit to one without the other fails here.
#[test]
fn the_kustomize_manifests_are_current_with_the_chart() {
    helm_tool();
    let out = std::process::Command::new(root().join("scripts/render-deploy"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/ is not what the chart renders; edit deploy/helm/stateful-guard/templates, not \
         deploy/, and run scripts/render-deploy:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Value sets that between them use every value but the ServiceMonitor's.
fn value_sets() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("defaults", vec![]),
        ("audit", vec!["--set", "mode=audit"]),
        (
            "cert-manager",
            vec!["--set", "certificates.mode=cert-manager"],
        ),
        ("everything", everything()),
    ]
}

/// Every value away from its default (certificates.mode=secret, a policy ConfigMap of one's
/// own...) but the ServiceMonitor's.
fn everything() -> Vec<&'static str> {
    vec![
        "--set",
        "mode=audit,existingPolicyConfigMap=my-policies,replicas=3",
        "--set",
        "image.repository=registry.example/sg,image.tag=1.2.3,image.pullPolicy=Always",
        "--set",
        "imagePullSecrets[0].name=regcred,podAnnotations.team=storage,nodeSelector.pool=system",
        "--set",
        "tolerations[0].key=dedicated,tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule",
        "--set",
        "priorityClassName=,resources.requests.cpu=100m,resources.limits.memory=512Mi",
        "--set",
        "certificates.mode=secret,certificates.secret.name=my-tls,certificates.secret.caBundle=Q0E=",
        "--set",
        "webhook.failurePolicy.validating=Fail,webhook.timeoutSeconds=10",
        "--set",
        "webhook.token=tok0123456789abcdefghijklmnopqrstuvwxyz,webhook.nextToken=next0123456789abcdefghijklmnopqrstuvwxyz",
        "--set",
        "webhook.namespaceSelector.excludeNamespaces={legacy}",
        "--set",
        "webhook.namespaceSelector.matchExpressions[0].key=team,webhook.namespaceSelector.matchExpressions[0].operator=Exists",
    ]
}

/// The ServiceMonitor's values, with the CRD announced to `helm template`.
const SERVICE_MONITOR: [&str; 4] = [
    "--set",
    "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.interval=30s,metrics.serviceMonitor.labels.release=prom",
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
];

#[test]
fn helm_lint_strict_is_clean() {
    for (_, args) in value_sets() {
        let mut all = vec!["lint", "--strict", CHART];
        all.extend(args);
        let out = helm(&all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
            "helm {}:\n{stdout}{}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every manifest the chart renders, with any values, passes the schemas strictly, for the
/// oldest and the newest Kubernetes the README supports.
#[test]
fn every_rendered_manifest_passes_the_schemas_strictly() {
    let mut sets = value_sets();
    sets[3].1.extend(SERVICE_MONITOR);
    for (name, args) in sets {
        let objects = helm_template(&args);
        // CRDs' objects: no schema in Kubernetes' OpenAPI.
        let (custom, objects): (Vec<Value>, Vec<Value>) = objects.into_iter().partition(|o| {
            let api = o["apiVersion"].as_str().unwrap();
            api.starts_with("cert-manager.io/") || api.starts_with("monitoring.coreos.com/")
        });
        assert!(objects.len() >= 9, "{name}: {}", objects.len());
        if name == "everything" {
            assert_eq!(of_kind(&custom, "ServiceMonitor").len(), 1);
        }
        for version in [OLDEST_KUBERNETES, NEWEST_KUBERNETES] {
            if let Err(output) = kubernetes_validate_all(&objects, version) {
                panic!("{name} on Kubernetes {version}:\n{output}");
            }
        }
    }
}

/// The chart also installs on Kubernetes 1.26 to 1.28 (tests/helm_install.rs installs it on a
/// real 1.26): there its Deployment has no `preStop.sleep`, which those versions refuse, and
/// passes their schemas; from 1.29 on it has it.
#[test]
fn before_1_29_the_chart_leaves_out_the_prestop_sleep() {
    let lifecycle = |objects: &[Value]| {
        of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["lifecycle"]
            .clone()
    };
    for version in ["1.26.0", "1.28.0"] {
        let objects = helm_template(&["--kube-version", version]);
        assert!(lifecycle(&objects).is_null(), "{version}");
        if let Err(output) = kubernetes_validate_all(&objects, version) {
            panic!("Kubernetes {version}:\n{output}");
        }
    }
    let objects = helm_template(&["--kube-version", OLDEST_KUBERNETES]);
    assert_eq!(lifecycle(&objects)["preStop"]["sleep"]["seconds"], 5);
    // Older than the chart's kubeVersion: helm refuses.
    let out = helm(&[
        "template",
        "stateful-guard",
        CHART,
        "--kube-version",
        "1.25.0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kubeVersion"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_file(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join(CHART).join(name)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

#[test]
fn app_version_is_the_crate_version_and_the_default_image_tag() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = chart_file("Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(
        chart["appVersion"], version,
        "set appVersion in {CHART}/Chart.yaml to the crate's version"
    );
    let objects = helm_template(&[]);
    let deploy = of_kind(&objects, "Deployment")[0];
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("stateful-guard:{version}")
    );
}

#[test]
fn the_charts_default_policy_is_policies_default_yaml() {
    let values = chart_file("values.yaml");
    let shipped = std::fs::read_to_string(root().join("policies/default.yaml")).unwrap();
    assert_eq!(
        values["policy"].as_str().unwrap(),
        shipped,
        "copy policies/default.yaml into `policy:` of {CHART}/values.yaml"
    );
    let objects = helm_template(&[]);
    assert_eq!(
        of_kind(&objects, "ConfigMap")[0]["data"]["policy.yaml"],
        shipped.as_str()
    );
}

/// helm's refusal of `ARGS`, its stderr.
fn refusal(args: &[&str]) -> String {
    let mut all = vec!["template", "stateful-guard", CHART, "-n", "stateful-guard"];
    all.extend_from_slice(args);
    let out = helm(&all);
    assert!(!out.status.success(), "helm accepted {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_values_schema_rejects_bad_values() {
    // The same values with a good setting render: what fails below is the setting.
    helm_template(&["--set", "mode=audit,webhook.timeoutSeconds=30"]);
    for (args, says) in [
        (vec!["--set", "mode=dry-run"], "mode"),
        (vec!["--set", "replica=3"], "replica"),
        (vec!["--set", "webhook.timeoutSeconds=31"], "timeoutSeconds"),
        (
            vec!["--set", "webhook.failurePolicy.mutating=Block"],
            "mutating",
        ),
        (vec!["--set", "certificates.mode=vault"], "mode"),
        (vec!["--set", "certificates.mode=secret"], "secret"),
        (vec!["--set", "replicas=two"], "replicas"),
        (vec!["--set", "backgroundAudit.interval=often"], "interval"),
        (
            vec![
                "--set",
                "certificates.mode=cert-manager,webhook.token=0123456789ABCDEF0123456789abcdef",
            ],
            "token",
        ),
    ] {
        let stderr = refusal(&args);
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
}

/// The bootstrap keeps its own token: one given with it is a clear error, not a second token
/// the webhook would never require.
#[test]
fn a_webhook_token_with_the_bootstrap_is_refused() {
    let stderr = refusal(&[
        "--set",
        "webhook.token=0123456789abcdefghijklmnopqrstuvwxyz",
    ]);
    assert!(
        stderr.contains("webhook.token is for certificates.mode=cert-manager or secret"),
        "{stderr}"
    );
}

/// The background audit's interval reaches the webhook's arguments; `0` turns it off, and with it
/// the PVC rights it needs.
#[test]
fn the_background_audit_interval_reaches_the_webhook_and_its_rbac() {
    let pvc_rights = |objects: &[Value]| {
        of_kind(objects, "ClusterRole")[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["persistentvolumeclaims"]))
    };
    let args = |objects: &[Value]| {
        of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
            .clone()
    };
    let default = helm_template(&[]);
    assert!(pvc_rights(&default));
    assert!(
        args(&default)
            .as_array()
            .unwrap()
            .contains(&json!("--background-audit=10m"))
    );
    let off = helm_template(&["--set", "backgroundAudit.interval=0"]);
    assert!(!pvc_rights(&off));
    assert!(
        args(&off)
            .as_array()
            .unwrap()
            .contains(&json!("--background-audit=0"))
    );
}

#[test]
fn every_value_reaches_the_objects_it_is_documented_to_change() {
    let objects = helm_template(&everything());
    let deploy = of_kind(&objects, "Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 3);
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example/sg:1.2.3");
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["annotations"],
        json!({"team": "storage"})
    );
    assert_eq!(pod["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert!(pod.get("priorityClassName").is_none(), "empty means none");
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    // The token: a Secret, mounted where --webhook-token-file reads it.
    let token_secret = of_kind(&objects, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "stateful-guard-webhook-token")
        .expect("the token's Secret");
    assert_eq!(
        token_secret["stringData"]["token"],
        "tok0123456789abcdefghijklmnopqrstuvwxyz\nnext0123456789abcdefghijklmnopqrstuvwxyz",
        "the current token, then the next, both taken"
    );
    assert!(container["args"].as_array().unwrap().contains(&json!(
        "--webhook-token-file=/etc/stateful-guard/webhook-token/token"
    )));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "stateful-guard-webhook-token")
        .expect("the token's Secret is mounted");
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == volume["name"]
                && m["mountPath"] == "/etc/stateful-guard/webhook-token")
    );
    for (kind, policy) in [
        ("MutatingWebhookConfiguration", "Ignore"),
        ("ValidatingWebhookConfiguration", "Fail"),
    ] {
        let hook = &of_kind(&objects, kind)[0]["webhooks"][0];
        assert_eq!(hook["failurePolicy"], policy, "{kind}");
        assert_eq!(hook["timeoutSeconds"], 10);
        assert_eq!(hook["clientConfig"]["caBundle"], "Q0E=");
        let endpoint = if kind.starts_with("Mutating") {
            "mutate"
        } else {
            "validate"
        };
        assert_eq!(
            hook["clientConfig"]["service"]["path"],
            format!("/{endpoint}/tok0123456789abcdefghijklmnopqrstuvwxyz"),
            "the webhook token in both paths"
        );
        assert_eq!(
            hook["namespaceSelector"]["matchExpressions"],
            json!([
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system", "stateful-guard", "legacy"]},
                {"key": "stateful-guard.io/exclude", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists"},
            ])
        );
    }
}

/// A user's own policy ConfigMap is served by name: mounted and read with --policy, none of the
/// chart's own, and no ConfigMap access left in the Role.
#[test]
fn an_existing_policy_configmap_replaces_the_charts_own() {
    let objects = helm_template(&["--set", "existingPolicyConfigMap=my-policies"]);
    assert!(of_kind(&objects, "ConfigMap").is_empty());
    let pod = &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"];
    let args = &pod["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--policy=/etc/stateful-guard/policies"))
    );
    assert!(
        !args
            .as_array()
            .unwrap()
            .contains(&json!("--policy-configmaps"))
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "my-policies")
        .expect("the ConfigMap is mounted");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap();
    assert_eq!(mount["mountPath"], "/etc/stateful-guard/policies");
    let role = of_kind(&objects, "Role")[0];
    assert_eq!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["resources"][0].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["secrets", "secrets", "leases", "leases"],
        "certificate bootstrap, and the background audit's Lease"
    );
}

/// certificates.mode=secret: the user's Secret is served, its CA is in both webhooks, and the
/// webhook gets no access to Secrets or its webhook configurations (nor a Role, with its own
/// policy ConfigMap and no background audit too).
#[test]
fn a_user_provided_certificate_secret() {
    let args = [
        "--set",
        "certificates.mode=secret,certificates.secret.name=my-tls,certificates.secret.caBundle=Q0E=",
    ];
    let objects = helm_template(&args);
    let pod = &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"];
    let container_args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(container_args.contains(&json!("--tls-cert=/run/stateful-guard/tls/tls.crt")));
    assert!(!container_args.contains(&json!("--cert-bootstrap")));
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "my-tls");
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert_eq!(
            of_kind(&objects, kind)[0]["webhooks"][0]["clientConfig"]["caBundle"],
            "Q0E="
        );
    }
    assert!(objects.iter().all(|o| {
        !o["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("cert-manager.io/")
    }));
    let role = of_kind(&objects, "Role")[0];
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["stateful-guard-audit"], "verbs": ["get", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}
        ])
    );
    let cluster_role = of_kind(&objects, "ClusterRole")[0];
    assert!(
        cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["apiGroups"] != json!(["admissionregistration.k8s.io"])),
        "the chart sets the caBundle: no rights on the webhook configurations"
    );
    let mut own_policy = args.to_vec();
    own_policy.extend(["--set", "existingPolicyConfigMap=p"]);
    let objects = helm_template(&own_policy);
    let role = of_kind(&objects, "Role")[0];
    assert!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["apiGroups"] == json!(["coordination.k8s.io"])),
        "the background audit's Lease only: {role}"
    );
    // With the background audit off too: no Role at all.
    own_policy.extend(["--set", "backgroundAudit.interval=0"]);
    let objects = helm_template(&own_policy);
    assert!(of_kind(&objects, "Role").is_empty() && of_kind(&objects, "RoleBinding").is_empty());
}

/// Installed into another namespace, every reference follows it, and the webhooks exclude it
/// and kube-system (a webhook that reviewed its own namespace could block its own restart).
#[test]
fn the_release_namespace_is_used_everywhere_and_always_excluded() {
    let objects = helm_template_in("guard", &["--set", "certificates.mode=cert-manager"]);
    for o in &objects {
        let cluster_scoped = ["ClusterRole", "ClusterRoleBinding"]
            .contains(&o["kind"].as_str().unwrap())
            || o["kind"]
                .as_str()
                .unwrap()
                .ends_with("WebhookConfiguration");
        if !cluster_scoped {
            assert_eq!(o["metadata"]["namespace"], "guard", "{}", o["kind"]);
        }
    }
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(
            of_kind(&objects, kind)[0]["subjects"][0]["namespace"],
            "guard"
        );
    }
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let config = of_kind(&objects, kind)[0];
        assert_eq!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "guard/stateful-guard"
        );
        let hook = &config["webhooks"][0];
        assert_eq!(hook["clientConfig"]["service"]["namespace"], "guard");
        assert_eq!(
            hook["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["kube-system", "guard"])
        );
    }
    let certificate = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["metadata"]["name"] == "stateful-guard")
        .unwrap();
    assert!(
        certificate["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!("stateful-guard.guard.svc"))
    );
    // Installed into kube-system, it is excluded once.
    let objects = helm_template_in("kube-system", &[]);
    let hook = &of_kind(&objects, "ValidatingWebhookConfiguration")[0]["webhooks"][0];
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system"])
    );
}

/// `mode` applies to a policy of the user's too, and the chart refuses one it cannot set it in.
#[test]
fn mode_applies_to_a_users_policy_or_the_chart_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    let policy = "apiVersion: stateful-guard.io/v1alpha1\nkind: Policy\nmetadata:\n  name: mine\nspec:\n  rules:\n    require-pdb: {action: enforce}\n";
    std::fs::write(
        &values,
        serde_json::to_string(&json!({"policy": policy})).unwrap(),
    )
    .unwrap();
    let values = values.to_str().unwrap();
    for mode in ["audit", "enforce"] {
        let objects = helm_template(&["-f", values, "--set", &format!("mode={mode}")]);
        let text = of_kind(&objects, "ConfigMap")[0]["data"]["policy.yaml"]
            .as_str()
            .unwrap()
            .to_owned();
        let docs = stateful_guard::policy::parse_documents(&text, "chart").unwrap();
        assert_eq!(docs[0].spec.mode.as_str(), mode);
        assert_eq!(docs[0].metadata.name, "mine");
    }
    let flow = dir.path().join("flow.yaml");
    let policy = "{apiVersion: stateful-guard.io/v1alpha1, kind: Policy, metadata: {name: mine}, spec: {mode: enforce}}\n";
    std::fs::write(
        &flow,
        serde_json::to_string(&json!({"policy": policy})).unwrap(),
    )
    .unwrap();
    let stderr = refusal(&["-f", flow.to_str().unwrap(), "--set", "mode=audit"]);
    assert!(
        stderr.contains("cannot set spec.mode to \"audit\""),
        "{stderr}"
    );
}

/// The ServiceMonitor scrapes the Service's https port over TLS verified against the serving
/// CA, and without the Prometheus Operator's CRD the chart says so instead of failing the
/// install half-way.
#[test]
fn the_service_monitor_scrapes_the_service_and_needs_its_crd() {
    let stderr = refusal(&["--set", "metrics.serviceMonitor.enabled=true"]);
    assert!(stderr.contains("ServiceMonitor CRD"), "{stderr}");
    let objects = helm_template(&SERVICE_MONITOR);
    let monitor = of_kind(&objects, "ServiceMonitor")[0];
    let service = of_kind(&objects, "Service")[0];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][key], value, "{key}");
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == endpoint["port"])
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(
        endpoint["tlsConfig"]["serverName"],
        "stateful-guard.stateful-guard.svc"
    );
    assert_eq!(
        endpoint["tlsConfig"]["ca"]["secret"],
        json!({"name": "stateful-guard-tls", "key": "ca.crt"})
    );
    assert_eq!(endpoint["interval"], "30s");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert!(of_kind(&helm_template(&[]), "ServiceMonitor").is_empty());
}

/// The README's values table names every value of values.yaml (free-form maps, like
/// `resources`, as one).
#[test]
fn the_readme_documents_every_value() {
    fn leaves(value: &Value, at: &str, out: &mut Vec<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() && at != "resources" => {
                for (key, value) in map {
                    let path = if at.is_empty() {
                        key.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    leaves(value, &path, out);
                }
            }
            _ => out.push(at.to_owned()),
        }
    }
    let mut values = Vec::new();
    leaves(&chart_file("values.yaml"), "", &mut values);
    assert!(values.len() >= 20, "{values:?}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    for value in values {
        let last = value.rsplit('.').next().unwrap();
        assert!(
            table
                .iter()
                .any(|row| row.contains(&format!("`{value}`"))
                    || row.contains(&format!("`.{last}`"))),
            "README.md's values table lacks `{value}`"
        );
    }
}
