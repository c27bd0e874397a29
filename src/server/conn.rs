//! One connection's life: the TLS handshake and the first request within one deadline, idle
//! connections closed, writes to a client that stopped reading given up, and the per-client
//! share of the connection limit.
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A stream whose writes must make progress: a write (or flush) that stays pending longer than
/// the timeout fails, and the connection with it. A client that stops reading its answers
/// otherwise holds its connection, and the memory of what is queued for it, for ever.
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    pending: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            pending: None,
        }
    }

    /// Whether the write that has been pending since the deadline was armed is past it.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.pending = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .pending
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {timeout:?} (--write-timeout)"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future as _;

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

/// What a connection is doing, as its requests tell (HTTP/2 PINGs and SETTINGS are not
/// activity: a client that only answers PINGs is idle).
#[derive(Default)]
pub struct Activity {
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last request's start or end.
    last: AtomicU64,
    epoch: Option<Instant>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            epoch: Some(Instant::now()),
            ..Self::default()
        }
    }

    fn now(&self) -> u64 {
        self.epoch
            .map_or(0, |e| e.elapsed().as_millis().min(u64::MAX as u128) as u64)
    }

    /// A request arrived (its headers are read).
    pub fn begin(&self) {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// A request was answered.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// Whether any request has arrived.
    pub fn has_requested(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// How long no request has been in flight (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// Counts `begin`/`end` around each request of a connection's service, and hands each request
/// its peer's address (axum's `ConnectInfo`).
#[derive(Clone)]
pub struct Tracked<S> {
    pub inner: S,
    pub activity: Arc<Activity>,
    pub peer: std::net::SocketAddr,
}

impl<S, B> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        struct End(Arc<Activity>);
        impl Drop for End {
            fn drop(&mut self) {
                self.0.end();
            }
        }
        self.activity.begin();
        let end = End(self.activity.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(end);
            response
        })
    }
}

/// Connections per client address, each held by a [`ClientSlot`].
pub struct PerClient {
    max: usize,
    unlimited: Vec<ipnet::IpNet>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection of a client, counted until dropped.
pub struct ClientSlot {
    owner: Option<(Arc<PerClient>, IpAddr)>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((per, ip)) = self.owner.take() {
            let mut open = per.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

impl PerClient {
    /// At most `max` connections per address, except from the `unlimited` networks (the
    /// apiserver's addresses, when known).
    pub fn new(max: usize, unlimited: Vec<ipnet::IpNet>) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            unlimited,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or `None` when it has its share.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = canonical(ip);
        if self.unlimited.iter().any(|n| n.contains(&ip)) {
            return Some(ClientSlot { owner: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: Some((self.clone(), ip)),
        })
    }
}

/// An IPv4 address mapped into IPv6 (a dual-stack listener's view) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn each_client_gets_its_share_and_listed_networks_are_not_counted() {
        let per = PerClient::new(2, vec!["10.0.0.0/8".parse().unwrap()]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = per.admit(a).unwrap();
        let _second = per.admit(a).unwrap();
        assert!(per.admit(a).is_none(), "a third connection from one client");
        assert!(per.admit("192.0.2.2".parse().unwrap()).is_some());
        // The same client seen through a dual-stack listener.
        assert!(per.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
        drop(first);
        assert!(per.admit(a).is_some());
        for _ in 0..10 {
            std::mem::forget(per.admit("10.1.2.3".parse().unwrap()).unwrap());
        }
    }

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_timeout() {
        let (client, _server_side_kept_unread) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(client, Duration::from_millis(100));
        let start = Instant::now();
        let result = async {
            loop {
                stream.write_all(&[0u8; 1024]).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        }
        .await;
        let error = result.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn idle_time_counts_only_without_requests_in_flight() {
        let activity = Activity::new();
        assert!(!activity.has_requested());
        activity.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        activity.end();
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(15));
        assert!(activity.has_requested());
    }
}
