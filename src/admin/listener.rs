//! The admin port's HTTP/1.1 server, hardened against slow and idle clients (it faces the
//! internet when it serves the admin-consent callback).
//!
//! - **Header-read timeout** (`admin.header_read_timeout_seconds`): a connection that has not
//!   sent a whole request head within it is closed. hyper's timer runs whenever the connection
//!   waits for a head, the first one or the next one on a kept-alive connection, so a client that
//!   connects and sends nothing, or half a request, is gone after it.
//! - **Idle timeout** (`admin.idle_timeout_seconds`): a connection with no byte read or written
//!   for that long, and no request being handled, is closed (a client that stopped reading its
//!   answer, say).
//! - **Per-request timeout** (`admin.request_timeout_seconds`): a request still unanswered then
//!   gets 503 `request_timeout` (operations that change state run detached, so they finish).
//! - **A cap on connections** (`admin.max_connections`, and never more than half the process's
//!   file-descriptor limit, so the worker keeps descriptors for RabbitMQ, Redis and Graph). At
//!   the cap, a new connection displaces the oldest connection that has no request in progress
//!   (a slow client or an idle keep-alive), so a flood of slow clients never starves `/healthz`
//!   or `/readyz`. A descriptor shortage at `accept` is handled the same way.
//!
//! Built on hyper's own HTTP/1 connection (`hyper::server::conn::http1`, which has the
//! header-read timer) rather than `axum::serve`, which has none of these limits.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::errors::ApiError;
use crate::config::AdminConfig;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(a: &AdminConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(a.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(a.idle_timeout_seconds),
            request_timeout: Duration::from_secs(a.request_timeout_seconds),
            max_connections: a.max_connections,
        }
    }

    /// The connection cap in force: `max_connections`, but at most half the process's
    /// file-descriptor limit (at least 16).
    pub fn connection_cap(&self) -> usize {
        let fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        match fds {
            Some(n) => self
                .max_connections
                .min(usize::try_from(n / 2).unwrap_or(usize::MAX).max(16)),
            None => self.max_connections,
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Entry {
    /// Requests being handled on it.
    busy: Arc<AtomicUsize>,
    /// Closes it.
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By age: the smallest id is the oldest.
    open: BTreeMap<u64, Entry>,
}

impl Registry {
    /// Closes the oldest connection without a request in progress; false when every one is busy.
    fn evict_oldest_idle(&mut self) -> bool {
        let Some(id) = self
            .open
            .iter()
            .find(|(_, e)| e.busy.load(Ordering::Relaxed) == 0)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(e) = self.open.remove(&id) {
            let _ = e.evict.send(());
        }
        true
    }
}

type Shared = Arc<Mutex<Registry>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; then stops accepting,
/// lets requests in progress finish (up to `request_timeout`) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let cap = limits.connection_cap();
    let addr = listener.local_addr().ok();
    tracing::info!(
        addr = ?addr,
        max_connections = cap,
        header_read_timeout_s = limits.header_read_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        request_timeout_s = limits.request_timeout.as_secs(),
        "admin listener: serving"
    );
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_timeout,
    ));
    let registry: Shared = Arc::new(Mutex::new(Registry::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (EMFILE, ENFILE): free one by closing the oldest idle
                // connection; other accept errors concern one connection only.
                let fd_shortage = e.raw_os_error().is_some_and(|n| {
                    n == rustix::io::Errno::MFILE.raw_os_error()
                        || n == rustix::io::Errno::NFILE.raw_os_error()
                });
                let freed = fd_shortage && lock(&registry).evict_oldest_idle();
                tracing::warn!(error = %e, freed, "admin listener: accept failed");
                if freed {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        };
        let (id, busy, evicted) = {
            let mut reg = lock(&registry);
            if reg.open.len() >= cap && !reg.evict_oldest_idle() {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        refused,
                        max_connections = cap,
                        "admin listener: every connection is handling a request; refusing new ones"
                    );
                }
                continue; // dropping the stream closes it
            }
            let id = reg.next;
            reg.next += 1;
            let busy = Arc::new(AtomicUsize::new(0));
            let (tx, rx) = oneshot::channel();
            reg.open.insert(
                id,
                Entry {
                    busy: busy.clone(),
                    evict: tx,
                },
            );
            (id, busy, rx)
        };
        let conn = connection(stream, app.clone(), limits, busy, evicted, stop_rx.clone());
        let registry = registry.clone();
        tokio::spawn(async move {
            conn.await;
            lock(&registry).open.remove(&id);
        });
    }
    // Stop: connections finish what they are handling, idle ones close at once.
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + limits.request_timeout;
    while !lock(&registry).open.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves one connection until it ends, is evicted, idles out, or the server stops.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    busy: Arc<AtomicUsize>,
    mut evicted: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        started,
        activity: activity.clone(),
    });
    let inner = TowerToHyperService::new(app);
    let in_request = busy.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = Busy::enter(&in_request);
        let fut = hyper::service::Service::call(&inner, req);
        async move {
            let out = fut.await;
            drop(guard);
            out
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut ticker =
        tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "admin listener: connection ended");
                }
                return;
            }
            _ = &mut evicted => {
                tracing::debug!("admin listener: connection closed to make room for a new one");
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticker.tick() => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(activity.load(Ordering::Relaxed)));
                if busy.load(Ordering::Relaxed) == 0 && quiet >= limits.idle_timeout {
                    tracing::debug!(quiet_ms = quiet.as_millis() as u64, "admin listener: idle connection closed");
                    return;
                }
            }
        }
    }
}

