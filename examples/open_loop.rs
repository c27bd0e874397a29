//! An open-loop load generator for `scripts/load`: requests at a fixed rate, whatever the server
//! does, as a cluster sends them (each write is a request, whether or not the webhook has
//! answered the one before). wrk's closed loop measures the maximum; this measures the latency
//! at a given rate.
//!
//! Request `i` is due at `start + i / RATE`. CONNECTIONS keep-alive HTTPS connections (HTTP/1.1,
//! as kube-apiserver connects), all on one event-loop thread so that the generator takes little
//! of the machine, each take the next request when they are free. A request's latency counts
//! from the moment it was due, as wrk2 counts it (no coordinated omission): a slow answer makes
//! the requests queued behind it late, and that lateness is part of their latency. A connection
//! that was idle until the request's time counts from when it sent: tokio's timer wakes it at
//! the next millisecond, and that delay is the generator's, not the server's. (Requests due in
//! the same millisecond go out together: at high rates, arrivals come in small bursts.)
//!
//!   cargo run --release --example open_loop -- URL CA SERVER_NAME BODY RATE SECONDS [CONNECTIONS]
//!
//! URL is `https://HOST:PORT/PATH?QUERY`; CA is the PEM file that signed the server's
//! certificate, SERVER_NAME a name in it. Prints one line, in scripts/load's format:
//! `N req/s  p50 X us  p90 X us  p99 X us  max X us  errors N  non-2xx N  (asked R req/s)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// A request not answered in this long is an error (kube-apiserver's webhook timeout is at
/// most 30 s; the webhooks are deployed with 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to send, and what.
struct Target {
    addr: String,
    authority: String,
    path: String,
    body: Bytes,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    non_2xx: u64,
}

type Conn = SendRequest<Full<Bytes>>;

async fn connect(target: &Target) -> std::io::Result<Conn> {
    let tcp = tokio::net::TcpStream::connect(&target.addr).await?;
    tcp.set_nodelay(true)?;
    let tls = target.tls.connect(target.server_name.clone(), tcp).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

/// Sends the request and reads the whole response; its status code.
async fn exchange(conn: &mut Conn, target: &Target) -> Result<u16, hyper::Error> {
    conn.ready().await?;
    let request = hyper::Request::post(target.path.as_str())
        .header("host", target.authority.as_str())
        .header("content-type", "application/json")
        .body(Full::new(target.body.clone()))
        .expect("a request of static parts");
    let response = conn.send_request(request).await?;
    let code = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(code)
}

/// The schedule the connections share.
struct Schedule {
    start: Instant,
    interval: Duration,
    total: u64,
    next: AtomicU64,
}

async fn connection(target: &Target, mut conn: Option<Conn>, schedule: &Schedule) -> Tally {
    let mut tally = Tally::default();
    loop {
        let i = schedule.next.fetch_add(1, Ordering::Relaxed);
        if i >= schedule.total {
            return tally;
        }
        let due = schedule.start + schedule.interval.mul_f64(i as f64);
        // Due already: this request waited for a free connection, which is part of its latency.
        // Not due yet: this connection is idle until then, and counts from when it sends.
        let from = if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        } else {
            due
        };
        if conn.is_none() {
            conn = connect(target).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            tally.errors += 1;
            continue;
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange(c, target)).await {
            Ok(Ok(code)) => {
                let us = from.elapsed().as_micros().min(u32::MAX as u128) as u32;
                tally.latencies_us.push(us);
                if !(200..300).contains(&code) {
                    tally.non_2xx += 1;
                }
            }
            // A failed exchange, or no answer in time: an error, and a new connection.
            Ok(Err(_)) | Err(_) => {
                tally.errors += 1;
                conn = None;
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, ca, server_name, body, rate, seconds, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: open_loop URL CA SERVER_NAME BODY RATE SECONDS [CONNECTIONS]\n\
             (URL: https://HOST:PORT/PATH?QUERY)"
        );
        std::process::exit(2);
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("open_loop: {what}: {e}");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().unwrap_or_else(|e| fail("RATE", &e));
    let seconds: f64 = seconds.parse().unwrap_or_else(|e| fail("SECONDS", &e));
    let connections: usize = match rest.first() {
        Some(c) => c.parse().unwrap_or_else(|e| fail("CONNECTIONS", &e)),
        None => 16,
    };
    if !(rate > 0.0 && seconds > 0.0 && connections > 0) {
        fail("RATE, SECONDS and CONNECTIONS", &"must be positive");
    }
    let rest = url
        .strip_prefix("https://")
        .unwrap_or_else(|| fail("URL", &"must start with https://"));
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let body = std::fs::read(body).unwrap_or_else(|e| fail(body, &e));

    let mut roots = RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| fail(ca, &e))
    {
        roots
            .add(cert.unwrap_or_else(|e| fail(ca, &e)))
            .unwrap_or_else(|e| fail(ca, &e));
    }
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| fail("TLS", &e))
            .with_root_certificates(roots)
            .with_no_client_auth();
    let target = Arc::new(Target {
        addr: addr.to_owned(),
        authority: addr.to_owned(),
        path: path.to_owned(),
        body: Bytes::from(body),
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        server_name: ServerName::try_from(server_name.clone())
            .unwrap_or_else(|e| fail("SERVER_NAME", &e)),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", &e));
    // Connect and exchange once first, so that handshakes are not in the measured latencies.
    let conns: Vec<Conn> = runtime.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..connections {
            let mut conn = connect(&target).await.unwrap_or_else(|e| fail(addr, &e));
            exchange(&mut conn, &target)
                .await
                .unwrap_or_else(|e| fail(addr, &e));
            conns.push(conn);
        }
        conns
    });
    let schedule = Arc::new(Schedule {
        start: Instant::now(),
        interval: Duration::from_secs_f64(1.0 / rate),
        total: (rate * seconds).round() as u64,
        next: AtomicU64::new(0),
    });
    let tallies: Vec<Tally> = runtime.block_on(async {
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|conn| {
                let (target, schedule) = (target.clone(), schedule.clone());
                tokio::spawn(async move { connection(&target, Some(conn), &schedule).await })
            })
            .collect();
        let mut tallies = Vec::new();
        for task in tasks {
            tallies.push(task.await.unwrap_or_else(|e| fail("a connection", &e)));
        }
        tallies
    });
    let elapsed = schedule.start.elapsed().as_secs_f64();
    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let non_2xx: u64 = tallies.iter().map(|t| t.non_2xx).sum();
    println!(
        "{:.0} req/s  p50 {} us  p90 {} us  p99 {} us  max {} us  errors {errors}  non-2xx {non_2xx}  (asked {rate:.0} req/s)",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0),
    );
}
