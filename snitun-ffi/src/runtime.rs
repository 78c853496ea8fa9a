//! The library's Tokio runtime, and the threads that deliver events to C
//! callbacks.

use std::ffi::{CString, c_void};
use std::future::Future;
use std::sync::OnceLock;
use std::thread::{JoinHandle, ThreadId};

use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use crate::error::{FfiError, FfiResult, snitun_result};

/// Worker threads of the runtime.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The runtime, started on first use; it lives until the process ends.
pub(crate) fn runtime() -> FfiResult<&'static Runtime> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("snitun-worker")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| FfiError::new(snitun_result::Internal, e.clone()))
}

/// Run `future` to completion on the runtime, blocking the calling thread.
///
/// Refused on the runtime's own threads (that is, from a log callback),
/// where blocking would stall the library or panic.
pub(crate) fn block_on<F: Future>(future: F) -> FfiResult<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(FfiError::state(
            "blocking functions cannot be called from a snitun log callback",
        ));
    }
    Ok(runtime()?.block_on(future))
}

/// The caller's `void *userdata`, handed back to its callbacks on library
/// threads (the header tells the caller it must allow that).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);

// SAFETY: the pointer is never dereferenced by the library, only passed
// back to the caller's callbacks; the header documents that callbacks run
// on library threads, so the caller makes its userdata usable from them.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// A C string for a callback argument (interior NULs shown as `\0`).
pub(crate) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

/// A thread that calls a handle's callbacks, so that they never run on the
/// runtime's workers and may call blocking snitun functions.
///
/// Dropping it stops the thread and waits for it, so no callback runs
/// after the handle is freed. Dropped on the thread itself (a callback
/// freed its own handle), it lets the thread end on its own once the
/// callback returns.
#[derive(Debug)]
pub(crate) struct EventThread {
    stop: CancellationToken,
    /// Cancelled when the thread's body has returned.
    done: CancellationToken,
    thread: Option<JoinHandle<()>>,
    id: ThreadId,
}

impl EventThread {
    /// Start a thread running `body`, which must return soon after `stop`
    /// is cancelled.
    pub(crate) fn spawn(
        name: &str,
        body: impl FnOnce(CancellationToken) + Send + 'static,
    ) -> FfiResult<EventThread> {
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let token = stop.clone();
        let finished = done.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // A panic must not take the process down with it; the
                // thread just ends (tokio logs nothing here, so say so).
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(token))).is_err() {
                    tracing::error!("snitun event thread ended by a panic");
                }
                finished.cancel();
            })
            .map_err(|e| {
                FfiError::new(
                    snitun_result::Internal,
                    format!("cannot start a thread: {e}"),
                )
            })?;
        let id = thread.thread().id();
        Ok(EventThread {
            stop,
            done,
            thread: Some(thread),
            id,
        })
    }

    /// Wait until the thread's body has returned (its last callback is
    /// over); at once when called on the thread itself, which would
    /// otherwise wait for itself.
    pub(crate) async fn finished(&self) {
        if std::thread::current().id() != self.id {
            self.done.cancelled().await;
        }
    }
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take()
            && std::thread::current().id() != self.id
        {
            let _ = thread.join();
        }
    }
}
