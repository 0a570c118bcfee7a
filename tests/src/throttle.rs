//! A stream wrapper that limits how fast the server writes: the lab's stand-in for a censor's
//! traffic shaper. It slows everything the server sends, TLS handshake included, as SNI-based
//! throttling in Kazakhstan did (handshakes took over 4 s).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How much the wrapper writes at once, in seconds' worth of the rate.
const QUANTUM_SECS: u64 = 20; // 1/20 s

/// Passes reads through; paces writes at `rate` bytes per second once one is set.
#[derive(Debug)]
pub struct Throttled<S> {
    inner: S,
    rate: Option<u64>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    /// Wraps `inner` with no limit.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rate: None,
            pause: None,
        }
    }

    /// Limits writes to `bytes_per_sec` (at least 1), or lifts the limit with `None`.
    pub fn set_rate(&mut self, bytes_per_sec: Option<u64>) {
        self.rate = bytes_per_sec.map(|rate| rate.max(1));
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(rate) = this.rate else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let quantum = usize::try_from(rate / QUANTUM_SECS)
            .unwrap_or(usize::MAX)
            .max(1);
        let written =
            ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..buf.len().min(quantum)]))?;
        // Pay for what was written before the next write: the average never exceeds `rate`.
        let cost = Duration::from_secs_f64(written as f64 / rate as f64);
        this.pause = Some(Box::pin(tokio::time::sleep(cost)));
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
