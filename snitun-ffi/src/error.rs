//! Result codes, the per-thread last error message, and the guard every
//! exported function runs its body in (errors become codes, panics never
//! cross into C).

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use snitun_core::Error as CoreError;

use crate::args::write_str;

/// The outcome of a fallible snitun function.
///
/// `SNITUN_RESULT_OK` is 0; every other value is an error, and
/// snitun_last_error() then describes it. The numeric values are part of
/// the ABI: they never change, and new codes are only ever added.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum snitun_result {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument has a bad value: bad hex, bad address, wrong length,
    /// out of range, unknown name.
    InvalidArgument = 2,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 3,
    /// The output buffer is too small; the size needed was stored through
    /// `out_n` (when given).
    BufferTooSmall = 4,
    /// The configuration is incomplete or inconsistent (for example a
    /// client without a token, a server without a Fernet key).
    InvalidConfig = 5,
    /// The call is not allowed now: for example a blocking function called
    /// from inside a library callback.
    InvalidState = 6,
    /// The operation did not finish within its time limit.
    Timeout = 7,
    /// A network error: cannot connect, cannot bind, connection reset.
    Io = 8,
    /// The server closed the connection during the handshake: it refused
    /// the token (invalid, expired, or minted with another key).
    ConnectionClosed = 9,
    /// A token or key could not be used (invalid, expired, malformed).
    Token = 10,
    /// The handshake or the protocol failed (wrong AES key, IV or cipher,
    /// a peer that does not speak SniTun).
    Protocol = 11,
    /// A panic inside the library was caught. Please report it.
    Panic = 12,
    /// Any other failure.
    Internal = 13,
}

impl snitun_result {
    /// Every code, for lookups by number.
    pub(crate) const ALL: [snitun_result; 14] = [
        snitun_result::Ok,
        snitun_result::NullArgument,
        snitun_result::InvalidArgument,
        snitun_result::InvalidUtf8,
        snitun_result::BufferTooSmall,
        snitun_result::InvalidConfig,
        snitun_result::InvalidState,
        snitun_result::Timeout,
        snitun_result::Io,
        snitun_result::ConnectionClosed,
        snitun_result::Token,
        snitun_result::Protocol,
        snitun_result::Panic,
        snitun_result::Internal,
    ];

    /// A short description, NUL-terminated.
    pub(crate) fn description(self) -> &'static str {
        match self {
            snitun_result::Ok => "success\0",
            snitun_result::NullArgument => "a required argument is NULL\0",
            snitun_result::InvalidArgument => "invalid argument\0",
            snitun_result::InvalidUtf8 => "string argument is not valid UTF-8\0",
            snitun_result::BufferTooSmall => "output buffer too small\0",
            snitun_result::InvalidConfig => "invalid or incomplete configuration\0",
            snitun_result::InvalidState => "call not allowed in this state\0",
            snitun_result::Timeout => "timed out\0",
            snitun_result::Io => "network or I/O error\0",
            snitun_result::ConnectionClosed => "connection closed by the peer\0",
            snitun_result::Token => "invalid token or key\0",
            snitun_result::Protocol => "handshake or protocol failure\0",
            snitun_result::Panic => "internal panic (a bug in snitun)\0",
            snitun_result::Internal => "internal error\0",
        }
    }
}

/// An error on its way to C: a code and a message.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) code: snitun_result,
    pub(crate) message: String,
}

/// Result of the bodies of exported functions.
pub(crate) type FfiResult<T> = Result<T, FfiError>;

