//! stateful-guard through a real kube-apiserver: `cargo bench --bench apiserver` (or
//! `scripts/bench-apiserver`). Uses the integration tests' etcd and kube-apiserver (see
//! tests/README.md for where they come from) and prints a line saying it was skipped when they
//! are absent. A benchmark, not a test: it prints, and asserts nothing.
//!
//! 1. **Create latency.** Four namespaces: one no webhook is called for, one with a no-op
//!    webhook (`examples/noop_webhook.rs`, the same TLS setup), one with the no-op answering
//!    with the patch stateful-guard sends (what the apiserver's own work on the patch costs),
//!    one with stateful-guard (the release binary, the embedded default policy, its caches
//!    watching the cluster). Each has a
//!    mutating and a validating webhook configuration (`failurePolicy: Fail`, so a failed call
//!    would show as an error). The zookeeper StatefulSet (with a PDB, so it is admitted, and
//!    mutated) is created in the four in turn, one keep-alive client, so that drift on the
//!    machine hits all alike. The medians and 90th percentiles, the ratios, and the webhook
//!    calls as the apiserver's metrics timed them.
//! 2. **Memory at cluster scale.** 10,000 PDBs (in 100 namespaces), 2,000 namespaces and 50
//!    StorageClasses are created; the RSS of the running stateful-guard (which watched them
//!    arrive) and of a fresh one started against the full cluster (its initial lists), once
//!    its caches have synced, beside the no-op's; and of one with the background audit on
//!    (the deployed default), after its first scan.
//!
//! The guards measured for latency and caches run with `--background-audit=0`: admission
//! alone.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use serde_json::json;

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use common::apiserver::Apiserver;
use common::server::Log;

/// Creates timed per namespace (after the warm-up).
const CREATES: usize = 300;
const WARM_UP: usize = 20;
const NAMESPACES: [&str; 4] = ["none", "noop", "patched", "guard"];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets too; this one is only for `cargo bench`.
        eprintln!("apiserver bench: skipped (run it with `cargo bench --bench apiserver`)");
        return;
    }
    let Some((apiserver, etcd)) = common::apiserver::available() else {
        return;
    };
    let api = Apiserver::start(&apiserver, &etcd);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&api));
}

/// A webhook process, its log, and its memory.
struct Process {
    child: Child,
    log: Log,
}

impl Process {
    fn start(mut command: Command) -> Process {
        let mut child = command
            .env("NO_PROXY", "*")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::capture(child.stderr.take().unwrap());
        Process { child, log }
    }

    /// VmRSS and VmHWM (peak), in MiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn wait_for(&self, needle: &str) {
        if self.log.wait_for(needle, Duration::from_secs(60)).is_none() {
            panic!("no {needle:?} within 60 s:\n{}", self.log.text());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The release binary with the embedded default policy, its caches watching the cluster, and
/// the background audit at `audit` (`0`: off; the default is `10m`).
fn guard(api: &Apiserver, dir: &Path, port: u16, audit: &str) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stateful-guard"));
    command
        .arg("serve")
        .arg(format!("--background-audit={audit}"))
        .args(["--log-format", "json", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        // The webhook configurations call it by URL, at 127.0.0.1.
        .args(["--tls-server-name", "127.0.0.1"])
        .env("KUBECONFIG", &api.kubeconfig)
        // The environment the image gives it (the Dockerfile's runtime stage).
        .envs(common::image_env());
    let process = Process::start(command);
    process.wait_for("cluster caches synced");
    process
}

/// Both webhook configurations for `name`, calling `port` for namespaces labelled
/// `bench=name`.
async fn register(client: &kube::Client, name: &str, port: u16, ca: &str) {
    let webhook = |path: &str| {
        json!({
            "name": format!("{name}.bench.stateful-guard.io"),
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "namespaceSelector": {"matchLabels": {"bench": name}},
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}{path}"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
            },
            "rules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["statefulsets"],
                "operations": ["CREATE", "UPDATE"],
            }, {
                "apiGroups": [""], "apiVersions": ["v1"], "resources": ["persistentvolumeclaims"],
                "operations": ["CREATE"],
            }],
        })
    };
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [webhook("/mutate")],
    }))
    .unwrap();
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [webhook("/validate")],
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .unwrap();
}

fn zookeeper() -> StatefulSet {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/manifests/zookeeper-statefulset.yaml"
    ))
    .unwrap();
    let mut sts: StatefulSet = serde_yaml_ng::from_str(&text).unwrap();
    sts.metadata.namespace = None;
    // Admissible under the default policy: a readiness probe on every container (its metrics
    // sidecar has none).
    if let Some(pod) = sts.spec.template.spec.as_mut() {
        for container in &mut pod.containers {
            if container.readiness_probe.is_none() {
                container.readiness_probe = serde_json::from_value(json!({
                    "tcpSocket": {"port": container.ports.as_ref().unwrap()[0].container_port}
                }))
                .unwrap();
            }
        }
    }
    sts
}

