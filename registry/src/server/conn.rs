//! How long one connection may keep the server waiting (`http.timeouts`). Each wait is
//! measured where the server waits on the client, so its own work (a long collection
//! behind `?wait=true`, a post-process command, a slow disk) never counts:
//!
//! - a request head: from accepting the connection (a TLS handshake included), or from
//!   the first byte of a later request, until the head is complete (`header`); between
//!   requests (`idle`): the reads of [`TimedIo`], while no request is being served (with
//!   HTTP/2, while none of the connection's streams is);
//! - a request body a handler is reading: from each read that found nothing until
//!   bytes arrive (`body`): [`TimedBody`];
//! - a response the client does not take: from each write the socket refused until it
//!   takes bytes again (`send`): the writes of [`TimedIo`].
//!
//! A wait that runs out fails that read or write with `TimedOut`, and hyper closes the
//! connection (a body that times out first reaches its handler as an error, so an
//! upload keeps what arrived).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::TimeoutsConfig;
use crate::metrics::{Metrics, WaitLabels};

/// Which wait ran out (a metrics label, and the error's text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    Header,
    Idle,
    Body,
    Send,
}

impl Wait {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Wait::Header => "header",
            Wait::Idle => "idle",
            Wait::Body => "body",
            Wait::Send => "send",
        }
    }
}

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request head since this instant (accepted, or its first byte came).
    Head(Instant),
    /// Kept alive, with no request, since this instant.
    Idle(Instant),
    /// Requests are being served (one at a time with HTTP/1.1, any number of streams
    /// with HTTP/2).
    Busy,
}

struct Inner {
    phase: Phase,
    /// Requests whose responses have not ended.
    active: u64,
    /// The task of a read that found nothing while a request was served: it armed no
    /// timer, so the end of the response arms the idle one for it.
    reader: Option<Waker>,
    /// The timer of the head and idle waits, registered with the reading task.
    read_timer: Option<Pin<Box<Sleep>>>,
}

/// What a connection's IO, its requests and its responses share.
pub(crate) struct ConnState {
    inner: Mutex<Inner>,
    timeouts: TimeoutsConfig,
    metrics: Option<Arc<Metrics>>,
}

