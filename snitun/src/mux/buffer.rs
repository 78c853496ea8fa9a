//! Recycled read buffers for the relays.
//!
//! Why: a relay hands each read to its channel as `Bytes` without copying,
//! so every read needs memory the queues can own. Freshly allocated 64 KiB
//! blocks come back from the allocator as new pages more often than not
//! (glibc trims and re-faults them), and the profile of a bulk transfer
//! showed page faults and page clearing costing about a fifth of the
//! tunnel's CPU. Buffers handed out here return to a small free list when
//! the last `Bytes` referring to them drops, so bulk transfers reuse the
//! same hot pages.
//!
//! The free list is one per process and bounded ([`MAX_POOLED`] buffers,
//! 4 MiB): it is a cache in front of the allocator, not a limit; idle
//! processes keep at most that much.

use std::io;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Size of every pooled buffer: one full DATA frame of the default
/// `max_send_frame`.
pub(crate) const BUFFER_SIZE: usize = 64 * 1024;

/// Reads shorter than this are copied into a buffer of their own size and
/// the pooled buffer is reused at once: a small chunk must not pin 64 KiB
/// while it waits in a queue (queues count payload bytes, not capacity).
pub(crate) const SMALL_READ: usize = 8 * 1024;

/// Most buffers kept for reuse.
const MAX_POOLED: usize = 64;

/// A free list of buffers.
pub(crate) struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// The process's pool.
pub(crate) static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
        }
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // The list holds plain buffers: a panic elsewhere cannot corrupt it.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer with [`BUFFER_SIZE`] bytes of capacity.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.free_list()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
    }

    /// Return a buffer for reuse (dropped if the list is full or the buffer
    /// is not one of ours).
    pub(crate) fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() != BUFFER_SIZE {
            return;
        }
        buf.clear();
        let mut free = self.free_list();
        if free.len() < MAX_POOLED {
            free.push(buf);
        }
    }

    /// The filled part of `buf` as `Bytes`: without copying when it is
    /// large (the buffer comes back here once every `Bytes` of it is gone),
    /// as a copy when it is small (the buffer is reused at once).
    pub(crate) fn freeze(&'static self, buf: Vec<u8>) -> Bytes {
        if buf.len() < SMALL_READ {
            let bytes = Bytes::copy_from_slice(&buf);
            self.give_back(buf);
            bytes
        } else {
            Bytes::from_owner(Pooled { buf, pool: self })
        }
    }
}

impl Pool {
    /// One read from `stream` (which must have reported readiness) into a
    /// pooled buffer: the bytes read, empty at EOF; `WouldBlock` when the
    /// readiness was stale.
    ///
    /// A read that does not fill the buffer has drained the socket (a TCP
    /// receive returns less than asked only when its queue is empty), so
    /// the socket's readiness is cleared at once instead of by one more
    /// read failing with `WouldBlock`: one system call less per burst,
    /// about a sixth of the calls of a small round trip. Data arriving
    /// later raises readiness again (epoll is edge-triggered here, and
    /// tokio ignores a clear that raced with a newer event).
    pub(crate) fn read_from(&'static self, stream: &TcpStream) -> io::Result<Bytes> {
        let mut buf = self.take();
        let mut drained = false;
        let read = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(&mut buf)?;
            if n > 0 && buf.len() < buf.capacity() {
                drained = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match read {
            Ok(n) if n > 0 => Ok(self.freeze(buf)),
            Err(e) if drained && e.kind() == io::ErrorKind::WouldBlock => Ok(self.freeze(buf)),
            other => {
                self.give_back(buf);
                other.map(|_| Bytes::new())
            }
        }
    }
}

/// Owns a pooled buffer inside a `Bytes`; gives it back on drop.
struct Pooled {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_bytes_drops() {
        static PRIVATE: Pool = Pool::new();
        let mut buf = PRIVATE.take();
        assert_eq!(buf.capacity(), BUFFER_SIZE);
        buf.extend_from_slice(&[7u8; SMALL_READ]);
        let ptr = buf.as_ptr();
        let bytes = PRIVATE.freeze(buf);
        let tail = bytes.slice(100..);
        drop(bytes);
        assert_eq!(tail.len(), SMALL_READ - 100);
        assert!(PRIVATE.free_list().is_empty(), "still referenced");
        drop(tail);
        let again = PRIVATE.take();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }

    #[tokio::test]
    async fn a_short_read_clears_readiness_and_new_data_raises_it() {
        use std::future::poll_fn;
        use std::time::Duration;
        use tokio::io::AsyncWriteExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut writer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (reader, _) = listener.accept().await.unwrap();
        let wait_readable = || tokio::time::timeout(Duration::from_secs(5), reader.readable());
        for round in 0..3u8 {
            writer.write_all(&[round; 100]).await.unwrap();
            wait_readable().await.unwrap().unwrap();
            let got = POOL.read_from(&reader).unwrap();
            assert_eq!(&got[..], &[round; 100][..]);
            // Drained: not ready any more, without a read that failed.
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            assert!(
                reader.poll_read_ready(&mut cx).is_pending(),
                "round {round}"
            );
        }
        // More than a buffer: the first read fills it and keeps readiness.
        let big = vec![9u8; BUFFER_SIZE + 10];
        writer.write_all(&big).await.unwrap();
        let mut total = 0;
        while total < big.len() {
            poll_fn(|cx| reader.poll_read_ready(cx)).await.unwrap();
            match POOL.read_from(&reader) {
                Ok(got) => total += got.len(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(total, big.len());
        drop(writer);
        wait_readable().await.unwrap().unwrap();
        assert!(POOL.read_from(&reader).unwrap().is_empty(), "EOF");
    }

    #[test]
    fn small_reads_are_copied_and_foreign_buffers_not_kept() {
        static PRIVATE: Pool = Pool::new();
        let mut buf = PRIVATE.take();
        buf.extend_from_slice(b"hello");
        let bytes = PRIVATE.freeze(buf);
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(PRIVATE.free_list().len(), 1, "reused at once");
        PRIVATE.give_back(Vec::with_capacity(10));
        assert_eq!(PRIVATE.free_list().len(), 1);
    }
}
