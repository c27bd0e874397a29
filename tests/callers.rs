//! Who may call what, against the real binary: with `--client-ca` the webhook port serves only
//! clients with a certificate from that CA (and `--client-names`), as the apiserver presents one
//! through its AdmissionConfiguration kubeconfig; `--metrics-listen` moves `/metrics` and
//! `/report` off the webhook port; `--probe-listen` serves kubelet's probes on a port no client
//! of the webhook port can starve.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::server::*;
use hyper::StatusCode;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client certificate for `name`, signed by the CA `(cert, key)`.
fn client_certificate(name: &str, ca: &(String, String)) -> (String, String) {
    let issuer = Issuer::from_ca_cert_pem(&ca.0, KeyPair::from_pem(&ca.1).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// One `GET /healthz` over HTTPS, presenting `client` (PEM certificate and key) if given; the
/// status, or `None` when the server refused the connection.
async fn get_with(server: &Server, path: &str, client: Option<&(String, String)>) -> Option<u16> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&server.ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.ok()?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from(server.server_name.clone()).unwrap(),
            tcp,
        )
        .await
        .ok()?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A plain-HTTP GET, as kubelet probes the probe port: the status.
async fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&out)
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// The address a server logged for one of its listeners.
fn logged_address(server: &Server, message: &str) -> SocketAddr {
    let line = server
        .log
        .wait_for(message, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no {message} in:\n{}", server.logs()));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["address"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_client_ca_only_its_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = stateful_guard::certs::generate_ca(30).unwrap();
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, &ca.0).unwrap();
    let (server, _certs, _secret) = secure_server(&[
        "--client-ca",
        ca_file.to_str().unwrap(),
        "--client-names",
        "kube-apiserver",
        "--probe-listen",
        "127.0.0.1:0",
    ]);
    let apiserver = client_certificate("kube-apiserver", &ca);
    assert_eq!(
        get_with(&server, "/healthz", Some(&apiserver)).await,
        Some(200)
    );
    // No certificate, a certificate from another CA, or another name: no answer at all.
    assert_eq!(get_with(&server, "/healthz", None).await, None);
    let stranger = client_certificate(
        "kube-apiserver",
        &stateful_guard::certs::generate_ca(30).unwrap(),
    );
    assert_eq!(get_with(&server, "/healthz", Some(&stranger)).await, None);
    let tenant = client_certificate("tenant", &ca);
    assert_eq!(get_with(&server, "/healthz", Some(&tenant)).await, None);
    // kubelet's probes, which present no certificate, use the probe port.
    let probes = logged_address(&server, "serving the health probes over HTTP");
    assert_eq!(http_get(probes, "/readyz").await, Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_report_leave_the_webhook_port_and_probes_cannot_be_starved() {
    let (server, _certs, _secret) = secure_server(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--probe-listen",
        "127.0.0.1:0",
        "--max-connections",
        "8",
    ]);
    // The webhook port no longer answers /metrics or /report.
    assert_eq!(server.get("/metrics").await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/report").await.0, StatusCode::NOT_FOUND);
    // The metrics listener does, over HTTPS; without a cluster connection to delegate the
    // decision to, to loopback clients only (the TokenReview path: server::auth's tests).
    let metrics_addr = logged_address(&server, "serving /metrics and /report");
    let (ca, name) = (server.ca.clone(), server.server_name.clone());
    let (status, body) = tokio::task::spawn_blocking(move || {
        https_get(metrics_addr, &ca, &name, "/metrics").unwrap()
    })
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("stateful_guard_memory_budget_capacity_bytes"),
        "{body}"
    );
    // Every connection of the webhook port held: the probes still answer on their own port.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(server.tls(&[b"http/1.1"]).await.unwrap());
    }
    let probes = logged_address(&server, "serving the health probes over HTTP");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_get(probes, path).await, Some(200), "{path}");
    }
    drop(held);
}

