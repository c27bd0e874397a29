//! The Helm chart installed with real helm on a real kube-apiserver (see
//! tests/common/apiserver.rs): `helm install` with the default values gives a working webhook,
//! `helm upgrade --set mode=...` switches live, and `helm uninstall` leaves nothing behind that
//! the apiserver would still call.
//!
//! There is no kubelet: the chart's Deployment is stored but runs nowhere, so the test runs the
//! release binary with the arguments of the Deployment that helm stored, as the chart's
//! ServiceAccount (its token, so the chart's RBAC is what it has). The apiserver reaches it
//! through the chart's Service and webhook configurations (the Service's Endpoints are pointed
//! at the loopback port before the chart is installed, as in tests/apiserver.rs).
mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::apiserver::{Apiserver, Webhook, available, eventually};
use common::*;
use serde_json::{Value, json};

const NAMESPACE: &str = "stateful-guard";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn helm_on(api: &Apiserver, args: &[&str]) -> Output {
    std::process::Command::new(helm_tool())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .env("NO_PROXY", "*")
        .output()
        .unwrap()
}

fn helm_ok(api: &Apiserver, args: &[&str]) -> String {
    let out = helm_on(api, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fixtures' web.yaml StatefulSet (no probes, no PDB), as JSON.
fn web() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/manifests/web.yaml"
    ))
    .unwrap();
    stateful_guard::check::parse_stream(&text, "web.yaml")
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .find(|o| o["kind"] == "StatefulSet")
        .unwrap()
}

/// web.yaml made admissible: probes on its container (the PDB is created beside it).
fn fixed_web() -> Value {
    let mut sts = web();
    let container = &mut sts["spec"]["template"]["spec"]["containers"][0];
    container["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}});
    container["livenessProbe"] = json!({"tcpSocket": {"port": 8080}});
    sts
}

const PDB: &str = r#"{"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
  "metadata": {"name": "web"},
  "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "web"}}}}"#;

/// `kubectl create --dry-run=server` of `object` in `ns`: what the apiserver answers, nothing
/// stored.
fn preview(api: &Apiserver, ns: &str, object: &Value) -> Output {
    api.kubectl_with(
        &["create", "--dry-run=server", "-n", ns, "-f", "-"],
        Some(&object.to_string()),
    )
}

fn webhook_configurations(api: &Apiserver) -> Vec<String> {
    let mut names = Vec::new();
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ] {
        let list = api.get(&[kind]);
        for item in list["items"].as_array().unwrap() {
            names.push(format!(
                "{kind}/{}",
                item["metadata"]["name"].as_str().unwrap()
            ));
        }
    }
    names
}

