//! Copies bytes both ways between two connections (an upgraded WebSocket) without holding a
//! buffer while idle.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per connection for its whole life:
//! 16 KiB for each idle WebSocket. Here each direction reads into a buffer on the stack of the
//! poll, writes it on at once, and only keeps on the heap what the writer did not take yet
//! (freed as soon as it is written). An idle connection holds no buffer at all. Half-closes are
//! passed on: EOF from one side shuts down writing to the other, and the splice ends when both
//! directions have.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per poll of one direction.
const CHUNK: usize = 16 * 1024;

/// Copies `a` to `b` and `b` to `a` until both reach EOF. Returns the bytes copied each way.
pub async fn splice<A, B>(mut a: A, mut b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll(cx, &mut a, &mut b)?;
        let ba = b_to_a.poll(cx, &mut b, &mut a)?;
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(Ok((a_to_b.copied, b_to_a.copied)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction of a splice.
#[derive(Default)]
struct Direction {
    /// Read but not yet written (empty, with no allocation, most of the time).
    pending: Vec<u8>,
    /// How much of `pending` is written.
    written: usize,
    /// Written since the last flush.
    need_flush: bool,
    /// The reader reached EOF.
    eof: bool,
    /// EOF was passed on.
    done: bool,
    copied: u64,
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }

            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut *r).poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.copied += n as u64;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = data[off..].to_vec();
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn copies_both_ways_through_small_pipes_and_passes_eof_on() {
        // Pipes smaller than a message force partial writes and pending data.
        let (mut client, proxy_a) = duplex(1000);
        let (proxy_b, mut server) = duplex(700);
        let task = tokio::spawn(splice(proxy_a, proxy_b));

        let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move {
            let mut got = Vec::new();
            let (mut rd, mut wr) = tokio::io::split(&mut server);
            let write = async {
                wr.write_all(&down2).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let read = async { rd.read_to_end(&mut got).await.unwrap() };
            tokio::join!(write, read);
            assert_eq!(got, up2);
        });
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let mut got = Vec::new();
        let write = async {
            wr.write_all(&up).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let read = async { rd.read_to_end(&mut got).await.unwrap() };
        tokio::join!(write, read);
        assert_eq!(got, down);
        server_side.await.unwrap();
        let (ab, ba) = task.await.unwrap().unwrap();
        assert_eq!((ab, ba), (up.len() as u64, down.len() as u64));
    }
}
