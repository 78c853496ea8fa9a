//! Checked conversions of C arguments: strings, byte buffers, handles,
//! output pointers and output buffers, and address validation.

use std::ffi::{CStr, c_char};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::error::{FfiError, FfiResult, snitun_result};

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: not NULL, and NUL-terminated per the contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|_| {
        FfiError::new(
            snitun_result::InvalidUtf8,
            format!("{what} is not valid UTF-8"),
        )
    })
}

/// A byte buffer argument of `len` bytes.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn bytes_arg<'a>(ptr: *const u8, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: not NULL, `len` bytes per the contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A handle argument for reading.
///
/// # Safety
/// `ptr` is NULL or a live handle of this type.
pub(crate) unsafe fn handle_ref<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: NULL or a live handle per the contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(what))
}

/// A handle argument for changing.
///
/// # Safety
/// `ptr` is NULL or a live handle of this type, not used elsewhere during
/// the call.
pub(crate) unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> FfiResult<&'a mut T> {
    // SAFETY: NULL or a live, exclusively used handle per the contract.
    unsafe { ptr.as_mut() }.ok_or_else(|| FfiError::null(what))
}

/// Check an output pointer and clear what it points to, so that the caller
/// finds NULL there after any failure.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
pub(crate) unsafe fn out_ptr<'a, T>(out: *mut *mut T, what: &str) -> FfiResult<&'a mut *mut T> {
    // SAFETY: NULL or writable per the contract.
    let out = unsafe { out.as_mut() }.ok_or_else(|| FfiError::null(what))?;
    *out = std::ptr::null_mut();
    Ok(out)
}

/// Store `value` through a checked output pointer as a new handle.
pub(crate) fn give<T>(out: &mut *mut T, value: T) {
    *out = Box::into_raw(Box::new(value));
}

/// Free a handle made by [`give`]; NULL is a no-op.
///
/// # Safety
/// `ptr` is NULL or a handle from [`give`] of this type, not freed before
/// and not in use by another thread.
pub(crate) unsafe fn free_handle<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: made by `Box::into_raw` and owned by the caller.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Copy `text` into the caller's buffer, NUL-terminated (see the header's
/// "Output strings" rules).
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `out_n` is NULL or writable.
pub(crate) unsafe fn write_str(
    text: &str,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> FfiResult<()> {
    // SAFETY: NULL or writable per the contract.
    let out_n = unsafe { out_n.as_mut() };
    if buf.is_null() {
        let Some(out_n) = out_n else {
            return Err(FfiError::null("buf and out_n"));
        };
        *out_n = text.len();
        return Ok(());
    }
    if let Some(out_n) = out_n {
        *out_n = text.len();
    }
    if len <= text.len() {
        return Err(FfiError::new(
            snitun_result::BufferTooSmall,
            format!(
                "the buffer holds {len} bytes, {} are needed (NUL included)",
                text.len() + 1
            ),
        ));
    }
    // SAFETY: `buf` is writable for `len > text.len()` bytes; the source
    // is a distinct Rust string.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

/// Copy `bytes` into the caller's buffer of `len` bytes, which must hold
/// them all.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
pub(crate) unsafe fn write_bytes(bytes: &[u8], buf: *mut u8, len: usize) -> FfiResult<()> {
    if buf.is_null() {
        return Err(FfiError::null("buf"));
    }
    if len < bytes.len() {
        return Err(FfiError::new(
            snitun_result::BufferTooSmall,
            format!("the buffer holds {len} bytes, {} are needed", bytes.len()),
        ));
    }
    // SAFETY: `buf` is writable for at least `bytes.len()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
    Ok(())
}

/// Check a `host:port` to connect to: a DNS name or IPv4 literal with an
/// optional port, an IPv6 literal in brackets with an optional port, or a
/// bare IPv6 literal. A missing port is allowed (the library's default is
/// used); port 0 is not.
pub(crate) fn check_host_port(text: &str, what: &str) -> FfiResult<()> {
    let bad = |why: &str| FfiError::invalid(format!("{what} {text:?}: {why}"));
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(bad("missing ']'"));
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in brackets"));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(bad("unexpected text after ']'")),
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(text), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let valid = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid {
            return Err(bad(
                "the host must be a DNS name, an IPv4 address or an IPv6 address in brackets",
            ));
        }
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(0) => return Err(bad("port 0")),
            Ok(_) => {}
            Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
        }
    }
    Ok(())
}

/// Parse a listen address: `IPv4:port` or `[IPv6]:port` (port 0 picks a
/// free port).
pub(crate) fn parse_listen_addr(text: &str, what: &str) -> FfiResult<SocketAddr> {
    text.parse().map_err(|_| {
        FfiError::invalid(format!(
            "{what} {text:?}: expected IPv4:port or [IPv6]:port (port 0 picks a free port)"
        ))
    })
}

/// Parse hex of exactly `N` bytes.
pub(crate) fn parse_hex<const N: usize>(text: &str, what: &str) -> FfiResult<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
        FfiError::invalid(format!("{what}: expected {} hex digits ({N} bytes)", N * 2))
    })?;
    Ok(out)
}

/// Exactly `N` bytes.
pub(crate) fn fixed_bytes<const N: usize>(bytes: &[u8], what: &str) -> FfiResult<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| FfiError::invalid(format!("{what}: expected {N} bytes, got {}", bytes.len())))
}

/// A timeout in milliseconds; `u64::MAX` is no limit (`None`).
pub(crate) fn limit(ms: u64) -> Option<std::time::Duration> {
    (ms != u64::MAX).then(|| std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_checks() {
        for good in [
            "localhost",
            "localhost:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "::1",
            "[::1]",
            "[::1]:65535",
            "device.example.org:443",
            "under_score.example:1",
        ] {
            assert!(check_host_port(good, "x").is_ok(), "{good}");
        }
        for bad in [
            "",
            ":80",
            "host:",
            "host:0",
            "host:65536",
            "host:http",
            "ho st:80",
            "[::1",
            "[::1]x",
            "[nope]:80",
            "a:b:c",
            "host/path:80",
        ] {
            assert!(check_host_port(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_and_lengths() {
        assert_eq!(parse_hex::<2>("0aFF", "k").unwrap(), [0x0a, 0xff]);
        assert!(parse_hex::<2>("0aF", "k").is_err());
        assert!(parse_hex::<2>("0aFFaa", "k").is_err());
        assert!(parse_hex::<2>("zzzz", "k").is_err());
        assert!(fixed_bytes::<3>(&[1, 2], "k").is_err());
        assert_eq!(fixed_bytes::<2>(&[1, 2], "k").unwrap(), [1, 2]);
    }
}
