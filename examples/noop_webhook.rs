//! The comparator for `scripts/load`: a webhook that does nothing, with the same TLS and HTTP
//! setup as stateful-guard (rustls with ring, TLS 1.2/1.3, HTTP/1.1 keep-alive and HTTP/2 by
//! ALPN, TCP_NODELAY, a multi-threaded tokio runtime). It parses the body as generic JSON, as any webhook
//! must, and answers `allowed` with the request's uid. The ratio of stateful-guard's numbers to
//! these is the cost of the guard itself.
//!
//! With PATCH (a file holding a JSON Patch), its `/mutate` answers carry that patch, as
//! stateful-guard's would: what the apiserver then does with a patch is measured apart from the
//! webhook that computed it.
//!
//!   cargo run --release --example noop_webhook -- LISTEN CERT KEY [PATCH]
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use stateful_guard::server::tls::CertFiles;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

async fn answer(
    req: Request<Incoming>,
    patch: Option<Arc<String>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mutating = req.uri().path() == "/mutate";
    let body = req.into_body().collect().await?.to_bytes();
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let uid = review["request"]["uid"].clone();
    let mut out = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}
    });
    if let (true, Some(patch)) = (mutating, patch) {
        out["response"]["patch"] = patch.as_str().into();
        out["response"]["patchType"] = "JSONPatch".into();
    }
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
    let (listen, cert, key, patch) = match args.as_slice() {
        [_, listen, cert, key] => (listen, cert, key, None),
        [_, listen, cert, key, patch] => {
            use base64::Engine as _;
            let patch = std::fs::read(patch).expect("the patch file");
            let patch = base64::engine::general_purpose::STANDARD.encode(patch);
            (listen, cert, key, Some(Arc::new(patch)))
        }
        _ => {
            eprintln!("usage: noop_webhook LISTEN CERT KEY [PATCH]");
            std::process::exit(2);
        }
    };
    let files = CertFiles::load(cert.as_ref(), key.as_ref(), None).expect("certificate");
    let acceptor = TlsAcceptor::from(Arc::new(files.server_config().expect("TLS config")));
    let listener = TcpListener::bind(listen).await.expect("listen");
    eprintln!("noop webhook serving on {}", listener.local_addr().unwrap());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let patch = patch.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(
                    TokioIo::new(tls),
                    hyper::service::service_fn(move |req| answer(req, patch.clone())),
                )
                .await;
        });
    }
}