/// `stateful-guard check --cluster -o json ARGS` with the admin kubeconfig: exit code, report.
fn check_cluster(api: &Apiserver, args: &[&str]) -> (i32, Value) {
    let out = check_cluster_command(&api.kubeconfig)
        .args(["-o", "json"])
        .args(args)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --cluster {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (out.status.code().unwrap(), report)
}

fn check_cluster_command(kubeconfig: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stateful-guard"));
    command
        .args(["check", "--cluster"])
        .env("KUBECONFIG", kubeconfig)
        .env("NO_PROXY", "*")
        .env_remove("KUBERNETES_SERVICE_HOST");
    command
}

/// `check --cluster` on a terminal, through a slow network (a listing that takes more than a
/// second), shows a progress line and clears it before the report; piped, it never does.
fn check_cluster_shows_progress_on_a_terminal(api: &Apiserver) {
    const PROGRESS: &str = "reading the cluster: ";
    let slow = api.slow_kubeconfig(Duration::from_millis(300));
    let piped = check_cluster_command(&slow).arg("-A").output().unwrap();
    assert!(
        !stderr(&piped).contains(PROGRESS)
            && String::from_utf8_lossy(&piped.stdout).contains("web"),
        "no progress line unless standard error is a terminal:\n{}{}",
        String::from_utf8_lossy(&piped.stdout),
        stderr(&piped)
    );
    // util-linux's `script` runs it on a pseudo-terminal and copies what it writes there.
    let command = format!(
        "{} check --cluster -A",
        env!("CARGO_BIN_EXE_stateful-guard")
    );
    let out = std::process::Command::new(tool("script"))
        .args(["-qec", &command, "/dev/null"])
        .env("KUBECONFIG", &slow)
        .env("NO_PROXY", "*")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    let shown = terminal.rfind(PROGRESS).unwrap_or_else(|| {
        panic!("no progress line on a terminal while the listing took more than a second:\n{terminal:?}")
    });
    let cleared = terminal[shown..]
        .find("\r\x1b[2K")
        .map(|at| shown + at)
        .unwrap_or_else(|| panic!("the progress line is never cleared:\n{terminal:?}"));
    let report = terminal
        .find("web")
        .unwrap_or_else(|| panic!("no report:\n{terminal:?}"));
    assert!(
        cleared < report,
        "the report starts on a clean line, after the progress line is cleared:\n{terminal:?}"
    );
    let counted: usize = terminal[shown + PROGRESS.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of objects listed:\n{terminal:?}"));
    assert!(counted > 0, "{terminal:?}");
}

#[test]
fn the_chart_installs_upgrades_and_uninstalls_on_a_real_apiserver() {
    let Some((apiserver, etcd)) = available() else {
        return;
    };
    let started = Instant::now();
    let api = Apiserver::start(&apiserver, &etcd);

    // The Service's Endpoints first (no endpoints controller here), pointed at the loopback
    // port the webhook will listen on, before anything refers to the Service.
    api.ok(&["create", "namespace", NAMESPACE], None);
    let port = api.route_service_to_loopback(NAMESPACE, "stateful-guard");

    // The README's install line, default values.
    helm_ok(
        &api,
        &[
            "install",
            "stateful-guard",
            CHART,
            "-n",
            NAMESPACE,
            "--create-namespace",
        ],
    );
    let service = api.get(&["service", "stateful-guard", "-n", NAMESPACE]);
    assert_eq!(service["spec"]["ports"][0]["name"], "https");
    let deployment = api.get(&["deployment", "stateful-guard", "-n", NAMESPACE]);
    let pod = &deployment["spec"]["template"]["spec"];
    let args: Vec<String> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // The chart sets a preStop sleep from Kubernetes 1.29, where the sleep action exists.
    let lifecycle = &pod["containers"][0]["lifecycle"];
    if api.minor_version() >= 29 {
        assert!(
            lifecycle["preStop"]["sleep"]["seconds"].as_u64().is_some(),
            "a preStop sleep from Kubernetes 1.29: {lifecycle}"
        );
    } else {
        assert!(
            lifecycle.is_null(),
            "no preStop sleep before Kubernetes 1.29: {lifecycle}"
        );
    }
    let kubeconfig = api.dir.path().join("webhook.kubeconfig");
    api.service_account_kubeconfig(
        NAMESPACE,
        pod["serviceAccountName"].as_str().unwrap(),
        &kubeconfig,
    );
    let mut webhook = Webhook::start(&args, port, &kubeconfig, &api.dir.path().join("certs"));

    api.ok(&["create", "namespace", "app"], None);
    // Working: the apiserver calls it (through the Service, trusting the caBundle the webhook's
    // own bootstrap injected) and web.yaml, which has no probes and no PDB, is denied.
    let deadline = Instant::now() + Duration::from_secs(60);
    let denied = loop {
        let out = preview(&api, "app", &web());
        if !out.status.success() {
            break stderr(&out);
        }
        assert!(
            Instant::now() < deadline,
            "web.yaml not denied within 60 s:\n{}\nwebhook log:\n{}",
            stderr(&out),
            webhook.log.text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    for rule in ["require-pdb", "require-readiness-probe"] {
        assert!(denied.contains(rule), "{denied}");
    }
    // The fixed one is admitted, and stored mutated.
    api.ok(&["create", "-n", "app", "-f", "-"], Some(PDB));
    api.ok(
        &["create", "-n", "app", "-f", "-"],
        Some(&fixed_web().to_string()),
    );
    let stored = api.get(&["statefulset", "web", "-n", "app"]);
    assert_eq!(stored["spec"]["podManagementPolicy"], "Parallel");
    assert!(stored["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());

    // helm upgrade to audit: the same web.yaml is admitted (a dry run: nothing is stored), with
    // the would-be denial as a warning; then back to enforce, live, nothing restarted.
    api.ok(&["create", "namespace", "app2"], None);
    helm_ok(
        &api,
        &[
            "upgrade",
            "stateful-guard",
            CHART,
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "mode=audit",
        ],
    );
    eventually(30, "audit mode after helm upgrade", || {
        let out = preview(&api, "app2", &web());
        out.status.success() && stderr(&out).contains("would deny")
    });
    // `check --cluster --policy-configmaps` reads the policy the webhook serves (now audit).
    let (code, report) = check_cluster(&api, &["-n", "app", "--policy-configmaps"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["objects"][0]["name"], "web");
    assert_eq!(report["objects"][0]["mode"], "audit", "{report}");
    helm_ok(
        &api,
        &[
            "upgrade",
            "stateful-guard",
            CHART,
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "mode=enforce",
        ],
    );
    eventually(30, "enforce mode after helm upgrade", || {
        !preview(&api, "app2", &web()).status.success()
    });
    assert!(
        matches!(webhook.child.try_wait(), Ok(None)),
        "the same process served all three modes"
    );

    // helm uninstall: no webhook configuration is left for the apiserver to call, so with the
    // pods gone (the process stopped) a StatefulSet create goes straight through, unmutated,
    // without waiting for a webhook timeout.
    helm_ok(&api, &["uninstall", "stateful-guard", "-n", NAMESPACE]);
    drop(webhook);
    let left: Vec<String> = webhook_configurations(&api)
        .into_iter()
        .filter(|n| n.contains("stateful-guard"))
        .collect();
    assert!(left.is_empty(), "left after helm uninstall: {left:?}");
    for kind in ["clusterrole", "clusterrolebinding"] {
        let out = api.kubectl(&["get", kind, "stateful-guard"]);
        assert!(!out.status.success(), "{kind} left after helm uninstall");
    }
    api.ok(&["create", "namespace", "after"], None);
    let t = Instant::now();
    api.ok(
        &["create", "-n", "after", "-f", "-"],
        Some(&web().to_string()),
    );
    let took = t.elapsed();
    let after = api.get(&["statefulset", "web", "-n", "after"]);
    assert_eq!(
        after["spec"]["podManagementPolicy"], "OrderedReady",
        "nothing mutates it any more"
    );
    assert!(
        took < Duration::from_secs(5),
        "the create waited {took:?}: something still calls the uninstalled webhook (its timeout is 5 s)"
    );
    // What now runs unguarded is what `check --cluster` reports: the stored web.yaml would be
    // denied and mutated; the fixed one, created under the guard, passes as it is.
    let (code, report) = check_cluster(&api, &["-n", "after"]);
    assert_eq!(code, 1, "an enforced violation: {report}");
    let object = &report["objects"][0];
    assert_eq!(object["name"], "web");
    assert_eq!(object["allowed"], false);
    let rules = |key: &str| -> Vec<String> {
        object[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    for rule in ["require-pdb", "require-readiness-probe"] {
        assert!(rules("findings").contains(&rule.to_owned()), "{report}");
    }
    assert!(
        rules("mutations").contains(&"parallel-pod-management".to_owned()),
        "{report}"
    );
    check_cluster_shows_progress_on_a_terminal(&api);
    let (code, report) = check_cluster(&api, &["-A"]);
    assert_eq!(code, 1, "{report}");
    let app = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["namespace"] == "app")
        .expect("app/web is listed with --all-namespaces");
    assert_eq!(app["allowed"], true, "{app}");
    assert_eq!(
        app["patch"],
        json!([]),
        "admitted under the guard: nothing to change"
    );
    eprintln!(
        "helm install, upgrade and uninstall on a real apiserver: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
