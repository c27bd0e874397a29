//! The comparator for `scripts/load`: a webhook that does nothing, with the same TLS and HTTP
//! setup as stateful-guard (rustls with ring, TLS 1.2/1.3, HTTP/1.1 keep-alive and HTTP/2 by
//! ALPN, a multi-threaded tokio runtime). It parses the body as generic JSON, as any webhook
//! must, and answers `allowed` with the request's uid. The ratio of stateful-guard's numbers to
//! these is the cost of the guard itself.
//!
//!   cargo run --release --example noop_webhook -- LISTEN CERT KEY
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use stateful_guard::server::tls::CertFiles;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let uid = review["request"]["uid"].clone();
    let out = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&out).unwrap_or_default(),
        )))
        .expect("a static response"))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, cert, key] = args.as_slice() else {
        eprintln!("usage: noop_webhook LISTEN CERT KEY");
        std::process::exit(2);
    };
    let files = CertFiles::load(cert.as_ref(), key.as_ref(), None).expect("certificate");
    let acceptor = TlsAcceptor::from(Arc::new(files.server_config().expect("TLS config")));
    let listener = TcpListener::bind(listen).await.expect("listen");
    eprintln!("noop webhook serving on {}", listener.local_addr().unwrap());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                .await;
        });
    }
}