/// This machine's address on its default route, if it has one that is not loopback.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and the source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Without `--metrics-listen`, `/metrics` and `/report` stay on the webhook port, for loopback
/// clients only: any pod reaches that port, and both describe every namespace. The probes and
/// the webhooks still answer everyone.
#[tokio::test(flavor = "multi_thread")]
async fn on_the_webhook_port_metrics_and_report_are_for_loopback_clients_only() {
    let Some(ip) = non_loopback_address() else {
        eprintln!("skipped: this machine has no address but loopback to call from");
        return;
    };
    let (server, _certs, _secret) = secure_server(&["--listen", "0.0.0.0:0"]);
    assert_eq!(server.get("/metrics").await.0, StatusCode::OK, "loopback");
    let remote = SocketAddr::new(ip, server.addr.port());
    let (ca, name) = (server.ca.clone(), server.server_name.clone());
    let answers = tokio::task::spawn_blocking(move || {
        ["/metrics", "/report", "/healthz"].map(|path| {
            let (status, body) = https_get(remote, &ca, &name, path).unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    })
    .await
    .unwrap();
    for (path, (status, body)) in ["/metrics", "/report"].iter().zip(&answers) {
        assert_eq!(*status, StatusCode::FORBIDDEN, "{path} from {ip}: {body}");
        assert!(body.contains("--metrics-listen"), "says what to do: {body}");
    }
    assert_eq!(answers[2].0, StatusCode::OK, "/healthz from {ip}");
}

/// Whatever `server` answered: the status and the body as JSON.
async fn review_at(server: &Server, path: &str, body: &[u8]) -> (StatusCode, serde_json::Value) {
    let (status, body) = server.post(path, body.to_vec()).await;
    (status, serde_json::from_slice(&body).unwrap())
}

/// Whether `/mutate/<token>` gets `review` answered within 10 s (the token file is re-read
/// every 100 ms).
async fn answered_within_10s(server: &Server, token: &str, review: &[u8]) -> bool {
    for _ in 0..100 {
        if review_at(server, &format!("/mutate/{token}"), review)
            .await
            .0
            == StatusCode::OK
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// With a webhook token, a tenant who reaches the port learns nothing from a crafted review: it
/// is refused before it is read, and counted. The apiserver, calling the path its webhook
/// configuration names (with its `?timeout=`), is answered; a new token in the file takes over
/// from the old one without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_webhook_token_only_its_path_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let first = "a".repeat(20) + "first0token0123456789";
    std::fs::write(&token_file, format!("{first}\n")).unwrap();
    let (server, _certs, _secret) =
        secure_server(&["--webhook-token-file", token_file.to_str().unwrap()]);
    let review = common::review_fixture("statefulset-create.validating.json");
    let uid =
        serde_json::from_slice::<serde_json::Value>(&review).unwrap()["request"]["uid"].clone();
    for path in ["/validate", "/validate/guess", "/mutate?timeout=10s"] {
        let (status, answer) = review_at(&server, path, &review).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            answer.get("response").is_none() && answer["error"].is_string(),
            "{path}: a refusal, nothing of the review's namespace: {answer}"
        );
    }
    let (status, answer) =
        review_at(&server, &format!("/validate/{first}?timeout=10s"), &review).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["response"]["uid"], uid, "the apiserver is answered");
    let (_, metrics) = server.get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"stateful_guard_refused_total{reason="unauthenticated"} 3"#),
        "{metrics}"
    );
    // A new token: served within the reload interval, and the old one refused.
    let second = "b".repeat(20) + "second0token012345678";
    std::fs::write(&token_file, &second).unwrap();
    assert!(
        answered_within_10s(&server, &second, &review).await,
        "the new token is served: {}",
        server.logs()
    );
    let (status, _) = review_at(&server, &format!("/mutate/{first}"), &review).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the old token no longer is");
    // Replacing it without a refused review: the next token is added to the file first, taken
    // while the paths still name the current one, then the paths move and the old one goes.
    let third = "c".repeat(20) + "third0token0123456789";
    std::fs::write(&token_file, format!("{second}\n{third}\n")).unwrap();
    assert!(
        answered_within_10s(&server, &third, &review).await,
        "the next token is taken: {}",
        server.logs()
    );
    let (status, _) = review_at(&server, &format!("/mutate/{second}"), &review).await;
    assert_eq!(status, StatusCode::OK, "and the current one still is");
    // A broken file keeps the last good token, loudly.
    std::fs::write(&token_file, "short").unwrap();
    assert!(server.wait_for_log(
        "keeping the last good webhook token",
        Duration::from_secs(10)
    ));
    let (status, _) = review_at(&server, &format!("/mutate/{second}"), &review).await;
    assert_eq!(status, StatusCode::OK);
}

/// A token too short to be secret is a start-up error naming the file, before the port opens.
#[test]
fn a_weak_webhook_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "password").unwrap();
    let out = std::process::Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cluster", "off"])
        .arg("--webhook-token-file")
        .arg(&token_file)
        .env_remove("SG_POLICY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(token_file.to_str().unwrap()) && stderr.contains("32 to 253"),
        "{stderr}"
    );
}