impl FfiError {
    pub(crate) fn new(code: snitun_result, message: impl Into<String>) -> FfiError {
        FfiError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> FfiError {
        FfiError::new(snitun_result::NullArgument, format!("{what} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> FfiError {
        FfiError::new(snitun_result::InvalidArgument, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> FfiError {
        FfiError::new(snitun_result::InvalidConfig, message)
    }

    pub(crate) fn state(message: impl Into<String>) -> FfiError {
        FfiError::new(snitun_result::InvalidState, message)
    }

    /// A core error, with `context` in front of its message.
    pub(crate) fn core(context: &str, error: CoreError) -> FfiError {
        let code = match &error {
            CoreError::Io(_) => snitun_result::Io,
            CoreError::Timeout { .. } => snitun_result::Timeout,
            CoreError::ConnectionClosed { .. } => snitun_result::ConnectionClosed,
            CoreError::InvalidToken
            | CoreError::InvalidTokenPayload(_)
            | CoreError::MalformedToken(_)
            | CoreError::TokenExpired { .. }
            | CoreError::InvalidKey(_) => snitun_result::Token,
            CoreError::UnsupportedCipher(_) => snitun_result::InvalidArgument,
            CoreError::Config(_) => snitun_result::InvalidConfig,
            CoreError::DecryptFailed
            | CoreError::NonceExhausted
            | CoreError::InvalidUnitLength(_)
            | CoreError::ChallengeFailed
            | CoreError::InvalidClientHello(_)
            | CoreError::InvalidProxyHeader(_)
            | CoreError::FrameTooLarge { .. } => snitun_result::Protocol,
            _ => snitun_result::Internal,
        };
        FfiError::new(code, format!("{context}: {error}"))
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Remember `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // Fails only while the thread is being torn down: nothing to report to.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = message);
}

/// The text of a caught panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// Run the body of the exported function `name`: its error becomes a
/// result code and the thread's last error; a panic becomes
/// `SNITUN_RESULT_PANIC`.
pub(crate) fn guard(name: &str, body: impl FnOnce() -> FfiResult<()>) -> snitun_result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => snitun_result::Ok,
        Ok(Err(error)) => {
            set_last_error(&format!("{name}: {}", error.message));
            error.code
        }
        Err(payload) => {
            set_last_error(&format!(
                "{name}: internal panic: {}",
                panic_message(payload.as_ref())
            ));
            snitun_result::Panic
        }
    }
}

/// Run the body of an exported function that cannot report an error: a
/// panic gives `fallback` (and sets the last error).
pub(crate) fn guard_value<T>(name: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            set_last_error(&format!(
                "{name}: internal panic: {}",
                panic_message(payload.as_ref())
            ));
            fallback
        }
    }
}

/// The message of the last failed snitun call on the calling thread, as a
/// NUL-terminated string ("" when no call has failed on this thread).
///
/// The pointer stays valid until the next snitun call on the same thread
/// fails (or the thread ends); copy the text to keep it. Successful calls
/// leave the message alone, so only read it right after a call returned an
/// error.
///
/// Thread-safe (each thread has its own message); does not block.
#[unsafe(no_mangle)]
pub extern "C" fn snitun_last_error() -> *const c_char {
    guard_value("snitun_last_error", c"".as_ptr(), || {
        LAST_ERROR
            .try_with(|last| last.borrow().as_ptr())
            .unwrap_or(c"".as_ptr())
    })
}

/// Copy the message of the last failed snitun call on the calling thread
/// into `buf` (`len` bytes), NUL-terminated.
///
/// `*out_n` (if `out_n` is not NULL) receives the length of the message
/// without the NUL. With `buf` NULL nothing is copied: a size query, where
/// `out_n` is required. Returns `SNITUN_RESULT_BUFFER_TOO_SMALL` (with the
/// length in `*out_n`) when `len` is not at least that length plus one.
/// This function does not change the last error itself.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_last_error_message(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> snitun_result {
    let message = LAST_ERROR
        .try_with(|last| last.borrow().to_string_lossy().into_owned())
        .unwrap_or_default();
    match catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller passes a buffer of `len` bytes (or NULL) and
        // a valid `out_n` (or NULL).
        unsafe { write_str(&message, buf, len, out_n) }
    })) {
        Ok(Ok(())) => snitun_result::Ok,
        Ok(Err(error)) => error.code,
        Err(_) => snitun_result::Panic,
    }
}

/// A short, static, NUL-terminated English description of a result code
/// (`"unknown result code"` for a value that is not one).
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub extern "C" fn snitun_result_description(result: u32) -> *const c_char {
    let text = snitun_result::ALL
        .iter()
        .find(|code| **code as u32 == result)
        .map_or("unknown result code\0", |code| code.description());
    text.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        LAST_ERROR.with(|last| last.borrow().to_string_lossy().into_owned())
    }

    #[test]
    fn panics_become_a_result_code() {
        let result = guard("snitun_test", || panic!("boom"));
        assert_eq!(result, snitun_result::Panic);
        assert_eq!(last(), "snitun_test: internal panic: boom");
        let value = guard_value("snitun_test_value", 7, || {
            panic!("{}", String::from("bang"))
        });
        assert_eq!(value, 7);
        assert_eq!(last(), "snitun_test_value: internal panic: bang");
    }

    #[test]
    fn errors_set_the_message_and_success_keeps_it() {
        let result = guard("snitun_test", || Err(FfiError::invalid("bad\0value")));
        assert_eq!(result, snitun_result::InvalidArgument);
        assert_eq!(last(), "snitun_test: bad\\0value");
        assert_eq!(guard("snitun_test", || Ok(())), snitun_result::Ok);
        assert_eq!(last(), "snitun_test: bad\\0value");
    }

    #[test]
    fn core_errors_map_to_codes() {
        let io = CoreError::Io(std::io::Error::other("x"));
        assert_eq!(FfiError::core("c", io).code, snitun_result::Io);
        assert_eq!(
            FfiError::core("c", CoreError::ChallengeFailed).code,
            snitun_result::Protocol
        );
        assert_eq!(
            FfiError::core("c", CoreError::InvalidToken).code,
            snitun_result::Token
        );
        let error = FfiError::core("context", CoreError::Config("why".into()));
        assert_eq!(error.code, snitun_result::InvalidConfig);
        assert_eq!(error.message, "context: invalid configuration: why");
    }
}
