//! Shared helpers of the fuzz targets: a paused-clock runtime (timeouts
//! elapse at once when everything waits, so a run never sleeps) and a
//! reader that hands out its bytes in fuzzer-chosen pieces.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Run `future` to completion on a fresh current-thread runtime whose clock
/// only moves when every task waits.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(future),
        Err(err) => panic!("cannot build a runtime: {err}"),
    }
}

/// An `AsyncRead` over `data` that returns at most `piece` bytes per read
/// (at least 1), then EOF.
pub struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl<'a> Pieces<'a> {
    /// Read `data` in pieces of `piece` bytes.
    pub fn new(data: &'a [u8], piece: usize) -> Self {
        Pieces {
            data,
            piece: piece.max(1),
        }
    }
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.piece).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Split the first byte off `data` (0 for empty input).
pub fn take_byte(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, data),
    }
}
