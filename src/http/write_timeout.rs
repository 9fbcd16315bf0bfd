//! A connection that fails its writes once they make no progress for a while: a client
//! that stops reading an answer (an export, a live stream) leaves the server's writes
//! pending until TCP gives up, which with a peer that still acknowledges is never. The
//! connection, and the export feeding it with its blocking thread and read slot, would be
//! held all that time. With this wrapper hyper sees a `TimedOut` error after
//! `--http-write-timeout` without a byte taken, and closes the connection.
//!
//! Only writes that wait count: a client reading slowly but steadily, or one idle between
//! requests (the header timeout's business), is never cut off.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` with writes that fail after `limit` without progress.
pub struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write waits; disarmed by any write that goes through.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    /// Wraps `inner`; a `limit` of zero is taken as one second.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit: limit.max(Duration::from_secs(1)),
            waiting: None,
        }
    }

    /// What a write's poll means once `inner` answered `poll`: progress disarms the timer,
    /// a wait arms it (once) and fails when it runs out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.waiting = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took no data for {}s (--http-write-timeout)",
                limit.as_secs()
            ),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_progress_resets_the_clock() {
        // A pipe whose far end takes 8 bytes and then stops reading.
        let (near, mut far) = tokio::io::duplex(8);
        let mut conn = WriteTimeout::new(near, Duration::from_secs(5));
        conn.write_all(b"12345678").await.unwrap();
        // Reading makes room: the wait before it does not count once bytes go through.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut buf = [0u8; 8];
            far.read_exact(&mut buf).await.unwrap();
            far
        });
        conn.write_all(b"abcdefgh").await.unwrap();
        let _far = reader.await.unwrap();
        let started = Instant::now();
        let err = conn.write_all(b"stalled!!").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