fn pdb_for(sts: &StatefulSet, name: &str) -> PodDisruptionBudget {
    let labels = sts.spec.selector.match_labels.clone();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }))
    .unwrap()
}

/// The webhook calls as kube-apiserver timed them (its
/// `apiserver_admission_webhook_admission_duration_seconds`, warm-up included): what a create
/// spends in the webhook's round trip, apart from the apiserver's own work on the answer (a
/// patch to apply, a larger object to validate and store).
async fn webhook_calls(client: &kube::Client) {
    let metrics = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    let sum_count = |name: &str, kind: &str| {
        let series = |suffix: &str| {
            metrics
                .lines()
                .filter(|l| {
                    l.starts_with(&format!(
                        "apiserver_admission_webhook_admission_duration_seconds_{suffix}{{"
                    )) && l.contains(&format!("name=\"{name}.bench.stateful-guard.io\""))
                        && l.contains(&format!("type=\"{kind}\""))
                        && l.contains("operation=\"CREATE\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        (series("sum"), series("count"))
    };
    let mean = |name: &str, kind: &str| {
        let (sum, count) = sum_count(name, kind);
        if count > 0.0 {
            sum / count * 1e3
        } else {
            f64::NAN
        }
    };
    println!(
        "  webhook calls as kube-apiserver timed them (mean; a mutating call's time includes applying its patch):\n    no-op mutate {:.2} ms, validate {:.2} ms; the no-op with the patch mutate {:.2} ms, validate {:.2} ms; stateful-guard mutate {:.2} ms, validate {:.2} ms",
        mean("noop", "admit"),
        mean("noop", "validating"),
        mean("patched", "admit"),
        mean("patched", "validating"),
        mean("guard", "admit"),
        mean("guard", "validating"),
    );
}

/// The JSON Patch stateful-guard answers for `sts` created in the bench's namespaces: the
/// object as the apiserver defaults it (a dry-run create where no webhook is called), reviewed
/// in-process with the embedded default policy.
async fn guard_patch(client: &kube::Client, sts: &StatefulSet) -> Vec<u8> {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let defaulted = Api::<StatefulSet>::namespaced(client.clone(), "default")
        .create(&dry_run, sts)
        .await
        .unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000000",
            "kind": {"group": "apps", "version": "v1", "kind": "StatefulSet"},
            "resource": {"group": "apps", "version": "v1", "resource": "statefulsets"},
            "name": defaulted.metadata.name,
            "namespace": "patched",
            "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": defaulted,
        }
    });
    let policies =
        stateful_guard::policy::PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap();
    let cluster = stateful_guard::cluster::Snapshot::known(vec![], vec![], vec![]);
    let reviewer = stateful_guard::admission::Reviewer {
        policies: &policies,
        cluster: &cluster,
        live: None,
        uninterpretable: stateful_guard::admission::Uninterpretable::Allow,
        statefulset_controllers: &[],
        live_claim_owners: false,
    };
    let body = serde_json::to_vec(&review).unwrap();
    let (answer, _) = reviewer
        .review(stateful_guard::engine::Phase::Mutate, &body)
        .await
        .unwrap();
    answer
        .response
        .and_then(|r| r.patch)
        .expect("stateful-guard patches the zookeeper")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1e3
}

async fn run(api: &Apiserver) {
    let client = common::apiserver::client_from(&api.kubeconfig).await;

    let certs = tempfile::tempdir().unwrap();
    let bundle = stateful_guard::certs::generate(&["127.0.0.1".to_owned()], 1, 1).unwrap();
    std::fs::write(certs.path().join("tls.crt"), &bundle.cert).unwrap();
    std::fs::write(certs.path().join("tls.key"), &bundle.key).unwrap();

    let built = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--example", "noop_webhook"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "the no-op webhook builds");
    let noop_port = free_port();
    let mut command = Command::new(target_dir().join("release/examples/noop_webhook"));
    command
        .arg(format!("127.0.0.1:{noop_port}"))
        .arg(certs.path().join("tls.crt"))
        .arg(certs.path().join("tls.key"));
    let noop = Process::start(command);
    noop.wait_for("noop webhook serving");
    let sts = zookeeper();
    // The no-op again, answering with the patch stateful-guard sends for this StatefulSet: what
    // the apiserver does with the patch (apply it, decode and validate a larger object, store
    // it), apart from the webhook that computed it.
    let patch = certs.path().join("patch.json");
    std::fs::write(&patch, guard_patch(&client, &sts).await).unwrap();
    let patched_port = free_port();
    let mut command = Command::new(target_dir().join("release/examples/noop_webhook"));
    command
        .arg(format!("127.0.0.1:{patched_port}"))
        .arg(certs.path().join("tls.crt"))
        .arg(certs.path().join("tls.key"))
        .arg(&patch);
    let patched = Process::start(command);
    patched.wait_for("noop webhook serving");
    let guard_port = free_port();
    // Admission alone: a background scan (every 10 s while StatefulSets are being created)
    // would share the two cores with the creates.
    let running = guard(api, certs.path(), guard_port, "0");

    let name = sts.metadata.name.clone().unwrap();
    for ns in NAMESPACES {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"bench": ns}}}))
                .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &pdb_for(&sts, &name))
            .await
            .unwrap();
    }
    register(&client, "noop", noop_port, &bundle.ca_cert).await;
    register(&client, "patched", patched_port, &bundle.ca_cert).await;
    register(&client, "guard", guard_port, &bundle.ca_cert).await;
    // The apiserver's webhook configuration informer, and the guard's PDB cache.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut times: [Vec<Duration>; 4] = Default::default();
    for i in 0..WARM_UP + CREATES {
        for (n, ns) in NAMESPACES.iter().enumerate() {
            let mut object = sts.clone();
            object.metadata.name = Some(format!("{name}-{i}"));
            let api = Api::<StatefulSet>::namespaced(client.clone(), ns);
            let started = Instant::now();
            let created = api.create(&PostParams::default(), &object).await;
            let took = started.elapsed();
            let created = created.unwrap_or_else(|e| panic!("create in {ns}: {e}"));
            if matches!(*ns, "guard" | "patched") && i == 0 {
                let spec = created.spec;
                assert_eq!(
                    spec.pod_management_policy.as_deref(),
                    Some("Parallel"),
                    "stateful-guard mutates what it admits"
                );
            }
            if i >= WARM_UP {
                times[n].push(took);
            }
        }
    }
    println!(
        "kube-apiserver 1.26 on loopback, {} cores; {CREATES} creates of the zookeeper StatefulSet per case, one keep-alive client, interleaved",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut medians = [0.0; 4];
    for (n, ns) in NAMESPACES.iter().enumerate() {
        times[n].sort();
        medians[n] = percentile(&times[n], 0.5);
        println!(
            "  {:<52} median {:.2} ms  p90 {:.2} ms",
            match *ns {
                "none" => "no webhook",
                "noop" => "no-op webhook (mutate + validate)",
                "patched" => "no-op webhook answering with stateful-guard's patch",
                _ => "stateful-guard (mutate + validate)",
            },
            medians[n],
            percentile(&times[n], 0.9)
        );
    }
    println!(
        "  ratio stateful-guard / no-op {:.2}x, stateful-guard / no webhook {:.2}x, no-op / no webhook {:.2}x",
        medians[3] / medians[1],
        medians[3] / medians[0],
        medians[1] / medians[0]
    );
    println!(
        "  ratio stateful-guard / the no-op with its patch {:.2}x, the no-op with the patch / the no-op {:.2}x",
        medians[3] / medians[2],
        medians[2] / medians[1]
    );
    webhook_calls(&client).await;
    let (rss, peak) = running.memory();
    let (noop_rss, noop_peak) = noop.memory();
    println!(
        "memory after the creates: stateful-guard {rss} MiB (peak {peak} MiB), no-op {noop_rss} MiB (peak {noop_peak} MiB)"
    );

    // The performance issue's scale.
    let started = Instant::now();
    let post = PostParams::default();
    futures::stream::iter(0..2_000)
        .map(|i| {
            let client = client.clone();
            let post = post.clone();
            async move {
                let ns: Namespace = serde_json::from_value(json!({
                    "metadata": {"name": format!("scale-{i:04}"), "labels": {"team": format!("t{}", i % 20)}}
                }))
                .unwrap();
                Api::<Namespace>::all(client).create(&post, &ns).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    futures::stream::iter(0..10_000)
        .map(|i| {
            let client = client.clone();
            let post = post.clone();
            let pdb = pdb_for(&sts, &format!("pdb-{i}"));
            async move {
                Api::<PodDisruptionBudget>::namespaced(client, &format!("scale-{:04}", i % 100))
                    .create(&post, &pdb)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    for i in 0..50 {
        let class: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": format!("class-{i}")},
            "provisioner": "example.com/csi",
            "parameters": {"type": "ssd"},
        }))
        .unwrap();
        Api::<StorageClass>::all(client.clone())
            .create(&post, &class)
            .await
            .unwrap();
    }
    eprintln!(
        "created 2,000 namespaces, 10,000 PDBs and 50 StorageClasses in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let fresh = guard(api, certs.path(), free_port(), "0");
    let audited = guard(api, certs.path(), free_port(), "10m");
    audited.wait_for("background audit scan completed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, peak) = running.memory();
    let (fresh_rss, fresh_peak) = fresh.memory();
    let (audited_rss, audited_peak) = audited.memory();
    let (noop_rss, _) = noop.memory();
    println!(
        "memory with 10,000 PDBs, 2,000 namespaces and 50 StorageClasses cached (and the {} StatefulSets above):",
        3 * (WARM_UP + CREATES)
    );
    println!("  stateful-guard that watched them arrive: {rss} MiB (peak {peak} MiB)");
    println!(
        "  stateful-guard started against them (initial lists): {fresh_rss} MiB (peak {fresh_peak} MiB)"
    );
    println!(
        "  the same with the background audit (its default, 10m), after its first scan: {audited_rss} MiB (peak {audited_peak} MiB)"
    );
    println!("  no-op webhook: {noop_rss} MiB");
}
