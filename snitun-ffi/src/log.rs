//! Log records for the host application: a minimal `tracing` subscriber
//! that hands every event at or above a chosen level to a C callback.

use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::error::{FfiError, guard, snitun_result};
use crate::runtime::{UserData, c_string};

/// Severity of a log record; also the verbosity given to
/// snitun_set_log_callback() (records up to and including that level are
/// delivered).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum snitun_log_level {
    /// No records (only as a verbosity).
    Off = 0,
    /// The library cannot do what it should (a connection failed for good).
    Error = 1,
    /// Something went wrong but the library carries on (a link ended and
    /// will be re-established, a caller was refused).
    Warn = 2,
    /// Lifecycle: connected, disconnected, server started and stopped.
    Info = 3,
    /// Per connection and per channel details.
    Debug = 4,
    /// Everything, including per frame details. Slow.
    Trace = 5,
}

impl snitun_log_level {
    fn of(level: &Level) -> snitun_log_level {
        match *level {
            Level::ERROR => snitun_log_level::Error,
            Level::WARN => snitun_log_level::Warn,
            Level::INFO => snitun_log_level::Info,
            Level::DEBUG => snitun_log_level::Debug,
            Level::TRACE => snitun_log_level::Trace,
        }
    }
}

/// Receives the library's log records.
///
/// `level` is the record's severity, `target` the module it comes from
/// (for example `"snitun::client::peer"`), `message` the text with its
/// fields appended as `key=value`. Both strings are NUL-terminated and
/// valid only during the call.
///
/// Called on library threads, possibly on several at once; it must be
/// quick, must not block, and must not call blocking snitun functions nor
/// snitun_set_log_callback() (those fail with
/// `SNITUN_RESULT_INVALID_STATE` when it does).
pub type snitun_log_callback = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        level: snitun_log_level,
        target: *const c_char,
        message: *const c_char,
    ),
>;

struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, snitun_log_level, *const c_char, *const c_char),
    userdata: UserData,
}

/// The current sink. Held for reading during each callback, so that
/// replacing it waits for callbacks in progress.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// The most verbose level delivered (0: none); also the subscriber's level
/// hint, so that records above it are skipped at their call sites.
static MAX_LEVEL: AtomicU32 = AtomicU32::new(0);
/// Whether our subscriber became the global default (tried once).
static INSTALLED: OnceLock<bool> = OnceLock::new();

thread_local! {
    /// Set while this thread runs the log callback: records it causes are
    /// dropped instead of recursing.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn in_callback() -> bool {
    IN_CALLBACK.try_with(Cell::get).unwrap_or(true)
}

/// The subscriber: events only (spans are not reported), filtered by
/// [`MAX_LEVEL`].
struct FfiSubscriber;

impl Subscriber for FfiSubscriber {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_event() {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && (snitun_log_level::of(metadata.level()) as u32) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match MAX_LEVEL.load(Ordering::Relaxed) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if in_callback() {
            return;
        }
        let metadata = event.metadata();
        let mut text = Message::default();
        event.record(&mut text);
        let target = c_string(metadata.target());
        let message = c_string(&text.finish());
        let level = snitun_log_level::of(metadata.level());
        let sink = SINK.read().unwrap_or_else(|e| e.into_inner());
        if let Some(sink) = sink.as_ref() {
            IN_CALLBACK.with(|flag| flag.set(true));
            // A panic cannot come out of C; the flag is reset either way.
            // SAFETY: the callback and userdata were given together by the
            // caller, who keeps them valid while they are installed.
            unsafe {
                (sink.callback)(sink.userdata.0, level, target.as_ptr(), message.as_ptr());
            }
            IN_CALLBACK.with(|flag| flag.set(false));
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Formats an event: the message, then every other field as `key=value`.
#[derive(Default)]
struct Message {
    message: String,
    fields: String,
}

impl Message {
    fn finish(self) -> String {
        let mut out = self.message;
        if !self.fields.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&self.fields);
        }
        out
    }

    fn field(&mut self, field: &Field) -> &mut String {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        self.fields.push_str(field.name());
        self.fields.push('=');
        &mut self.fields
    }
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.field(field).push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.field(field), "{value:?}");
        }
    }
}

/// Send the library's log records to `callback` (NULL: stop sending them).
///
/// Records at `max_level` and more severe are delivered: pass one of
/// `SNITUN_LOG_LEVEL_ERROR` .. `SNITUN_LOG_LEVEL_TRACE`, or
/// `SNITUN_LOG_LEVEL_OFF` (like a NULL callback). `userdata` is passed to
/// every call. The setting is global to the process. Once this function
/// returns, the previous callback is not running and will not be called
/// again. Without a callback the library logs nothing.
///
/// Errors: `SNITUN_RESULT_INVALID_ARGUMENT` for a level above
/// `SNITUN_LOG_LEVEL_TRACE`; `SNITUN_RESULT_INVALID_STATE` when called
/// from the log callback itself, or when another `tracing` subscriber is
/// already installed globally in this copy of the library (Rust hosts
/// linking the rlib only).
///
/// Thread-safe. Blocks only while log callbacks are running on other
/// threads.
#[unsafe(no_mangle)]
pub extern "C" fn snitun_set_log_callback(
    callback: snitun_log_callback,
    userdata: *mut c_void,
    max_level: u32,
) -> snitun_result {
    guard("snitun_set_log_callback", || {
        if max_level > snitun_log_level::Trace as u32 {
            return Err(FfiError::invalid(format!(
                "max_level {max_level} is not a snitun_log_level (0 to 5)"
            )));
        }
        if in_callback() {
            return Err(FfiError::state(
                "cannot change the log callback from inside the log callback",
            ));
        }
        let installed = *INSTALLED
            .get_or_init(|| tracing::subscriber::set_global_default(FfiSubscriber).is_ok());
        if !installed {
            return Err(FfiError::state(
                "another tracing subscriber is installed globally: log records go there",
            ));
        }
        let mut sink = SINK.write().unwrap_or_else(|e| e.into_inner());
        match callback {
            Some(callback) if max_level > 0 => {
                *sink = Some(Sink {
                    callback,
                    userdata: UserData(userdata),
                });
                MAX_LEVEL.store(max_level, Ordering::Relaxed);
            }
            _ => {
                MAX_LEVEL.store(0, Ordering::Relaxed);
                *sink = None;
            }
        }
        drop(sink);
        // Let the level checks at the call sites see the new level (below
        // it, a disabled record costs one comparison).
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}
