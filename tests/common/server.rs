//! Runs the real `stateful-guard` binary and talks to it with a real rustls client.
#![allow(dead_code)]
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const SERVICE_NAME: &str = "stateful-guard.stateful-guard.svc";

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_stateful-guard")
}

/// `stateful-guard certs` into `dir` (ca.crt, ca.key, tls.crt, tls.key).
pub fn generate_certs(dir: &Path) -> std::process::Output {
    let out = Command::new(binary())
        .args([
            "certs",
            "--service",
            "stateful-guard",
            "--namespace",
            "stateful-guard",
            "--out",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A directory laid out as kubelet lays out a Secret volume: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<timestamp>`, swapped atomically on update.
pub struct SecretVolume {
    pub dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    pub fn new(dir: &Path, files: &[(&str, &[u8])]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut vol = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        vol.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        vol
    }

    /// Writes a new timestamped directory and swaps `..data` to it with one rename.
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let stamp = format!(
            "..2026_11_21_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        let target = self.dir.join(&stamp);
        std::fs::create_dir(&target).unwrap();
        for (name, content) in files {
            std::fs::write(target.join(name), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// The lines a child process writes to stderr, collected as they come by a thread.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn capture(stderr: ChildStderr) -> Log {
        let log = Log::default();
        let lines = log.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        log
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// [`Self::wait_for`], failing the test with `what` and the whole log when it times out.
    pub fn expect(&self, needle: &str, timeout: Duration, what: &str) -> String {
        self.wait_for(needle, timeout).unwrap_or_else(|| {
            panic!(
                "{what}: no {needle:?} in the log within {timeout:?}:\n{}",
                self.text()
            )
        })
    }

    /// Waits until `n` lines contain `needle` (lines reach the log within tens of
    /// milliseconds: the server writes them in batches).
    pub fn wait_for_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        self.poll(timeout, |lines| {
            (lines.iter().filter(|l| l.contains(needle)).count() >= n).then_some(())
        })
        .is_some()
    }

    /// Waits until a line contains `needle`; returns that line.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.poll(timeout, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Looks at the lines every 20 ms until `found` finds something, for at most `timeout`.
    fn poll<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = found(&self.0.lock().unwrap()) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub ca: Vec<u8>,
    pub server_name: String,
    pub log: Log,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server on certificates from `stateful-guard certs`, mounted like a Secret volume.
pub fn secure_server(extra: &[&str]) -> (Server, tempfile::TempDir, SecretVolume) {
    let dir = tempfile::tempdir().unwrap();
    generate_certs(&dir.path().join("gen"));
    let read = |f: &str| std::fs::read(dir.path().join("gen").join(f)).unwrap();
    let vol = SecretVolume::new(
        &dir.path().join("secret"),
        &[("tls.crt", &read("tls.crt")), ("tls.key", &read("tls.key"))],
    );
    let cert = vol.dir.join("tls.crt");
    let key = vol.dir.join("tls.key");
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--reload-interval",
        "100ms",
        "--header-read-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    let server = start(&args, read("ca.crt"), SERVICE_NAME);
    (server, dir, vol)
}

/// Starts `stateful-guard serve --listen 127.0.0.1:0 ...` and waits until it serves.
pub fn start(args: &[&str], ca: Vec<u8>, server_name: &str) -> Server {
    // Loopback, unless the test names its own address.
    let listen: &[&str] = if args.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let mut child = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["serve", "--log-format", "json", "--cluster", "off"])
        .args(listen)
        .args(args)
        // The allocator's settings the image runs with, as the memory bounds assume.
        .envs(super::image_env())
        .env_remove("SG_POLICY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::capture(child.stderr.take().unwrap());
    let line = log
        .wait_for("\"serving HTTPS\"", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("server did not start:\n{}", log.text()));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = v["address"].as_str().unwrap().parse().unwrap();
    Server {
        child,
        addr,
        ca,
        server_name: server_name.to_owned(),
        log,
    }
}

impl Server {
    pub fn logs(&self) -> String {
        self.log.text()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.log.wait_for(needle, timeout).is_some()
    }

    /// Waits until the log holds the events of `n` reviews, then for one more batch of lines
    /// (whatever the server logged with them).
    pub fn wait_for_reviews(&self, n: usize) -> bool {
        let found = self
            .log
            .wait_for_count("\"admission review\"", n, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(200));
        found
    }

    pub async fn tls(&self, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
        tls_connect(self.addr, &self.ca, &self.server_name, alpn).await
    }

    /// A TLS connection from another loopback address: another client.
    pub async fn tls_from(
        &self,
        source: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let source = source.parse().expect("an address");
        tls_connect_from(Some(source), self.addr, &self.ca, &self.server_name, alpn).await
    }

    /// The server process's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// One request on a fresh HTTP/1.1 connection.
    pub async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let tls = self.tls(&[b"http/1.1"]).await.expect("TLS handshake");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send_one(&mut send, method, path, body)
            .await
            .expect("response")
    }

    pub async fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        self.request("POST", path, body).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Bytes) {
        self.request("GET", path, vec![]).await
    }

    /// A keep-alive HTTP/1.1 connection, as kube-apiserver uses.
    pub async fn http1(&self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let tls = self.tls(&[b"http/1.1"]).await.expect("TLS handshake");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    /// An HTTP/2 connection negotiated with ALPN.
    pub async fn http2(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let tls = self.tls(&[b"h2"]).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

pub async fn send_one(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    send.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{SERVICE_NAME}:443"))
        .header("content-type", "application/json")
        .header("user-agent", "kube-apiserver-admission")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca: &[u8],
    server_name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_from(None, addr, ca, server_name, alpn).await
}

/// [`tls_connect`] from a given local address (`127.0.0.2` is loopback too: another client).
pub async fn tls_connect_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    ca: &[u8],
    server_name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(server_name.to_owned()).unwrap(), tcp)
        .await
}

/// One HTTPS GET of `path` on `addr`, verifying `server_name` against `ca` (PEM), as an
/// operator's client through a port-forward would; on its own runtime, for synchronous tests.
/// An error when the handshake fails (a certificate `ca` did not sign, say).
pub fn https_get(
    addr: SocketAddr,
    ca: &[u8],
    server_name: &str,
    path: &str,
) -> std::io::Result<(StatusCode, Bytes)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tls = tls_connect(addr, ca, server_name, &[b"http/1.1"]).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        send_one(&mut send, "GET", path, vec![])
            .await
            .map_err(std::io::Error::other)
    })
}

/// The DER of the certificate the server presents.
pub async fn served_certificate(server: &Server) -> Vec<u8> {
    let tls = server.tls(&[b"http/1.1"]).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

pub fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem)
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Accepts any server certificate, as kubelet's HTTPS probes do (they never verify).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What kubelet's HTTPS probe sees: one GET over TLS without verification. Returns the status,
/// the body and the DER of the certificate the server presented.
pub async fn probe(addr: SocketAddr, path: &str) -> std::io::Result<(StatusCode, Bytes, Vec<u8>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("probe.invalid").unwrap(), tcp)
        .await?;
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let (status, body) = send_one(&mut send, "GET", path, vec![])
        .await
        .map_err(std::io::Error::other)?;
    Ok((status, body, cert))
}
