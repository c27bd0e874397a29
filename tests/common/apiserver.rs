//! A real kube-apiserver for integration tests, the way controller-runtime's envtest does it:
//! real etcd plus a real kube-apiserver on loopback, no kubelet and no controllers. The
//! apiserver is the oracle for what is accepted, what is immutable and what RBAC grants.
//!
//! Binaries: `SG_TEST_KUBE_APISERVER` and `SG_TEST_ETCD` (paths) first; otherwise `etcd` /
//! `kube-apiserver` on PATH. No package registry ships kube-apiserver and builds are never
//! committed, so when none is found the tests say so in one line and pass, unless
//! `SG_REQUIRE_APISERVER=1`, where a missing binary fails them. The harness works with any
//! kube-apiserver from 1.26 to 1.34: what differs between versions (Service routing by
//! EndpointSlices from 1.33, the chart's version-gated fields) is read from the server.
#![allow(dead_code)]
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::server::Log;
use super::tool;

const ADMIN_TOKEN: &str = "stateful-guard-test-admin-token";
/// The same length as 127.0.0.1, so a byte substitution in etcd keeps the protobuf valid.
const PLACEHOLDER_IP: &str = "192.0.2.1";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// kube-apiserver and etcd, or why they are not available.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let apiserver = match std::env::var_os("SG_TEST_KUBE_APISERVER") {
        Some(p) => PathBuf::from(p),
        None => on_path("kube-apiserver").ok_or_else(|| {
            "no kube-apiserver (set SG_TEST_KUBE_APISERVER, or put it on PATH)".to_owned()
        })?,
    };
    let etcd = match std::env::var_os("SG_TEST_ETCD") {
        Some(p) => PathBuf::from(p),
        None => on_path("etcd").ok_or_else(|| {
            "no etcd (set SG_TEST_ETCD, or install Debian's etcd-server)".to_owned()
        })?,
    };
    Ok((apiserver, etcd))
}

/// The binaries, or `None` after saying in one line why the tests are skipped (a failure when
/// `SG_REQUIRE_APISERVER=1`).
pub fn available() -> Option<(PathBuf, PathBuf)> {
    match binaries() {
        Ok(found) => Some(found),
        Err(why) if std::env::var_os("SG_REQUIRE_APISERVER").is_some_and(|v| v == "1") => {
            panic!("SG_REQUIRE_APISERVER=1 but {why}")
        }
        Err(why) => {
            skipped(format_args!(
                "the real-apiserver tests need kube-apiserver and etcd: {why}"
            ));
            None
        }
    }
}

