//! The C API called from Rust: argument checking, result codes, last
//! error, NULL frees, and a whole tunnel (server, client, endpoint, caller)
//! on loopback through the extern functions alone.

use std::ffi::{CStr, CString, c_char, c_void};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ptr::{null, null_mut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The ClientHello layout the core crate's tests use.
#[path = "../../../snitun/tests/support/mod.rs"]
mod support;
use support::client_hello;

use crate::*;

const LIMIT: Duration = Duration::from_secs(60);
const LIMIT_MS: u64 = 60_000;

fn last_error() -> String {
    // SAFETY: the library returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(snitun_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Assert `result` is `expected`, and on error that the last error names
/// something in `needle`.
#[track_caller]
fn check(result: snitun_result, expected: snitun_result, needle: &str) {
    assert_eq!(result, expected, "last error: {}", last_error());
    if expected != snitun_result::Ok {
        let message = last_error();
        assert!(
            message.contains(needle),
            "last error {message:?} does not mention {needle:?}"
        );
    }
}

#[track_caller]
fn ok(result: snitun_result) {
    check(result, snitun_result::Ok, "");
}

fn cstring(text: &str) -> CString {
    CString::new(text).unwrap()
}

/// A string that is not UTF-8.
const NOT_UTF8: &[u8] = b"\xff\xfe\0";

fn not_utf8() -> *const c_char {
    NOT_UTF8.as_ptr().cast()
}

/// Read a string through a getter with the size-query convention.
fn read_string(get: impl Fn(*mut c_char, usize, *mut usize) -> snitun_result) -> String {
    let mut n = 0usize;
    ok(get(null_mut(), 0, &mut n));
    let mut buf = vec![0 as c_char; n + 1];
    let mut written = 0usize;
    ok(get(buf.as_mut_ptr(), buf.len(), &mut written));
    assert_eq!(written, n);
    // SAFETY: NUL-terminated by the library.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

fn fernet_key() -> String {
    read_string(|buf, len, n| unsafe { snitun_fernet_key_generate(buf, len, n) })
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn version_and_result_descriptions() {
    let version = unsafe { CStr::from_ptr(snitun_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    for code in 0..14u32 {
        let text = unsafe { CStr::from_ptr(snitun_result_description(code)) };
        assert!(!text.to_bytes().is_empty());
        assert_ne!(text.to_str().unwrap(), "unknown result code", "{code}");
    }
    let text = unsafe { CStr::from_ptr(snitun_result_description(9999)) };
    assert_eq!(text.to_str().unwrap(), "unknown result code");
}

#[test]
fn freeing_null_does_nothing() {
    unsafe {
        snitun_client_config_free(null_mut());
        snitun_client_free(null_mut());
        snitun_server_config_free(null_mut());
        snitun_server_free(null_mut());
        snitun_string_list_free(null_mut());
        snitun_token_config_free(null_mut());
        snitun_token_free(null_mut());
    }
    // Queries on NULL handles give neutral values.
    unsafe {
        assert!(!snitun_client_is_connected(null()));
        assert_eq!(snitun_server_peer_count(null()), 0);
        assert_eq!(snitun_server_bound_count(null(), 0), 0);
        assert_eq!(snitun_string_list_len(null()), 0);
        assert!(snitun_string_list_get(null(), 0).is_null());
        assert_eq!(snitun_token_valid_until(null()), 0.0);
    }
}

#[test]
fn fernet_keys_and_output_buffers() {
    let key = fernet_key();
    assert_eq!(key.len(), SNITUN_FERNET_KEY_LEN);
    assert_ne!(key, fernet_key());

    let mut n = 0usize;
    let mut small = [0 as c_char; 44];
    check(
        unsafe { snitun_fernet_key_generate(small.as_mut_ptr(), small.len(), &mut n) },
        snitun_result::BufferTooSmall,
        "45 are needed",
    );
    assert_eq!(n, 44);
    assert!(
        small.iter().all(|c| *c == 0),
        "a short buffer stays untouched"
    );
    // No buffer and no out_n: nothing to answer with.
    check(
        unsafe { snitun_fernet_key_generate(null_mut(), 0, null_mut()) },
        snitun_result::NullArgument,
        "snitun_fernet_key_generate",
    );
    // out_n is optional with a buffer.
    let mut buf = [0 as c_char; 64];
    ok(unsafe { snitun_fernet_key_generate(buf.as_mut_ptr(), buf.len(), null_mut()) });
    assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes().len(), 44);
}

#[test]
fn last_error_message_is_per_thread_and_sized() {
    check(
        unsafe { snitun_client_config_new(null(), null_mut()) },
        snitun_result::NullArgument,
        "snitun_client_config_new: out is NULL",
    );
    let message = read_string(|buf, len, n| unsafe { snitun_last_error_message(buf, len, n) });
    assert_eq!(message, last_error());
    let mut n = 0usize;
    let mut tiny = [0 as c_char; 4];
    assert_eq!(
        unsafe { snitun_last_error_message(tiny.as_mut_ptr(), tiny.len(), &mut n) },
        snitun_result::BufferTooSmall
    );
    assert_eq!(n, message.len());
    // Reading it does not change it; another thread has its own.
    assert_eq!(last_error(), message);
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
}

#[test]
fn token_config_checks_and_minting() {
    let mut config = null_mut();
    check(
        unsafe { snitun_token_config_new(null_mut()) },
        snitun_result::NullArgument,
        "out is NULL",
    );
    ok(unsafe { snitun_token_config_new(&mut config) });
    let mut token = null_mut();
    check(
        unsafe { snitun_token_mint(config, &mut token) },
        snitun_result::InvalidConfig,
        "no Fernet key",
    );
    assert!(token.is_null());
    check(
        unsafe { snitun_token_config_set_fernet_key(config, c"not a key".as_ptr()) },
        snitun_result::InvalidArgument,
        "not a Fernet key",
    );
    check(
        unsafe { snitun_token_config_set_fernet_key(config, not_utf8()) },
        snitun_result::InvalidUtf8,
        "fernet_key is not valid UTF-8",
    );
    check(
        unsafe { snitun_token_config_set_fernet_key(null_mut(), c"x".as_ptr()) },
        snitun_result::NullArgument,
        "config is NULL",
    );
    let key = cstring(&fernet_key());
    ok(unsafe { snitun_token_config_set_fernet_key(config, key.as_ptr()) });
    check(
        unsafe { snitun_token_mint(config, &mut token) },
        snitun_result::InvalidConfig,
        "no hostname",
    );
    check(
        unsafe { snitun_token_config_set_hostname(config, c"  ".as_ptr()) },
        snitun_result::InvalidArgument,
        "hostname is empty",
    );
    ok(unsafe { snitun_token_config_set_hostname(config, c"device.test".as_ptr()) });
    ok(unsafe { snitun_token_config_add_alias(config, c"alias.test".as_ptr()) });
    check(
        unsafe { snitun_token_config_set_cipher(config, c"rot13".as_ptr()) },
        snitun_result::InvalidArgument,
        "unknown cipher",
    );
    ok(unsafe { snitun_token_config_set_cipher(config, c"aes-gcm".as_ptr()) });
    check(
        unsafe { snitun_token_config_set_protocol_version(config, 3) },
        snitun_result::InvalidArgument,
        "protocol version 3",
    );
    ok(unsafe { snitun_token_config_set_protocol_version(config, 1) });
    ok(unsafe { snitun_token_config_set_valid_seconds(config, 3600) });
    check(
        unsafe { snitun_token_mint(config, null_mut()) },
        snitun_result::NullArgument,
        "out is NULL",
    );
    ok(unsafe { snitun_token_mint(config, &mut token) });
    assert!(!token.is_null());

    let text = read_string(|buf, len, n| unsafe { snitun_token_string(token, buf, len, n) });
    assert!(text.starts_with("gAAAAA"), "{text}");
    let key_hex =
        read_string(|buf, len, n| unsafe { snitun_token_aes_key_hex(token, buf, len, n) });
    let iv_hex = read_string(|buf, len, n| unsafe { snitun_token_aes_iv_hex(token, buf, len, n) });
    assert_eq!(key_hex.len(), 64);
    assert_eq!(iv_hex.len(), 32);
    let mut aes_key = [0u8; 32];
    let mut aes_iv = [0u8; 16];
    check(
        unsafe { snitun_token_aes_key(token, aes_key.as_mut_ptr(), 31) },
        snitun_result::BufferTooSmall,
        "32 are needed",
    );
    check(
        unsafe { snitun_token_aes_iv(token, null_mut(), 16) },
        snitun_result::NullArgument,
        "buf is NULL",
    );
    ok(unsafe { snitun_token_aes_key(token, aes_key.as_mut_ptr(), aes_key.len()) });
    ok(unsafe { snitun_token_aes_iv(token, aes_iv.as_mut_ptr(), aes_iv.len()) });
    assert_eq!(hex_of(&aes_key), key_hex);
    assert_eq!(hex_of(&aes_iv), iv_hex);
    let valid = unsafe { snitun_token_valid_until(token) };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((valid - now - 3600.0).abs() < 60.0, "{valid} vs {now}");

    // The token opens with the key and carries what was configured.
    let ring = snitun_core::token::KeyRing::from_strings([key.to_str().unwrap()]).unwrap();
    let payload = String::from_utf8(ring.decrypt(text.as_bytes()).unwrap()).unwrap();
    assert!(
        payload.contains("\"hostname\": \"device.test\""),
        "{payload}"
    );
    assert!(payload.contains("\"alias\": [\"alias.test\"]"), "{payload}");
    assert!(payload.contains("\"cipher\": \"aes-gcm\""), "{payload}");
    assert!(payload.contains("\"protocol_version\": 1"), "{payload}");
    assert!(payload.contains(&key_hex), "{payload}");

    unsafe {
        snitun_token_free(token);
        snitun_token_config_free(config);
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn client_config_checks() {
    let mut config = null_mut();
    check(
        unsafe { snitun_client_config_new(null(), &mut config) },
        snitun_result::NullArgument,
        "server is NULL",
    );
    for bad in [
        "",
        "host:0",
        "host:99999",
        "host:port",
        "two words:80",
        "[::1:80",
    ] {
        let text = cstring(bad);
        check(
            unsafe { snitun_client_config_new(text.as_ptr(), &mut config) },
            snitun_result::InvalidArgument,
            "server",
        );
        assert!(config.is_null());
    }
    check(
        unsafe { snitun_client_config_new(not_utf8(), &mut config) },
        snitun_result::InvalidUtf8,
        "server is not valid UTF-8",
    );
    ok(unsafe { snitun_client_config_new(c"127.0.0.1:1".as_ptr(), &mut config) });

    let mut client = null_mut();
    check(
        unsafe { snitun_client_connect(config, 1000, &mut client) },
        snitun_result::InvalidConfig,
        "no token",
    );
    check(
        unsafe { snitun_client_config_set_token(config, c" ".as_ptr()) },
        snitun_result::InvalidArgument,
        "token is empty",
    );
    ok(unsafe { snitun_client_config_set_token(config, c"gAAAAAtoken\n".as_ptr()) });
    check(
        unsafe { snitun_client_connect(config, 1000, &mut client) },
        snitun_result::InvalidConfig,
        "no AES key",
    );
    let key = [7u8; 32];
    check(
        unsafe { snitun_client_config_set_aes_key(config, key.as_ptr(), 31) },
        snitun_result::InvalidArgument,
        "expected 32 bytes, got 31",
    );
    check(
        unsafe { snitun_client_config_set_aes_key(config, null(), 32) },
        snitun_result::NullArgument,
        "key is NULL",
    );
    check(
        unsafe { snitun_client_config_set_aes_iv(config, key.as_ptr(), 32) },
        snitun_result::InvalidArgument,
        "expected 16 bytes, got 32",
    );
    check(
        unsafe { snitun_client_config_set_aes_key_hex(config, c"abcd".as_ptr()) },
        snitun_result::InvalidArgument,
        "64 hex digits",
    );
    let not_hex = cstring(&"zz".repeat(32));
    check(
        unsafe { snitun_client_config_set_aes_key_hex(config, not_hex.as_ptr()) },
        snitun_result::InvalidArgument,
        "64 hex digits",
    );
    check(
        unsafe { snitun_client_config_set_aes_iv_hex(config, not_utf8()) },
        snitun_result::InvalidUtf8,
        "iv_hex",
    );
    ok(unsafe { snitun_client_config_set_aes_key(config, key.as_ptr(), 32) });
    let iv_hex = cstring(&"0f".repeat(16));
    ok(unsafe { snitun_client_config_set_aes_iv_hex(config, iv_hex.as_ptr()) });
    check(
        unsafe { snitun_client_connect(config, 1000, &mut client) },
        snitun_result::InvalidConfig,
        "no endpoint",
    );
    check(
        unsafe { snitun_client_config_set_endpoint(config, c"local host:80".as_ptr()) },
        snitun_result::InvalidArgument,
        "endpoint",
    );
    ok(unsafe { snitun_client_config_set_endpoint(config, c"[::1]:8123".as_ptr()) });
    ok(unsafe { snitun_client_config_set_endpoint(config, c"localhost".as_ptr()) });

    check(
        unsafe { snitun_client_config_set_cipher(config, c"des".as_ptr()) },
        snitun_result::InvalidArgument,
        "unknown cipher",
    );
    ok(unsafe { snitun_client_config_set_cipher(config, c"aes-gcm-siv".as_ptr()) });
    check(
        unsafe { snitun_client_config_set_protocol_version(config, 9) },
        snitun_result::InvalidArgument,
        "protocol version 9",
    );
    ok(unsafe { snitun_client_config_set_protocol_version(config, 0) });

    check(
        unsafe { snitun_client_config_add_allowed_network(config, c"10.0.0.0/33".as_ptr()) },
        snitun_result::InvalidArgument,
        "10.0.0.0/33",
    );
    ok(unsafe { snitun_client_config_add_allowed_network(config, c"10.0.0.0/8".as_ptr()) });
    ok(unsafe { snitun_client_config_add_allowed_network(config, c"2001:db8::1".as_ptr()) });
    check(
        unsafe { snitun_client_config_add_blocked_network(config, c"192.0.2.0/24".as_ptr()) },
        snitun_result::InvalidConfig,
        "not both",
    );

    check(
        unsafe { snitun_client_config_set_reconnect(config, 0, 1000, 2.0, 0.2) },
        snitun_result::InvalidArgument,
        "initial_ms",
    );
    check(
        unsafe { snitun_client_config_set_reconnect(config, 2000, 1000, 2.0, 0.2) },
        snitun_result::InvalidArgument,
        "initial_ms",
    );
    check(
        unsafe { snitun_client_config_set_reconnect(config, 100, 1000, f64::NAN, 0.2) },
        snitun_result::InvalidArgument,
        "multiplier",
    );
    check(
        unsafe { snitun_client_config_set_reconnect(config, 100, 1000, 2.0, 1.5) },
        snitun_result::InvalidArgument,
        "jitter",
    );
    ok(unsafe { snitun_client_config_set_reconnect(config, 100, 1000, 2.0, 0.2) });
    ok(unsafe { snitun_client_config_disable_reconnect(config) });
    ok(unsafe { snitun_client_config_set_throttling(config, 0) });
    ok(unsafe { snitun_client_config_set_throttling(config, 500) });
    check(
        unsafe { snitun_client_config_set_connect_timeout(config, 0) },
        snitun_result::InvalidArgument,
        "connect timeout 0",
    );
    ok(unsafe { snitun_client_config_set_connect_timeout(config, 5000) });
    ok(unsafe { snitun_client_config_set_connected_callback(config, None, null_mut()) });
    ok(unsafe { snitun_client_config_set_disconnected_callback(config, None, null_mut()) });
    ok(unsafe { snitun_client_config_set_endpoint_error_callback(config, None, null_mut()) });

    // Nothing listens on port 1.
    check(
        unsafe { snitun_client_connect(config, LIMIT_MS, &mut client) },
        snitun_result::Io,
        "cannot connect to the server",
    );
    assert!(client.is_null());
    check(
        unsafe { snitun_client_connect(null(), LIMIT_MS, &mut client) },
        snitun_result::NullArgument,
        "config is NULL",
    );

    // Calls on NULL clients.
    check(
        unsafe { snitun_client_disconnect(null(), 0) },
        snitun_result::NullArgument,
        "client is NULL",
    );
    check(
        unsafe { snitun_client_wait(null(), 0) },
        snitun_result::NullArgument,
        "client is NULL",
    );
    check(
        unsafe { snitun_client_end_reason(null(), null_mut(), 0, null_mut()) },
        snitun_result::NullArgument,
        "client is NULL",
    );
    unsafe { snitun_client_config_free(config) };
}

#[test]
fn client_connect_times_out_on_a_silent_server() {
    // A server that accepts and never sends the challenge.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = cstring(&silent.local_addr().unwrap().to_string());
    let mut config = null_mut();
    ok(unsafe { snitun_client_config_new(addr.as_ptr(), &mut config) });
    ok(unsafe { snitun_client_config_set_token(config, c"gAAAAAtoken".as_ptr()) });
    let hex64 = cstring(&"11".repeat(32));
    let hex32 = cstring(&"22".repeat(16));
    ok(unsafe { snitun_client_config_set_aes_key_hex(config, hex64.as_ptr()) });
    ok(unsafe { snitun_client_config_set_aes_iv_hex(config, hex32.as_ptr()) });
    ok(unsafe { snitun_client_config_set_endpoint(config, c"127.0.0.1:9".as_ptr()) });
    let mut client = null_mut();
    let start = Instant::now();
    check(
        unsafe { snitun_client_connect(config, 300, &mut client) },
        snitun_result::Timeout,
        "timed out",
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(client.is_null());
    unsafe { snitun_client_config_free(config) };
    drop(silent);
}

#[test]
fn server_config_checks() {
    let mut config = null_mut();
    ok(unsafe { snitun_server_config_new(&mut config) });
    let mut server = null_mut();
    check(
        unsafe { snitun_server_start(config, &mut server) },
        snitun_result::InvalidConfig,
        "no Fernet key",
    );
    check(
        unsafe { snitun_server_config_add_fernet_key(config, c"AAAA".as_ptr()) },
        snitun_result::InvalidArgument,
        "not a Fernet key",
    );
    let key = cstring(&fernet_key());
    ok(unsafe { snitun_server_config_add_fernet_key(config, key.as_ptr()) });
    check(
        unsafe { snitun_server_start(config, &mut server) },
        snitun_result::InvalidConfig,
        "no listen address",
    );
    for bad in ["localhost:80", "127.0.0.1", "127.0.0.1:70000", "::1:80", ""] {
        let text = cstring(bad);
        check(
            unsafe { snitun_server_config_add_sni_listen(config, text.as_ptr()) },
            snitun_result::InvalidArgument,
            "expected IPv4:port",
        );
    }
    check(
        unsafe { snitun_server_config_add_peer_listen(config, not_utf8()) },
        snitun_result::InvalidUtf8,
        "addr is not valid UTF-8",
    );
    check(
        unsafe { snitun_server_config_add_listen(config, null()) },
        snitun_result::NullArgument,
        "addr is NULL",
    );
    ok(unsafe { snitun_server_config_add_sni_listen(config, c"127.0.0.1:0".as_ptr()) });
    check(
        unsafe { snitun_server_start(config, &mut server) },
        snitun_result::InvalidConfig,
        "needs both",
    );
    // A port in use cannot be bound.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = cstring(&taken.local_addr().unwrap().to_string());
    ok(unsafe { snitun_server_config_add_peer_listen(config, taken_addr.as_ptr()) });
    check(
        unsafe { snitun_server_start(config, &mut server) },
        snitun_result::Io,
        "snitun_server_start",
    );
    assert!(server.is_null());
    unsafe { snitun_server_config_free(config) };

    // Single-port mode on an ephemeral IPv4 port.
    ok(unsafe { snitun_server_config_new(&mut config) });
    ok(unsafe { snitun_server_config_add_fernet_key(config, key.as_ptr()) });
    ok(unsafe { snitun_server_config_add_listen(config, c"127.0.0.1:0".as_ptr()) });
    ok(unsafe { snitun_server_config_set_proxy_protocol(config, true) });
    ok(unsafe { snitun_server_config_set_throttling(config, 1000) });
    ok(unsafe { snitun_server_start(config, &mut server) });
    unsafe {
        assert_eq!(snitun_server_bound_count(server, 2), 1);
        assert_eq!(snitun_server_bound_count(server, 0), 0);
        assert_eq!(snitun_server_bound_count(server, 7), 0);
    }
    let mut port = 0u16;
    ok(unsafe { snitun_server_bound_port(server, 2, 0, &mut port) });
    assert_ne!(port, 0);
    let addr =
        read_string(|buf, len, n| unsafe { snitun_server_bound_addr(server, 2, 0, buf, len, n) });
    assert_eq!(addr, format!("127.0.0.1:{port}"));
    check(
        unsafe { snitun_server_bound_port(server, 0, 0, &mut port) },
        snitun_result::InvalidArgument,
        "index 0",
    );
    check(
        unsafe { snitun_server_bound_port(server, 3, 0, &mut port) },
        snitun_result::InvalidArgument,
        "kind 3",
    );
    check(
        unsafe { snitun_server_bound_port(server, 2, 0, null_mut()) },
        snitun_result::NullArgument,
        "out_port is NULL",
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    ok(unsafe { snitun_server_stop(server, LIMIT_MS) });
    ok(unsafe { snitun_server_stop(server, LIMIT_MS) });
    unsafe {
        snitun_server_free(server);
        snitun_server_config_free(config);
    }
    check(
        unsafe { snitun_server_stop(null(), 0) },
        snitun_result::NullArgument,
        "server is NULL",
    );
}

// ---------------------------------------------------------------------------
// The whole tunnel
// ---------------------------------------------------------------------------

/// What the callbacks saw.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<String>>,
}

impl Seen {
    fn push(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }

    fn has(&self, prefix: &str) -> bool {
        self.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with(prefix))
    }

    fn all(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

fn text(ptr: *const c_char) -> String {
    // SAFETY: the library passes NUL-terminated strings.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

unsafe extern "C" fn on_connected(userdata: *mut c_void) {
    let seen = unsafe { &*(userdata as *const Seen) };
    seen.push("connected".into());
}

unsafe extern "C" fn on_disconnected(
    userdata: *mut c_void,
    reason: *const c_char,
    will_reconnect: bool,
) {
    let seen = unsafe { &*(userdata as *const Seen) };
    seen.push(format!("disconnected {will_reconnect} {}", text(reason)));
}

unsafe extern "C" fn on_endpoint_error(
    userdata: *mut c_void,
    endpoint: *const c_char,
    caller: *const c_char,
    error: *const c_char,
) {
    let seen = unsafe { &*(userdata as *const Seen) };
    seen.push(format!(
        "endpoint-error {} {} {}",
        text(endpoint),
        text(caller),
        text(error)
    ));
}

unsafe extern "C" fn on_peer_event(
    userdata: *mut c_void,
    kind: snitun_peer_event_kind,
    hostname: *const c_char,
    detail: *const c_char,
) {
    let seen = unsafe { &*(userdata as *const Seen) };
    let kind = match kind {
        snitun_peer_event_kind::Connected => "peer-connected",
        snitun_peer_event_kind::Disconnected => "peer-disconnected",
    };
    seen.push(format!("{kind} {} {}", text(hostname), text(detail)));
}

/// A TCP echo server on loopback, one thread per connection.
fn echo_endpoint() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Mint a token for `host`; returns (token, key hex, iv hex).
fn mint(key: &CStr, host: &str) -> (CString, CString, CString) {
    let mut config = null_mut();
    ok(unsafe { snitun_token_config_new(&mut config) });
    ok(unsafe { snitun_token_config_set_fernet_key(config, key.as_ptr()) });
    let host = cstring(host);
    ok(unsafe { snitun_token_config_set_hostname(config, host.as_ptr()) });
    let mut token = null_mut();
    ok(unsafe { snitun_token_mint(config, &mut token) });
    let text = read_string(|buf, len, n| unsafe { snitun_token_string(token, buf, len, n) });
    let key_hex =
        read_string(|buf, len, n| unsafe { snitun_token_aes_key_hex(token, buf, len, n) });
    let iv_hex = read_string(|buf, len, n| unsafe { snitun_token_aes_iv_hex(token, buf, len, n) });
    unsafe {
        snitun_token_free(token);
        snitun_token_config_free(config);
    }
    (cstring(&text), cstring(&key_hex), cstring(&iv_hex))
}

fn client_config(
    server: &str,
    token: &(CString, CString, CString),
    endpoint: &str,
    seen: &Arc<Seen>,
) -> *mut snitun_client_config {
    let mut config = null_mut();
    let server = cstring(server);
    ok(unsafe { snitun_client_config_new(server.as_ptr(), &mut config) });
    ok(unsafe { snitun_client_config_set_token(config, token.0.as_ptr()) });
    ok(unsafe { snitun_client_config_set_aes_key_hex(config, token.1.as_ptr()) });
    ok(unsafe { snitun_client_config_set_aes_iv_hex(config, token.2.as_ptr()) });
    let endpoint = cstring(endpoint);
    ok(unsafe { snitun_client_config_set_endpoint(config, endpoint.as_ptr()) });
    let userdata = Arc::as_ptr(seen) as *mut c_void;
    ok(unsafe {
        snitun_client_config_set_connected_callback(config, Some(on_connected), userdata)
    });
    ok(unsafe {
        snitun_client_config_set_disconnected_callback(config, Some(on_disconnected), userdata)
    });
    ok(unsafe {
        snitun_client_config_set_endpoint_error_callback(config, Some(on_endpoint_error), userdata)
    });
    config
}

/// Connect to the SNI port as `host`, send a hello and `payload`, and
/// return what comes back: up to the echo of both, or less if the tunnel
/// closes the connection first. (A channel has no half-close: the caller
/// keeps its side open until it has read the answer.)
fn call(sni_port: u16, host: &str, payload: &[u8]) -> Vec<u8> {
    let mut caller = TcpStream::connect(("127.0.0.1", sni_port)).unwrap();
    caller.set_read_timeout(Some(LIMIT)).unwrap();
    let hello = client_hello(host);
    let expected = hello.len() + payload.len();
    let mut writer = caller.try_clone().unwrap();
    let payload = payload.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&hello);
        let _ = writer.write_all(&payload);
    });
    let mut back = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while back.len() < expected {
        match caller.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
        }
    }
    let _ = caller.shutdown(Shutdown::Both);
    sender.join().unwrap();
    back
}

#[test]
fn tunnel_end_to_end_through_the_c_api() {
    let server_seen = Arc::new(Seen::default());
    let key = cstring(&fernet_key());
    let mut server_config = null_mut();
    ok(unsafe { snitun_server_config_new(&mut server_config) });
    ok(unsafe { snitun_server_config_add_fernet_key(server_config, key.as_ptr()) });
    ok(unsafe { snitun_server_config_add_sni_listen(server_config, c"127.0.0.1:0".as_ptr()) });
    ok(unsafe { snitun_server_config_add_peer_listen(server_config, c"127.0.0.1:0".as_ptr()) });
    ok(unsafe {
        snitun_server_config_set_peer_event_callback(
            server_config,
            Some(on_peer_event),
            Arc::as_ptr(&server_seen) as *mut c_void,
        )
    });
    let mut server = null_mut();
    ok(unsafe { snitun_server_start(server_config, &mut server) });
    unsafe { snitun_server_config_free(server_config) };
    let (mut sni_port, mut peer_port) = (0u16, 0u16);
    ok(unsafe { snitun_server_bound_port(server, 0, 0, &mut sni_port) });
    ok(unsafe { snitun_server_bound_port(server, 1, 0, &mut peer_port) });
    assert_eq!(unsafe { snitun_server_peer_count(server) }, 0);
    let server_addr = format!("127.0.0.1:{peer_port}");

    // A token minted with another key is refused.
    let stranger = mint(&cstring(&fernet_key()), "stranger.test");
    let seen = Arc::new(Seen::default());
    let config = client_config(&server_addr, &stranger, "127.0.0.1:9", &seen);
    let mut client = null_mut();
    check(
        unsafe { snitun_client_connect(config, LIMIT_MS, &mut client) },
        snitun_result::ConnectionClosed,
        "refused the token",
    );
    unsafe { snitun_client_config_free(config) };

    // The device: relays to an echo endpoint.
    let echo_port = echo_endpoint();
    let device = mint(&key, "device.test");
    let config = client_config(
        &server_addr,
        &device,
        &format!("127.0.0.1:{echo_port}"),
        &seen,
    );
    ok(unsafe { snitun_client_connect(config, LIMIT_MS, &mut client) });
    unsafe { snitun_client_config_free(config) };
    assert!(unsafe { snitun_client_is_connected(client) });
    check(
        unsafe { snitun_client_wait(client, 0) },
        snitun_result::Timeout,
        "timed out",
    );
    check(
        unsafe { snitun_client_end_reason(client, null_mut(), 0, &mut 0) },
        snitun_result::InvalidState,
        "still running",
    );
    wait_until("the connected callback", || seen.has("connected"));
    wait_until("the peer to register", || unsafe {
        snitun_server_peer_count(server) == 1
    });
    wait_until("the peer event", || server_seen.has("peer-connected"));

    let mut list = null_mut();
    ok(unsafe { snitun_server_peer_hostnames(server, &mut list) });
    unsafe {
        assert_eq!(snitun_string_list_len(list), 1);
        assert_eq!(text(snitun_string_list_get(list, 0)), "device.test");
        assert!(snitun_string_list_get(list, 1).is_null());
        snitun_string_list_free(list);
    }
    ok(unsafe { snitun_server_hostnames(server, &mut list) });
    unsafe {
        assert_eq!(snitun_string_list_len(list), 1);
        snitun_string_list_free(list);
    }

    // Bytes go through and come back.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let back = call(sni_port, "device.test", &payload);
    let hello = client_hello("device.test");
    assert_eq!(back.len(), hello.len() + payload.len());
    assert_eq!(&back[..hello.len()], &hello[..]);
    assert!(back[hello.len()..] == payload[..], "echoed bytes differ");

    // A second device whose endpoint is down reports endpoint errors.
    let broken_seen = Arc::new(Seen::default());
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let broken = mint(&key, "broken.test");
    let config = client_config(
        &server_addr,
        &broken,
        &format!("127.0.0.1:{closed_port}"),
        &broken_seen,
    );
    let mut broken_client = null_mut();
    ok(unsafe { snitun_client_connect(config, LIMIT_MS, &mut broken_client) });
    unsafe { snitun_client_config_free(config) };
    wait_until("the second peer", || unsafe {
        snitun_server_peer_count(server) == 2
    });
    let back = call(sni_port, "broken.test", b"hello?");
    assert!(back.is_empty());
    wait_until("the endpoint error callback", || {
        broken_seen.has(&format!(
            "endpoint-error 127.0.0.1:{closed_port} 127.0.0.1 "
        ))
    });
    // Freeing without disconnecting: the server sees the device leave.
    unsafe { snitun_client_free(broken_client) };
    wait_until("the second peer to leave", || unsafe {
        snitun_server_peer_count(server) == 1
    });

    // Disconnect: callbacks, wait, end reason.
    ok(unsafe { snitun_client_disconnect(client, LIMIT_MS) });
    ok(unsafe { snitun_client_disconnect(client, LIMIT_MS) });
    ok(unsafe { snitun_client_wait(client, 0) });
    assert!(!unsafe { snitun_client_is_connected(client) });
    let reason =
        read_string(|buf, len, n| unsafe { snitun_client_end_reason(client, buf, len, n) });
    assert_eq!(reason, "shut down");
    wait_until("the disconnected callback", || {
        seen.has("disconnected false shut down")
    });
    unsafe { snitun_client_free(client) };
    wait_until("the peer to leave", || unsafe {
        snitun_server_peer_count(server) == 0
    });
    wait_until("the peer disconnected event", || {
        server_seen.has("peer-disconnected device.test")
    });
    let events = server_seen.all();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("peer-connected device.test 127.0.0.1:")),
        "{events:?}"
    );

    ok(unsafe { snitun_server_stop(server, LIMIT_MS) });
    unsafe { snitun_server_free(server) };
    // The seen states are only dropped now: no callback may run after the
    // frees returned, which the Arcs being unique shows.
    assert_eq!(Arc::strong_count(&seen), 1);
    assert_eq!(Arc::strong_count(&server_seen), 1);
}

#[test]
fn session_ends_when_the_server_stops() {
    let key = cstring(&fernet_key());
    let mut server_config = null_mut();
    ok(unsafe { snitun_server_config_new(&mut server_config) });
    ok(unsafe { snitun_server_config_add_fernet_key(server_config, key.as_ptr()) });
    ok(unsafe { snitun_server_config_add_listen(server_config, c"127.0.0.1:0".as_ptr()) });
    let mut server = null_mut();
    ok(unsafe { snitun_server_start(server_config, &mut server) });
    unsafe { snitun_server_config_free(server_config) };
    let mut port = 0u16;
    ok(unsafe { snitun_server_bound_port(server, 2, 0, &mut port) });

    let seen = Arc::new(Seen::default());
    let device = mint(&key, "single.test");
    let echo_port = echo_endpoint();
    let config = client_config(
        &format!("127.0.0.1:{port}"),
        &device,
        &format!("127.0.0.1:{echo_port}"),
        &seen,
    );
    let mut client = null_mut();
    ok(unsafe { snitun_client_connect(config, LIMIT_MS, &mut client) });
    unsafe { snitun_client_config_free(config) };
    wait_until("the peer to register", || unsafe {
        snitun_server_peer_count(server) == 1
    });
    // Single-port mode: callers on the same port.
    let back = call(port, "single.test", b"ping");
    assert!(back.ends_with(b"ping"), "{back:?}");

    ok(unsafe { snitun_server_stop(server, LIMIT_MS) });
    ok(unsafe { snitun_client_wait(client, LIMIT_MS) });
    let reason =
        read_string(|buf, len, n| unsafe { snitun_client_end_reason(client, buf, len, n) });
    assert_ne!(reason, "shut down");
    wait_until("the disconnected callback", || {
        seen.has("disconnected false")
    });
    unsafe {
        snitun_client_free(client);
        snitun_server_free(server);
    }
}
