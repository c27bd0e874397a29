//! `stateful-guard check`: the webhook's engine over manifests, offline.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::server::binary;
use common::*;
use serde_json::Value;
use stateful_guard::admission::Uninterpretable;
use stateful_guard::engine::Phase;

fn check(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(binary());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("check")
        .args(args);
    match stdin {
        None => cmd.output().unwrap(),
        Some(text) => {
            use std::io::Write;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Compares with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

const MANIFESTS: &str = "tests/fixtures/manifests";

#[test]
fn golden_text_and_json_reports_for_the_shared_manifests() {
    let out = check(&["-f", MANIFESTS], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "enforced violations exit 1: {}",
        stderr(&out)
    );
    golden("manifests.txt", &stdout(&out));
    let out = check(&["-f", MANIFESTS, "-o", "json"], None);
    assert_eq!(out.status.code(), Some(1));
    golden("manifests.json", &stdout(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    for o in report["objects"].as_array().unwrap() {
        for key in ["kind", "namespace", "name", "allowed", "patch", "findings"] {
            assert!(o.get(key).is_some(), "{key} missing in {o}");
        }
    }
}

#[test]
fn fix_output_is_valid_and_checking_it_again_changes_nothing() {
    for file in [
        "web.yaml",
        "mysql-statefulset.yaml",
        "cassandra-statefulset.yaml",
        "zookeeper-statefulset.yaml",
    ] {
        let input = format!("{MANIFESTS}/{file}");
        let out = check(&["-f", &input, "--fix"], None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{file}: the fix does not add PDBs or probes"
        );
        let fixed = stdout(&out);
        assert!(fixed.contains("stateful-guard.io/mutated"), "{file}");
        // Every fixed document passes Kubernetes' schemas.
        let docs = stateful_guard::check::parse_stream(&fixed, file).unwrap();
        for doc in &docs {
            kubernetes_validate(&doc.value);
        }
        // Checking the fixed output again: no mutation.
        let again = check(&["-f", "-", "-o", "json"], Some(&fixed));
        let report: Value = serde_json::from_str(&stdout(&again)).unwrap();
        for o in report["objects"].as_array().unwrap() {
            assert_eq!(o["patch"], Value::Array(vec![]), "{file}: {o}");
        }
    }
}

const PDB: &str = r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app.kubernetes.io/name: web}}
"#;

const PRIORITY_CLASS: &str = r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: stateful}
value: 1000000
"#;

#[test]
fn pdbs_and_probes_in_the_input_satisfy_the_rules() {
    let web = std::fs::read_to_string(format!(
        "{}/{MANIFESTS}/web.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let probed = web.replace(
        "        volumeMounts:",
        "        readinessProbe: {httpGet: {path: /, port: 8080}}\n        livenessProbe: {tcpSocket: {port: 8080}}\n        resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 64Mi}}\n        volumeMounts:",
    )
    // A PDB does not stop preemption: a class for stateful workloads, which the input holds.
    .replace(
        "      containers:\n",
        "      priorityClassName: stateful\n      containers:\n",
    );
    let out = check(
        &["-f", "-", "-o", "json"],
        Some(&format!("{probed}\n---{PDB}\n---{PRIORITY_CLASS}")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let web = &report["objects"][0];
    assert_eq!(web["allowed"], true);
    assert!(web["findings"].as_array().unwrap().is_empty(), "{web}");
    // A PDB that blocks every eviction is found.
    let blocking = PDB.replace("maxUnavailable: 1", "maxUnavailable: 0");
    let out = check(
        &["-f", "-", "-o", "json"],
        Some(&format!("{probed}\n---{blocking}")),
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        report["objects"][0]["findings"][0]["rule"],
        "pdb-allows-disruption"
    );
}

#[tokio::test]
async fn check_and_the_webhook_agree_on_the_same_statefulset() {
    // zookeeper-statefulset.yaml is the object behind the zookeeper reviews.
    let out = check(
        &[
            "-f",
            &format!("{MANIFESTS}/zookeeper-statefulset.yaml"),
            "-o",
            "json",
        ],
        None,
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let from_check = &report["objects"][0];

    let body = review_fixture("statefulset-zookeeper-create.mutating.json");
    let no_pdbs = cluster("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}");
    let mutated = review_with(
        Phase::Mutate,
        &body,
        &default_policies(),
        &no_pdbs,
        Uninterpretable::Allow,
    )
    .await;
    // The same operations; only the last (the annotation listing them) is shaped by whether
    // the object already had annotations (the fixture was made with kubectl apply).
    let (webhook_ops, check_ops) = (
        patch(&mutated).unwrap().as_array().unwrap(),
        from_check["patch"].as_array().unwrap(),
    );
    assert_eq!(webhook_ops.len(), check_ops.len());
    assert_eq!(
        webhook_ops[..webhook_ops.len() - 1],
        check_ops[..check_ops.len() - 1],
        "same patch"
    );
    let object = apply(&request_object(&body), patch(&mutated).unwrap());
    let manifest = stateful_guard::check::parse_stream(
        &std::fs::read_to_string(format!(
            "{}/{MANIFESTS}/zookeeper-statefulset.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
        "zk",
    )
    .unwrap()[0]
        .value
        .clone();
    let mut defaulted = manifest.clone();
    defaulted["spec"]["podManagementPolicy"] = "OrderedReady".into();
    let fixed = apply(&defaulted, &from_check["patch"]);
    assert_eq!(
        object["spec"]["template"]["spec"]["affinity"],
        fixed["spec"]["template"]["spec"]["affinity"]
    );
    assert_eq!(
        object["metadata"]["annotations"]["stateful-guard.io/mutated"],
        fixed["metadata"]["annotations"]["stateful-guard.io/mutated"]
    );
    let validated = review_with(
        Phase::Validate,
        &with_object(&body, &object),
        &default_policies(),
        &no_pdbs,
        Uninterpretable::Allow,
    )
    .await;
    assert_eq!(
        allowed(&validated),
        from_check["allowed"].as_bool().unwrap()
    );
    let mut webhook_rules: Vec<String> = validated["response"]["auditAnnotations"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "policy")
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap().split(':').next().unwrap()))
        .collect();
    webhook_rules.sort();
    let mut check_rules: Vec<String> = from_check["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}={}",
                f["rule"].as_str().unwrap(),
                f["action"].as_str().unwrap()
            )
        })
        .collect();
    // The webhook's audit annotations hold one entry per rule (several findings joined).
    check_rules.sort();
    check_rules.dedup();
    assert_eq!(webhook_rules, check_rules);
}

#[test]
fn exit_codes_and_broken_input() {
    // Audit mode never fails a pipeline.
    let out = check(&["-f", MANIFESTS, "--policy", "policies/audit.yaml"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = check(&["-f", "does/not/exist.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("does/not/exist.yaml: cannot read"),
        "{}",
        stderr(&out)
    );

    let out = check(
        &["-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\n---\nkey: [unclosed\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    // The document, its line and the parser's reason; the ConfigMap before it still reads.
    assert!(
        stderr(&out).contains("<stdin>: document 2 (line ")
            && stderr(&out).contains("invalid YAML"),
        "{}",
        stderr(&out)
    );

    let out = check(
        &["-f", "-"],
        Some(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\nspec: {replicas: many}\n",
        ),
    );
    assert_eq!(out.status.code(), Some(2));
    // The object, its line and the field's path.
    assert!(
        stderr(&out)
            .contains("<stdin>: document 1 (line 1): StatefulSet x: spec.replicas: invalid type"),
        "{}",
        stderr(&out)
    );

    // What kube-apiserver's validation refuses is an input error, in its words.
    let container =
        "template: {metadata: {labels: {app: x}}, spec: {containers: [{name: c, image: i}]}}";
    for (spec, expected) in [
        (
            format!("{{serviceName: x, {container}}}"),
            "StatefulSet x is invalid, kube-apiserver would reject it: spec.selector: Required value",
        ),
        (
            format!("{{serviceName: x, selector: {{matchLabels: {{app: other}}}}, {container}}}"),
            "spec.template.metadata.labels: Invalid value: {\"app\": \"x\"}: `selector` does not match template `labels`",
        ),
    ] {
        let out = check(
            &["-f", "-"],
            Some(&format!(
                "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: x}}\nspec: {spec}\n"
            )),
        );
        assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("<stdin>: document 1 (line 1): ")
                && stderr(&out).contains(expected),
            "{}",
            stderr(&out)
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, "apiVersion: stateful-guard.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec: {moed: audit}\n").unwrap();
    let out = check(
        &["-f", MANIFESTS, "--policy", policy.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid policy") && stderr(&out).contains("unknown field `moed`"),
        "{}",
        stderr(&out)
    );

    // A List of objects is read item by item; other kinds are ignored.
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},
      {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}"#;
    let out = check(&["-f", "-", "-o", "json"], Some(list));
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["summary"]["objects"], 1);
    assert_eq!(
        report["objects"][0]["patch"][0]["path"],
        "/spec/storageClassName"
    );
}

/// `check --cluster` over a StatefulSet whose claim template grew (`volume-growth` recorded
/// 2Gi) and its claims: a claim still at 1Gi is reported with the size it should get, a claim
/// already grown is not.
#[test]
fn check_cluster_reports_claims_below_their_recorded_size() {
    use stateful_guard::check::evaluate::{Origin, evaluate_all};
    let sts: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "grow",
                     "annotations": {"stateful-guard.io/claim-sizes": "data=2Gi"}},
        "spec": {
            "replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                         "spec": {"containers": [{"name": "db", "image": "db:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        }
    }))
    .unwrap();
    let claim = |name: &str, size: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "grow", "labels": {"app": "db"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                     "resources": {"requests": {"storage": size}}},
            "status": {"phase": "Bound"}
        })
    };
    let docs: Vec<stateful_guard::check::Document> =
        [claim("data-db-0", "1Gi"), claim("data-db-1", "2Gi")]
            .into_iter()
            .enumerate()
            .map(|(i, value)| stateful_guard::check::Document {
                path: "cluster".into(),
                index: i + 1,
                line: 0,
                value,
            })
            .collect();
    let cluster = stateful_guard::cluster::Snapshot::known(vec![], vec![], vec![])
        .with_statefulsets(vec![sts]);
    let checked = evaluate_all(
        &docs,
        &default_policies(),
        "grow",
        &cluster,
        Origin::Cluster,
    );
    assert!(checked.errors.is_empty(), "{:?}", checked.errors);
    let mutations = |name: &str| {
        let o = checked
            .report
            .objects
            .iter()
            .find(|o| o.name == name)
            .unwrap();
        o.mutations
            .iter()
            .map(|m| format!("{}: {}", m.rule, m.summary))
            .collect::<Vec<_>>()
    };
    let small = mutations("data-db-0");
    assert!(
        small
            .iter()
            .any(|m| m.starts_with("volume-growth: set storage 2Gi")),
        "{small:?}"
    );
    assert!(
        mutations("data-db-1").is_empty(),
        "{:?}",
        mutations("data-db-1")
    );
}