impl ConnState {
    pub(crate) fn new(timeouts: TimeoutsConfig, metrics: Option<Arc<Metrics>>) -> Arc<ConnState> {
        Arc::new(ConnState {
            inner: Mutex::new(Inner {
                phase: Phase::Head(Instant::now()),
                active: 0,
                reader: None,
                read_timer: None,
            }),
            timeouts,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's head is complete and its handler starts.
    pub(crate) fn request_started(&self) {
        let mut i = self.lock();
        if i.active == 0 {
            IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        }
        i.active += 1;
        i.phase = Phase::Busy;
    }

    /// A request's response has ended (or was dropped; called once per request): when
    /// it was the last in flight, the connection is idle.
    ///
    /// A read that found nothing while the request was served is still registered with
    /// the socket; it only lacks the idle timer, which is armed here with its task's
    /// waker. Waking that task instead would, with HTTP/1.1, wake the very task that is
    /// ending the response: the scheduler then treats it as a yield and wakes another
    /// worker thread for every request.
    pub(crate) fn response_ended(&self) {
        let mut guard = self.lock();
        let i = &mut *guard;
        i.active = i.active.saturating_sub(1);
        if i.active == 0 && matches!(i.phase, Phase::Busy) {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            let now = Instant::now();
            i.phase = Phase::Idle(now);
            if let Some(w) = i.reader.take()
                && let Some(d) = deadline(now, self.timeouts.idle)
                && passed(&mut i.read_timer, d, &mut Context::from_waker(&w))
            {
                w.wake();
            }
        }
    }

    /// Bytes arrived: on an idle connection, a request's head has begun.
    fn bytes_read(&self) {
        let mut i = self.lock();
        if let Phase::Idle(_) = i.phase {
            i.phase = Phase::Head(Instant::now());
        }
    }

    /// The wait of a read that found nothing, if it has run out (else its timer is
    /// armed for `cx`).
    fn read_timed_out(&self, cx: &mut Context<'_>) -> Option<Wait> {
        let mut i = self.lock();
        let (d, wait) = self.read_deadline(&mut i, cx.waker())?;
        passed(&mut i.read_timer, d, cx).then_some(wait)
    }

    /// The deadline of a read that found nothing, if the connection waits for a head
    /// (else `waker` is kept, for the idle timer armed when the response ends).
    fn read_deadline(&self, i: &mut Inner, waker: &Waker) -> Option<(Instant, Wait)> {
        let (since, limit, wait) = match i.phase {
            Phase::Head(t) => (t, self.timeouts.header, Wait::Header),
            Phase::Idle(t) => (t, self.timeouts.idle, Wait::Idle),
            Phase::Busy => {
                if !i.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    i.reader = Some(waker.clone());
                }
                return None;
            }
        };
        deadline(since, limit).map(|d| (d, wait))
    }

    fn timed_out(&self, wait: Wait) -> io::Error {
        if let Some(m) = &self.metrics {
            m.http
                .timed_out
                .get_or_create(&WaitLabels { wait: wait.name() })
                .inc();
        }
        tracing::debug!(
            wait = wait.name(),
            "connection closed: the client kept it waiting"
        );
        timed_out(wait)
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        // A connection that ended while serving (the client went) ends its request.
        if let Phase::Busy = self.lock().phase {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Connections serving at least one request in this process, all servers together.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many connections of this process are serving a request (0: the process is idle).
pub fn requests_in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// `since + limit`; none for a zero limit (turned off) or one past any clock.
fn deadline(since: Instant, limit: Duration) -> Option<Instant> {
    if limit.is_zero() {
        return None;
    }
    since.checked_add(limit)
}

fn timed_out(wait: Wait) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client kept the server waiting longer than http.timeouts.{}",
            wait.name()
        ),
    )
}

/// Polls a timer set to `deadline` (made or moved as needed): whether it has passed.
fn passed(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    let t = match timer {
        Some(t) => {
            if t.deadline() != deadline {
                t.as_mut().reset(deadline);
            }
            t
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    t.as_mut().poll(cx).is_ready()
}

/// A wait for progress: from the first poll that found none since the last progress.
#[derive(Default)]
struct Stall {
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// A poll found nothing: whether it has been so for `limit` (zero: never).
    fn run_out(&mut self, limit: Duration, cx: &mut Context<'_>) -> bool {
        let Some(d) = self.deadline.or_else(|| deadline(Instant::now(), limit)) else {
            return false;
        };
        self.deadline = Some(d);
        passed(&mut self.timer, d, cx)
    }

    fn progressed(&mut self) {
        self.deadline = None;
    }
}

/// A connection's socket, with the head, idle and send waits.
pub(crate) struct TimedIo<T> {
    inner: T,
    conn: Arc<ConnState>,
    write: Stall,
}

impl<T> TimedIo<T> {
    pub(crate) fn new(inner: T, conn: Arc<ConnState>) -> TimedIo<T> {
        TimedIo {
            inner,
            conn,
            write: Stall::default(),
        }
    }

    /// A write's result: a full socket is pending, unless the client has taken
    /// nothing for `send`.
    fn wrote<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending if self.write.run_out(self.conn.timeouts.send, cx) => {
                Poll::Ready(Err(self.conn.timed_out(Wait::Send)))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.write.progressed();
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.conn.read_timed_out(cx) {
                Some(wait) => Poll::Ready(Err(this.conn.timed_out(wait))),
                None => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body with the body wait: a read that finds nothing starts the clock, and
/// bytes stop it.
pub(crate) struct TimedBody<B> {
    inner: B,
    conn: Arc<ConnState>,
    stall: Stall,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(inner: B, conn: Arc<ConnState>) -> TimedBody<B> {
        TimedBody {
            inner,
            conn,
            stall: Stall::default(),
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                this.stall.progressed();
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending if this.stall.run_out(this.conn.timeouts.body, cx) => {
                Poll::Ready(Some(Err(this.conn.timed_out(Wait::Body).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the connection when it has ended (or was dropped), once:
/// from then on the request no longer keeps the connection busy.
pub(crate) struct Ending<B> {
    inner: B,
    conn: Arc<ConnState>,
    ended: bool,
}

impl<B> Ending<B> {
    pub(crate) fn new(inner: B, conn: Arc<ConnState>) -> Ending<B> {
        Ending {
            inner,
            conn,
            ended: false,
        }
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.conn.response_ended();
        }
    }
}

impl<B: Body + Unpin> Body for Ending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.end();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Ending<B> {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waker() -> Waker {
        futures::task::noop_waker()
    }

    impl ConnState {
        fn read_wait(&self, waker: &Waker) -> Option<(Instant, Wait)> {
            self.read_deadline(&mut self.lock(), waker)
        }
    }

    /// Counts its wakes.
    struct Counting(AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn timeouts() -> TimeoutsConfig {
        TimeoutsConfig {
            header: Duration::from_secs(60),
            idle: Duration::from_secs(120),
            body: Duration::from_secs(120),
            send: Duration::from_secs(120),
        }
    }

    /// The end of a response arms the idle timer for the read that found nothing while
    /// it was served, without waking the reader (with HTTP/1.1 the reader is the task
    /// ending the response, and a wake costs a wake-up of another worker thread).
    #[tokio::test]
    async fn a_response_end_arms_the_idle_timer_without_waking_the_reader() {
        let c = ConnState::new(timeouts(), None);
        let count = Arc::new(Counting(AtomicUsize::new(0)));
        let reader = Waker::from(count.clone());
        c.request_started();
        assert!(c.read_wait(&reader).is_none(), "no timer while busy");
        c.response_ended();
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the reader was woken");
        let (idle_deadline, wait) = c.read_wait(&waker()).expect("idle");
        assert_eq!(wait, Wait::Idle);
        let armed = c.lock().read_timer.as_ref().map(|t| t.deadline());
        assert_eq!(armed, Some(idle_deadline), "the idle timer is armed");
    }

    /// HTTP/2 streams overlap: the connection is busy (no head or idle wait runs) until
    /// the last response in flight ends, whichever order they end in.
    #[tokio::test]
    async fn busy_until_the_last_request_in_flight_ends() {
        let c = ConnState::new(timeouts(), None);
        assert_eq!(c.read_wait(&waker()).map(|d| d.1), Some(Wait::Header));
        c.request_started(); // a long upload
        c.request_started(); // a short GET beside it
        c.response_ended(); // the GET ends first
        assert!(c.read_wait(&waker()).is_none(), "idle while an upload runs");
        c.response_ended();
        assert_eq!(c.read_wait(&waker()).map(|d| d.1), Some(Wait::Idle));
        // An Ending reports once, whether it ended, was dropped, or both.
        c.request_started();
        let mut e = Ending::new(http_body_util::Empty::<Bytes>::new(), c.clone());
        e.end();
        c.request_started();
        drop(e);
        assert!(c.read_wait(&waker()).is_none());
    }
}
