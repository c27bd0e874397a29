//! An overloaded apiserver, as clients see one: a TLS listener that answers every request with
//! 503 and a `Status`, and records what was asked. Nothing of the API is emulated; it shows
//! which requests a client makes, and how it behaves when none succeeds.
#![allow(dead_code)]
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const STATUS: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}"#;

pub struct Unavailable {
    pub addr: SocketAddr,
    /// PEM of the CA that signed its certificate (for 127.0.0.1).
    pub ca: String,
    /// Method and URI (path and query) of every request, in order.
    pub requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl Unavailable {
    /// Listens on 127.0.0.1 (HTTP/1.1 and HTTP/2 by ALPN), on the current tokio runtime.
    pub async fn start() -> Unavailable {
        let bundle = stateful_guard::certs::generate(&["127.0.0.1".to_owned()], 1, 1).unwrap();
        let chain = CertificateDer::pem_slice_iter(bundle.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(bundle.key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            recorded
                                .lock()
                                .unwrap()
                                .push((req.method().to_string(), req.uri().to_string()));
                            async move {
                                hyper::Response::builder()
                                    .status(503)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(STATUS)))
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Unavailable {
            addr,
            ca: bundle.ca_cert,
            requests,
        }
    }

    /// A kube client for it, configured as a pod's in-cluster client is (kube's defaults).
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("https://{}", self.addr).parse().unwrap());
        config.root_cert = Some(vec![
            CertificateDer::from_pem_slice(self.ca.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        ]);
        config.default_namespace = "default".into();
        kube::Client::try_from(config).unwrap()
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
}
