//! stateful-guard installed as `deploy/base` renders it, against a real kube-apiserver (see
//! tests/common/apiserver.rs): the release binary with the Deployment's own arguments, talking
//! to the API with its ServiceAccount's token (so the RBAC in deploy/ is what it has), reached
//! by the rendered, Service-routed webhook configurations with the `caBundle` its own
//! certificate bootstrap injects. The apiserver decides every outcome.
//!
//! One test runs the scenarios in order on one apiserver (start-up costs seconds and hundreds
//! of MB); each scenario works in its own namespace.
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::apiserver::{Apiserver, Webhook, available, eventually};
use common::*;
use serde_json::{Value, json};

const WEB: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: web
  serviceName: web
  replicas: 2
  template:
    metadata:
      labels:
        app.kubernetes.io/name: web
    spec:
      containers:
      - name: site
        image: ghcr.io/example/static-site:IMAGE
        ports:
        - containerPort: 8080
          name: http
        readinessProbe:
          httpGet: {path: /, port: 8080}
        livenessProbe:
          tcpSocket: {port: 8080}
        volumeMounts:
        - name: content
          mountPath: /srv/site
  volumeClaimTemplates:
  - metadata:
      name: content
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 1Gi
"#;

const PDB: &str = r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: web
"#;

const CLAIM: &str = r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: scratch
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: 1Gi
"#;

fn web(image: &str, replicas: u32) -> String {
    WEB.replace("IMAGE", image)
        .replace("replicas: 2", &format!("replicas: {replicas}"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Installed {
    api: Apiserver,
    webhook: Option<Webhook>,
    args: Vec<String>,
    kubeconfig: PathBuf,
    port: u16,
}

impl Installed {
    fn start_webhook(&mut self) {
        self.webhook = None;
        self.webhook = Some(Webhook::start(
            &self.args,
            self.port,
            &self.kubeconfig,
            &self.api.dir.path().join("certs"),
        ));
        let api = &self.api;
        // Ready when the apiserver really calls it: a server-side dry run shows its warning.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = api.kubectl_with(
                &["create", "--dry-run=server", "-n", "default", "-f", "-"],
                Some(&web("0.7", 1)),
            );
            if stderr(&out).contains("stateful-guard") {
                break;
            }
            if Instant::now() > deadline {
                let apiserver: Vec<String> = api
                    .log
                    .text()
                    .lines()
                    .filter(|l| l.contains("webhook") || l.contains("stateful-guard"))
                    .map(str::to_owned)
                    .collect();
                panic!(
                    "the apiserver does not call the webhook within 60 s:\n{}\nwebhook log:\n{}\napiserver log about webhooks:\n{}",
                    stderr(&out),
                    self.logs(),
                    apiserver.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn logs(&self) -> String {
        self.webhook
            .as_ref()
            .map(|w| w.log.text())
            .unwrap_or_default()
    }

    /// Waits for a line of the webhook's log (it writes them in batches, within tens of
    /// milliseconds), failing with `what` and the log.
    fn expect_log(&self, needle: &str, what: &str) {
        self.webhook.as_ref().expect("the webhook runs").log.expect(
            needle,
            Duration::from_secs(10),
            what,
        );
    }
}

/// Installs everything `deploy/base` renders but the Deployment (no kubelet here).
fn install(api: Apiserver) -> Installed {
    let objects = kustomize("deploy/base");
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap()
        .clone();
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let is_webhook = |o: &Value| {
        o["kind"]
            .as_str()
            .unwrap()
            .ends_with("WebhookConfiguration")
    };
    let list =
        |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let rest: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] != "Deployment" && !is_webhook(o))
        .cloned()
        .collect();
    api.ok(&["apply", "-f", "-"], Some(&list(rest)));
    // The Service's Endpoints, pointed at the webhook's loopback port before anything uses them.
    let port = api.route_service_to_loopback("stateful-guard", "stateful-guard");
    let webhooks: Vec<Value> = objects.iter().filter(|o| is_webhook(o)).cloned().collect();
    api.ok(&["apply", "-f", "-"], Some(&list(webhooks)));
    // Storage: a slow default class and the fast one the policy names.
    api.ok(
        &["apply", "-f", "-"],
        Some(
            r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: example.com/slow
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast-ssd
provisioner: example.com/fast
volumeBindingMode: WaitForFirstConsumer
"#,
        ),
    );
    let kubeconfig = api.dir.path().join("webhook.kubeconfig");
    let serviceaccount = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_owned();
    api.service_account_kubeconfig("stateful-guard", &serviceaccount, &kubeconfig);
    let mut installed = Installed {
        api,
        webhook: None,
        args,
        kubeconfig,
        port,
    };
    installed.start_webhook();
    installed
}

fn namespace(api: &Apiserver, name: &str) {
    api.ok(&["create", "namespace", name], None);
}

/// The CA of the webhook's serving certificate, from the Secret its bootstrap writes.
fn serving_ca(api: &Apiserver) -> Vec<u8> {
    let secret = api.get(&["secret", "stateful-guard-tls", "-n", "stateful-guard"]);
    base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        secret["data"]["ca.crt"].as_str().unwrap(),
    )
    .unwrap()
}

/// The webhook token its bootstrap keeps in the Secret, which the webhook configurations' paths
/// carry.
fn webhook_token(api: &Apiserver) -> String {
    let secret = api.get(&["secret", "stateful-guard-tls", "-n", "stateful-guard"]);
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        secret["data"]["webhook-token"].as_str().unwrap(),
    )
    .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// GET `path` from the webhook on loopback `port`, trusting `ca`.
fn get_from(
    ca: &[u8],
    port: u16,
    path: &str,
) -> std::io::Result<(http::StatusCode, hyper::body::Bytes)> {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    common::server::https_get(addr, ca, "stateful-guard.stateful-guard.svc", path)
}

/// `/report` of the webhook on `port`; `None` until a scan completed, and while it still serves
/// its provisional certificate.
fn report_from(ca: &[u8], port: u16) -> Option<Value> {
    let (status, body) = get_from(ca, port, "/report").ok()?;
    (status == 200).then(|| serde_json::from_slice(&body).unwrap())
}

/// The results of namespace `ns`'s PolicyReport, when it has one.
fn policy_report_results(api: &Apiserver, ns: &str) -> Option<Vec<Value>> {
    let out = api.kubectl(&[
        "get",
        "policyreports.wgpolicyk8s.io",
        "stateful-guard",
        "-n",
        ns,
        "-o",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    report["results"].as_array().cloned()
}

/// The stored StatefulSet keeps every decision made at its creation.
fn assert_keeps_decisions(api: &Apiserver, ns: &str, step: &str) -> Value {
    let sts = api.get(&["statefulset", "web", "-n", ns]);
    let spec = &sts["spec"];
    assert_eq!(
        spec["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast-ssd",
        "{step}"
    );
    assert_eq!(spec["podManagementPolicy"], "Parallel", "{step}");
    let pod = &spec["template"]["spec"];
    assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{step}");
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"], "topology.kubernetes.io/zone",
        "{step}"
    );
    assert!(
        sts["metadata"]["annotations"]["stateful-guard.io/mutated"]
            .as_str()
            .is_some_and(|m| m.contains("fast-storage-class")),
        "{step}"
    );
    sts
}

fn day_two_updates(i: &Installed) {
    let api = &i.api;
    let ns = "day2";
    namespace(api, ns);
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(PDB));
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(&web("0.7", 2)));
    assert_keeps_decisions(api, ns, "created with kubectl apply");
    let steps: [(&str, Vec<&str>, Option<String>); 6] = [
        (
            "kubectl apply, new image",
            vec!["apply", "-n", ns, "-f", "-"],
            Some(web("0.8", 2)),
        ),
        (
            "kubectl apply, replicas 3",
            vec!["apply", "-n", ns, "-f", "-"],
            Some(web("0.8", 3)),
        ),
        (
            "kubectl apply --server-side",
            vec![
                "apply",
                "--server-side",
                "--force-conflicts",
                "-n",
                ns,
                "-f",
                "-",
            ],
            Some(web("0.9", 3)),
        ),
        (
            "kubectl replace",
            vec!["replace", "-n", ns, "-f", "-"],
            Some(web("0.10", 3)),
        ),
        (
            "kubectl set image",
            vec![
                "set",
                "image",
                "-n",
                ns,
                "statefulset/web",
                "site=ghcr.io/example/static-site:0.11",
            ],
            None,
        ),
        (
            "kubectl rollout restart",
            vec!["rollout", "restart", "-n", ns, "statefulset/web"],
            None,
        ),
    ];
    for (step, args, stdin) in steps {
        let out = api.kubectl_with(&args, stdin.as_deref());
        assert!(
            out.status.success(),
            "{step} was rejected:\n{}",
            stderr(&out)
        );
        let sts = assert_keeps_decisions(api, ns, step);
        if step == "kubectl replace" {
            assert_eq!(
                sts["spec"]["template"]["spec"]["containers"][0]["image"],
                "ghcr.io/example/static-site:0.10"
            );
            assert!(stderr(&out).contains("kept"), "{}", stderr(&out));
        }
    }
    let sts = api.get(&["statefulset", "web", "-n", ns]);
    assert_eq!(sts["spec"]["replicas"], 3);
    // Scaling goes through the scale subresource, which the webhooks never see.
    api.ok(
        &["scale", "-n", ns, "statefulset/web", "--replicas=1"],
        None,
    );
    helm_upgrades(i);
}

/// A chart holding the StatefulSet, installed, then upgraded with Helm 4's server-side apply
/// and with Helm 3's three-way merge (`--server-side=false`).
fn helm_upgrades(i: &Installed) {
    let api = &i.api;
    let ns = "helm";
    namespace(api, ns);
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(PDB));
    let chart = api.dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "image: \"0.7\"\nreplicas: 2\n").unwrap();
    std::fs::write(
        chart.join("templates/statefulset.yaml"),
        web("{{ .Values.image }}", 2).replace("replicas: 2", "replicas: {{ .Values.replicas }}"),
    )
    .unwrap();
    let helm = |args: &[&str]| {
        let out = std::process::Command::new(tool("helm"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .args(["-n", ns])
            .env("NO_PROXY", "*")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm {args:?} was rejected:\n{}",
            stderr(&out)
        );
    };
    let chart = chart.to_str().unwrap();
    helm(&["install", "web", chart]);
    assert_keeps_decisions(api, ns, "helm install");
    helm(&["upgrade", "web", chart, "--set", "image=0.8"]);
    let sts = assert_keeps_decisions(api, ns, "helm upgrade (server-side apply)");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/example/static-site:0.8"
    );
    helm(&[
        "upgrade",
        "web",
        chart,
        "--server-side=false",
        "--set",
        "image=0.9",
        "--set",
        "replicas=3",
    ]);
    let sts = assert_keeps_decisions(api, ns, "helm upgrade --server-side=false");
    assert_eq!(sts["spec"]["replicas"], 3);
}

