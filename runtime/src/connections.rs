//! Serving one listener so that no client can hold it: every connection has
//! timers (the request head must arrive within `http.header_read_timeout_ms`,
//! and a connection on which no byte moves either way for
//! `http.idle_timeout_ms` is closed), and connections are capped per
//! listener and per client address. Past the listener's cap a small reserve
//! of connections still answers `/health`, `/ready` and gRPC health, so
//! probes see a full port as alive; everything else on them is a fast 503
//! in the error shape, and past the reserve a connection is closed at once.
//!
//! A trusted proxy (`http.trusted_proxies`) is many clients on one address:
//! counting its connections against one client's cap would let a few of its
//! clients fill that cap for all of them. Its connections are counted only
//! against the listener's cap, and the per-client cap applies instead to the
//! requests in flight of each forwarded client ([`ForwardedClients`]), once
//! a request's head has named that client (a connection is accepted before
//! any header is read).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_core::{Error, ErrorCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::HttpConfig;
use crate::forwarded::TrustedProxies;
use crate::http::HttpError;
use crate::metrics::{Exposition, MetricsSource};
use crate::shutdown::Shutdown;

/// The address a per-client limit counts against: an IPv4 address, or the
/// /64 network of an IPv6 address (one host gets a whole /64 and can rotate
/// inside it at will). An IPv4-mapped IPv6 address counts as its IPv4.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u32::from(ipv6_prefix.min(128));
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        },
    }
}

/// What one listener holds, for `/metrics`.
#[derive(Debug)]
pub struct ConnectionStats {
    service: &'static str,
    open: AtomicUsize,
    reserve: AtomicUsize,
    refused_full: AtomicU64,
    refused_per_client: AtomicU64,
    refused_forwarded: AtomicU64,
    shed: AtomicU64,
    timed_out: AtomicU64,
    clients: Mutex<HashMap<IpAddr, usize>>,
    /// Requests in flight from each forwarded client of a trusted proxy.
    forwarded: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionStats {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            open: AtomicUsize::new(0),
            reserve: AtomicUsize::new(0),
            refused_full: AtomicU64::new(0),
            refused_per_client: AtomicU64::new(0),
            refused_forwarded: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
            forwarded: Mutex::new(HashMap::new()),
        }
    }

    /// Connections open now (reserve ones included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests from forwarded clients in flight now.
    pub fn forwarded_in_flight(&self) -> usize {
        locked(&self.forwarded).values().sum()
    }

    /// Counts a new connection in, or says why it is refused: one from
    /// `Some(client)` against that client's cap and the listener's, one from
    /// a trusted proxy (`None`) against the listener's only.
    fn admit(self: &Arc<Self>, client: Option<IpAddr>, limits: &Limits) -> Admission {
        let mut clients = locked(&self.clients);
        if let Some(client) = client {
            let from_client = clients.get(&client).copied().unwrap_or(0);
            if from_client >= limits.per_client {
                self.refused_per_client.fetch_add(1, Ordering::Relaxed);
                return Admission::Refused;
            }
        }
        let open = self.open.load(Ordering::Relaxed);
        if open >= limits.max + limits.reserve {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return Admission::Refused;
        }
        if let Some(client) = client {
            *clients.entry(client).or_insert(0) += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let reserve = open >= limits.max;
        if reserve {
            self.reserve.fetch_add(1, Ordering::Relaxed);
        }
        Admission::Admitted(Held {
            stats: Arc::clone(self),
            client,
            reserve,
        })
    }
}

#[async_trait::async_trait]
impl MetricsSource for ConnectionStats {
    async fn collect(&self, out: &mut Exposition) {
        let service = [("service", self.service)];
        out.family(
            "gauge",
            "polyhub_connections_open",
            "Connections open on the service's listener, reserve ones included.",
        )
        .sample(
            "polyhub_connections_open",
            &service,
            self.open.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "gauge",
            "polyhub_connections_reserve_open",
            "Connections past the cap, served only health and readiness.",
        )
        .sample(
            "polyhub_connections_reserve_open",
            &service,
            self.reserve.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "counter",
            "polyhub_connections_refused_total",
            "Connections closed at once: the listener full, or one client over its cap.",
        );
        for (reason, count) in [
            ("full", &self.refused_full),
            ("per_client", &self.refused_per_client),
        ] {
            out.sample(
                "polyhub_connections_refused_total",
                &[("service", self.service), ("reason", reason)],
                count.load(Ordering::Relaxed) as f64,
            );
        }
        out.family(
            "counter",
            "polyhub_forwarded_requests_refused_total",
            "Requests from a trusted proxy refused: their forwarded client had \
             http.max_connections_per_client requests in flight.",
        )
        .sample(
            "polyhub_forwarded_requests_refused_total",
            &service,
            self.refused_forwarded.load(Ordering::Relaxed) as f64,
        );
        out.counter(
            "polyhub_connections_shed_requests_total",
            "Requests on reserve connections answered 503 (not health or readiness).",
            self.shed.load(Ordering::Relaxed),
        );
        out.counter(
            "polyhub_connections_idle_closed_total",
            "Connections closed because no byte moved for http.idle_timeout_ms.",
            self.timed_out.load(Ordering::Relaxed),
        );
    }
}

