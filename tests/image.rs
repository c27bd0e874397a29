//! The image: the binary that the Dockerfile's build stage makes (scripts/image-binary runs that
//! stage as written; scripts/test passes the result in SG_IMAGE_BINARY), checked against the
//! Dockerfile's runtime stage and against the Deployments that deploy/ renders: the libraries
//! and glibc it needs, its user and port, and a run in a sandbox built from the pod spec
//! (its user, read-only root, no capabilities, its volumes, args and env, PID 1).
mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{self, Log, SecretVolume, generate_certs, pem_to_der};
use common::unavailable::Unavailable;
use common::{image_env, kustomize, of_kind, runtime_stage};
use hyper::StatusCode;
use serde_json::Value;

/// The runtime image and what it provides to a dynamically linked binary: Debian 12's glibc
/// (2.36) and libgcc. Changing the FROM line means changing this table.
const RUNTIME_IMAGE: &str = "gcr.io/distroless/cc-debian12:nonroot";
const RUNTIME_GLIBC: (u32, u32) = (2, 36);
const RUNTIME_LIBRARIES: [&str; 8] = [
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

fn image_binary() -> PathBuf {
    let path = std::env::var_os("SG_IMAGE_BINARY")
        .map(PathBuf::from)
        .expect(
            "SG_IMAGE_BINARY is not set: run the tests with scripts/test, which builds the image's \
         binary by running the Dockerfile's build stage (scripts/image-binary)",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

fn instruction(stage: &[(String, String)], keyword: &str) -> String {
    stage
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .unwrap_or_else(|| panic!("the Dockerfile's runtime stage has no {keyword}"))
        .1
        .clone()
}

fn readelf(args: &[&str], binary: &Path) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(binary)
        .output()
        .expect("readelf (binutils) is needed: scripts/test installs it");
    assert!(out.status.success(), "readelf {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_binary_needs_only_what_the_runtime_image_has() {
    let stage = runtime_stage();
    assert_eq!(
        instruction(&stage, "FROM"),
        RUNTIME_IMAGE,
        "the runtime image changed: update what this test knows it provides"
    );
    let binary = image_binary();

    let dynamic = readelf(&["--dynamic", "--wide"], &binary);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(!needed.is_empty(), "no NEEDED entries read:\n{dynamic}");
    for library in &needed {
        assert!(
            RUNTIME_LIBRARIES.contains(library),
            "the binary needs {library}, which {RUNTIME_IMAGE} does not have (needs: {needed:?})"
        );
    }

    let symbols = readelf(&["--dyn-syms", "--wide"], &binary);
    let newest = symbols
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let version: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("no GLIBC symbol versions read");
    assert!(
        newest <= RUNTIME_GLIBC,
        "the binary needs glibc {}.{}, {RUNTIME_IMAGE} has {}.{}",
        newest.0,
        newest.1,
        RUNTIME_GLIBC.0,
        RUNTIME_GLIBC.1
    );

    let headers = readelf(&["--program-headers", "--wide"], &binary);
    let interpreter = headers
        .split("[Requesting program interpreter: ")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("a dynamically linked binary names its interpreter");
    let name = interpreter.rsplit('/').next().unwrap();
    assert!(
        RUNTIME_LIBRARIES.contains(&name),
        "interpreter {interpreter}"
    );
}

#[test]
fn the_image_and_the_deployment_agree() {
    let stage = runtime_stage();
    let objects = kustomize("deploy/base");
    let deploy = of_kind(&objects, "Deployment")[0];
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // runAsNonRoot can only be checked by kubelet against a numeric USER.
    let user = instruction(&stage, "USER");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let (uid, gid): (i64, i64) = (uid.parse().unwrap(), gid.parse().unwrap());
    assert_ne!(uid, 0);
    assert_eq!(pod["securityContext"]["runAsUser"], uid);
    assert_eq!(pod["securityContext"]["runAsGroup"], gid);

    // The ENTRYPOINT is the binary the build stage made; the Deployment gives only args.
    let copy = instruction(&stage, "COPY");
    let entrypoint: Vec<String> = serde_json::from_str(&instruction(&stage, "ENTRYPOINT")).unwrap();
    assert_eq!(
        Some(entrypoint[0].as_str()),
        copy.split_whitespace().last(),
        "ENTRYPOINT is not the copied binary"
    );
    assert!(
        container["command"].is_null(),
        "the Deployment overrides the ENTRYPOINT"
    );
    assert_eq!(container["args"][0], "serve");

    let exposed: i64 = instruction(&stage, "EXPOSE").parse().unwrap();
    assert_eq!(container["ports"][0]["containerPort"], exposed);

    // The manifests deploy the version being built.
    let image = container["image"].as_str().unwrap();
    assert_eq!(
        image.rsplit_once(':').map(|(_, tag)| tag),
        Some(env!("CARGO_PKG_VERSION")),
        "deploy/ names {image}, the crate is version {}",
        env!("CARGO_PKG_VERSION")
    );
}

/// The image binary running as the rendered Deployment's container would: under bubblewrap,
/// with the pod's user and group, a read-only root, no capabilities, its own PID namespace as
/// PID 1, the container's args and env, emptyDir volumes as fresh tmpfs mounts, Secret volumes
/// bound read-only, and kubelet's in-cluster environment pointing at an [`Unavailable`] apiserver. Only the
/// listen port is changed, so tests can run side by side.
struct Pod {
    child: Child,
    /// The server's PID outside the sandbox.
    pid: u32,
    addr: SocketAddr,
    /// Each named container port, as it listens here.
    ports: std::collections::HashMap<String, u16>,
    log: Log,
    _dir: tempfile::TempDir,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pod {
    fn start(deploy: &Value, secrets: &[(&str, &SecretVolume)], apiserver: &Unavailable) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let namespace = deploy["metadata"]["namespace"].as_str().unwrap();
        let pod = &deploy["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let context = &container["securityContext"];
        assert_eq!(context["readOnlyRootFilesystem"], true);
        assert_eq!(context["capabilities"]["drop"][0], "ALL");

        // A service account as kubelet mounts it, for the recorder as the apiserver.
        let sa = dir.path().join("serviceaccount");
        std::fs::create_dir(&sa).unwrap();
        std::fs::write(sa.join("ca.crt"), &apiserver.ca).unwrap();
        std::fs::write(sa.join("token"), "sandbox-token").unwrap();
        std::fs::write(sa.join("namespace"), namespace).unwrap();
        let run = std::fs::canonicalize("/var/run").unwrap();

        let mut bwrap = Command::new("bwrap");
        bwrap
            .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
            .args(["--tmpfs".as_ref(), run.as_os_str()])
            .arg("--ro-bind")
            .arg(&sa)
            .arg(run.join("secrets/kubernetes.io/serviceaccount"))
            .args(["--unshare-user", "--unshare-pid", "--as-pid-1"])
            .args(["--die-with-parent", "--new-session", "--info-fd", "1"])
            .arg("--uid")
            .arg(pod["securityContext"]["runAsUser"].to_string())
            .arg("--gid")
            .arg(pod["securityContext"]["runAsGroup"].to_string())
            .args(["--cap-drop", "ALL", "--clearenv"])
            .args(["--setenv", "KUBERNETES_SERVICE_HOST", "127.0.0.1"])
            .args(["--setenv", "KUBERNETES_SERVICE_PORT"])
            .arg(apiserver.addr.port().to_string());
        // The image's environment first; the container's env overrides it, as in a pod.
        for (name, value) in image_env() {
            bwrap.args(["--setenv", &name, &value]);
        }
        for env in container["env"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().unwrap();
            let value = match (&env["value"], &env["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => v.as_str(),
                (_, Value::String(f)) if f == "metadata.namespace" => namespace,
                other => panic!("env {name}: unsupported source {other:?}"),
            };
            bwrap.args(["--setenv", name, value]);
        }
        let volumes = pod["volumes"].as_array().unwrap();
        for mount in container["volumeMounts"].as_array().unwrap() {
            let path = mount["mountPath"].as_str().unwrap();
            let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
            if volume["emptyDir"].is_object() {
                bwrap.args(["--perms", "0777", "--tmpfs", path]);
            } else if let Some(name) = volume["secret"]["secretName"].as_str() {
                let (_, secret) = secrets
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("no Secret {name} given"));
                bwrap.arg("--ro-bind").arg(&secret.dir).arg(path);
            } else {
                panic!("volume {volume}: unsupported");
            }
        }

        let port = free_port();
        // Each listener's declared port (by its flag), and the free port it gets here.
        let declared: std::collections::HashMap<i64, String> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["containerPort"].as_i64().unwrap(),
                    p["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut ports = std::collections::HashMap::new();
        bwrap.arg("--").arg(image_binary());
        for arg in container["args"].as_array().unwrap() {
            let arg = arg.as_str().unwrap();
            let listener = ["--listen=", "--probe-listen=", "--metrics-listen="]
                .into_iter()
                .find_map(|flag| arg.strip_prefix(flag).map(|listen| (flag, listen)));
            match listener {
                Some((flag, listen)) => {
                    let address: SocketAddr = listen.parse().unwrap();
                    let name = declared
                        .get(&i64::from(address.port()))
                        .unwrap_or_else(|| panic!("{arg}: no containerPort declares its port"));
                    assert!(
                        address.ip().is_unspecified(),
                        "kubelet probes the pod IP: {listen}"
                    );
                    let here = if flag == "--listen=" {
                        port
                    } else {
                        free_port()
                    };
                    ports.insert(name.clone(), here);
                    bwrap.arg(format!("{flag}0.0.0.0:{here}"));
                }
                None => {
                    bwrap.arg(arg);
                }
            }
        }

        let mut child = bwrap
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bwrap (bubblewrap) is needed: scripts/test installs it");
        let mut info = String::new();
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        while !info.contains('}') && stdout.read(&mut byte).unwrap() == 1 {
            info.push(byte[0] as char);
        }
        let info: Value = serde_json::from_str(&info)
            .unwrap_or_else(|e| panic!("bwrap --info-fd gave {info:?}: {e}"));
        let pid = info["child-pid"].as_u64().unwrap() as u32;

        let log = Log::capture(child.stderr.take().unwrap());
        let pod = Pod {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ports,
            log,
            _dir: dir,
        };
        assert!(
            pod.log
                .wait_for("\"serving HTTPS\"", Duration::from_secs(30))
                .is_some(),
            "the pod did not start serving:\n{}",
            pod.logs()
        );
        pod
    }

    fn logs(&self) -> String {
        self.log.text()
    }

    /// kubelet's probe of the container's `probe` (liveness or readiness), on the port and with
    /// the scheme it names.
    async fn probe(&self, container: &Value, probe: &str) -> (StatusCode, String) {
        let get = &container[probe]["httpGet"];
        let named = get["port"].as_str().unwrap();
        let port = *self
            .ports
            .get(named)
            .unwrap_or_else(|| panic!("{probe}: no listener for port {named}"));
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let path = get["path"].as_str().unwrap();
        let (status, body) = match get["scheme"].as_str() {
            Some("HTTPS") => {
                let (status, body, _) = server::probe(address, path)
                    .await
                    .unwrap_or_else(|e| panic!("{probe}: {e}\n{}", self.logs()));
                (status, body.to_vec())
            }
            _ => http_get(address, path)
                .await
                .unwrap_or_else(|e| panic!("{probe}: {e}\n{}", self.logs())),
        };
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The certificate the webhook port serves.
    async fn served_certificate(&self) -> Vec<u8> {
        server::probe(self.addr, "/healthz")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
            .2
    }

    /// SIGTERM, as kubelet sends it after the preStop hook; the exit status, or None if the
    /// process outlived `limit`.
    fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// Waits until requests for every `(verb, resource)` in `expected` have come; returns all.
fn wait_for_requests(
    apiserver: &Unavailable,
    expected: &[(&str, &str)],
    timeout: Duration,
) -> Vec<Access> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen: Vec<Access> = apiserver
            .requests()
            .iter()
            .map(|(method, uri)| Access::of(method, uri))
            .collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|(verb, resource)| {
                !seen
                    .iter()
                    .any(|a| a.verb == *verb && a.resource == *resource)
            })
            .collect();
        if missing.is_empty() {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "no request for {missing:?}; seen: {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A request to the API, in RBAC's terms.
#[derive(Debug)]
struct Access {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Access {
    fn of(method: &str, uri: &str) -> Access {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("not an API path: {uri}"),
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            rest => (None, rest),
        };
        let (resource, name) = match rest {
            [resource] => (resource.to_string(), None),
            [resource, name] => (resource.to_string(), Some(name.to_string())),
            _ => panic!("unexpected API path: {uri}"),
        };
        let watch = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let verb = match (method, &name) {
            ("GET", Some(_)) => "get",
            ("GET", None) if watch => "watch",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            _ => panic!("unexpected method {method} {uri}"),
        };
        Access {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource,
            namespace,
            name,
        }
    }

    /// Whether the rendered ClusterRoles, or the Roles of the request's namespace, allow it.
    fn allowed_by(&self, objects: &[Value]) -> bool {
        let roles = of_kind(objects, "ClusterRole").into_iter().chain(
            of_kind(objects, "Role")
                .into_iter()
                .filter(|r| self.namespace.as_deref() == r["metadata"]["namespace"].as_str()),
        );
        let has =
            |list: &Value, item: &str| list.as_array().is_some_and(|l| l.iter().any(|v| v == item));
        roles
            .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
            .any(|rule| {
                has(&rule["apiGroups"], &self.group)
                    && has(&rule["resources"], &self.resource)
                    && has(&rule["verbs"], &self.verb)
                    && match (&rule["resourceNames"], &self.name) {
                        (Value::Null, _) => true,
                        (names, Some(name)) => has(names, name),
                        (_, None) => false,
                    }
            })
    }
}

/// Every request the pod made is allowed by the RBAC of the same rendered target.
fn assert_rbac_allows(requests: &[Access], objects: &[Value]) {
    let denied: Vec<_> = requests.iter().filter(|a| !a.allowed_by(objects)).collect();
    assert!(
        denied.is_empty(),
        "requests the RBAC in deploy/ would deny (403 in a cluster): {denied:#?}"
    );
}

fn seconds(arg: &str, args: &Value) -> u64 {
    let value = args
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix(&format!("--{arg}=")))
        .unwrap_or_else(|| panic!("no --{arg}"));
    value.strip_suffix('s').unwrap().parse().unwrap()
}

/// preStop, the shutdown delay and the grace period all fit in terminationGracePeriodSeconds,
/// and the server, as PID 1, exits by itself after SIGTERM, with status 0, within that time.
fn assert_clean_shutdown(pod: &mut Pod, deploy: &Value) {
    let spec = &deploy["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let budget = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let delay = seconds("shutdown-delay", &container["args"]);
    let grace = seconds("shutdown-grace", &container["args"]);
    assert!(
        pre_stop + delay + grace <= budget,
        "preStop {pre_stop}s + delay {delay}s + grace {grace}s > terminationGracePeriodSeconds {budget}"
    );
    let status = pod.terminate(Duration::from_secs(budget - pre_stop));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "after SIGTERM: {status:?}\n{}",
        pod.logs()
    );
    assert!(pod.logs().contains("shutting down: readiness is now false"));
}

fn subject_alt_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

/// The base: with the apiserver unavailable at start, the pod answers liveness at once on a
/// provisional certificate for its Service (kubelet does not restart it) and stays unready
/// (the apiserver sends it nothing) until the certificate, the policy and the caches come;
/// every request it makes meanwhile is one its RBAC allows.
#[tokio::test(flavor = "multi_thread")]
async fn the_base_pod_is_alive_and_unready_while_the_apiserver_is_unavailable() {
    let objects = kustomize("deploy/base");
    let deploy = of_kind(&objects, "Deployment")[0];
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let apiserver = Unavailable::start().await;
    let mut pod = Pod::start(deploy, &[], &apiserver);

    let (status, body) = pod.probe(container, "livenessProbe").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names = subject_alt_names(&pod.served_certificate().await);
    assert!(
        names
            .iter()
            .any(|n| n.contains("stateful-guard.stateful-guard.svc")),
        "{names:?}"
    );
    let (status, body) = pod.probe(container, "readinessProbe").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    for reason in [
        "serving certificate not bootstrapped yet",
        "no policy loaded",
        "cluster caches not synced",
    ] {
        assert!(body.contains(reason), "{body}");
    }
    let requests = wait_for_requests(
        &apiserver,
        &[
            ("get", "secrets"),
            ("list", "poddisruptionbudgets"),
            ("list", "storageclasses"),
            ("list", "namespaces"),
            ("list", "priorityclasses"),
            ("list", "configmaps"),
        ],
        Duration::from_secs(15),
    );
    assert_rbac_allows(&requests, &objects);
    assert_clean_shutdown(&mut pod, deploy);
}

/// cert-manager's overlay: the certificate from the mounted Secret is served from the start,
/// and the pod's requests fit that overlay's narrower RBAC (no Secrets).
#[tokio::test(flavor = "multi_thread")]
async fn the_cert_manager_pod_serves_the_mounted_certificate() {
    let objects = kustomize("deploy/overlays/cert-manager");
    let deploy = of_kind(&objects, "Deployment")[0];
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let certs = tempfile::tempdir().unwrap();
    generate_certs(certs.path());
    let read = |name: &str| std::fs::read(certs.path().join(name)).unwrap();
    let (crt, key, ca) = (read("tls.crt"), read("tls.key"), read("ca.crt"));
    let secret = SecretVolume::new(
        &certs.path().join("volume"),
        &[("tls.crt", &crt), ("tls.key", &key), ("ca.crt", &ca)],
    );
    let apiserver = Unavailable::start().await;
    let mut pod = Pod::start(deploy, &[("stateful-guard-tls", &secret)], &apiserver);

    let (status, body) = pod.probe(container, "livenessProbe").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pod.served_certificate().await, pem_to_der(&crt));
    let (status, body) = pod.probe(container, "readinessProbe").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.contains("certificate"), "{body}");
    assert!(body.contains("no policy loaded"), "{body}");
    let requests = wait_for_requests(
        &apiserver,
        &[("list", "poddisruptionbudgets"), ("list", "configmaps")],
        Duration::from_secs(15),
    );
    assert!(
        !requests.iter().any(|a| a.resource == "secrets"),
        "with cert-manager, the pod does not touch Secrets: {requests:#?}"
    );
    assert_rbac_allows(&requests, &objects);
    assert_clean_shutdown(&mut pod, deploy);
}

/// A plain-HTTP GET, as kubelet sends an `httpGet` probe with `scheme: HTTP`.
async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(StatusCode, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((
        StatusCode::from_u16(status).unwrap(),
        body.as_bytes().to_vec(),
    ))
}