fn dry_run_and_claims(i: &Installed) {
    let api = &i.api;
    let ns = "preview";
    namespace(api, ns);
    let out = api.kubectl_with(
        &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
        Some(&web("0.7", 3)),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "no PDB: denied");
    assert!(
        err.contains("require-pdb") && err.contains("kind: PodDisruptionBudget"),
        "{err}"
    );
    assert!(
        err.contains("Warning: stateful-guard: pod-anti-affinity"),
        "{err}"
    );
    assert_eq!(
        api.get(&["statefulsets", "-n", ns])["items"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "a dry run stores nothing"
    );
    // Server-side apply create, with its PDB: created, mutated.
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(PDB));
    api.ok(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(&web("0.7", 3)),
    );
    assert_keeps_decisions(api, ns, "server-side apply create");

    let claim = |name: &str, class: Option<&str>| {
        let mut pvc = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        });
        if let Some(class) = class {
            pvc["spec"]["storageClassName"] = json!(class);
        }
        pvc
    };
    api.ok(
        &["apply", "-n", ns, "-f", "-"],
        Some(&claim("filled", None).to_string()),
    );
    assert_eq!(
        api.get(&["pvc", "filled", "-n", ns])["spec"]["storageClassName"],
        "fast-ssd",
        "the class DefaultStorageClass filled in is replaced"
    );
    api.ok(
        &["apply", "-n", ns, "-f", "-"],
        Some(&claim("static", Some("")).to_string()),
    );
    assert_eq!(
        api.get(&["pvc", "static", "-n", ns])["spec"]["storageClassName"],
        "",
        "storageClassName \"\" is left alone"
    );
    let mut generated = claim("x", None);
    generated["metadata"] = json!({"generateName": "data-"});
    let name = api.ok(
        &["create", "-n", ns, "-o", "name", "-f", "-"],
        Some(&generated.to_string()),
    );
    let stored = api.get(&[name.trim(), "-n", ns]);
    assert_eq!(stored["spec"]["storageClassName"], "fast-ssd");
}

fn edit_policy(api: &Apiserver, from: &str, to: &str) {
    let mut cm = api.get(&["configmap", "stateful-guard-policy", "-n", "stateful-guard"]);
    let text = cm["data"]["policy.yaml"]
        .as_str()
        .unwrap()
        .replace(from, to);
    cm["data"]["policy.yaml"] = json!(text);
    api.ok(&["replace", "-f", "-"], Some(&cm.to_string()));
}

