//! The tokio runtime behind the module, asyncio awaitables over it, and
//! leaving the interpreter safely while its threads are still around.
//!
//! Awaitables: [`spawn_py`] creates an asyncio future on the running loop,
//! runs the Rust future on the runtime (the GIL is free meanwhile), and
//! completes the asyncio future through `loop.call_soon_threadsafe`.
//! Cancelling the asyncio future aborts the Rust task (dropping its
//! future).
//!
//! Exit: CPython 3.11-3.13 ends any other thread that tries to take the GIL
//! once finalization has begun (`pthread_exit`). For a tokio thread that
//! means being unwound in the middle of Rust code, dropping Python objects
//! without the GIL while the main thread's final garbage collection walks
//! them: a crash at exit (seen when a process exited right after
//! `await client.stop()`, while the thread completing that awaitable was
//! still releasing its references). So every call into Python from our
//! threads goes through [`with_python`], which counts the calls in flight,
//! and [`quiesce`], run from an `atexit` hook before finalization, closes
//! that gate and waits for the calls in flight to return.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;

/// Set by [`quiesce`]: our threads must not call into Python any more.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Calls into Python from our threads that have not returned yet.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The longest [`quiesce`] waits for calls in flight (they are short: a
/// thread waiting for the GIL gets it as soon as quiesce lets go of it).
const MAX_QUIESCE: Duration = Duration::from_secs(5);

/// The shared multi-threaded runtime, started on first use.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("snitun-rs")
        .build()
        .map_err(|err| PyRuntimeError::new_err(format!("cannot start the tokio runtime: {err}")))?;
    // Another thread may have won the race; its runtime is kept.
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Run `f` with the GIL from one of our threads, unless the interpreter is
/// exiting (then None: there is nobody left to tell).
pub(crate) fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    gated(|| Python::try_attach(f)).flatten()
}

/// Run `f`, which calls into Python, unless the interpreter is exiting;
/// [`quiesce`] waits for it to return.
pub(crate) fn gated<R>(f: impl FnOnce() -> R) -> Option<R> {
    if EXITING.load(Ordering::SeqCst) {
        return None;
    }
    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
    // quiesce() may have closed the gate between the check and the count.
    let result = if EXITING.load(Ordering::SeqCst) {
        None
    } else {
        Some(f())
    };
    IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Rust log records to Python `logging` (pyo3-log), through the gate.
pub(crate) struct GatedLogger(pub(crate) pyo3_log::Logger);

impl log::Log for GatedLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        !EXITING.load(Ordering::SeqCst) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        gated(|| self.0.log(record));
    }

    fn flush(&self) {
        gated(|| self.0.flush());
    }
}

/// An asyncio awaitable for `future`, run on the runtime.
pub(crate) fn spawn_py<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_future = event_loop.call_method0("create_future")?;
    let target = (event_loop.unbind(), py_future.clone().unbind());
    let task = runtime()?.spawn(async move {
        let result = future.await;
        with_python(move |py| {
            let (event_loop, py_future) = target;
            let outcome = result.and_then(|value| value.into_py_any(py));
            let (ok, value) = match outcome {
                Ok(value) => (true, value),
                Err(err) => (false, err.into_value(py).into_any()),
            };
            let scheduled = event_loop.call_method1(
                py,
                "call_soon_threadsafe",
                (wrap_pyfunction!(complete, py).ok(), py_future, ok, value),
            );
            // A closed loop: the awaiting code is gone.
            drop(scheduled);
        });
    });
    let on_done = AbortOnCancel {
        task: Mutex::new(Some(task.abort_handle())),
    };
    py_future.call_method1("add_done_callback", (on_done,))?;
    Ok(py_future)
}

/// Complete `future` (on the loop's thread) unless it was cancelled.
#[pyfunction]
fn complete(future: &Bound<'_, PyAny>, ok: bool, value: Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if ok {
        future.call_method1("set_result", (value,))?;
    } else {
        future.call_method1("set_exception", (value,))?;
    }
    Ok(())
}

/// Done-callback of an awaitable: a cancelled asyncio future aborts its
/// Rust task.
#[pyclass(frozen, module = "snitun_rs._snitun_rs")]
struct AbortOnCancel {
    task: Mutex<Option<AbortHandle>>,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && future.call_method0("cancelled")?.is_truthy()?
        {
            task.abort();
        }
        Ok(())
    }
}

/// Called at interpreter exit (registered with `atexit` by `snitun_rs`):
/// stop our threads' calls into Python (callbacks, completions, logging)
/// and wait, without the GIL, for the calls in flight to return.
#[pyfunction]
pub(crate) fn quiesce(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    log::set_max_level(log::LevelFilter::Off);
    let deadline = Instant::now() + MAX_QUIESCE;
    py.detach(|| {
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
