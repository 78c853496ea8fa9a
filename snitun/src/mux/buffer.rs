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

use std::sync::Mutex;

use bytes::Bytes;

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