fn policy_configmap(i: &Installed) {
    let api = &i.api;
    let ns = "switch";
    namespace(api, ns);
    let try_create = || {
        api.kubectl_with(
            &["create", "--dry-run=server", "-n", ns, "-f", "-"],
            Some(&web("0.7", 3)),
        )
    };
    let out = try_create();
    assert!(!out.status.success(), "enforce: denied");
    edit_policy(api, "mode: enforce", "mode: audit");
    eventually(30, "mode: audit applies", || {
        let out = try_create();
        out.status.success() && stderr(&out).contains("(audit mode): would deny: require-pdb")
    });
    edit_policy(api, "mode: audit", "mode: enforce");
    eventually(30, "mode: enforce applies again", || {
        !try_create().status.success()
    });

    // The common way to update a ConfigMap regenerates it without its label: the policy source
    // is gone. The last good policy keeps serving, and every answer says so.
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/default.yaml"
    ))
    .unwrap();
    let regenerated = api.ok(
        &[
            "create",
            "configmap",
            "stateful-guard-policy",
            "-n",
            "stateful-guard",
            "--from-literal",
            &format!("policy.yaml={default}"),
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        None,
    );
    api.ok(&["apply", "-f", "-"], Some(&regenerated));
    let labels = api.get(&["configmap", "stateful-guard-policy", "-n", "stateful-guard"])
        ["metadata"]["labels"]
        .clone();
    assert!(
        labels.get("stateful-guard.io/policy").is_none(),
        "kubectl apply dropped the label: {labels}"
    );
    eventually(30, "the lost source is reported on every answer", || {
        let out = try_create();
        !out.status.success() && stderr(&out).contains("every policy source is gone")
    });
    i.expect_log(
        "every policy source is gone",
        "the lost source is in the log",
    );
    api.ok(
        &[
            "label",
            "configmap",
            "stateful-guard-policy",
            "-n",
            "stateful-guard",
            "stateful-guard.io/policy=true",
        ],
        None,
    );
    eventually(30, "the labelled policy is back", || {
        let out = try_create();
        !out.status.success() && !stderr(&out).contains("every policy source is gone")
    });
}