enum Admission {
    Admitted(Held),
    Refused,
}

/// A count table's lock; a panic elsewhere while it was held leaves the
/// counts as they were, which are still the best there are.
fn locked(
    table: &Mutex<HashMap<IpAddr, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    match table.lock() {
        Ok(table) => table,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Gives one of `client`'s places in `table` back.
fn release(table: &Mutex<HashMap<IpAddr, usize>>, client: IpAddr) {
    let mut table = locked(table);
    if let Some(count) = table.get_mut(&client) {
        *count -= 1;
        if *count == 0 {
            table.remove(&client);
        }
    }
}

/// One admitted connection; dropping it gives its places back.
struct Held {
    stats: Arc<ConnectionStats>,
    /// `None` for a trusted proxy's connection, which no client's cap counts.
    client: Option<IpAddr>,
    reserve: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        if self.reserve {
            self.stats.reserve.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(client) = self.client {
            release(&self.stats.clients, client);
        }
    }
}

/// The per-client cap of a trusted proxy's connection, for the requests on
/// it: put in each request's extensions by [`serve`], applied by the
/// forwarded-client middleware once it has read the client from
/// `X-Forwarded-For`.
#[derive(Debug, Clone)]
pub(crate) struct ForwardedClients {
    stats: Arc<ConnectionStats>,
    per_client: usize,
    ipv6_prefix: u8,
}

impl ForwardedClients {
    /// Takes one of `client`'s places for one request, or `None` when its
    /// requests in flight already fill the per-client cap.
    pub(crate) fn enter(&self, client: IpAddr) -> Option<InFlight> {
        let client = client_key(client, self.ipv6_prefix);
        let mut forwarded = locked(&self.stats.forwarded);
        let in_flight = forwarded.entry(client).or_insert(0);
        if *in_flight >= self.per_client {
            self.stats.refused_forwarded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *in_flight += 1;
        Some(InFlight {
            stats: Arc::clone(&self.stats),
            client,
        })
    }
}

/// One forwarded client's request in flight; dropping it gives the place
/// back.
#[derive(Debug)]
pub(crate) struct InFlight {
    stats: Arc<ConnectionStats>,
    client: IpAddr,
}

impl InFlight {
    /// Keeps the place until `response`'s body has been sent (or dropped):
    /// a request is in flight until its answer has left.
    pub(crate) fn until_sent(self, response: Response) -> Response {
        response.map(|inner| Body::new(HoldingBody { inner, _held: self }))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        release(&self.stats.forwarded, self.client);
    }
}

/// A response body that holds its request's place while it is sent.
struct HoldingBody {
    inner: Body,
    _held: InFlight,
}

impl http_body::Body for HoldingBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max: usize,
    per_client: usize,
    reserve: usize,
}

/// A stream that fails with `TimedOut` once no byte has moved either way for
/// `timeout` while it is waited on.
struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    stats: Arc<ConnectionStats>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, timeout: Duration, stats: Arc<ConnectionStats>) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            stats,
        }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no byte moved within the idle timeout",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What a reserve connection may still ask: liveness and readiness.
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/connected/health")
        || path.starts_with("/grpc.health.v1.Health/")
}

fn shed() -> Response {
    let mut response = HttpError::with_status(
        StatusCode::SERVICE_UNAVAILABLE,
        Error::with_message(
            ErrorCode::Overloaded,
            "this port has too many connections; retry shortly",
        ),
    )
    .retry_after(Duration::from_secs(1))
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `router` on `listener` until `shutdown`, then lets open
/// connections finish their requests (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    stats: Arc<ConnectionStats>,
    shutdown: Shutdown,
) {
    let limits = Limits {
        max: config.max_connections.max(1),
        per_client: config.max_connections_per_client.max(1),
        reserve: config.reserve_connections,
    };
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_streams_per_connection)
        .max_frame_size(config.max_frame_bytes.clamp(16_384, 16_777_215));
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let ipv6_prefix = config.client_ipv6_prefix;
    let proxies = TrustedProxies::new(&config.trusted_proxies);
    let forwarded_clients = ForwardedClients {
        stats: Arc::clone(&stats),
        per_client: limits.per_client,
        ipv6_prefix,
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stopping = shutdown.wait();
    tokio::pin!(stopping);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut stopping => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most often: wait, do not spin.
                    tracing::warn!(service = stats.service, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A trusted proxy's clients are capped per request, once its head
        // names them; a connection from anyone else counts against its own.
        let from_proxy = proxies.trusts(remote.ip());
        let client = (!from_proxy).then(|| client_key(remote.ip(), ipv6_prefix));
        let held = match stats.admit(client, &limits) {
            Admission::Admitted(held) => held,
            Admission::Refused => {
                tracing::debug!(service = stats.service, client = %remote.ip(), "connection refused: over a cap");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(IdleTimeout::new(stream, idle, Arc::clone(&stats)));
        let reserve = held.reserve;
        let router = router.clone();
        let shed_count = Arc::clone(&stats);
        let forwarded = from_proxy.then(|| forwarded_clients.clone());
        let service =
            tower::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
                let mut request: Request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(remote));
                if let Some(forwarded) = &forwarded {
                    request.extensions_mut().insert(forwarded.clone());
                }
                let router = router.clone();
                let shed_count = Arc::clone(&shed_count);
                async move {
                    if reserve && !is_probe(request.uri().path()) {
                        shed_count.shed.fetch_add(1, Ordering::Relaxed);
                        return Ok::<_, Infallible>(shed());
                    }
                    router.oneshot(request).await
                }
            });
        let connection = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::trace!(error = %e, "connection ended");
            }
            drop(held);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Raises this process's soft limit on open files to its hard limit, so the