/// Counts a request in progress on its connection while alive.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(n: &Arc<AtomicUsize>) -> Busy {
        n.fetch_add(1, Ordering::Relaxed);
        Busy(n.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records when it last moved a byte (milliseconds after `started`).
struct Tracked {
    inner: TcpStream,
    started: Instant,
    activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Middleware: a request unanswered after the timeout gets 503 `request_timeout`.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(%method, %path, limit_s = limit.as_secs(), "admin listener: request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "{method} {path} did not finish within {} s (admin.request_timeout_seconds); try again later",
                    limit.as_secs()
                ),
            )
            .with_retry_after(Duration::from_secs(5))
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_connection_cap_keeps_half_the_file_descriptors_for_the_rest() {
        let fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .expect("a finite limit here");
        let limits = Limits::from_config(&AdminConfig {
            max_connections: 65_536,
            ..AdminConfig::default()
        });
        let cap = limits.connection_cap() as u64;
        assert!(cap <= (fds / 2).max(16), "{cap} of {fds}");
        let small = Limits::from_config(&AdminConfig {
            max_connections: 16,
            ..AdminConfig::default()
        });
        assert_eq!(small.connection_cap(), 16);
    }

    #[test]
    fn the_listener_settings_are_checked_and_named() {
        let check = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().err().map(|e| e.to_string())
        };
        assert_eq!(check(&|_| {}), None);
        assert_eq!(
            check(&|c| c.admin.public_listen = "0.0.0.0:8443".into()),
            None
        );
        for (key, f) in [
            (
                "admin.public_listen",
                &(|c: &mut Config| c.admin.public_listen = "internet".into())
                    as &dyn Fn(&mut Config),
            ),
            ("admin.public_listen", &|c: &mut Config| {
                c.admin.public_listen = c.admin.listen.clone()
            }),
            ("admin.header_read_timeout_seconds", &|c: &mut Config| {
                c.admin.header_read_timeout_seconds = 0
            }),
            ("admin.idle_timeout_seconds", &|c: &mut Config| {
                c.admin.idle_timeout_seconds = 1
            }),
            ("admin.request_timeout_seconds", &|c: &mut Config| {
                c.admin.request_timeout_seconds = 0
            }),
            ("admin.max_connections", &|c: &mut Config| {
                c.admin.max_connections = 1
            }),
        ] {
            let e = check(f).unwrap_or_else(|| panic!("{key}: accepted"));
            assert!(e.contains(key), "{e}");
        }
    }
}
