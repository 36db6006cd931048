//! The HTTP/1.1 server under the router, hardened against slow and hostile clients.
//!
//! An accept loop hands each connection to hyper's HTTP/1 connection with a timer, under a
//! bound on connections served at once ([`ServerLimits::max_connections`]). Per connection:
//!
//! - the request head must arrive within `header_timeout` (hyper's `header_read_timeout`, which
//!   runs from the connection's start or the end of its previous response, so a client that
//!   dribbles header bytes is disconnected when it runs out);
//! - a request body must arrive whole within `body_timeout` of its head ([`DeadlineBody`]: a
//!   total deadline, which dribbling cannot extend); reading it then fails with [`BodyTimeout`],
//!   answered `408 body_timeout` by the JSON extractor;
//! - a kept-alive connection with no request in flight and no byte of a next request is closed
//!   after `idle_timeout`;
//! - a response write that stays blocked for `write_timeout` (the client stopped reading) drops
//!   the connection.
//!
//! There is no timeout on responses themselves: live log streams (SSE) last as long as their
//! step. A connection over the bound is answered `503 too_many_connections` (with
//! `Retry-After`) and closed; a few of those are served at once, the rest are dropped. On
//! shutdown the listener closes, every connection finishes its request in flight and closes
//! (live log streams end), and whatever is still open after [`SHUTDOWN_GRACE`] is dropped.

use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::limits::ServerLimits;
use crate::problem::ApiError;

/// How long shutdown waits for open connections to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Connections over the bound answered with a 503 at once; beyond, they are just closed.
const MAX_REJECTING: usize = 64;
/// How long answering an over-the-bound connection may take.
const REJECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head (request line and headers; larger is a bare 431) and read buffer.
const MAX_HEAD: usize = 64 << 10;
const MAX_BUF: usize = 64 << 10;
const MAX_HEADERS: usize = 100;

/// The error of a request body that missed its deadline (`--body-timeout`).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
pub struct BodyTimeout(pub Duration);

/// A request body that must end before a deadline fixed when the head arrived.
pub(crate) struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    pub(crate) fn new(inner: Body, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection is doing, for its idle and write-stall watch.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the last request ended (or the connection started).
    idle_since: AtomicU64,
    /// A byte arrived since the connection went idle (a next request has begun).
    read_since_idle: AtomicBool,
    /// Milliseconds since `epoch` + 1 when a write began to block; 0 while writes go through.
    write_blocked_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            read_since_idle: AtomicBool::new(false),
            write_blocked_since: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// When the connection is to be closed for being idle, if it is idle.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        (self.in_flight.load(Ordering::SeqCst) == 0 && !self.read_since_idle.load(Ordering::SeqCst))
            .then(|| self.at(self.idle_since.load(Ordering::SeqCst)) + idle)
    }

    /// When a blocked write is to give up, if one is blocked.
    fn write_deadline(&self, limit: Duration) -> Option<Instant> {
        match self.write_blocked_since.load(Ordering::SeqCst) {
            0 => None,
            since => Some(self.at(since - 1) + limit),
        }
    }
}

/// A request in flight on a connection; when its response body is done, the connection may
/// become idle.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.read_since_idle.store(false, Ordering::SeqCst);
            a.idle_since.store(a.now_ms(), Ordering::SeqCst);
        }
    }
}

/// A response body that keeps its request [`Busy`] until it is done.
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TCP stream of a connection, noting reads and blocked writes in its [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn wrote<T>(&self, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        let blocked = &self.activity.write_blocked_since;
        match poll {
            Poll::Pending => {
                if blocked.load(Ordering::SeqCst) == 0 {
                    blocked.store(self.activity.now_ms() + 1, Ordering::SeqCst);
                }
            }
            Poll::Ready(_) => blocked.store(0, Ordering::SeqCst),
        }
        poll
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read_since_idle.store(true, Ordering::SeqCst);
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serve `router` on `listener` until `shutdown` is cancelled, then drain the connections for
/// at most [`SHUTDOWN_GRACE`].
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let tracker = TaskTracker::new();
    let limits = Arc::new(limits);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or similar: wait instead of spinning.
                    tracing::error!(target: "errors.api", "cannot accept connections: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let Ok(permit) = connections.clone().try_acquire_owned() {
            tracker.spawn(connection(
                stream,
                router.clone(),
                limits.clone(),
                shutdown.clone(),
                permit,
            ));
        } else if let Ok(permit) = rejecting.clone().try_acquire_owned() {
            tracker.spawn(reject(stream, limits.max_connections, permit));
        } else {
            drop(stream);
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(target: "app.backend", "connections still open after {SHUTDOWN_GRACE:?} of shutdown are dropped");
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serve one connection under the limits; `_permit` holds its place under the bound.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Arc<ServerLimits>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |req: Request<Incoming>| {
            let busy = Busy::new(activity.clone());
            let router = router.clone();
            async move {
                let req = req.map(|b| Body::new(DeadlineBody::new(Body::new(b), body_timeout)));
                let Ok(response) = router.oneshot(req).await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _busy: busy }))
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_BUF)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut closing = false;
    loop {
        let now = Instant::now();
        let idle = activity
            .idle_deadline(limits.idle_timeout)
            .filter(|_| !closing);
        let stalled = activity.write_deadline(limits.write_timeout);
        // Look again at least every idle timeout: the state changes under us.
        let wake = [idle, stalled]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + limits.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(target: "app.backend", "connection ended: {e}");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if activity.write_deadline(limits.write_timeout).is_some_and(|d| d <= now) {
                    tracing::debug!(target: "app.backend", "closing a connection whose client stopped reading");
                    return;
                }
                if !closing && activity.idle_deadline(limits.idle_timeout).is_some_and(|d| d <= now) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Answer a connection over the bound with a 503 problem and close it.
async fn reject(stream: TcpStream, max: usize, _permit: OwnedSemaphorePermit) {
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        let response = axum::response::IntoResponse::into_response(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "the server is serving its maximum of {max} connections (`--max-connections`); \
                     retry shortly"
                ),
            )
            .with_retry_after(1),
        );
        Ok::<_, Infallible>(response)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REJECT_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_BUF)
        .max_header_size(MAX_HEAD);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REJECT_TIMEOUT, conn).await;
}