fn certificate_bootstrap(i: &mut Installed) {
    let ca_bundle = |api: &Apiserver, kind: &str| -> String {
        api.get(&[kind, "stateful-guard"])["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let secret = i
        .api
        .get(&["secret", "stateful-guard-tls", "-n", "stateful-guard"]);
    assert!(secret["data"]["tls.crt"].is_string() && secret["data"]["ca.crt"].is_string());
    let mutating = ca_bundle(&i.api, "mutatingwebhookconfiguration");
    let validating = ca_bundle(&i.api, "validatingwebhookconfiguration");
    assert!(!mutating.is_empty(), "caBundle injected");
    assert_eq!(
        mutating, validating,
        "both webhook configurations trust the same CA"
    );
    // Both call the token's paths: only the apiserver (and cluster admins) know them.
    let path = |api: &Apiserver, kind: &str| -> String {
        api.get(&[kind, "stateful-guard"])["webhooks"][0]["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let token = webhook_token(&i.api);
    assert!(
        token.len() == 66 && token.starts_with("sg"),
        "sg and 32 random bytes in hex: {token}"
    );
    assert_eq!(
        path(&i.api, "mutatingwebhookconfiguration"),
        format!("/mutate/{token}")
    );
    assert_eq!(
        path(&i.api, "validatingwebhookconfiguration"),
        format!("/validate/{token}")
    );
    // A GitOps tool (or a re-apply of the rendered manifests) resets caBundle: it is put back
    // within seconds, and the apiserver's calls verify again.
    i.api.ok(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "stateful-guard",
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]"#,
        ],
        None,
    );
    eventually(20, "caBundle put back", || {
        ca_bundle(&i.api, "mutatingwebhookconfiguration") == mutating
    });
    // So is the path when a `replace` of the rendered manifests (which leave it out) drops it.
    let remove_path = r#"[{"op": "remove", "path": "/webhooks/0/clientConfig/service/path"}]"#;
    let patch = |p: &str| {
        i.api.ok(
            &[
                "patch",
                "validatingwebhookconfiguration",
                "stateful-guard",
                "--type=json",
                "-p",
                p,
            ],
            None,
        )
    };
    patch(remove_path);
    eventually(20, "path put back", || {
        path(&i.api, "validatingwebhookconfiguration") == format!("/validate/{token}")
    });
    // A path someone else set (a rollback's manifests say `/validate`) is left as it is, and
    // said; removed again, it is ours again.
    patch(
        r#"[{"op": "replace", "path": "/webhooks/0/clientConfig/service/path", "value": "/validate"}]"#,
    );
    i.webhook.as_ref().unwrap().log.expect(
        "a path this replica did not set",
        Duration::from_secs(20),
        "a foreign path is reported",
    );
    assert_eq!(path(&i.api, "validatingwebhookconfiguration"), "/validate");
    patch(remove_path);
    eventually(20, "path put back", || {
        path(&i.api, "validatingwebhookconfiguration") == format!("/validate/{token}")
    });
    // A restart keeps the CA (the apiserver's calls keep verifying with the bundle it has).
    i.start_webhook();
    assert_eq!(ca_bundle(&i.api, "mutatingwebhookconfiguration"), mutating);
    let again = i
        .api
        .get(&["secret", "stateful-guard-tls", "-n", "stateful-guard"]);
    assert_eq!(again["data"]["ca.crt"], secret["data"]["ca.crt"]);
    assert_eq!(webhook_token(&i.api), token, "and the token");
}

/// Two replicas starting at once with no Secret yet: one creates it, the other reads it, and
/// both serve the same certificate, which the webhook configurations trust.
fn two_replicas_race(i: &mut Installed) {
    i.webhook = None;
    i.api.ok(
        &[
            "delete",
            "secret",
            "stateful-guard-tls",
            "-n",
            "stateful-guard",
        ],
        None,
    );
    let other_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dirs = [
        i.api.dir.path().join("race-a"),
        i.api.dir.path().join("race-b"),
    ];
    let replicas = [
        Webhook::start(&i.args, i.port, &i.kubeconfig, &dirs[0]),
        Webhook::start(&i.args, other_port, &i.kubeconfig, &dirs[1]),
    ];
    for replica in &replicas {
        replica.log.expect(
            "serving the certificate from the Secret",
            Duration::from_secs(60),
            "both replicas serve the Secret's certificate",
        );
    }
    let served: Vec<Vec<u8>> = dirs
        .iter()
        .map(|d| std::fs::read(d.join("tls.crt")).unwrap())
        .collect();
    assert_eq!(
        served[0], served[1],
        "both replicas serve the Secret's one certificate"
    );
    drop(replicas);
    i.start_webhook();
}

fn webhook_killed(i: &mut Installed) {
    let api = &i.api;
    let ns = "down";
    namespace(api, ns);
    i.webhook = None;
    let out = api.kubectl_with(&["create", "-n", ns, "-f", "-"], Some(&web("0.7", 3)));
    assert!(
        out.status.success(),
        "failurePolicy Ignore: a create goes through while the webhook is down: {}",
        stderr(&out)
    );
    let sts = api.get(&["statefulset", "web", "-n", ns]);
    assert_eq!(
        sts["spec"]["podManagementPolicy"], "OrderedReady",
        "unmutated: nobody answered"
    );
}

/// The shared manifests through `kubectl apply --dry-run=server`: admitted exactly when
/// `stateful-guard check` says so, denied by the rules check names.
fn check_predicts_admission(i: &Installed) {
    let api = &i.api;
    // Some manifests name `default` themselves.
    let ns = "default";
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_stateful-guard"))
            .args(["check", "-n", ns, "-o", "json", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&check.stdout).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let out = api.kubectl_with(
            &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
            Some(&text),
        );
        let denied_by_check = check.status.code() == Some(1);
        assert_eq!(
            !out.status.success(),
            denied_by_check,
            "{}: the apiserver said\n{}",
            file.display(),
            stderr(&out)
        );
        for object in report["objects"].as_array().unwrap() {
            for finding in object["findings"].as_array().unwrap() {
                if finding["action"] == "enforce" {
                    let rule = finding["rule"].as_str().unwrap();
                    assert!(
                        stderr(&out).contains(&format!("[{rule}]")),
                        "{}: check denies for {rule}; the apiserver said\n{}",
                        file.display(),
                        stderr(&out)
                    );
                }
            }
        }
    }
}

/// The shared manifests made admissible (probes on every container, a PDB per StatefulSet),
/// created with `kubectl apply`: the stored StatefulSets carry exactly what `check --fix` says
/// for the same input (with the cluster's StorageClasses in it).
fn check_fix_predicts_stored_objects(i: &Installed) {
    let api = &i.api;
    let ns = "default";
    let classes = r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: example.com/slow
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast-ssd
provisioner: example.com/fast
volumeBindingMode: WaitForFirstConsumer
"#;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = stateful_guard::check::parse_stream(&text, "f").unwrap();
        let mut fixed: Vec<Value> = Vec::new();
        for doc in docs {
            let mut value = doc.value;
            if value["kind"] == "StatefulSet" {
                for c in value["spec"]["template"]["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                {
                    c["readinessProbe"] = json!({"tcpSocket": {"port": 1}});
                    c["livenessProbe"] = json!({"exec": {"command": ["true"]}});
                }
                let name = value["metadata"]["name"].as_str().unwrap().to_owned();
                fixed.push(json!({
                    "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": {"name": format!("{name}-pdb")},
                    "spec": {"maxUnavailable": 1, "selector": value["spec"]["selector"].clone()}
                }));
            }
            fixed.push(value);
        }
        let manifest = fixed
            .iter()
            .map(|v| serde_yaml_ng::to_string(v).unwrap())
            .collect::<Vec<_>>()
            .join("---\n");
        let input = api.dir.path().join("fixed.yaml");
        std::fs::write(&input, format!("{manifest}---\n{classes}")).unwrap();
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_stateful-guard"))
            .args(["check", "--fix", "-n", ns, "-f"])
            .arg(&input)
            .output()
            .unwrap();
        assert_eq!(
            check.status.code(),
            Some(0),
            "{}: check says it is admissible: {}",
            file.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let predicted =
            stateful_guard::check::parse_stream(&String::from_utf8(check.stdout).unwrap(), "fix")
                .unwrap();
        api.ok(&["apply", "-n", ns, "-f", "-"], Some(&manifest));
        for sts in predicted
            .iter()
            .filter(|d| d.value["kind"] == "StatefulSet")
        {
            let name = sts.value["metadata"]["name"].as_str().unwrap();
            let stored = api.get(&["statefulset", name, "-n", ns]);
            let label = format!("{}: {name}", file.display());
            assert_eq!(
                stored["spec"]["podManagementPolicy"], sts.value["spec"]["podManagementPolicy"],
                "{label}"
            );
            let classes_of = |v: &Value| -> Vec<Value> {
                v["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| t["spec"]["storageClassName"].clone())
                    .collect()
            };
            assert_eq!(classes_of(&stored), classes_of(&sts.value), "{label}");
            for field in ["affinity", "topologySpreadConstraints"] {
                assert_eq!(
                    stored["spec"]["template"]["spec"][field],
                    sts.value["spec"]["template"]["spec"][field],
                    "{label}: {field}"
                );
            }
        }
    }
}

/// With the StatefulSet controller running, the claims it creates (at creation and at a
/// scale-up) carry exactly their claim template's class, also for a StatefulSet that opted out.
fn controller_created_claims(i: &Installed) {
    let api = &i.api;
    let Some(_controllers) = api.controller_manager() else {
        return;
    };
    // A StatefulSet created before stateful-guard watched its namespace (the namespace is
    // excluded, then the exclusion is lifted: as if the guard were installed afterwards).
    api.ok(&["create", "namespace", "before"], None);
    api.ok(
        &[
            "label",
            "namespace",
            "before",
            "stateful-guard.io/exclude=true",
        ],
        None,
    );
    // Parallel: without a kubelet no pod gets Ready, and OrderedReady would wait for pod 0.
    let old = web("0.7", 1)
        .replacen("metadata:\n  name: web\n", "metadata:\n  name: old\n", 1)
        .replacen("spec:\n", "spec:\n  podManagementPolicy: Parallel\n", 1);
    api.ok(&["apply", "-n", "before", "-f", "-"], Some(&old));
    let claims_in = |ns: &str, sts: &str| -> Vec<String> {
        let prefix = format!("content-{sts}-");
        let mut claims: Vec<(String, String)> = i.api.get(&["pvc", "-n", ns])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with(&prefix))
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["spec"]["storageClassName"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect();
        claims.sort();
        claims.into_iter().map(|(_, class)| class).collect()
    };
    eventually(
        60,
        "the controller creates the old StatefulSet's claim",
        || claims_in("before", "old").len() == 1,
    );
    api.ok(
        &["label", "namespace", "before", "stateful-guard.io/exclude-"],
        None,
    );
    api.ok(
        &["scale", "-n", "before", "statefulset/old", "--replicas=3"],
        None,
    );
    eventually(60, "the scale-up creates two claims", || {
        claims_in("before", "old").len() == 3
    });
    assert_eq!(
        claims_in("before", "old"),
        ["standard", "standard", "standard"],
        "new replicas of a StatefulSet from before the guard keep its class: one StatefulSet, one class"
    );
    let ns = "ctrl";
    namespace(api, ns);
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(PDB));
    let keep = web("0.7", 2).replacen(
        "metadata:\n  name: web\n",
        "metadata:\n  name: keep\n  annotations:\n    stateful-guard.io/storage-class: keep\n",
        1,
    );
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(&keep));
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(&web("0.7", 2)));
    let claims_of = |sts: &str| -> Vec<Value> {
        let prefix = format!("content-{sts}-");
        let mut claims: Vec<Value> = i.api.get(&["pvc", "-n", ns])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with(&prefix))
            .cloned()
            .collect();
        claims.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap().to_owned());
        claims
    };
    let classes = |sts: &str, n: usize| {
        eventually(
            60,
            &format!("the controller creates {n} claims of {sts}"),
            || claims_of(sts).len() >= n,
        );
        claims_of(sts)
            .iter()
            .map(|p| {
                p["spec"]["storageClassName"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    // The opted-out template has no class: its claims get the default, as the template says.
    assert_eq!(classes("keep", 2), ["standard", "standard"]);
    assert_eq!(classes("web", 2), ["fast-ssd", "fast-ssd"]);
    api.ok(
        &["scale", "-n", ns, "statefulset/keep", "--replicas=3"],
        None,
    );
    assert_eq!(classes("keep", 3), ["standard", "standard", "standard"]);
    i.expect_log(
        "is created by the StatefulSet controller",
        "reported once in the review's log",
    );
}

/// A namespace the cache does not know yet (created or relabelled a moment ago) is read live
/// before its policy is chosen, so it never falls through to a weaker policy or none. The lag is
/// made deterministic by reviewing in-process with a cluster view that lacks the namespace,
/// while the live read goes to the real apiserver with the webhook's own ServiceAccount (so
/// deploy/'s RBAC must allow it).
fn namespace_cache_miss(i: &Installed) {
    use stateful_guard::admission::{Reviewer, Uninterpretable, response};
    use stateful_guard::cluster::Snapshot;
    use stateful_guard::cluster::cache::ClusterCache;
    use stateful_guard::engine::Phase;

    let api = &i.api;
    api.ok(&["create", "namespace", "fresh"], None);
    api.ok(&["label", "namespace", "fresh", "tier=db"], None);
    let policies = policies(
        r#"
apiVersion: stateful-guard.io/v1alpha1
kind: Policy
metadata: {name: databases}
spec:
  match:
    namespaceSelector: {matchLabels: {tier: db}}
  rules:
    require-readiness-probe: {action: enforce}
"#,
    );
    let captured = review_fixture("statefulset-create.validating.json");
    let mut object = request_object(&captured);
    object["metadata"]["namespace"] = json!("fresh");
    let mut review: Value = serde_json::from_slice(&with_object(&captured, &object)).unwrap();
    review["request"]["namespace"] = json!("fresh");
    let body = serde_json::to_vec(&review).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let live = ClusterCache::start(common::apiserver::client_from(&i.kubeconfig).await);
        // What a cache that has not seen the namespace yet holds.
        let lagging = Snapshot::known(vec![], vec![], vec![]);
        async fn answer(
            policies: &stateful_guard::policy::PolicySet,
            cluster: &Snapshot,
            live: Option<&ClusterCache>,
            body: &[u8],
        ) -> Value {
            let reviewer = Reviewer {
                policies,
                cluster,
                live,
                uninterpretable: Uninterpretable::Allow,
                statefulset_controllers: &STATEFULSET_CONTROLLERS,
                live_claim_owners: false,
            };
            let (review, _) = reviewer.review(Phase::Validate, body).await.unwrap();
            decode_wire(&response::to_wire(review).unwrap())
        }
        // Without the live read, the lagging cache has no labels for the namespace: no policy.
        let blind = answer(&policies, &lagging, None, &body).await;
        assert!(allowed(&blind), "{blind}");
        // With it, the namespace's real labels choose the databases policy, which denies.
        let read = answer(&policies, &lagging, Some(&live), &body).await;
        assert!(!allowed(&read), "{read}");
        let message = read["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("[require-readiness-probe]"), "{message}");
        // Relabelled: the live read sees that too.
        api.ok(&["label", "namespace", "fresh", "tier-"], None);
        let relabelled = answer(&policies, &lagging, Some(&live), &body).await;
        assert!(allowed(&relabelled), "{relabelled}");
    });
}

/// The background audit: a StatefulSet created while the webhook was down (`webhook_killed`) is
/// found by the next scan, served at /report and in the findings gauge (read over HTTPS as an
/// operator would through a port-forward, verifying the bootstrapped CA; the apiserver's
/// Service proxy refuses loopback endpoints) and, with deploy/components' PolicyReport CRD and
/// RBAC installed, written as a PolicyReport by the one replica that holds the Lease; once
/// fixed, the next scan clears it. When the writer dies, the other replica takes over.
fn background_audit(i: &mut Installed) {
    let components = |file: &str| {
        std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/components")
                .join(file),
        )
        .unwrap()
    };
    // Without the components, writing says why, as the webhook's own ServiceAccount: not
    // allowed (authorization comes first), then (RBAC, no CRD) no CRD. The webhook logs each
    // once and keeps its other outputs.
    let write_as_webhook = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = common::apiserver::client_from(&i.kubeconfig).await;
            let report = stateful_guard::check::Report {
                objects: vec![],
                summary: Default::default(),
            };
            stateful_guard::audit::reports::write(&client, &report, &[])
                .await
                .unwrap()
        })
    };
    use stateful_guard::audit::reports::Written;
    assert_eq!(write_as_webhook(), Written::Forbidden);
    i.api.ok(
        &["apply", "-f", "-"],
        Some(&components("policy-reports/rbac.yaml")),
    );
    eventually(20, "the component's RBAC in force", || {
        write_as_webhook() == Written::NoCrd
    });
    i.api.ok(
        &["apply", "-f", "-"],
        Some(&components("policy-report-crd/crd.yaml")),
    );
    i.api.ok(
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/policyreports.wgpolicyk8s.io",
        ],
        None,
    );
    eventually(20, "the CRD served", || {
        write_as_webhook() == Written::Current { changed: 0 }
    });
    i.start_webhook();
    let api = &i.api;
    let ca = serving_ca(api);
    let report_from = |port: u16| report_from(&ca, port);
    let get_from = |port: u16, path: &str| get_from(&ca, port, path);
    let down_web = |report: &Value| -> Option<Value> {
        report["objects"]
            .as_array()?
            .iter()
            .find(|o| o["namespace"] == "down" && o["name"] == "web")
            .cloned()
    };
    let rules = |object: &Value| -> Vec<String> {
        object["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    // The PolicyReport of `down`: its (rule, result) pairs for down/web.
    let policy_report = || -> Option<Vec<(String, String)>> {
        Some(
            policy_report_results(api, "down")?
                .iter()
                .filter(|r| r["resources"][0]["name"] == "web")
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap().to_owned(),
                        r["result"].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
        )
    };
    let pdb_fails = |results: &[(String, String)]| {
        results
            .iter()
            .any(|(rule, result)| rule == "require-pdb" && result == "fail")
    };
    let mut found = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.is_none() {
        found = report_from(i.port).as_ref().and_then(down_web);
        if Instant::now() > deadline {
            panic!(
                "no background audit scan lists down/web within 60 s: {:?}\nwebhook log:\n{}",
                get_from(i.port, "/report"),
                i.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let object = found.unwrap();
    assert_eq!(object["allowed"], false, "{object}");
    assert!(
        rules(&object).contains(&"require-pdb".to_owned()),
        "{object}"
    );
    assert!(
        object["mutations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["rule"] == "parallel-pod-management"),
        "it would be mutated: {object}"
    );
    let metrics = String::from_utf8(get_from(i.port, "/metrics").unwrap().1.to_vec()).unwrap();
    assert!(
        metrics.contains(
            r#"stateful_guard_existing_findings{namespace="down",rule="require-pdb",action="enforce"} 1"#
        ),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("existing_findings"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eventually(
        30,
        "a PolicyReport in down that fails web on require-pdb",
        || policy_report().is_some_and(|r| pdb_fails(&r)),
    );
    // A second replica scans and serves the same results, but does not write.
    let other_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let second = Webhook::start(
        &i.args,
        other_port,
        &i.kubeconfig,
        &i.api.dir.path().join("audit-second"),
    );
    second.log.expect(
        "PolicyReport writer is another replica",
        Duration::from_secs(30),
        "the second replica leaves the writing to the first",
    );
    eventually(30, "the second replica serves the results too", || {
        report_from(other_port)
            .as_ref()
            .and_then(down_web)
            .is_some()
    });

    // The interval is the Deployment's (10 m): what follows is rescanned because it changed.
    // A new PVC is evaluated within seconds (its watch carries metadata only).
    let objects = |port: u16| -> Option<u64> { report_from(port)?["summary"]["objects"].as_u64() };
    let before = objects(i.port).unwrap();
    api.ok(&["apply", "-n", "down", "-f", "-"], Some(CLAIM));
    eventually(30, "the new PVC in /report's count", || {
        objects(i.port) == Some(before + 1)
    });
    // So is a policy changed: audit mode allows what enforce denied.
    let allowed = |port: u16| {
        report_from(port)
            .as_ref()
            .and_then(down_web)
            .map(|o| o["allowed"].clone())
    };
    edit_policy(api, "mode: enforce", "mode: audit");
    eventually(30, "the policy switched to audit rescans", || {
        allowed(i.port) == Some(json!(true))
    });
    edit_policy(api, "mode: audit", "mode: enforce");
    eventually(30, "and back to enforce", || {
        allowed(i.port) == Some(json!(false))
    });

    // Fixed: a PDB for its pods. The next scan clears the finding, and the report follows.
    api.ok(&["apply", "-n", "down", "-f", "-"], Some(PDB));
    eventually(30, "require-pdb cleared from /report", || {
        report_from(i.port)
            .as_ref()
            .and_then(down_web)
            .is_some_and(|o| !rules(&o).contains(&"require-pdb".to_owned()))
    });
    eventually(30, "require-pdb cleared from the PolicyReport", || {
        policy_report().is_some_and(|r| !r.is_empty() && !pdb_fails(&r))
    });
    // Written only when its content changes: scans two seconds apart leave it alone.
    let version = || {
        api.get(&[
            "policyreports.wgpolicyk8s.io",
            "stateful-guard",
            "-n",
            "down",
        ])["metadata"]["resourceVersion"]
            .clone()
    };
    let before = version();
    let scans = || i.logs().matches("background audit scan completed").count();
    let scanned = scans();
    // A namespace's annotations change nothing in its verdicts, but trigger a rescan.
    api.ok(&["annotate", "namespace", "down", "touched=yes"], None);
    eventually(30, "a rescan after the namespace changed", || {
        scans() > scanned
    });
    assert_eq!(version(), before, "an unchanged report is not rewritten");
    assert!(
        !second.log.text().contains("PolicyReports updated"),
        "only the Lease holder writes:\n{}",
        second.log.text()
    );

    // The writer dies: once its Lease expires, the other replica writes (the PDB removed
    // again brings the failure back).
    i.webhook = None;
    second.log.expect(
        "PolicyReport writer elected",
        Duration::from_secs(40),
        "the second replica takes the writing over",
    );
    api.ok(&["delete", "pdb", "web", "-n", "down"], None);
    eventually(40, "the new writer's PolicyReport fails web again", || {
        policy_report().is_some_and(|r| pdb_fails(&r))
    });
    second.log.expect(
        "PolicyReports updated",
        Duration::from_secs(10),
        "the new writer says it wrote",
    );
    // A replica that stops as a pod does (SIGTERM: a rolling update, a drain) hands the Lease
    // over at once instead of after its 15 s.
    i.start_webhook();
    let restarted = i.webhook.as_ref().unwrap();
    restarted.log.expect(
        "PolicyReport writer is another replica",
        Duration::from_secs(30),
        "the restarted replica leaves the writing to the second",
    );
    let mut second = second;
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let stopped = Instant::now();
    assert!(
        restarted
            .log
            .wait_for("PolicyReport writer elected", Duration::from_secs(12))
            .is_some(),
        "not handed over within 12 s of SIGTERM (a lease lasts 15 s):\n{}\nthe stopped one:\n{}",
        restarted.log.text(),
        second.log.text()
    );
    eprintln!(
        "Lease handed over {:.1} s after SIGTERM",
        stopped.elapsed().as_secs_f64()
    );
    second.log.expect(
        "Lease is released",
        Duration::from_secs(10),
        "the stopped replica released its Lease",
    );
    let _ = second.child.wait();
}

/// The apiserver's count of the requests that a review's live reads make: LISTs of PDBs and of
/// StatefulSets, GETs of namespaces (nothing else in these tests sends them while it runs).
fn live_read_requests(api: &Apiserver) -> u64 {
    api.ok(&["get", "--raw", "/metrics"], None)
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            (l.contains(r#"verb="LIST""#)
                && (l.contains(r#"resource="poddisruptionbudgets""#)
                    || l.contains(r#"resource="statefulsets""#)))
                || (l.contains(r#"verb="GET""#) && l.contains(r#"resource="namespaces""#))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One HTTP/1.1 connection to the webhook on loopback `addr`, trusting `ca`.
async fn webhook_connection(
    addr: std::net::SocketAddr,
    ca: &[u8],
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>> {
    let tls = common::server::tls_connect(
        addr,
        ca,
        "stateful-guard.stateful-guard.svc",
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A hostile tenant who reaches the webhook's port sends it reviews of its own: refused, since
/// it does not know the webhook token. With the token (leaked, say, or a compromised node
/// that watched the apiserver's calls): StatefulSets without a PDB in 300 namespaces that do
/// not exist, and claims "from the StatefulSet controller" of 300 StatefulSets that do not
/// exist, each a cache miss. The apiserver, not the webhook, counts what the webhook's
/// ServiceAccount then asks of it: at most the live reads' burst and rate (cluster::live),
/// against one or two per review unbounded.
fn live_reads_are_bounded(i: &Installed) {
    use stateful_guard::cluster::live::{BURST, RATE};
    let statefulset: Value =
        serde_json::from_slice(&review_fixture("statefulset-create.validating.json")).unwrap();
    let claim: Value = serde_json::from_slice(&review_fixture(
        "pvc-create-by-statefulset-controller.mutating.json",
    ))
    .unwrap();
    let token = webhook_token(&i.api);
    let (validate, mutate) = (format!("/validate/{token}"), format!("/mutate/{token}"));
    let reviews: Vec<(String, Vec<u8>)> = (0..300)
        .flat_map(|n| {
            let ns = format!("hostile-{n}");
            let mut sts = statefulset.clone();
            sts["request"]["uid"] = json!(format!("hostile-sts-{n}"));
            sts["request"]["namespace"] = json!(ns);
            sts["request"]["object"]["metadata"]["namespace"] = json!(ns);
            sts["request"]["object"]["spec"]["replicas"] = json!(3);
            let mut pvc = claim.clone();
            pvc["request"]["uid"] = json!(format!("hostile-pvc-{n}"));
            pvc["request"]["namespace"] = json!(ns);
            pvc["request"]["name"] = json!(format!("www-x{n}-0"));
            pvc["request"]["object"]["metadata"]["name"] = json!(format!("www-x{n}-0"));
            pvc["request"]["object"]["metadata"]["namespace"] = json!(ns);
            [
                (validate.clone(), serde_json::to_vec(&sts).unwrap()),
                (mutate.clone(), serde_json::to_vec(&pvc).unwrap()),
            ]
        })
        .collect();
    let ca = serving_ca(&i.api);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", i.port).parse().unwrap();
    let before = live_read_requests(&i.api);
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answered: usize = runtime.block_on(async {
        // Without the token: refused before it is read.
        let mut send = webhook_connection(addr, &ca).await;
        for path in ["/validate", "/mutate"] {
            let (status, _) =
                common::server::send_one(&mut send, "POST", path, reviews[0].1.clone())
                    .await
                    .unwrap();
            assert_eq!(status, 403, "{path} without the token");
        }
        let reviews = std::sync::Arc::new(reviews);
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let (reviews, ca) = (reviews.clone(), ca.clone());
            tasks.push(tokio::spawn(async move {
                let mut send = webhook_connection(addr, &ca).await;
                let mut answered = 0;
                for (path, body) in reviews.iter().skip(worker).step_by(8) {
                    let (status, body) =
                        common::server::send_one(&mut send, "POST", path, body.clone())
                            .await
                            .unwrap();
                    let review: Value = serde_json::from_slice(&body).unwrap();
                    if status == 200 && review["response"]["allowed"].is_boolean() {
                        answered += 1;
                    }
                }
                answered
            }));
        }
        let mut answered = 0;
        for task in tasks {
            answered += task.await.unwrap();
        }
        answered
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(answered, 600, "every review is answered");
    let reads = live_read_requests(&i.api) - before;
    // Slack for the webhook's own lists meanwhile (a background audit scan started by an
    // earlier scenario's change lists StatefulSets; a reflector may relist).
    let bound = (BURST + RATE * elapsed.ceil()) as u64 + 5;
    eprintln!(
        "600 hostile reviews in {elapsed:.1} s: {reads} live reads reached the apiserver (bound {bound})"
    );
    assert!(
        reads <= bound,
        "{reads} live reads in {elapsed:.1} s, more than the burst ({BURST}) and rate ({RATE}/s) allow"
    );
}

/// A claim template's size raised in the manifest (`volume-growth`, `serve --grow-volumes` as
/// deploy/components/volume-growth installs it): `kubectl apply` and server-side apply of the
/// larger size succeed, each Bound claim is asked for it within seconds, a scale-up's new claim
/// gets it, a shrink and a class without expansion are refused with what to do, a dry run
/// records nothing, and nothing shrinks. Runs after `background_audit`, whose PolicyReport CRD
/// and RBAC it reuses.
fn volume_growth(i: &mut Installed) {
    let component = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/components/volume-growth/rbac.yaml"),
    )
    .unwrap();
    i.api.ok(&["apply", "-f", "-"], Some(&component));
    i.args.push("--grow-volumes".to_owned());
    i.start_webhook();
    let api = &i.api;
    for (class, expands) in [("expandable", true), ("fixed", false)] {
        let class = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": class}, "provisioner": format!("example.com/{class}"),
            "allowVolumeExpansion": expands,
        });
        api.ok(&["apply", "-f", "-"], Some(&class.to_string()));
    }
    // `web` as `name`, 3 replicas, its claim template `content` of `class` at `size`.
    let manifest = |name: &str, class: &str, size: &str, image: &str| {
        web(image, 3)
            .replacen(
                "metadata:\n  name: web\n",
                &format!("metadata:\n  name: {name}\n"),
                1,
            )
            .replace(
                "      accessModes: [\"ReadWriteOnce\"]\n",
                &format!(
                    "      accessModes: [\"ReadWriteOnce\"]\n      storageClassName: {class}\n"
                ),
            )
            .replace(
                "          storage: 1Gi\n",
                &format!("          storage: {size}\n"),
            )
    };
    // kubectl apply (with `extra` flags) of `manifest` in `ns`: whether it succeeded, and what
    // kubectl said (the webhook's warnings or its refusal).
    let apply = |extra: &[&str], ns: &str, manifest: String| -> (bool, String) {
        let mut args = vec!["apply", "-n", ns, "-f", "-"];
        args.extend_from_slice(extra);
        let out = api.kubectl_with(&args, Some(&manifest));
        (out.status.success(), stderr(&out))
    };
    let ns = "grow";
    namespace(api, ns);
    api.ok(&["apply", "-n", ns, "-f", "-"], Some(PDB));
    let controllers = api.controller_manager();
    api.ok(
        &["apply", "-n", ns, "-f", "-"],
        Some(&manifest("db", "expandable", "1Gi", "0.7")),
    );
    let claim = |ordinal: u32| format!("content-db-{ordinal}");
    if controllers.is_none() {
        // No StatefulSet controller: the claims it would create, by hand.
        for ordinal in 0..3 {
            api.ok(
                &["apply", "-n", ns, "-f", "-"],
                Some(&format!(
                    "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {}\n  labels: {{app.kubernetes.io/name: web}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: expandable\n  resources:\n    requests:\n      storage: 1Gi\n",
                    claim(ordinal)
                )),
            );
        }
    }
    let pvc = |name: &str| -> Option<Value> {
        let out = api.kubectl(&["get", "pvc", name, "-n", ns, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    };
    let requested = |name: &str| -> Option<String> {
        pvc(name)?["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .map(str::to_owned)
    };
    eventually(60, "the three claims exist", || {
        (0..3).all(|o| pvc(&claim(o)).is_some())
    });
    // No storage driver: a claim is made Bound (at its size) through the status subresource.
    let bind = |name: &str, capacity: &str| {
        api.ok(
            &[
                "patch",
                "pvc",
                name,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &format!(
                    r#"{{"status":{{"phase":"Bound","capacity":{{"storage":"{capacity}"}}}}}}"#
                ),
            ],
            None,
        );
    };
    bind(&claim(0), "1Gi");
    bind(&claim(1), "1Gi");

    // The one-line edit, with kubectl apply: accepted, the size recorded, the template kept.
    let (applied, said) = apply(&[], ns, manifest("db", "expandable", "2Gi", "0.7"));
    assert!(applied, "kubectl apply of 2Gi: {said}");
    assert!(
        said.contains("claim templates grow"),
        "the warning says what happens: {said}"
    );
    let stored = || api.get(&["statefulset", "db", "-n", ns]);
    let sts = stored();
    assert_eq!(
        sts["metadata"]["annotations"]["stateful-guard.io/claim-sizes"], "content=2Gi",
        "{sts}"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "1Gi",
        "the stored template is immutable and kept"
    );
    // The Bound claims are asked for 2Gi within seconds; the one not Bound is left.
    eventually(
        60,
        "both Bound claims requested at 2Gi (the restarted webhook waits out the killed one's Lease)",
        || {
            requested(&claim(0)).as_deref() == Some("2Gi")
                && requested(&claim(1)).as_deref() == Some("2Gi")
        },
    );
    assert_eq!(
        requested(&claim(2)).as_deref(),
        Some("1Gi"),
        "only a Bound claim is resized"
    );
    bind(&claim(2), "1Gi");
    eventually(30, "the claim Bound later is requested at 2Gi too", || {
        requested(&claim(2)).as_deref() == Some("2Gi")
    });
    // The volume grew (what the CSI resizer reports): that claim is done.
    bind(&claim(0), "2Gi");

    // What the grower reports: /report's growth, an Event per change, the PolicyReport.
    let ca = serving_ca(api);
    let states = || -> Vec<(String, String)> {
        let Some(report) = report_from(&ca, i.port) else {
            return vec![];
        };
        let mut states: Vec<(String, String)> = report["growth"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["namespace"] == ns && c["statefulset"] == "db")
            .map(|c| {
                (
                    c["claim"].as_str().unwrap().to_owned(),
                    c["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        states.sort();
        states
    };
    eventually(30, "/report: content-db-0 done, the others growing", || {
        states()
            == [
                (claim(0), "done".to_owned()),
                (claim(1), "growing".to_owned()),
                (claim(2), "growing".to_owned()),
            ]
    });
    let reasons = || -> Vec<String> {
        api.get(&["events.events.k8s.io", "-n", ns])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["regarding"]["kind"] == "StatefulSet" && e["regarding"]["name"] == "db")
            .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    eventually(30, "Events on the StatefulSet", || {
        let reasons = reasons();
        reasons.iter().any(|r| r == "ClaimGrowing") && reasons.iter().any(|r| r == "ClaimGrown")
    });
    let growth_result = || -> Option<Value> {
        policy_report_results(api, ns)?
            .into_iter()
            .find(|r| r["rule"] == "volume-growth" && r["resources"][0]["name"] == "db")
    };
    eventually(60, "the PolicyReport shows the growth in progress", || {
        growth_result().is_some_and(|r| r["result"] == "warn" && r["properties"]["done"] == "1")
    });

    // Day 2 after growth: server-side apply of the same manifest with a new image succeeds
    // and changes nothing of the claims; kubectl diff (a server-side dry run) shows no size.
    let (applied, said) = apply(
        &["--server-side", "--force-conflicts"],
        ns,
        manifest("db", "expandable", "2Gi", "0.8"),
    );
    assert!(applied, "server-side apply of 2Gi: {said}");
    let sts = stored();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/example/static-site:0.8"
    );
    assert_eq!(
        sts["metadata"]["annotations"]["stateful-guard.io/claim-sizes"],
        "content=2Gi"
    );
    let diff = api.kubectl_with(
        &["diff", "-n", ns, "-f", "-"],
        Some(&manifest("db", "expandable", "2Gi", "0.8")),
    );
    assert!(
        matches!(diff.status.code(), Some(0 | 1)),
        "kubectl diff failed: {}",
        stderr(&diff)
    );
    let sizes: Vec<String> = String::from_utf8_lossy(&diff.stdout)
        .lines()
        .filter(|l| (l.starts_with('+') || l.starts_with('-')) && l.contains("storage:"))
        .map(str::to_owned)
        .collect();
    assert!(
        sizes.is_empty(),
        "a GitOps diff through the apiserver shows no size: {sizes:?}"
    );

    // A dry run of a larger size records nothing.
    let version = sts["metadata"]["resourceVersion"].clone();
    api.ok(
        &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
        Some(&manifest("db", "expandable", "3Gi", "0.8")),
    );
    let sts = stored();
    assert_eq!(
        sts["metadata"]["resourceVersion"], version,
        "a dry run changes nothing"
    );
    assert_eq!(
        sts["metadata"]["annotations"]["stateful-guard.io/claim-sizes"],
        "content=2Gi"
    );

    // A shrink is refused, saying so; the stored size itself (a rollback to the manifest from
    // before the growth) is not blocked, and told that the claims stay 2Gi.
    let (applied, said) = apply(&[], ns, manifest("db", "expandable", "1500Mi", "0.8"));
    assert!(
        !applied && said.contains("cannot shrink"),
        "a shrink: {said}"
    );
    let (applied, said) = apply(&[], ns, manifest("db", "expandable", "1Gi", "0.8"));
    assert!(
        applied && said.contains("so they stay 2Gi"),
        "a rollback of the size: {said}"
    );
    assert_eq!(
        stored()["metadata"]["annotations"]["stateful-guard.io/claim-sizes"],
        "content=2Gi"
    );

    // A scale-up's new claim gets the recorded size (the StatefulSet controller creates it).
    if controllers.is_some() {
        api.ok(&["scale", "-n", ns, "statefulset/db", "--replicas=4"], None);
        eventually(60, "the scale-up's claim, at 2Gi", || {
            requested(&claim(3)).as_deref() == Some("2Gi")
        });
    }

    // A class without expansion: refused, naming the class and how to enable expansion.
    let other = "grow-fixed";
    namespace(api, other);
    api.ok(&["apply", "-n", other, "-f", "-"], Some(PDB));
    api.ok(
        &["apply", "-n", other, "-f", "-"],
        Some(&manifest("db", "fixed", "1Gi", "0.7")),
    );
    let (applied, said) = apply(&[], other, manifest("db", "fixed", "2Gi", "0.7"));
    assert!(
        !applied && said.contains("\"fixed\"") && said.contains("allowVolumeExpansion"),
        "a class without expansion: {said}"
    );
    let sts = api.get(&["statefulset", "db", "-n", other]);
    assert!(
        sts["metadata"]["annotations"]
            .get("stateful-guard.io/claim-sizes")
            .is_none(),
        "nothing recorded for a refused growth: {sts}"
    );

    // Nothing shrank on any path.
    for ordinal in 0..3 {
        assert_eq!(
            requested(&claim(ordinal)).as_deref(),
            Some("2Gi"),
            "{}",
            claim(ordinal)
        );
    }
    drop(controllers);
}

#[test]
fn a_real_apiserver_agrees() {
    let Some((apiserver, etcd)) = available() else {
        return;
    };
    let started = Instant::now();
    let api = Apiserver::start(&apiserver, &etcd);
    let mut installed = install(api);
    let mut timed = |name: &str, run: &mut dyn FnMut(&mut Installed)| {
        let t = Instant::now();
        run(&mut installed);
        eprintln!("{name}: {:.1} s", t.elapsed().as_secs_f64());
    };
    timed("check predicts admission", &mut |i| {
        check_predicts_admission(i)
    });
    timed("check --fix predicts the stored objects", &mut |i| {
        check_fix_predicts_stored_objects(i)
    });
    timed("day-2 updates", &mut |i| day_two_updates(i));
    timed("controller-created claims", &mut |i| {
        controller_created_claims(i)
    });
    timed("dry run and claims", &mut |i| dry_run_and_claims(i));
    timed("policy ConfigMap", &mut |i| policy_configmap(i));
    timed("namespace cache miss", &mut |i| namespace_cache_miss(i));
    timed("live reads are bounded", &mut |i| live_reads_are_bounded(i));
    timed("certificate bootstrap", &mut |i| certificate_bootstrap(i));
    timed("two replicas race", &mut |i| two_replicas_race(i));
    timed("webhook killed", &mut |i| webhook_killed(i));
    timed("background audit", &mut |i| background_audit(i));
    timed("volume growth", &mut |i| volume_growth(i));
    eprintln!(
        "real-apiserver integration tests: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
