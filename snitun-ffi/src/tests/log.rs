//! The log callback. It is process-wide: other tests running meanwhile
//! may add records, which the assertions allow for.

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::null_mut;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::*;

struct Records {
    lines: Mutex<Vec<(u32, String, String)>>,
    /// What calling snitun_set_log_callback() from the callback returned.
    nested_set: AtomicU32,
    /// What calling a blocking function from the callback returned.
    nested_blocking: AtomicU32,
    client_config: *mut snitun_client_config,
}

// SAFETY: the config pointer is only used by the callback, for a call that
// is refused before touching it mutably.
unsafe impl Sync for Records {}

const UNSET: u32 = u32::MAX;

fn text(ptr: *const c_char) -> String {
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

unsafe extern "C" fn record(
    userdata: *mut c_void,
    level: snitun_log_level,
    target: *const c_char,
    message: *const c_char,
) {
    let records = unsafe { &*(userdata as *const Records) };
    let (target, message) = (text(target), text(message));
    if message.contains("SniTun server running") {
        let nested = snitun_set_log_callback(None, null_mut(), 0);
        records.nested_set.store(nested as u32, Ordering::SeqCst);
        let mut client = null_mut();
        let blocking = unsafe { snitun_client_connect(records.client_config, 0, &mut client) };
        records
            .nested_blocking
            .store(blocking as u32, Ordering::SeqCst);
    }
    records
        .lines
        .lock()
        .unwrap()
        .push((level as u32, target, message));
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_and_stop_a_server() {
    let mut key = [0 as c_char; 64];
    assert_eq!(
        unsafe { snitun_fernet_key_generate(key.as_mut_ptr(), key.len(), null_mut()) },
        snitun_result::Ok
    );
    let mut config = null_mut();
    unsafe {
        assert_eq!(snitun_server_config_new(&mut config), snitun_result::Ok);
        assert_eq!(
            snitun_server_config_add_fernet_key(config, key.as_ptr()),
            snitun_result::Ok
        );
        assert_eq!(
            snitun_server_config_add_listen(config, c"127.0.0.1:0".as_ptr()),
            snitun_result::Ok
        );
        let mut server = null_mut();
        assert_eq!(snitun_server_start(config, &mut server), snitun_result::Ok);
        assert_eq!(snitun_server_stop(server, 10_000), snitun_result::Ok);
        snitun_server_free(server);
        snitun_server_config_free(config);
    }
}

#[test]
fn log_records_reach_the_callback() {
    assert_eq!(
        snitun_set_log_callback(None, null_mut(), 6),
        snitun_result::InvalidArgument
    );

    // A complete client config, for a blocking call from the callback.
    let mut client_config = null_mut();
    let token = CString::new("gAAAAAtoken").unwrap();
    let hex64 = CString::new("ab".repeat(32)).unwrap();
    let hex32 = CString::new("cd".repeat(16)).unwrap();
    unsafe {
        assert_eq!(
            snitun_client_config_new(c"127.0.0.1:1".as_ptr(), &mut client_config),
            snitun_result::Ok
        );
        snitun_client_config_set_token(client_config, token.as_ptr());
        snitun_client_config_set_aes_key_hex(client_config, hex64.as_ptr());
        snitun_client_config_set_aes_iv_hex(client_config, hex32.as_ptr());
        snitun_client_config_set_endpoint(client_config, c"127.0.0.1:9".as_ptr());
    }
    let records = Box::new(Records {
        lines: Mutex::new(Vec::new()),
        nested_set: AtomicU32::new(UNSET),
        nested_blocking: AtomicU32::new(UNSET),
        client_config,
    });
    let userdata = &*records as *const Records as *mut c_void;
    assert_eq!(
        snitun_set_log_callback(Some(record), userdata, snitun_log_level::Info as u32),
        snitun_result::Ok
    );
    start_and_stop_a_server();
    wait_until("the server's log records", || {
        records
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, m)| m.contains("SniTun server stopped"))
    });
    {
        let lines = records.lines.lock().unwrap();
        let running = lines
            .iter()
            .find(|(_, _, m)| m.starts_with("SniTun server running"))
            .unwrap();
        assert_eq!(running.0, snitun_log_level::Info as u32);
        assert_eq!(running.1, "snitun::server");
        assert!(
            running.2.contains(" addrs="),
            "fields are appended: {}",
            running.2
        );
        assert!(
            lines.iter().all(|(level, _, _)| *level <= 3),
            "nothing more verbose than INFO: {lines:?}"
        );
    }
    assert_eq!(
        records.nested_set.load(Ordering::SeqCst),
        snitun_result::InvalidState as u32
    );
    assert_eq!(
        records.nested_blocking.load(Ordering::SeqCst),
        snitun_result::InvalidState as u32
    );

    // Turned off: nothing more arrives.
    assert_eq!(
        snitun_set_log_callback(None, null_mut(), 0),
        snitun_result::Ok
    );
    let count = records.lines.lock().unwrap().len();
    start_and_stop_a_server();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(records.lines.lock().unwrap().len(), count);

    // A level of OFF with a callback is the same as no callback.
    assert_eq!(
        snitun_set_log_callback(Some(record), userdata, 0),
        snitun_result::Ok
    );
    start_and_stop_a_server();
    assert_eq!(records.lines.lock().unwrap().len(), count);
    unsafe { snitun_client_config_free(client_config) };
}
