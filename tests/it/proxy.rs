//! A TCP proxy the tests put between a worker and RabbitMQ or Redis, to cause outages on demand:
//!
//! - [`Proxy::cut`] closes every connection and refuses new ones (closes them at once): a broker
//!   that went away;
//! - [`Proxy::stall`] stops forwarding in both directions but keeps every socket open, and holds
//!   new connections without forwarding: a network that black-holes packets, which only a timeout
//!   or a heartbeat can detect;
//! - [`Proxy::restore`] forwards again (stalled sockets resume where they stopped).
//!
//! Bounded: it listens on 127.0.0.1 only, forwards only to a loopback target, holds at most
//! [`MAX_CONNECTIONS`] connections, and everything it spawned ends when it is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Connections held at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Stall,
    Cut,
    /// The proxy was dropped: every task ends.
    Closed,
}

pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicUsize>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (an ephemeral port) and forwards to `target`, which must be loopback.
    pub async fn start(target: SocketAddr) -> Proxy {
        assert!(
            target.ip().is_loopback(),
            "the test proxy only forwards to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Forward);
        let accepted = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn({
            let mode = mode.clone();
            let accepted = accepted.clone();
            async move {
                let mut closed = mode.subscribe();
                loop {
                    let conn = tokio::select! {
                        c = listener.accept() => c,
                        _ = wait_for(&mut closed, |m| m == Mode::Closed) => return,
                    };
                    let Ok((client, _)) = conn else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let now = *mode.borrow();
                    if now == Mode::Cut || live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                        drop(client);
                        continue;
                    }
                    live.fetch_add(1, Ordering::Relaxed);
                    let (rx, live) = (mode.subscribe(), live.clone());
                    tokio::spawn(async move {
                        connection(client, target, rx).await;
                        live.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
        });
        Proxy {
            addr,
            mode,
            accepted,
            accept_task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far (the tests check that a client did reconnect).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Closes every connection; new ones are closed as soon as they are accepted.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Stops forwarding; every socket stays open, new connections are held.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Closed);
        self.accept_task.abort();
    }
}

/// Waits until the mode satisfies `pred` (or the proxy is gone).
async fn wait_for(rx: &mut watch::Receiver<Mode>, pred: impl Fn(Mode) -> bool) -> Mode {
    loop {
        let m = *rx.borrow_and_update();
        if pred(m) {
            return m;
        }
        if rx.changed().await.is_err() {
            return Mode::Closed;
        }
    }
}

/// One client connection: held while stalled, connected upstream once forwarding, closed on a
/// cut.
async fn connection(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if wait_for(&mut mode, |m| m != Mode::Stall).await != Mode::Forward {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    // Either direction ending (EOF, error, a cut) ends both: dropping the halves closes them.
    tokio::select! {
        _ = pump(cr, uw, mode.clone()) => {}
        _ = pump(ur, cw, mode.clone()) => {}
    }
}

/// Copies one direction while the mode is `Forward`; pauses (reads nothing) while stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if wait_for(&mut mode, |m| m != Mode::Stall).await != Mode::Forward {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A change of mode interrupts the read; the loop re-checks it.
            _ = mode.changed() => continue,
        };
        // Bytes already read are delivered even if a stall begins now; a cut drops them.
        let mut watch = mode.clone();
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            _ = wait_for(&mut watch, |m| matches!(m, Mode::Cut | Mode::Closed)) => return,
        }
    }
}