/// Says in one line what was skipped and why. Written to stderr itself: what `eprintln!` prints
/// in a test, cargo test captures and hides when the test passes, and a skip must show.
fn skipped(why: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// A running etcd and kube-apiserver; both are stopped on drop, whatever the test's outcome.
pub struct Apiserver {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    etcd_port: u16,
    etcd_prefix: String,
    etcd: Child,
    apiserver: Child,
    pub log: Log,
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Apiserver {
    pub fn start(apiserver: &Path, etcd: &Path) -> Apiserver {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Serving certificate for 127.0.0.1, and the service-account key pair.
        let bundle = stateful_guard::certs::generate(&["127.0.0.1".to_owned()], 1, 1).unwrap();
        std::fs::write(d.join("ca.crt"), &bundle.ca_cert).unwrap();
        std::fs::write(d.join("serving.crt"), &bundle.cert).unwrap();
        std::fs::write(d.join("serving.key"), &bundle.key).unwrap();
        openssl(d, &["genrsa", "-out", "sa.key", "2048"]);
        openssl(d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_child = Command::new(etcd)
            .args(["--data-dir"])
            .arg(d.join("etcd"))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .args(["--name", "default", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        let port = free_port();
        let prefix = format!("/sg-{}", std::process::id());
        let mut apiserver_child = Command::new(apiserver)
            .env("NO_PROXY", "*")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .arg(format!("--etcd-prefix={prefix}"))
            .arg(format!("--tls-cert-file={}", d.join("serving.crt").display()))
            .arg(format!("--tls-private-key-file={}", d.join("serving.key").display()))
            .arg(format!("--client-ca-file={}", d.join("ca.crt").display()))
            .arg(format!("--token-auth-file={}", d.join("tokens.csv").display()))
            .arg(format!("--service-account-key-file={}", d.join("sa.pub").display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ))
            .args([
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,StorageObjectInUseProtection,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota",
                "--endpoint-reconciler-type=none",
                "--enable-aggregator-routing=true",
                "--profiling=false",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kube-apiserver starts");
        let log = Log::capture(apiserver_child.stderr.take().unwrap());
        let kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, port, &bundle.ca_cert, ADMIN_TOKEN);
        let server = Apiserver {
            dir,
            port,
            kubeconfig,
            etcd_port: client_port,
            etcd_prefix: prefix,
            etcd: etcd_child,
            apiserver: apiserver_child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = server.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 90 s:\n{}",
                server.log.text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!(
            "kube-apiserver ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        server
    }

    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).unwrap()
    }

    /// kubectl with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None)
    }

    /// kubectl with the admin kubeconfig and `stdin`.
    pub fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(tool("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("NO_PROXY", "*")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// An object as JSON.
    pub fn get(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&all, None)).unwrap()
    }

    /// Creates the Endpoints and the EndpointSlice of Service `namespace/name` (no endpoints
    /// controllers here) and points them at a free loopback port, before anything uses them:
    /// the port the webhook is to listen on. Up to 1.32 the apiserver routes a webhook's
    /// Service by its Endpoints, from 1.33 by its EndpointSlices; both exist on every version
    /// the harness supports, so both are written.
    pub fn route_service_to_loopback(&self, namespace: &str, name: &str) -> u16 {
        let port = free_port();
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": PLACEHOLDER_IP}], "ports": [{"name": "https", "port": port}]}]
        });
        self.ok(&["create", "-f", "-"], Some(&endpoints.to_string()));
        self.point_at_loopback(&format!(
            "{}/services/endpoints/{namespace}/{name}",
            self.etcd_prefix
        ));
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": name, "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name}
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [PLACEHOLDER_IP], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
        });
        self.ok(&["create", "-f", "-"], Some(&slice.to_string()));
        self.point_at_loopback(&format!(
            "{}/endpointslices/{namespace}/{name}",
            self.etcd_prefix
        ));
        port
    }

    /// The server's minor version (`34` for 1.34.9).
    pub fn minor_version(&self) -> u32 {
        let version: Value = serde_json::from_str(&self.ok(&["get", "--raw", "/version"], None))
            .expect("/version is JSON");
        version["minor"]
            .as_str()
            .and_then(|m| m.trim_end_matches('+').parse().ok())
            .unwrap_or_else(|| panic!("no minor version in {version}"))
    }

    /// Rewrites the placeholder address of a stored Endpoints or EndpointSlice in etcd to
    /// 127.0.0.1: the API refuses loopback addresses, etcd does not, and with aggregator
    /// routing the apiserver dials them directly. Same length, so the protobuf stays valid.
    fn point_at_loopback(&self, key: &str) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let range = self.etcd_post("/v3/kv/range", json!({"key": b64.encode(key)}));
        let value = range["kvs"][0]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in etcd: {range}"));
        let mut bytes = b64.decode(value).unwrap();
        let at: Vec<usize> = bytes
            .windows(PLACEHOLDER_IP.len())
            .enumerate()
            .filter(|(_, w)| *w == PLACEHOLDER_IP.as_bytes())
            .map(|(i, _)| i)
            .collect();
        assert!(!at.is_empty(), "the placeholder address is in {key}");
        for i in at {
            bytes[i..i + PLACEHOLDER_IP.len()].copy_from_slice(b"127.0.0.1");
        }
        self.etcd_post(
            "/v3/kv/put",
            json!({"key": b64.encode(key), "value": b64.encode(&bytes)}),
        );
    }

    fn etcd_post(&self, path: &str, body: Value) -> Value {
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, urllib.request; \
                 r = urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST')); \
                 sys.stdout.write(r.read().decode())",
            )
            .arg(format!("http://127.0.0.1:{}{path}", self.etcd_port))
            .arg(body.to_string())
            .env("NO_PROXY", "*")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcd {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A token for a ServiceAccount (TokenRequest), so a process runs with exactly its RBAC.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str, file: &Path) {
        let token = self.ok(
            &["create", "token", name, "-n", namespace, "--duration=2h"],
            None,
        );
        write_kubeconfig(
            file,
            self.port,
            &String::from_utf8(self.ca()).unwrap(),
            token.trim(),
        );
    }
}