/// connection caps, not the kernel, decide what a flood costs; logs both.
pub fn raise_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let soft = if limit.current == limit.maximum {
        limit.current
    } else {
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit.maximum,
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-file limit");
                limit.current
            }
        }
    };
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    tracing::info!(
        was = show(limit.current),
        soft = show(soft),
        hard = show(limit.maximum),
        "open-file limit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(other, 64));
        assert_eq!(client_key(a, 128), a);
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4, 64), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped, 64), v4);
    }

    #[test]
    fn admission_keeps_a_reserve_and_a_per_client_cap() {
        let stats = Arc::new(ConnectionStats::new("test"));
        let limits = Limits {
            max: 2,
            per_client: 3,
            reserve: 1,
        };
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<Held> = (0..3)
            .map(|_| match stats.admit(Some(one), &limits) {
                Admission::Admitted(h) => h,
                Admission::Refused => panic!("refused early"),
            })
            .collect();
        assert!(!held[0].reserve && !held[1].reserve && held[2].reserve);
        assert!(matches!(
            stats.admit(Some(one), &limits),
            Admission::Refused
        ));
        assert!(matches!(
            stats.admit(Some(two), &limits),
            Admission::Refused
        ));
        drop(held);
        assert_eq!(stats.open(), 0);
        assert!(stats.clients.lock().unwrap().is_empty());
        assert!(matches!(
            stats.admit(Some(two), &limits),
            Admission::Admitted(_)
        ));
    }

    #[test]
    fn a_trusted_proxy_is_held_to_the_listener_cap_only() {
        let stats = Arc::new(ConnectionStats::new("test"));
        let limits = Limits {
            max: 4,
            per_client: 1,
            reserve: 0,
        };
        let held: Vec<Held> = (0..4)
            .map(|_| match stats.admit(None, &limits) {
                Admission::Admitted(h) => h,
                Admission::Refused => panic!("a proxy's connection refused under the listener cap"),
            })
            .collect();
        assert!(matches!(stats.admit(None, &limits), Admission::Refused));
        assert!(
            stats.clients.lock().unwrap().is_empty(),
            "no client counted"
        );
        drop(held);
        assert_eq!(stats.open(), 0);
    }

    #[test]
    fn forwarded_clients_are_capped_per_client_in_flight() {
        let stats = Arc::new(ConnectionStats::new("test"));
        let clients = ForwardedClients {
            stats: Arc::clone(&stats),
            per_client: 2,
            ipv6_prefix: 64,
        };
        let one: IpAddr = "203.0.113.1".parse().unwrap();
        let two: IpAddr = "203.0.113.2".parse().unwrap();
        let first = clients.enter(one).unwrap();
        let second = clients.enter(one).unwrap();
        assert!(
            clients.enter(one).is_none(),
            "a third request of one client"
        );
        let other = clients.enter(two).expect("another client is not held back");
        assert_eq!(stats.forwarded_in_flight(), 3);
        drop(first);
        let again = clients
            .enter(one)
            .expect("a place given back is taken again");
        // One IPv6 /64 is one client, as for connections.
        let a: IpAddr = "2001:db8:1:2::a".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::b".parse().unwrap();
        let v6 = [clients.enter(a).unwrap(), clients.enter(b).unwrap()];
        assert!(clients.enter(a).is_none());
        drop((second, other, again, v6));
        assert_eq!(stats.forwarded_in_flight(), 0);
        assert!(stats.forwarded.lock().unwrap().is_empty());
        assert_eq!(stats.refused_forwarded.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_request_keeps_its_place_until_its_answer_is_sent() {
        let stats = Arc::new(ConnectionStats::new("test"));
        let clients = ForwardedClients {
            stats: Arc::clone(&stats),
            per_client: 1,
            ipv6_prefix: 64,
        };
        let client: IpAddr = "203.0.113.1".parse().unwrap();
        let held = clients.enter(client).unwrap();
        let response = held.until_sent(Response::new(Body::from("answer")));
        assert!(clients.enter(client).is_none(), "held while unsent");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"answer");
        assert_eq!(stats.forwarded_in_flight(), 0, "given back once sent");
    }
}
