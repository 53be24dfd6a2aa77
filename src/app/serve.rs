//! The HTTP accept loop (DESIGN.md "Names and limits", connections): a listen backlog of 1024,
//! at most `max_connections` open connections (more wait in the backlog), request headers
//! within `header_timeout_ms` (hyper's header timer, which also runs while a keep-alive
//! connection waits for its next request), and a watchdog that closes a connection on which
//! no byte moved for `idle_timeout_ms` while no request of it was in flight (a response the
//! client stopped reading, a connection left open between requests). `axum::serve` has none of these: a client that sent
//! half a request line kept its connection, and its memory, forever.
//!
//! Shutdown: the listener closes at once, every connection is told to finish (hyper's graceful
//! shutdown: in-flight requests complete, keep-alive ends) and is cut after
//! `shutdown_grace_ms`. An upgraded connection (WebSocket) leaves this loop when it upgrades
//! but keeps its slot (the socket holds it) and keeps itself alive with pings.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::config::Config;

/// Pending connections the kernel queues before `accept` (capped by net.core.somaxconn).
pub const BACKLOG: u32 = 1024;

/// Bind `addr` with the service's backlog (tokio's `TcpListener::bind` uses 128).
pub fn listen(addr: &str) -> io::Result<TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// The connection limits of a config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub grace: Duration,
}

impl Limits {
    pub fn of(cfg: &Config) -> Self {
        Limits {
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            max_connections: cfg.max_connections,
            grace: Duration::from_millis(cfg.shutdown_grace_ms),
        }
    }
}

/// Serve `app` on `listener` until `stop` resolves, then finish as the module says.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (finish, finishing) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Reap finished connections as we go: the set holds only live ones.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let finishing = finishing.clone();
        conns.spawn(connection(tcp, permit, app, limits, finishing));
    }
    drop(listener);
    let _ = finish.send(true);
    while conns.join_next().await.is_some() {}
}

async fn connection(
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    app: Router,
    limits: Limits,
    mut finishing: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: tcp,
        started,
        activity: activity.clone(),
        _slot: permit,
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    // Requests in flight on this connection: a long-poll writes nothing while it waits, and is
    // not idle. (A stalled upload is the request timeout's business: 408.)
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counted = in_flight.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let counted = counted.clone();
        let app = app.clone();
        async move {
            counted.fetch_add(1, Ordering::Relaxed);
            let res = app.oneshot(req).await;
            counted.fetch_sub(1, Ordering::Relaxed);
            res
        }
    });
    let conn = builder.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(20));
    let mut watchdog = tokio::time::interval(tick);
    let mut cut_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = finishing.changed(), if cut_at.is_none() => {
                conn.as_mut().graceful_shutdown();
                cut_at = Some(tokio::time::Instant::now() + limits.grace);
            }
            _ = watchdog.tick() => {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                let idle = in_flight.load(Ordering::Relaxed) == 0
                    && started.elapsed().saturating_sub(last) >= limits.idle_timeout;
                if idle {
                    tracing::debug!("closing an idle connection");
                    return;
                }
                if cut_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    tracing::debug!("cutting a connection after the shutdown grace");
                    return;
                }
            }
        }
    }
}

/// A TCP stream that records when bytes last moved (ms since `started`), holding its
/// connection slot for as long as the socket lives — an upgraded WebSocket included.
struct Watched {
    inner: TcpStream,
    started: Instant,
    activity: Arc<AtomicU64>,
    _slot: OwnedSemaphorePermit,
}

impl Watched {
    fn touch(&self) {
        self.activity
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