/// kube-controller-manager with only the StatefulSet and ServiceAccount controllers, each
/// calling the API as its own ServiceAccount, as in most clusters. Stopped on drop.
pub struct ControllerManager(Child);

impl Drop for ControllerManager {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Apiserver {
    /// Starts kube-controller-manager when its binary is found (`SG_TEST_KUBE_CONTROLLER_MANAGER`,
    /// or on PATH); `None` after saying why not.
    pub fn controller_manager(&self) -> Option<ControllerManager> {
        let binary = match std::env::var_os("SG_TEST_KUBE_CONTROLLER_MANAGER") {
            Some(p) => PathBuf::from(p),
            None => match on_path("kube-controller-manager") {
                Some(p) => p,
                None => {
                    skipped(format_args!(
                        "no kube-controller-manager (set SG_TEST_KUBE_CONTROLLER_MANAGER)"
                    ));
                    return None;
                }
            },
        };
        let d = self.dir.path();
        let child = Command::new(binary)
            .env("NO_PROXY", "*")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args([
                "--controllers=statefulset,serviceaccount",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
            ])
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!(
                "--service-account-private-key-file={}",
                d.join("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", d.join("ca.crt").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kube-controller-manager starts");
        Some(ControllerManager(child))
    }
}

/// A kube client that talks as `kubeconfig` says (the admin's, a ServiceAccount's).
pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

pub fn write_kubeconfig(file: &Path, port: u16, ca_pem: &str, token: &str) {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    std::fs::write(
        file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n"
        ),
    )
    .unwrap();
}

/// The webhook process as `deploy/base` runs it, talking to the apiserver as its
/// ServiceAccount.
pub struct Webhook {
    pub child: Child,
    pub log: Log,
    pub port: u16,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    /// Starts `serve` with the rendered Deployment's arguments (listening on loopback `port`
    /// instead of 0.0.0.0:8443, its emptyDir for certificates at `cert_dir`), `POD_NAMESPACE`,
    /// and `kubeconfig`.
    pub fn start(args: &[String], port: u16, kubeconfig: &Path, cert_dir: &Path) -> Webhook {
        let binary = std::env::var_os("SG_IMAGE_BINARY")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stateful-guard")));
        // The Deployment's arguments, on loopback: the webhook port given, the probe port any
        // free one, and /metrics and /report kept on the webhook port (the suites read them
        // there; the metrics listener's own checks are tests/callers.rs and server::auth's).
        let args: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with("--metrics-listen="))
            .map(|a| {
                if a.starts_with("--listen=") {
                    format!("--listen=127.0.0.1:{port}")
                } else if a.starts_with("--probe-listen=") {
                    "--probe-listen=127.0.0.1:0".to_owned()
                } else if a.starts_with("--shutdown-delay=") {
                    "--shutdown-delay=0s".to_owned()
                } else {
                    a.clone()
                }
            })
            .collect();
        let mut child = Command::new(binary)
            .args(&args)
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .env("POD_NAMESPACE", "stateful-guard")
            .env("KUBECONFIG", kubeconfig)
            .env("NO_PROXY", "*")
            .env_remove("SG_POLICY")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::capture(child.stderr.take().unwrap());
        Webhook { child, log, port }
    }
}

/// A TCP relay to the apiserver on `port` that holds back every chunk the apiserver sends by
/// `delay`: a slow network, nothing of the API emulated (TLS passes through untouched). Its
/// port; it relays until the test process ends.
pub fn slow_relay(port: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let copy = |mut from: std::net::TcpStream, mut to: std::net::TcpStream, slow: bool| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut from, &mut buf) {
                        if slow {
                            std::thread::sleep(delay);
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            copy(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                false,
            );
            copy(server, client, true);
        }
    });
    relay
}

impl Apiserver {
    /// A copy of the admin kubeconfig that reaches the apiserver through [`slow_relay`].
    pub fn slow_kubeconfig(&self, delay: Duration) -> PathBuf {
        let relay = slow_relay(self.port, delay);
        let file = self.dir.path().join(format!("slow-{relay}.kubeconfig"));
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let from = format!("127.0.0.1:{}", self.port);
        assert!(text.contains(&from), "{text}");
        std::fs::write(&file, text.replace(&from, &format!("127.0.0.1:{relay}"))).unwrap();
        file
    }
}

/// Polls `check` every 250 ms until it holds; fails the test, naming `what`, after `secs`.
pub fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
