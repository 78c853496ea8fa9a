//! The `snitun` binary as a user (or a measuring script) drives it: every
//! command, its output, its errors, and a server + client pair carrying
//! bytes. Every wait is bounded; children are killed if a test fails.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::client_hello;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use snitun::Cipher;
use snitun::token::{FernetKey, KeyRing};

const BIN: &str = env!("CARGO_BIN_EXE_snitun");
/// Limit for quick commands.
const QUICK: Duration = Duration::from_secs(30);

/// A child process killed when dropped (so a failing test leaves nothing
/// running), with its stdout lines arriving on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The next stdout line, within `limit`.
    fn line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .expect("no output line in time")
    }

    /// Send SIGTERM and wait (bounded) for the exit; returns the exit code.
    fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + QUICK;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run to completion within `limit`, with extra environment variables.
fn run_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("SNITUN_FERNET_KEYS")
        .env_remove("SNITUN_TOKEN")
        .env_remove("SNITUN_AES_KEY")
        .env_remove("SNITUN_AES_IV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    // Drain both pipes on threads so a chatty child never blocks.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("snitun {args:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[], QUICK)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn keygen() -> String {
    let output = run(&["keygen"]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output).trim().to_string()
}

/// A valid Fernet key whose base64 starts with `-` (first byte 0xF8..0xFB).
fn hyphen_key() -> String {
    let mut bytes = [0x5au8; 32];
    bytes[0] = 0xf9;
    let key = FernetKey::from_bytes(&bytes).to_base64();
    assert!(key.starts_with('-'));
    key
}

fn mint(args: &[&str]) -> serde_json::Value {
    let output = run(args);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON object on one line: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

#[test]
fn keygen_prints_a_fresh_valid_key() {
    let first = keygen();
    let second = keygen();
    assert_ne!(first, second);
    for key in [&first, &second] {
        assert_eq!(key.len(), 44);
        FernetKey::from_base64(key).unwrap();
    }
}

#[test]
fn token_validates_and_carries_the_requested_fields() {
    let key = keygen();
    let json = mint(&[
        "token",
        "--fernet-key",
        &key,
        "--hostname",
        "device.example.net",
        "--alias",
        "a.example.net",
        "--alias=b.example.net",
        "--valid",
        "600",
        "--cipher",
        "aes-gcm",
        "--protocol-version=1",
    ]);
    let token = json["token"].as_str().unwrap();
    assert!(token.starts_with("gA"));
    let ring = KeyRing::from_strings([&key]).unwrap();
    let peer = ring.validate(token.as_bytes()).unwrap();

    assert_eq!(peer.hostname, "device.example.net");
    assert_eq!(json["hostname"], "device.example.net");
    assert_eq!(peer.aliases, ["a.example.net", "b.example.net"]);
    assert_eq!(
        json["aliases"],
        serde_json::json!(["a.example.net", "b.example.net"])
    );
    assert_eq!(peer.cipher, Cipher::AesGcm);
    assert_eq!(json["cipher"], "aes-gcm");
    assert_eq!(peer.protocol_version, 1);
    assert_eq!(json["protocol_version"], 1);
    assert_eq!(json["aes_key"].as_str().unwrap(), hex::encode(peer.aes_key));
    assert_eq!(json["aes_iv"].as_str().unwrap(), hex::encode(peer.aes_iv));
    assert_eq!(json["valid"].as_f64().unwrap(), peer.valid);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (peer.valid - now - 600.0).abs() < 60.0,
        "valid {}",
        peer.valid
    );

    // Defaults: aes-cbc, protocol 2, no aliases; fresh key material each time.
    let plain = mint(&["token", "--fernet-key", &key, "--hostname", "x.example"]);
    let again = mint(&["token", "--fernet-key", &key, "--hostname", "x.example"]);
    assert_eq!(plain["cipher"], "aes-cbc");
    assert_eq!(plain["protocol_version"], 2);
    assert_eq!(plain["aliases"], serde_json::json!([]));
    assert_eq!(plain["aes_key"].as_str().unwrap().len(), 64);
    assert_eq!(plain["aes_iv"].as_str().unwrap().len(), 32);
    assert_ne!(plain["aes_key"], again["aes_key"]);
    assert_ne!(plain["aes_iv"], again["aes_iv"]);
    let peer = ring
        .validate(plain["token"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(peer.cipher, Cipher::AesCbc);
}

#[test]
fn token_keys_from_the_environment() {
    let (first, second) = (keygen(), keygen());
    let keys = format!("{first},{second}");
    let output = run_env(
        &["token", "--hostname", "env.example"],
        &[("SNITUN_FERNET_KEYS", &keys)],
        QUICK,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let token = json["token"].as_str().unwrap().as_bytes();
    // Minted with the first key.
    KeyRing::from_strings([&first])
        .unwrap()
        .validate(token)
        .unwrap();
    assert!(
        KeyRing::from_strings([&second])
            .unwrap()
            .validate(token)
            .is_err()
    );
}

#[test]
fn help_works_for_every_command() {
    for args in [
        &["--help"][..],
        &["help"],
        &["server", "--help"],
        &["client", "--help"],
        &["token", "--help"],
        &["keygen", "--help"],
        &["demo", "--help"],
        &["help", "server"],
    ] {
        let output = run(args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        assert!(stdout(&output).contains("Usage:"), "{args:?}");
    }
    let server_help = stdout(&run(&["server", "--help"]));
    for flag in [
        "--fernet-key",
        "--sni",
        "--peer",
        "--listen",
        "--proxy-protocol",
        "--throttling",
        "--workers",
    ] {
        assert!(server_help.contains(flag), "server --help lacks {flag}");
    }
    let client_help = stdout(&run(&["client", "--help"]));
    for flag in [
        "--server",
        "--token",
        "--aes-key",
        "--aes-iv",
        "--endpoint",
        "--protocol-version",
        "--cipher",
        "--allow",
        "--block",
        "--throttling",
        "--no-reconnect",
    ] {
        assert!(client_help.contains(flag), "client --help lacks {flag}");
    }
    assert!(run(&["--version"]).status.success());
}

#[test]
fn fernet_key_starting_with_a_hyphen() {
    let key = hyphen_key();
    let joined = format!("--fernet-key={key}");
    for args in [
        vec!["token", joined.as_str(), "--hostname", "h.example"],
        vec![
            "token",
            "--fernet-key",
            key.as_str(),
            "--hostname",
            "h.example",
        ],
    ] {
        let json = mint(&args);
        KeyRing::from_strings([&key])
            .unwrap()
            .validate(json["token"].as_str().unwrap().as_bytes())
            .unwrap();
    }

    // The server takes it in both forms too.
    for args in [
        vec!["server", joined.as_str(), "--listen", "127.0.0.1:0"],
        vec![
            "server",
            "--fernet-key",
            key.as_str(),
            "--listen=127.0.0.1:0",
        ],
    ] {
        let server = Running::start(&args);
        let line = server.line(QUICK);
        assert!(line.starts_with("listening single 127.0.0.1:"), "{line}");
        assert_eq!(server.terminate(), Some(0));
    }
}

#[test]
fn bad_arguments_fail_with_one_error_line() {
    let key = keygen();
    let cases: Vec<Vec<&str>> = vec![
        vec!["frobnicate"],
        vec!["token", "--hostname", "x"],
        vec!["token", "--fernet-key", "not-a-key", "--hostname", "x"],
        vec![
            "token",
            "--fernet-key",
            &key,
            "--hostname",
            "x",
            "--cipher",
            "rot13",
        ],
        vec![
            "token",
            "--fernet-key",
            &key,
            "--hostname",
            "x",
            "--protocol-version",
            "3",
        ],
        vec![
            "token",
            "--fernet-key",
            &key,
            "--hostname",
            "x",
            "--valid",
            "-5",
        ],
        vec!["token", "--fernet-key", &key, "--hostname", "x", "--bogus"],
        vec!["server", "--fernet-key", &key],
        vec!["server", "--fernet-key", &key, "--sni", "127.0.0.1:0"],
        vec!["server", "--fernet-key", &key, "--listen", "nonsense"],
        vec![
            "server",
            "--fernet-key",
            &key,
            "--listen",
            "127.0.0.1:0",
            "--sni",
            "127.0.0.1:0",
            "--peer",
            "127.0.0.1:0",
        ],
        vec![
            "server",
            "--fernet-key",
            &key,
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "0",
        ],
        vec!["client", "--server", "127.0.0.1:1"],
        vec![
            "client",
            "--server",
            "127.0.0.1:1",
            "--token",
            "gAAAA",
            "--aes-key",
            "zz",
            "--aes-iv",
            "00112233445566778899aabbccddeeff",
            "--endpoint",
            "127.0.0.1:2",
        ],
        vec![
            "client",
            "--server",
            "127.0.0.1:1",
            "--token",
            "gAAAA",
            "--aes-key",
            "0011",
            "--aes-iv",
            "00112233445566778899aabbccddeeff",
            "--endpoint",
            "127.0.0.1:2",
        ],
        vec![
            "client",
            "--server",
            "127.0.0.1:1",
            "--token",
            "gAAAA",
            "--aes-key",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            "--aes-iv",
            "00112233445566778899aabbccddeeff",
            "--endpoint",
            "127.0.0.1:2",
            "--allow",
            "10.0.0.0/8",
            "--block",
            "10.1.0.0/16",
        ],
        vec!["demo", "--bytes", "0"],
        vec!["demo", "--cipher", "none"],
    ];
    for args in cases {
        let output = run_env(&args, &[("RUST_LOG", "off")], QUICK);
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.starts_with("error: "), "{args:?}: {err:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
    }

    // A bad key is reported without echoing it.
    let output = run(&[
        "token",
        "--fernet-key",
        "c2VjcmV0LXZhbHVl",
        "--hostname",
        "x",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(!stderr(&output).contains("c2VjcmV0LXZhbHVl"));

    // A port in use: a runtime error, exit code 1.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_env(
        &["server", "--fernet-key", &key, "--listen", &addr],
        &[("RUST_LOG", "off")],
        QUICK,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
}

#[test]
fn demo_succeeds() {
    let output = run_env(&["demo", "--bytes", "4M"], &[], Duration::from_secs(120));
    let out = stdout(&output);
    assert!(
        output.status.success(),
        "demo failed:\n{out}\n{}",
        stderr(&output)
    );
    assert!(out.contains("GET /hello 200 OK"), "{out}");
    assert!(out.contains("4194304 bytes"), "{out}");
    assert!(out.contains("SHA-256 ok"), "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(out.lines().last().unwrap().starts_with("ok: "), "{out}");
}

#[test]
fn demo_single_port_aes_gcm() {
    let output = run_env(
        &["demo", "--bytes=1M", "--single-port", "--cipher", "aes-gcm"],
        &[],
        Duration::from_secs(120),
    );
    assert!(
        output.status.success(),
        "demo failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
}

/// A TCP echo server on loopback, on a thread, for as long as the test.
fn echo_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Send a ClientHello for `host` plus `extra` to the SNI port and read the
/// echo back. `None` when the server closes the connection (not routed).
fn through_tunnel(sni: SocketAddr, host: &str, extra: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(sni).unwrap();
    stream.set_read_timeout(Some(QUICK)).unwrap();
    let mut sent = client_hello(host);
    sent.extend_from_slice(extra);
    stream.write_all(&sent).ok()?;
    let mut echoed = vec![0u8; sent.len()];
    let mut got = 0;
    while got < sent.len() {
        match stream.read(&mut echoed[got..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    assert_eq!(echoed, sent, "the tunnel changed the bytes");
    Some(echoed)
}

fn listening(server: &Running, kind: &str) -> SocketAddr {
    let line = server.line(QUICK);
    let prefix = format!("listening {kind} ");
    line.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn server_and_client_commands_carry_bytes() {
    let key = keygen();
    let server = Running::start(&[
        "server",
        "--fernet-key",
        &key,
        "--sni",
        "127.0.0.1:0",
        "--peer",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]);
    let sni = listening(&server, "sni");
    let peer = listening(&server, "peer");

    for (cipher, version) in [("aes-cbc", "2"), ("aes-gcm-siv", "1"), ("aes-gcm", "0")] {
        let host = format!("{cipher}.v{version}.example");
        let json = mint(&[
            "token",
            "--fernet-key",
            &key,
            "--hostname",
            &host,
            "--cipher",
            cipher,
            "--protocol-version",
            version,
        ]);
        let endpoint = echo_endpoint().to_string();
        let client = Running::start(&[
            "client",
            "--server",
            &peer.to_string(),
            "--token",
            json["token"].as_str().unwrap(),
            "--aes-key",
            json["aes_key"].as_str().unwrap(),
            "--aes-iv",
            json["aes_iv"].as_str().unwrap(),
            "--endpoint",
            &endpoint,
            "--cipher",
            cipher,
            "--protocol-version",
            version,
            "--no-reconnect",
        ]);
        let line = client.line(QUICK);
        assert!(line.starts_with("connected "), "{line}");
        // Registration follows the handshake closely: retry until routed.
        let deadline = Instant::now() + QUICK;
        loop {
            if through_tunnel(sni, &host, b"hello through the tunnel").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "{host} never became reachable");
            thread::sleep(Duration::from_millis(50));
        }
        // A name nobody serves is closed.
        assert!(through_tunnel(sni, "nobody.example", b"x").is_none());
        assert_eq!(client.terminate(), Some(0), "{cipher} v{version}");
    }
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn client_retries_until_the_server_is_up() {
    // Reconnecting is on by default: a client started before its server
    // keeps trying instead of exiting.
    let key = keygen();
    let json = mint(&["token", "--fernet-key", &key, "--hostname", "late.example"]);
    let placeholder = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = placeholder.local_addr().unwrap();
    drop(placeholder);
    let endpoint = echo_endpoint().to_string();
    let client = Running::start(&[
        "client",
        "--server",
        &peer.to_string(),
        "--token",
        json["token"].as_str().unwrap(),
        "--aes-key",
        json["aes_key"].as_str().unwrap(),
        "--aes-iv",
        json["aes_iv"].as_str().unwrap(),
        "--endpoint",
        &endpoint,
    ]);
    thread::sleep(Duration::from_millis(300));
    let server = Running::start(&[
        "server",
        "--fernet-key",
        &key,
        "--listen",
        &peer.to_string(),
    ]);
    let single = listening(&server, "single");
    let line = client.line(QUICK);
    assert!(line.starts_with("connected "), "{line}");
    let deadline = Instant::now() + QUICK;
    while through_tunnel(single, "late.example", b"late").is_none() {
        assert!(Instant::now() < deadline, "the client never connected");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(client.terminate(), Some(0));
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn client_without_reconnect_fails_when_the_server_is_absent() {
    let key = keygen();
    let json = mint(&["token", "--fernet-key", &key, "--hostname", "x.example"]);
    let placeholder = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = placeholder.local_addr().unwrap().to_string();
    drop(placeholder);
    let output = run_env(
        &[
            "client",
            "--server",
            &peer,
            "--token",
            json["token"].as_str().unwrap(),
            "--aes-key",
            json["aes_key"].as_str().unwrap(),
            "--aes-iv",
            json["aes_iv"].as_str().unwrap(),
            "--endpoint",
            "127.0.0.1:9",
            "--no-reconnect",
        ],
        &[("RUST_LOG", "off")],
        QUICK,
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: connecting to the server"), "{err}");
}

#[test]
fn server_prints_stats_lines_when_asked() {
    let key = keygen();
    let server = Running::start(&[
        "server",
        "--fernet-key",
        &key,
        "--listen",
        "127.0.0.1:0",
        "--stats-interval",
        "1",
    ]);
    let _single = listening(&server, "single");
    let line = server.line(QUICK);
    let json = line.strip_prefix("stats ").expect("a stats line");
    let stats: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(stats["peers"], 0);
    assert_eq!(stats["channels"], 0);
    assert!(stats["tasks"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["refused"]["handshakes"], 0);
    assert_eq!(server.terminate(), Some(0));
}
