//! The webhook over real HTTPS: the real binary, a real rustls client that trusts the generated
//! CA and verifies the name kube-apiserver uses (`stateful-guard.stateful-guard.svc`).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_is_answered_over_one_keep_alive_connection() {
    let (server, _dir, _vol) = secure_server(&[]);
    let mut conn = server.http1().await;
    for (name, body) in review_fixtures() {
        let path = if name.contains(".validating.") {
            "/validate?timeout=5s"
        } else {
            "/mutate?timeout=5s"
        };
        let request: Value = serde_json::from_slice(&body).unwrap();
        let (status, bytes) = send_one(&mut conn, "POST", path, body).await.expect(&name);
        assert_eq!(
            status,
            StatusCode::OK,
            "{name}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let resp = decode_wire(&bytes);
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1", "{name}");
        assert_eq!(resp["kind"], "AdmissionReview", "{name}");
        assert_eq!(resp["response"]["uid"], request["request"]["uid"], "{name}");
        if resp["response"].get("patch").is_some() {
            assert_eq!(resp["response"]["patchType"], "JSONPatch", "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_is_negotiated_with_alpn() {
    let (server, _dir, _vol) = secure_server(&[]);
    let mut h2 = server.http2().await;
    let body = review_fixture("statefulset-create.mutating.json");
    let req = Request::post(format!("https://{SERVICE_NAME}/mutate?timeout=5s"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_http_errors() {
    let (server, _dir, _vol) = secure_server(&["--max-body-bytes", "1048576"]);
    let (status, body) = server.post("/mutate", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("not a JSON AdmissionReview"),
        "{err}"
    );

    let old = String::from_utf8(review_fixture("statefulset-create.mutating.json"))
        .unwrap()
        .replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1");
    let (status, body) = server.post("/validate", old.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("only admission.k8s.io/v1"));

    // Refused from its Content-Length, before anything is read: the client either reads the
    // 413 or, still writing, sees the connection reset (the kernel resets a socket closed with
    // unread data). tests/robustness.rs sends only the headers and always reads the 413.
    let mut conn = server.http1().await;
    if let Ok((status, _)) =
        send_one(&mut conn, "POST", "/mutate", vec![b' '; 2 * 1024 * 1024]).await
    {
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    let (status, _) = server.get("/mutate").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = server.post("/mutate-pods", vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("POST /mutate"));

    // The server survived all of it.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_clients_are_cut_off() {
    let (server, _dir, _vol) = secure_server(&[]);
    // A TCP client that never starts TLS.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut tcp, Duration::from_secs(5)).await,
        "silent TCP client not closed"
    );
    // A TLS client that never sends a request.
    let mut tls = server.tls(&[b"http/1.1"]).await.unwrap();
    assert!(
        closed_within(&mut tls, Duration::from_secs(5)).await,
        "idle TLS client not closed"
    );
    // A client that sends half a header and stalls.
    let mut tls = server.tls(&[b"http/1.1"]).await.unwrap();
    tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow client not cut off"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_rotation_by_symlink_swap_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    generate_certs(&dir.path().join("gen"));
    let read = |f: &str| std::fs::read(dir.path().join("gen").join(f)).unwrap();
    let mut vol = SecretVolume::new(
        &dir.path().join("secret"),
        &[("tls.crt", &read("tls.crt")), ("tls.key", &read("tls.key"))],
    );
    // The next pair comes from a new CA; the client trusts both during the overlap, as a
    // caBundle carrying the old and the new CA does.
    let bundle = stateful_guard::certs::generate(
        &stateful_guard::certs::service_names("stateful-guard", "stateful-guard"),
        10,
        10,
    )
    .unwrap();
    let mut ca = read("ca.crt");
    ca.extend_from_slice(bundle.ca_cert.as_bytes());
    let server = Arc::new(start(
        &[
            "--tls-cert",
            vol.dir.join("tls.crt").to_str().unwrap(),
            "--tls-key",
            vol.dir.join("tls.key").to_str().unwrap(),
            "--reload-interval",
            "100ms",
        ],
        ca,
        SERVICE_NAME,
    ));
    let before = served_certificate(&server).await;

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (server, ok, failed, stop) = (server.clone(), ok.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let body = review_fixture("statefulset-create.mutating.json");
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection per request: every one is a handshake on the current cert.
                let result = async {
                    let tls = server.tls(&[b"http/1.1"]).await?;
                    let (mut send, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                            .await
                            .map_err(std::io::Error::other)?;
                    tokio::spawn(conn);
                    send_one(&mut send, "POST", "/mutate?timeout=5s", body.clone())
                        .await
                        .map_err(std::io::Error::other)
                }
                .await;
                match result {
                    Ok((StatusCode::OK, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    vol.update(&[
        ("tls.crt", bundle.cert.as_bytes()),
        ("tls.key", bundle.key.as_bytes()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = served_certificate(&server).await;
    while after == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = served_certificate(&server).await;
    }
    assert_eq!(
        after,
        pem_to_der(bundle.cert.as_bytes()),
        "the new certificate is served"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A broken pair (key of another certificate) is refused; the good one keeps serving.
    let other = stateful_guard::certs::generate(&["x".into()], 1, 1).unwrap();
    vol.update(&[
        ("tls.crt", bundle.cert.as_bytes()),
        ("tls.key", other.key.as_bytes()),
    ]);
    assert!(
        server.wait_for_log("new certificate rejected", Duration::from_secs(10)),
        "{}",
        server.logs()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_certificate(&server).await,
        pem_to_der(bundle.cert.as_bytes())
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "requests flowed: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during rotation"
    );
    let (_, metrics) = server.get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("stateful_guard_certificate_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stateful_guard_certificate_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_fails_clearly_on_bad_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let out = std::process::Command::new(binary())
        .args([
            "serve",
            "--cluster",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
        ])
        .arg(&missing)
        .arg("--tls-key")
        .arg(dir.path().join("missing.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.crt"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_metrics_and_sigterm() {
    let (server, _dir, _vol) = secure_server(&["--shutdown-delay", "2s"]);
    assert_eq!(server.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(server.get("/readyz").await.0, StatusCode::OK);
    let (status, _) = server
        .post(
            "/mutate?timeout=5s",
            review_fixture("statefulset-zookeeper-create.mutating.json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = server.get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains(r#"stateful_guard_admission_requests_total{endpoint="mutate",kind="StatefulSet",operation="CREATE",decision="patched"} 1"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"stateful_guard_admission_duration_seconds_bucket{le="0.0001",endpoint="mutate"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"stateful_guard_mutations_total{rule="pod-anti-affinity",applied="true"} 1"#
        ),
        "{metrics}"
    );

    // A keep-alive connection opened before SIGTERM finishes its in-flight request.
    let mut conn = server.http1().await;
    server.terminate();
    assert!(server.wait_for_log("readiness is now false", Duration::from_secs(5)));
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("shutting down"));
    let (status, _) = send_one(
        &mut conn,
        "POST",
        "/validate",
        review_fixture("statefulset-create.validating.json"),
    )
    .await
    .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "still serving while endpoints drain"
    );
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_serves_with_a_generated_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.crt");
    let mut server = start(
        &["--generated-ca", ca_path.to_str().unwrap()],
        vec![],
        "localhost",
    );
    server.ca = std::fs::read(&ca_path).unwrap();
    assert_eq!(server.get("/healthz").await.0, StatusCode::OK);
    let (status, body) = server
        .post(
            "/mutate?timeout=5s",
            review_fixture("pvc-create-default-class-filled.mutating.json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(decode_wire(&body)["response"]["patch"].is_array());
}

#[test]
fn certs_output_checks_out_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate_certs(dir.path());
    let p = |f: &str| dir.path().join(f);
    let openssl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = openssl(&[
        "x509",
        "-in",
        p("tls.crt").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    for san in [
        "DNS:stateful-guard,",
        "DNS:stateful-guard.stateful-guard,",
        "DNS:stateful-guard.stateful-guard.svc,",
        "DNS:stateful-guard.stateful-guard.svc.cluster.local",
    ] {
        assert!(text.contains(san), "{san} missing:\n{text}");
    }
    assert!(!text.contains("IP Address"), "no IP SANs:\n{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    let key = openssl(&[
        "pkey",
        "-in",
        p("tls.key").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(key.contains("prime256v1") || key.contains("P-256"), "{key}");
    let verify = openssl(&[
        "verify",
        "-CAfile",
        p("ca.crt").to_str().unwrap(),
        p("tls.crt").to_str().unwrap(),
    ]);
    assert!(verify.contains(": OK"), "{verify}");
    let ca = openssl(&[
        "x509",
        "-in",
        p("ca.crt").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(ca.contains("CA:TRUE"), "{ca}");
    use std::os::unix::fs::PermissionsExt;
    for key in ["tls.key", "ca.key"] {
        assert_eq!(
            std::fs::metadata(p(key)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{key}"
        );
    }
    use base64::Engine as _;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap();
    assert_eq!(
        bundle,
        std::fs::read(p("ca.crt")).unwrap(),
        "printed caBundle is the CA"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_switched_live_from_audit_to_enforce_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let audit = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/audit.yaml")).unwrap();
    let mut vol = SecretVolume::new(&dir.path().join("policy"), &[("policy.yaml", &audit)]);
    let (server, _certs, _secret) = secure_server(&["--policy", vol.dir.to_str().unwrap()]);
    let server = Arc::new(server);
    let body = review_fixture("statefulset-zookeeper-create.mutating.json");
    let (_, first) = server.post("/mutate?timeout=5s", body.clone()).await;
    assert!(
        decode_wire(&first)["response"].get("patch").is_none(),
        "audit mode: no patch"
    );

    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (server, failed, stop, body) =
            (server.clone(), failed.clone(), stop.clone(), body.clone());
        tokio::spawn(async move {
            let mut conn = server.http1().await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                match send_one(&mut conn, "POST", "/mutate?timeout=5s", body.clone()).await {
                    Ok((StatusCode::OK, _)) => n += 1,
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            n
        })
    };
    let enforce = String::from_utf8(audit)
        .unwrap()
        .replace("mode: audit", "mode: enforce");
    vol.update(&[("policy.yaml", enforce.as_bytes())]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, resp) = server.post("/mutate?timeout=5s", body.clone()).await;
        if decode_wire(&resp)["response"].get("patch").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the enforce policy was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A typo: rejected with file, line and field; enforcing continues; still ready.
    vol.update(&[(
        "policy.yaml",
        enforce
            .replace("mode: enforce", "mode: enforcing")
            .as_bytes(),
    )]);
    assert!(server.wait_for_log("policy rejected", Duration::from_secs(10)));
    let logs = server.logs();
    assert!(
        logs.contains("policy.yaml: document 1 (line ")
            && logs.contains("): spec.mode: unknown variant `enforcing`"),
        "{logs}"
    );
    let (_, resp) = server.post("/mutate?timeout=5s", body.clone()).await;
    assert!(decode_wire(&resp)["response"].get("patch").is_some());
    assert_eq!(server.get("/readyz").await.0, StatusCode::OK);
    stop.store(true, Ordering::Relaxed);
    let served = worker.await.unwrap();
    assert!(served > 10, "{served}");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[test]
fn startup_fails_clearly_on_a_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, "apiVersion: stateful-guard.io/v1alpha1\nkind: Policy\nmetadata: {name: x}\nspec:\n  rules:\n    require-pdb: {minReplicas: two}\n").unwrap();
    let out = std::process::Command::new(binary())
        .args([
            "serve",
            "--cluster",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--policy",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "policy.yaml: document 1 (line 6): spec.rules.require-pdb.minReplicas: invalid type"
        ),
        "{stderr}"
    );
}
