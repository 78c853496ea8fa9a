//! Interoperability with the reference implementation, the Python `snitun`
//! 0.47.0, on loopback.
//!
//! The suite installs the reference and its pinned dependencies
//! (`interop/requirements.txt`) into a venv of its own under the cargo
//! target directory (`target/interop-venv`, reused while its stamp matches),
//! with the first Python >= 3.13 it finds. It then runs one long-lived
//! driver process per direction (`interop/reference.py`, JSON lines over
//! stdin/stdout) that starts the reference's own `SniTunServer`,
//! `SniTunServerSingle` and `ClientPeer` with an `EndpointConnector`, and
//! mints tokens with `generate_client_token` (or Fernet for what it cannot
//! write). Our side runs in process: [`Server`], [`Client`], raw
//! [`Multiplexer`]s for pings, and the `snitun` binary for a process that is
//! killed mid-transfer.
//!
//! Callers send a ClientHello (the servers route on it and forward it), then
//! a command `[op, seed, len u64]`; the endpoint (in this process, behind
//! either client) skips the hello record and obeys: `U` read `len` bytes and
//! answer their SHA-256, `S` the same but read slowly, `D` send `len` pattern
//! bytes and close, `W` send them and wait for the caller to close, `X` read
//! slowly until the caller's end and note what came, `E` echo until the end.
//!
//! Through the reference server, downloads let the caller close first (`W`):
//! a reference bug truncates a stream whose sender closes while the
//! receiving reference side is paused (see [`sender_close_detail`]); the
//! "sender closes first" cases probe that bug in each direction and report
//! it as KNOWN rather than failing.
//!
//! Every case prints one line (on stderr, past the test harness's capture).
//! `SNITUN_SKIP_INTEROP=1` skips the suite (and says so); without it, a
//! missing Python >= 3.13 fails the suite. `SNITUN_INTEROP_PYTHON` picks the
//! interpreter, `SNITUN_INTEROP_VENV` the venv folder,
//! `SNITUN_INTEROP_CASES=TEXT` runs only the cases whose name contains TEXT,
//! `SNITUN_INTEROP_LOG_LEVEL=DEBUG` makes the reference verbose. The
//! drivers' logs are kept in `target/interop-logs`.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod support;
use support::client_hello;

use bytes::BytesMut;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use snitun::client::{Client, Connector, ServeFuture, Session};
use snitun::crypto::{Cipher, Role};
use snitun::handshake::{HandshakeConfig, client_handshake, server_handshake};
use snitun::mux::{Channel, Multiplexer, MuxConfig};
use snitun::server::{Server, ServerHandle};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

/// The reference version the suite pins.
const REFERENCE_VERSION: &str = "0.47.0";
/// Any single step (a command to a driver, a transfer, a wait).
const LIMIT: Duration = Duration::from_secs(60);
/// A whole case.
const CASE_LIMIT: Duration = Duration::from_secs(180);
const MIB: usize = 1024 * 1024;
/// Each bulk channel's size.
const BULK: usize = 8 * MIB;
/// Echo round trip size.
const ECHO: usize = 64 * 1024;
/// Size of the downloads (and caller-closes uploads) that meet a slow
/// reader.
const SLOW: usize = 16 * MIB;
/// Size of the uploads to a slow endpoint: large enough that a sender
/// ignoring PAUSE would pile most of it into the receiver's queue, well
/// past `PAUSED_QUEUE_BOUND`.
const SLOW_UP: usize = 32 * MIB;
/// Slow readers read this much, then sleep `SLOW_PAUSE`.
const SLOW_CHUNK: usize = 32 * 1024;
const SLOW_PAUSE: Duration = Duration::from_millis(4);
/// A receiving queue sends PAUSE at 2 MiB; what its sender had already
/// queued and what sits in loopback socket buffers still arrives (up to about
/// 9 MiB seen), but a sender that honours PAUSE stays under this, while one
/// that ignores it piles up most of a `SLOW_UP` upload.
const PAUSED_QUEUE_BOUND: usize = 16 * MIB;

type R<T> = Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Run `fut` within `limit`, naming `what` if it does not finish.
async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> R<F::Output> {
    timeout(limit, fut)
        .await
        .map_err(|_| format!("{what}: no result within {} s", limit.as_secs()))
}

/// A line of the suite's output, shown even when the test harness captures
/// output (direct writes to stderr are not captured).
fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

// ---------------------------------------------------------------------------
// Python and the reference's venv
// ---------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
        .to_path_buf()
}

/// A Python interpreter: its real path and version.
struct Python {
    exe: PathBuf,
    version: String,
}

/// Run `cmd -c ...`: a Python >= 3.13 answers with its version and real path.
fn probe_python(mut cmd: std::process::Command) -> Option<Python> {
    let out = cmd
        .arg("-c")
        .arg("import sys; print(*sys.version_info[:2], sys.version.split()[0]); print(sys.executable)")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next()?.split_whitespace().collect();
    let major: u32 = first.first()?.parse().ok()?;
    let minor: u32 = first.get(1)?.parse().ok()?;
    let version = first.get(2)?.to_string();
    let exe = lines.next()?.trim();
    ((major, minor) >= (3, 13) && !exe.is_empty()).then(|| Python {
        exe: PathBuf::from(exe),
        version,
    })
}

/// The first Python >= 3.13: `SNITUN_INTEROP_PYTHON`, then `python3.X` on
/// PATH, then pyenv's 3.13.0 and any other pyenv 3.13+, then `python3`.
fn find_python() -> R<Python> {
    if let Ok(path) = std::env::var("SNITUN_INTEROP_PYTHON") {
        return probe_python(std::process::Command::new(&path))
            .ok_or_else(|| format!("SNITUN_INTEROP_PYTHON={path} is not a Python >= 3.13"));
    }
    let mut tried = Vec::new();
    for name in ["python3.14", "python3.13"] {
        tried.push(name.to_string());
        if let Some(found) = probe_python(std::process::Command::new(name)) {
            return Ok(found);
        }
    }
    let mut pyenv = std::process::Command::new("python");
    pyenv.env("PYENV_VERSION", "3.13.0");
    tried.push("PYENV_VERSION=3.13.0 python".into());
    if let Some(found) = probe_python(pyenv) {
        return Ok(found);
    }
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")));
    if let Some(root) = pyenv_root {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        versions.sort();
        versions.reverse();
        for dir in versions {
            let exe = dir.join("bin").join("python3");
            if exe.exists() {
                tried.push(exe.display().to_string());
                if let Some(found) = probe_python(std::process::Command::new(&exe)) {
                    return Ok(found);
                }
            }
        }
    }
    for name in ["python3", "python"] {
        tried.push(name.to_string());
        if let Some(found) = probe_python(std::process::Command::new(name)) {
            return Ok(found);
        }
    }
    Err(format!(
        "the interop suite needs Python >= 3.13 to run the reference snitun {REFERENCE_VERSION}, \
         and none was found (tried: {}). Install one (e.g. `pyenv install 3.13.0`), or point \
         SNITUN_INTEROP_PYTHON at one, or set SNITUN_SKIP_INTEROP=1 to skip this suite",
        tried.join(", ")
    ))
}

/// Run a setup command; on failure, its output is part of the error.
fn run_setup(mut cmd: std::process::Command, what: &str) -> R<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({}):\n{}",
        out.status,
        tail.join("\n")
    ))
}

/// The venv's interpreter, creating the venv and installing the reference
/// unless a venv made from the same requirements and Python is there.
fn ensure_venv(python: &Python) -> R<PathBuf> {
    let venv = std::env::var_os("SNITUN_INTEROP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("interop-venv"));
    let requirements = repo_root().join("interop").join("requirements.txt");
    let pinned = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let stamp = format!("python {}\n{pinned}", python.version);
    let stamp_file = venv.join("snitun-interop.stamp");
    let venv_python = venv.join("bin").join("python");
    if venv_python.exists() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp)
    {
        let mut check = std::process::Command::new(&venv_python);
        check.args(["-c", "import snitun.server.run, snitun.client.client_peer"]);
        if run_setup(check, "checking the interop venv").is_ok() {
            return Ok(venv_python);
        }
    }
    say(&format!(
        "interop: installing snitun=={REFERENCE_VERSION} into {} with Python {} ({}); \
         later runs reuse it",
        venv.display(),
        python.version,
        python.exe.display()
    ));
    let started = Instant::now();
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("cannot remove the stale venv {}: {e}", venv.display()))?;
    }
    let mut create = std::process::Command::new(&python.exe);
    create.arg("-m").arg("venv").arg(&venv);
    run_setup(create, "creating the interop venv")?;
    let mut install = std::process::Command::new(&venv_python);
    install
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-r",
        ])
        .arg(&requirements);
    run_setup(
        install,
        &format!("installing snitun=={REFERENCE_VERSION} from PyPI"),
    )?;
    std::fs::write(&stamp_file, &stamp)
        .map_err(|e| format!("cannot write {}: {e}", stamp_file.display()))?;
    say(&format!(
        "interop: venv ready in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(venv_python)
}

/// Where the drivers run from.
struct Env {
    python: PathBuf,
    script: PathBuf,
    logs: PathBuf,
}

// ---------------------------------------------------------------------------
// The reference driver (interop/reference.py)
// ---------------------------------------------------------------------------

struct Driver {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    /// A command timed out: answers may be out of step, refuse more.
    broken: bool,
}

impl Driver {
    async fn start(env: &Env, name: &str) -> R<Driver> {
        let log = env.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut child = Command::new(&env.python)
            .arg("-u")
            .arg(&env.script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env(
                "SNITUN_INTEROP_LOG_LEVEL",
                std::env::var("SNITUN_INTEROP_LOG_LEVEL").unwrap_or_else(|_| "WARNING".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", env.python.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut driver = Driver {
            name: name.to_string(),
            child,
            stdin,
            stdout,
            log,
            broken: false,
        };
        let hello = driver.call(json!({"cmd": "hello"})).await?;
        ensure!(
            hello["snitun"] == REFERENCE_VERSION,
            "the venv has snitun {} where {REFERENCE_VERSION} is pinned",
            hello["snitun"]
        );
        Ok(driver)
    }

    /// Send one command, return its answer (an error unless `ok`).
    async fn call(&mut self, request: Value) -> R<Value> {
        let cmd = request["cmd"].as_str().unwrap_or("?").to_string();
        ensure!(
            !self.broken,
            "driver {} is out of step after a timeout",
            self.name
        );
        let line = format!("{request}\n");
        let name = self.name.clone();
        let log = self.log.display().to_string();
        let exchange = async {
            self.stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("driver {name}: cannot send {cmd}: {e} (log: {log})"))?;
            self.stdin.flush().await.map_err(|e| e.to_string())?;
            match self.stdout.next_line().await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(format!(
                    "driver {name} exited while running {cmd} (log: {log})"
                )),
                Err(e) => Err(format!("driver {name}: {e}")),
            }
        };
        let answer = match timeout(LIMIT, exchange).await {
            Ok(answer) => answer?,
            Err(_) => {
                self.broken = true;
                return Err(format!(
                    "driver {}: no answer to {cmd} within {} s (log: {})",
                    self.name,
                    LIMIT.as_secs(),
                    self.log.display()
                ));
            }
        };
        let value: Value = serde_json::from_str(&answer)
            .map_err(|e| format!("driver {}: bad answer {answer:?}: {e}", self.name))?;
        if value["ok"] == true {
            Ok(value)
        } else {
            Err(format!("reference {cmd}: {}", value["error"]))
        }
    }

    /// End the driver; returns its log.
    async fn exit(mut self) -> PathBuf {
        let _ = self.call(json!({"cmd": "exit"})).await;
        if timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.log
    }

    /// SIGKILL: an abrupt end, sockets closed by the kernel.
    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    // Typed helpers.

    #[allow(clippy::too_many_arguments)]
    async fn token(
        &mut self,
        fernet_key: &str,
        hostname: &str,
        key: &[u8; 32],
        iv: &[u8; 16],
        version: u8,
        cipher: Cipher,
        alias: &[&str],
        valid_seconds: f64,
    ) -> R<String> {
        let answer = self
            .call(json!({
                "cmd": "token",
                "fernet_key": fernet_key,
                "hostname": hostname,
                "aes_key": hex::encode(key),
                "aes_iv": hex::encode(iv),
                "protocol_version": version,
                "cipher": cipher.name(),
                "alias": alias,
                "valid_seconds": valid_seconds,
            }))
            .await?;
        Ok(answer["token"].as_str().unwrap_or_default().to_string())
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_client(
        &mut self,
        server: SocketAddr,
        token: &str,
        key: &[u8; 32],
        iv: &[u8; 16],
        version: u8,
        cipher: Cipher,
        endpoint: SocketAddr,
    ) -> R<i64> {
        let answer = self
            .call(json!({
                "cmd": "start_client",
                "server_host": server.ip().to_string(),
                "server_port": server.port(),
                "token": token,
                "aes_key": hex::encode(key),
                "aes_iv": hex::encode(iv),
                "protocol_version": version,
                "cipher": cipher.name(),
                "endpoint_host": endpoint.ip().to_string(),
                "endpoint_port": endpoint.port(),
            }))
            .await?;
        Ok(answer["id"].as_i64().unwrap_or_default())
    }

    async fn stop_client(&mut self, id: i64) -> R<()> {
        self.call(json!({"cmd": "stop_client", "id": id}))
            .await
            .map(drop)
    }

    async fn client_connected(&mut self, id: i64) -> R<bool> {
        let answer = self
            .call(json!({"cmd": "client_connected", "id": id}))
            .await?;
        Ok(answer["connected"] == true)
    }

    /// The caller addresses the client's channels announced, oldest first
    /// (and forget them).
    async fn client_ips(&mut self, id: i64) -> R<Vec<String>> {
        let answer = self
            .call(json!({"cmd": "client_ips", "id": id, "clear": true}))
            .await?;
        Ok(strings(&answer["ips"]))
    }

    async fn server_hostnames(&mut self, id: i64) -> R<Vec<String>> {
        let answer = self.call(json!({"cmd": "server_peers", "id": id})).await?;
        Ok(strings(&answer["hostnames"]))
    }

    /// Wait until the reference server serves `host` (or no longer does).
    async fn wait_host(&mut self, id: i64, host: &str, present: bool) -> R<()> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let names = self.server_hostnames(id).await?;
            if names.iter().any(|n| n == host) == present {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the reference server {} {host} after {} s (serves {names:?})",
                if present {
                    "does not serve"
                } else {
                    "still serves"
                },
                LIMIT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn flow(&mut self) -> R<Flow> {
        let v = self.call(json!({"cmd": "flow", "reset": true})).await?;
        let n = |k: &str| v[k].as_u64().unwrap_or_default() as usize;
        Ok(Flow {
            pause_sent: n("pause_sent"),
            resume_sent: n("resume_sent"),
            pause_received: n("pause_received"),
            resume_received: n("resume_received"),
            max_incoming: n("max_incoming"),
        })
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// PAUSE/RESUME counters of the reference's channels (since the last read).
#[derive(Debug)]
struct Flow {
    pause_sent: usize,
    resume_sent: usize,
    pause_received: usize,
    resume_received: usize,
    max_incoming: usize,
}

fn socket_addrs(value: &Value) -> Vec<SocketAddr> {
    value
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|pair| {
                    let ip: IpAddr = pair[0].as_str()?.parse().ok()?;
                    Some(SocketAddr::new(ip, pair[1].as_u64()? as u16))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pick(addrs: &[SocketAddr], v6: bool) -> R<SocketAddr> {
    addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv6() == v6)
        .ok_or_else(|| {
            format!(
                "no {} address in {addrs:?}",
                if v6 { "IPv6" } else { "IPv4" }
            )
        })
}

// ---------------------------------------------------------------------------
// Data: ClientHello, patterns, the endpoint, callers
// ---------------------------------------------------------------------------

/// 64 KiB of the pattern of `seed`; byte `i` of a stream is
/// `block[i % 65536]` (the pattern repeats every 256 bytes).
fn pattern_block(seed: u8) -> Vec<u8> {
    (0..64 * 1024)
        .map(|i: usize| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn pattern_digest(seed: u8, len: usize) -> [u8; 32] {
    let block = pattern_block(seed);
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        hasher.update(&block[..n]);
        left -= n;
    }
    hasher.finalize().into()
}

/// Write `len` bytes of the pattern; `progress` counts them.
async fn write_pattern<W: AsyncWrite + Unpin>(
    out: &mut W,
    seed: u8,
    len: usize,
    progress: Option<&AtomicUsize>,
) -> std::io::Result<()> {
    let block = pattern_block(seed);
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        out.write_all(&block[..n]).await?;
        left -= n;
        if let Some(progress) = progress {
            progress.fetch_add(n, Ordering::Relaxed);
        }
    }
    out.flush().await
}

async fn skip_record<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(())
}

/// What an `X` endpoint connection received before the caller's end.
#[derive(Debug, Clone, Copy)]
struct Received {
    bytes: usize,
    /// Where the bytes first differ from the pattern.
    first_diff: Option<usize>,
    /// It ended with an error (a reset) rather than EOF.
    reset: bool,
}

type ReceivedLog = Arc<Mutex<HashMap<u8, Received>>>;

async fn serve_endpoint(mut stream: TcpStream, log: ReceivedLog) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    skip_record(&mut stream).await?;
    let mut command = [0u8; 10];
    stream.read_exact(&mut command).await?;
    let seed = command[1];
    let len = u64::from_be_bytes(command[2..].try_into().unwrap()) as usize;
    match command[0] {
        b'U' | b'S' => {
            let slow = command[0] == b'S';
            let mut hasher = Sha256::new();
            let mut left = len;
            let mut buf = vec![0u8; if slow { SLOW_CHUNK } else { 256 * 1024 }];
            while left > 0 {
                let want = left.min(buf.len());
                let n = stream.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                hasher.update(&buf[..n]);
                left -= n;
                if slow {
                    tokio::time::sleep(SLOW_PAUSE).await;
                }
            }
            stream.write_all(&hasher.finalize()).await?;
        }
        b'D' => write_pattern(&mut stream, seed, len, None).await?,
        b'W' => {
            // Download, then let the caller close first.
            write_pattern(&mut stream, seed, len, None).await?;
            let mut buf = [0u8; 1024];
            while stream.read(&mut buf).await? > 0 {}
        }
        b'X' => {
            // Read slowly until the caller's end; note what came.
            let block = pattern_block(seed);
            let mut got = Received {
                bytes: 0,
                first_diff: None,
                reset: false,
            };
            let mut buf = vec![0u8; SLOW_CHUNK];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if got.first_diff.is_none() {
                            got.first_diff = buf[..n]
                                .iter()
                                .enumerate()
                                .find(|&(i, b)| *b != block[(got.bytes + i) % block.len()])
                                .map(|(i, _)| got.bytes + i);
                        }
                        got.bytes += n;
                        tokio::time::sleep(SLOW_PAUSE).await;
                    }
                    Err(_) => {
                        got.reset = true;
                        break;
                    }
                }
            }
            log.lock().unwrap().insert(seed, got);
        }
        b'E' => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The TLS server stand-in behind the clients.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: ReceivedLog,
}

async fn start_endpoint() -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let received = ReceivedLog::default();
    let counted = connections.clone();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_endpoint(stream, log.clone()));
        }
    });
    Endpoint {
        addr,
        connections,
        received,
    }
}

/// Which end of a transfer closes its connection first, right after the
/// last byte: the one that sent the data, or the one that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseFirst {
    /// The sender closes as soon as it has written everything (`D`
    /// endpoint, `X` caller): its side's CLOSE may overtake the receiving
    /// side's drain.
    Sender,
    /// The receiver closes once it has read everything (`W` endpoint,
    /// `U`/`S` caller waiting for the digest).
    Receiver,
}

/// How a transfer that is judged by its length ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Every byte, unchanged.
    Complete,
    /// Only the first `got` bytes arrived, unchanged: the tail was lost.
    Truncated { got: usize },
}

/// A caller: connect to an SNI (or single) port, send the ClientHello for
/// `host` and a command.
async fn caller(addr: SocketAddr, host: &str, op: u8, seed: u8, len: usize) -> R<TcpStream> {
    let mut stream = within(LIMIT, "connecting a caller", TcpStream::connect(addr))
        .await?
        .map_err(|e| format!("caller cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut head = client_hello(host);
    head.push(op);
    head.push(seed);
    head.extend_from_slice(&(len as u64).to_be_bytes());
    stream
        .write_all(&head)
        .await
        .map_err(|e| format!("caller for {host} at {addr}: {e}"))?;
    Ok(stream)
}

/// Send `len` bytes through the tunnel; the endpoint's SHA-256 must match.
async fn upload(addr: SocketAddr, host: &str, len: usize, seed: u8, slow: bool) -> R<()> {
    let op = if slow { b'S' } else { b'U' };
    let mut stream = caller(addr, host, op, seed, len).await?;
    let (mut rd, mut wr) = stream.split();
    let send = async {
        write_pattern(&mut wr, seed, len, None)
            .await
            .map_err(|e| format!("upload of {len} bytes to {host}: send: {e}"))
    };
    let receive = async {
        let mut digest = [0u8; 32];
        rd.read_exact(&mut digest).await.map_err(|e| {
            format!("upload of {len} bytes to {host}: no SHA-256 from the endpoint: {e}")
        })?;
        Ok::<_, String>(digest)
    };
    let (sent, digest) = within(LIMIT, &format!("upload of {len} bytes to {host}"), async {
        tokio::join!(send, receive)
    })
    .await?;
    sent?;
    let digest = digest?;
    ensure!(
        digest == pattern_digest(seed, len),
        "upload of {len} bytes to {host}: the endpoint's SHA-256 differs from the data sent"
    );
    Ok(())
}

/// Receive `len` pattern bytes through the tunnel, SHA-256 checked;
/// `slow` reads slowly; `close` says who closes first.
async fn download(
    addr: SocketAddr,
    host: &str,
    len: usize,
    seed: u8,
    slow: bool,
    close: CloseFirst,
) -> R<()> {
    match download_delivery(addr, host, len, seed, slow, close).await? {
        Delivery::Complete => Ok(()),
        Delivery::Truncated { got } => Err(format!(
            "download from {host}: {got} bytes arrived, {len} were sent; what arrived is an \
             exact prefix of what was sent ({} bytes lost at the end)",
            len - got
        )),
    }
}

async fn download_delivery(
    addr: SocketAddr,
    host: &str,
    len: usize,
    seed: u8,
    slow: bool,
    close: CloseFirst,
) -> R<Delivery> {
    let op = match close {
        CloseFirst::Sender => b'D',
        CloseFirst::Receiver => b'W',
    };
    let mut stream = caller(addr, host, op, seed, len).await?;
    let block = pattern_block(seed);
    let receive = async {
        let mut hasher = Sha256::new();
        let mut got = 0usize;
        // Where the bytes first differ from what the endpoint sent.
        let mut first_diff = None;
        let mut buf = vec![0u8; if slow { SLOW_CHUNK } else { 256 * 1024 }];
        // A `W` endpoint waits for us to close: stop at `len`.
        while op == b'D' || got < len {
            let want = if op == b'D' {
                buf.len()
            } else {
                buf.len().min(len - got)
            };
            let n = stream.read(&mut buf[..want]).await.map_err(|e| {
                format!("download of {len} bytes from {host}: after {got} bytes: {e}")
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if first_diff.is_none() {
                first_diff = buf[..n]
                    .iter()
                    .enumerate()
                    .find(|&(i, b)| *b != block[(got + i) % block.len()])
                    .map(|(i, _)| got + i);
            }
            got += n;
            if slow {
                tokio::time::sleep(SLOW_PAUSE).await;
            }
        }
        Ok::<_, String>((got, first_diff, <[u8; 32]>::from(hasher.finalize())))
    };
    let (got, first_diff, digest) = within(
        LIMIT,
        &format!("download of {len} bytes from {host}"),
        receive,
    )
    .await??;
    if let Some(at) = first_diff {
        return Err(format!(
            "download of {len} bytes from {host}: {got} bytes arrived; they differ from \
             what the endpoint sent from offset {at} on"
        ));
    }
    ensure!(
        got <= len,
        "download from {host}: {got} bytes arrived, {len} were sent"
    );
    if got < len {
        return Ok(Delivery::Truncated { got });
    }
    ensure!(
        digest == pattern_digest(seed, len),
        "download of {len} bytes from {host}: SHA-256 differs from the data the endpoint sent"
    );
    Ok(Delivery::Complete)
}

/// Send `len` bytes to a slow `X` endpoint and close right after the last
/// one; the endpoint reports what reached it.
async fn upload_then_close(
    addr: SocketAddr,
    host: &str,
    len: usize,
    seed: u8,
    endpoint: &Endpoint,
) -> R<Delivery> {
    endpoint.received.lock().unwrap().remove(&seed);
    let mut stream = caller(addr, host, b'X', seed, len).await?;
    within(LIMIT, &format!("upload of {len} bytes to {host}"), async {
        write_pattern(&mut stream, seed, len, None).await
    })
    .await?
    .map_err(|e| format!("upload of {len} bytes to {host}: send: {e}"))?;
    drop(stream);
    let got = within(
        LIMIT,
        &format!("the endpoint behind {host} reaching the caller's end"),
        async {
            loop {
                if let Some(got) = endpoint.received.lock().unwrap().get(&seed).copied() {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await?;
    if let Some(at) = got.first_diff {
        return Err(format!(
            "upload of {len} bytes to {host}: the endpoint got {} bytes, differing from \
             what was sent from offset {at} on",
            got.bytes
        ));
    }
    ensure!(
        got.bytes <= len,
        "upload to {host}: the endpoint got {} bytes, {len} were sent",
        got.bytes
    );
    if got.bytes < len {
        return Ok(Delivery::Truncated { got: got.bytes });
    }
    ensure!(
        !got.reset,
        "upload to {host}: every byte arrived but the endpoint connection was reset"
    );
    Ok(Delivery::Complete)
}

/// One echo round trip of `len` bytes.
async fn echo(addr: SocketAddr, host: &str, len: usize) -> R<()> {
    let mut stream = caller(addr, host, b'E', 0, 0).await?;
    echo_on(&mut stream, host, len).await
}

async fn echo_on(stream: &mut TcpStream, host: &str, len: usize) -> R<()> {
    let data: Vec<u8> = pattern_block(7).into_iter().cycle().take(len).collect();
    let (mut rd, mut wr) = stream.split();
    let send = async { wr.write_all(&data).await };
    let mut back = vec![0u8; len];
    let receive = async { rd.read_exact(&mut back).await };
    let (sent, received) = within(LIMIT, &format!("echo through {host}"), async {
        tokio::join!(send, receive)
    })
    .await?;
    sent.map_err(|e| format!("echo through {host}: send: {e}"))?;
    received.map_err(|e| format!("echo through {host}: receive: {e}"))?;
    ensure!(
        back == data,
        "echo through {host}: the bytes came back changed"
    );
    Ok(())
}

/// A caller for `host` must be closed without a byte.
async fn refused(addr: SocketAddr, host: &str) -> R<()> {
    let mut stream = caller(addr, host, b'E', 0, 0).await?;
    let _ = stream.write_all(b"anyone there?").await;
    let mut got = Vec::new();
    let read = within(
        LIMIT,
        &format!("a caller for {host} waiting to be closed"),
        stream.read_to_end(&mut got),
    )
    .await?;
    // A reset is a close too; what matters is that no byte came.
    drop(read);
    ensure!(
        got.is_empty(),
        "a caller for {host} got {} bytes instead of being closed",
        got.len()
    );
    Ok(())
}

/// 4 channels uploading and 4 downloading `BULK` bytes each, at once;
/// returns MB/s over the 8.
async fn bulk(addr: SocketAddr, host: &str, close: CloseFirst) -> R<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for seed in 1..=8u8 {
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            if seed <= 4 {
                upload(addr, &host, BULK, seed, false).await
            } else {
                download(addr, &host, BULK, seed, false, close).await
            }
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("transfer task failed: {e}")),
        }
    }
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok((8 * BULK) as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// A transfer to cut: `op` `D` or `U` of a size far larger than will pass;
/// returns the bytes moved before the tunnel broke (`moved` counts them).
async fn doomed_transfer(
    addr: SocketAddr,
    host: String,
    op: u8,
    moved: Arc<AtomicUsize>,
) -> R<usize> {
    const HUGE: usize = 1 << 36;
    let mut stream = caller(addr, &host, op, 3, HUGE).await?;
    let run = async {
        if op == b'U' {
            let _ = write_pattern(&mut stream, 3, HUGE, Some(&moved)).await;
        } else {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                moved.fetch_add(n, Ordering::Relaxed);
            }
        }
    };
    // Bounded by the caller: the kill must end it well before.
    within(
        Duration::from_secs(120),
        &format!("a transfer through {host} cut by the kill"),
        run,
    )
    .await?;
    Ok(moved.load(Ordering::Relaxed))
}

async fn wait_progress(moved: &AtomicUsize, at_least: usize, what: &str) -> R<()> {
    within(LIMIT, what, async {
        while moved.load(Ordering::Relaxed) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn random_aes() -> ([u8; 32], [u8; 16]) {
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    rand::fill(&mut key);
    rand::fill(&mut iv);
    (key, iv)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// Our client's connector: relay to the endpoint, observe the channel
// ---------------------------------------------------------------------------

/// What our client's channels showed.
#[derive(Default)]
struct Probe {
    ips: Mutex<Vec<String>>,
    /// We sent PAUSE (our incoming queue over high water) ...
    pause_sent: AtomicBool,
    /// ... and later RESUME.
    resume_sent: AtomicBool,
    /// The remote sent PAUSE ...
    remote_paused: AtomicBool,
    /// ... and later RESUME.
    remote_resumed: AtomicBool,
    max_incoming: AtomicUsize,
}

impl Probe {
    fn take_ips(&self) -> Vec<String> {
        std::mem::take(&mut *self.ips.lock().unwrap())
    }

    fn reset_flow(&self) {
        for flag in [
            &self.pause_sent,
            &self.resume_sent,
            &self.remote_paused,
            &self.remote_resumed,
        ] {
            flag.store(false, Ordering::SeqCst);
        }
        self.max_incoming.store(0, Ordering::SeqCst);
    }
}

/// A channel that samples its flow-control state on every read and write.
struct ProbeChannel {
    channel: Channel,
    probe: Arc<Probe>,
    local_paused: bool,
    remote_paused: bool,
}

impl ProbeChannel {
    fn sample(&mut self) {
        let probe = &self.probe;
        if self.channel.pause_sent() {
            self.local_paused = true;
            probe.pause_sent.store(true, Ordering::SeqCst);
        } else if self.local_paused {
            self.local_paused = false;
            probe.resume_sent.store(true, Ordering::SeqCst);
        }
        if self.channel.remote_paused() {
            self.remote_paused = true;
            probe.remote_paused.store(true, Ordering::SeqCst);
        } else if self.remote_paused {
            self.remote_paused = false;
            probe.remote_resumed.store(true, Ordering::SeqCst);
        }
        probe
            .max_incoming
            .fetch_max(self.channel.incoming_bytes(), Ordering::SeqCst);
    }
}

impl AsyncRead for ProbeChannel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.sample();
        let polled = Pin::new(&mut self.channel).poll_read(cx, buf);
        self.sample();
        polled
    }
}

impl AsyncWrite for ProbeChannel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.sample();
        let polled = Pin::new(&mut self.channel).poll_write(cx, buf);
        self.sample();
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.channel).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.channel).poll_shutdown(cx)
    }
}

/// Records each channel's caller address, then relays it to the endpoint.
struct ProbeConnector {
    endpoint: SocketAddr,
    probe: Arc<Probe>,
}

impl Connector for ProbeConnector {
    fn serve(&self, channel: Channel) -> ServeFuture {
        let endpoint = self.endpoint;
        let probe = self.probe.clone();
        Box::pin(async move {
            probe
                .ips
                .lock()
                .unwrap()
                .push(channel.peer_ip().to_string());
            let stream = TcpStream::connect(endpoint).await?;
            stream.set_nodelay(true)?;
            let channel = ProbeChannel {
                channel,
                probe,
                local_paused: false,
                remote_paused: false,
            };
            relay(channel, stream).await;
            Ok(())
        })
    }
}

async fn copy_until_end<R, W>(from: &mut R, to: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// Both ways until either side ends (the protocol has no half-close). When
/// the endpoint finishes, the channel closes as our EndpointConnector does:
/// only once the server has taken everything (`close_after_delivery`).
async fn relay(channel: ProbeChannel, mut endpoint: TcpStream) {
    let (mut ch_read, mut ch_write) = tokio::io::split(channel);
    let endpoint_finished = {
        let (mut ep_read, mut ep_write) = endpoint.split();
        tokio::select! {
            _ = copy_until_end(&mut ch_read, &mut ep_write) => {
                let _ = ep_write.shutdown().await;
                false
            }
            _ = copy_until_end(&mut ep_read, &mut ch_write) => true,
        }
    };
    let mut channel = ch_read.unsplit(ch_write);
    if endpoint_finished {
        channel
            .channel
            .close_after_delivery(Duration::from_secs(60))
            .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn our_client(
    server: SocketAddr,
    token: String,
    key: [u8; 32],
    iv: [u8; 16],
    version: u8,
    cipher: Cipher,
    endpoint: SocketAddr,
    probe: Arc<Probe>,
) -> snitun::Result<Session> {
    let connect = Client::builder(server.to_string())
        .token(token)
        .aes(key, iv)
        .cipher(cipher)
        .protocol_version(version)
        .connector(ProbeConnector { endpoint, probe })
        .connect();
    match timeout(LIMIT, connect).await {
        Ok(result) => result,
        Err(_) => Err(snitun::Error::Timeout {
            during: "our client connecting",
        }),
    }
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    passed: usize,
    failures: Vec<String>,
    /// Cases that showed a known bug of the reference (not failures).
    known: Vec<String>,
    rates: Vec<(&'static str, f64)>,
}

impl Report {
    async fn case<F>(&mut self, group: &'static str, name: &str, fut: F)
    where
        F: Future<Output = R<String>>,
    {
        self.run(group, name, async { fut.await.map(|line| (0, line)) })
            .await;
    }

    /// A case that probes a known bug of the reference: `Ok((hits, line))`;
    /// hits are reported (KNOWN), not failed; an `Err` is a failure.
    async fn known_case<F>(&mut self, group: &'static str, name: &str, fut: F)
    where
        F: Future<Output = R<(usize, String)>>,
    {
        self.run(group, name, fut).await;
    }

    async fn run<F>(&mut self, group: &'static str, name: &str, fut: F)
    where
        F: Future<Output = R<(usize, String)>>,
    {
        // SNITUN_INTEROP_CASES=text runs only the cases whose name has it.
        if let Ok(only) = std::env::var("SNITUN_INTEROP_CASES")
            && !format!("{group} {name}").contains(&only)
        {
            return;
        }
        let started = Instant::now();
        let result = match timeout(CASE_LIMIT, fut).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the case did not finish within {} s",
                CASE_LIMIT.as_secs()
            )),
        };
        let secs = started.elapsed().as_secs_f64();
        let (status, line) = match result {
            Ok((0, line)) => {
                self.passed += 1;
                ("ok", line)
            }
            Ok((_, line)) => {
                self.known.push(format!("{group} / {name}: {line}"));
                ("KNOWN", line)
            }
            Err(error) => {
                self.failures.push(format!("{group} / {name}: {error}"));
                ("FAIL", error)
            }
        };
        say(&format!(
            "interop {group:<23} {name:<26} {status:<5} {secs:5.1} s  {line}"
        ));
    }

    fn rate(&mut self, group: &'static str, rate: f64) {
        self.rates.push((group, rate));
    }
}

/// The line of a sender-closes-first known-issue case.
fn sender_close_detail(lost: &[usize], runs: usize, reference: &str, receiver: &str) -> String {
    if lost.is_empty() {
        return format!(
            "{runs} x 8 MiB with the sender closing right after its last byte, slow {receiver}: \
             all complete this time"
        );
    }
    let kib: Vec<String> = lost
        .iter()
        .map(|b| format!("{:.0}", *b as f64 / 1024.0))
        .collect();
    format!(
        "{runs} x 8 MiB with the sender closing right after its last byte, slow {receiver}: \
         {} truncated by {reference} (KiB lost at the end: {}). Reference bug in snitun \
         {REFERENCE_VERSION}: a CLOSE that arrives while its channel's incoming queue is over \
         high water deletes the channel's output queue; draining the queue to low water then \
         sends RESUME into it, MultiplexerChannel.read() raises RuntimeError and the rest \
         (about the last 512 KiB) is dropped",
        lost.len(),
        kib.join(", ")
    )
}

const OURS_THEIRS: &str = "our server + ref client";
const THEIRS_OURS: &str = "ref server + our client";

/// Every protocol version and cipher, each through the dual-port server
/// and through the single-port server.
fn combinations() -> Vec<(u8, Cipher, Mode)> {
    let mut all = Vec::new();
    for mode in [Mode::Dual, Mode::Single] {
        for version in 0..=2u8 {
            for cipher in Cipher::ALL {
                all.push((version, cipher, mode));
            }
        }
    }
    all
}

/// Which of a side's two servers a combination goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// SNI port and peer port.
    Dual,
    /// One port for callers and peers.
    Single,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Dual => "dual-port",
            Mode::Single => "single-port",
        }
    }
}

/// Where callers and the client of one server go.
#[derive(Debug, Clone, Copy)]
struct Ports {
    sni4: SocketAddr,
    sni6: SocketAddr,
    peer: SocketAddr,
}

/// What the reference logs (at WARNING and above) only when something is
/// wrong on the wire or in its own code: a frame it did not understand, a
/// crash, a queue overflow, a failed ping.
const RED_FLAGS: &[&str] = &[
    "Traceback",
    " ERROR ",
    " CRITICAL ",
    "unknown message type",
    "malformed",
    "Wrong message header",
    "not healthy",
    "input is full",
    "Cannot send pause/resume",
    "never retrieved",
];

/// The driver's log (the reference's warnings) must hold no red flag.
fn clean_log(log: &Path) -> R<String> {
    let text =
        std::fs::read_to_string(log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
    let flagged: Vec<&str> = text
        .lines()
        .filter(|line| RED_FLAGS.iter().any(|flag| line.contains(flag)))
        .collect();
    ensure!(
        flagged.is_empty(),
        "the reference logged {} suspicious lines in {}, first: {}",
        flagged.len(),
        log.display(),
        flagged
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(format!(
        "{} warning lines, none about the wire or a crash",
        text.lines().count()
    ))
}

// ---------------------------------------------------------------------------
// Direction 1: our server, the reference client
// ---------------------------------------------------------------------------

struct OursTheirs {
    driver: Driver,
    fernet: String,
    /// The dual-port server, on which every case but the single-port
    /// combinations runs.
    server: ServerHandle,
    sni4: SocketAddr,
    sni6: SocketAddr,
    peer: SocketAddr,
    /// The single-port server (same keys).
    single: ServerHandle,
    single_ports: Ports,
    endpoint: Endpoint,
}

async fn wait_our_host(server: &ServerHandle, host: &str, present: bool) -> R<()> {
    within(
        LIMIT,
        &format!(
            "our server {} {host}",
            if present { "registering" } else { "dropping" }
        ),
        async {
            while server.hostnames().iter().any(|h| h == host) != present {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await
}

impl OursTheirs {
    async fn start(env: &Env) -> R<OursTheirs> {
        let keys = KeyRing::new(vec![FernetKey::generate()]).map_err(|e| e.to_string())?;
        let fernet = keys.primary().to_base64();
        let server = Server::builder(keys)
            .sni_listen("127.0.0.1:0".parse().unwrap())
            .sni_listen("[::1]:0".parse().unwrap())
            .peer_listen("127.0.0.1:0".parse().unwrap())
            .bind()
            .await
            .map_err(|e| format!("our server cannot bind (is IPv6 loopback ::1 up?): {e}"))?;
        let addrs = server.local_addrs();
        let server = server.spawn();
        let keys = KeyRing::from_strings([fernet.as_str()]).map_err(|e| e.to_string())?;
        let single = Server::builder(keys)
            .listen("127.0.0.1:0".parse().unwrap())
            .listen("[::1]:0".parse().unwrap())
            .bind()
            .await
            .map_err(|e| format!("our single-port server cannot bind: {e}"))?;
        let listen = single.local_addrs().listen;
        let single = single.spawn();
        Ok(OursTheirs {
            driver: Driver::start(env, "ours-server-ref-client").await?,
            fernet,
            server,
            sni4: pick(&addrs.sni, false)?,
            sni6: pick(&addrs.sni, true)?,
            peer: addrs.peer[0],
            single,
            single_ports: Ports {
                sni4: pick(&listen, false)?,
                sni6: pick(&listen, true)?,
                peer: pick(&listen, false)?,
            },
            endpoint: start_endpoint().await,
        })
    }

    /// Mint a token with the reference and start a reference client with it.
    #[allow(clippy::too_many_arguments)]
    async fn ref_client(
        &mut self,
        host: &str,
        version: u8,
        cipher: Cipher,
        alias: &[&str],
        valid_seconds: f64,
        wrong_key: bool,
        server: SocketAddr,
    ) -> R<i64> {
        let (key, iv) = random_aes();
        let token = self
            .driver
            .token(
                &self.fernet,
                host,
                &key,
                &iv,
                version,
                cipher,
                alias,
                valid_seconds,
            )
            .await?;
        let client_key = if wrong_key { random_aes().0 } else { key };
        self.driver
            .start_client(
                server,
                &token,
                &client_key,
                &iv,
                version,
                cipher,
                self.endpoint.addr,
            )
            .await
    }

    async fn combination(&mut self, version: u8, cipher: Cipher, mode: Mode) -> R<(String, f64)> {
        let host = format!(
            "p{version}-{}-{}.a.interop.test",
            cipher.name(),
            mode.name()
        );
        let (server, ports) = match mode {
            Mode::Dual => (
                self.server.clone(),
                Ports {
                    sni4: self.sni4,
                    sni6: self.sni6,
                    peer: self.peer,
                },
            ),
            Mode::Single => (self.single.clone(), self.single_ports),
        };
        let id = self
            .ref_client(&host, version, cipher, &[], 600.0, false, ports.peer)
            .await?;
        wait_our_host(&server, &host, true).await?;
        echo(ports.sni6, &host, ECHO).await?;
        let want = if version >= 2 { "::1" } else { "0.0.0.0" };
        let ips = self.driver.client_ips(id).await?;
        ensure!(
            ips == [want],
            "an IPv6 caller (::1) was announced to the reference client as {ips:?}, expected [{want}]"
        );
        let rate = bulk(ports.sni4, &host, CloseFirst::Sender).await?;
        let ips = self.driver.client_ips(id).await?;
        ensure!(
            ips.len() == 8 && ips.iter().all(|ip| ip == "127.0.0.1"),
            "8 IPv4 callers (127.0.0.1) were announced to the reference client as {ips:?}"
        );
        self.driver.stop_client(id).await?;
        wait_our_host(&server, &host, false).await?;
        Ok((
            format!(
                "echo + caller {want} ok; 4x8 MiB up, 4x8 MiB down, SHA-256 ok, caller \
                 127.0.0.1 ok; {rate:.1} MB/s"
            ),
            rate,
        ))
    }

    async fn aliases_and_unknown(&mut self) -> R<String> {
        let host = "alias-main.a.interop.test";
        let aliases = ["alias-one.a.interop.test", "alias-two.a.interop.test"];
        let id = self
            .ref_client(host, 2, Cipher::AesCbc, &aliases, 600.0, false, self.peer)
            .await?;
        wait_our_host(&self.server, host, true).await?;
        for name in [host, aliases[0], aliases[1]] {
            ensure!(
                self.server.hostnames().iter().any(|h| h == name),
                "our server does not list {name} (lists {:?})",
                self.server.hostnames()
            );
            echo(self.sni4, name, ECHO).await?;
        }
        let before = self.endpoint.connections.load(Ordering::SeqCst);
        refused(self.sni4, "nobody.a.interop.test").await?;
        refused(self.sni6, "alias-three.a.interop.test").await?;
        let after = self.endpoint.connections.load(Ordering::SeqCst);
        ensure!(after == before, "an unknown hostname reached the endpoint");
        echo(self.sni4, aliases[1], ECHO).await?;
        self.driver.stop_client(id).await?;
        wait_our_host(&self.server, host, false).await?;
        for name in aliases {
            ensure!(
                !self.server.hostnames().iter().any(|h| h == name),
                "alias {name} still listed after the reference client left"
            );
        }
        Ok(
            "token with 2 aliases (reference-minted): all 3 names routed; unknown names \
             closed without data, endpoint untouched"
                .into(),
        )
    }

    /// A refused reference client: it must not get in.
    async fn refused_client(&mut self, host: &str, cipher: Cipher, expired: bool) -> R<String> {
        let valid = if expired { -60.0 } else { 600.0 };
        let started = self
            .ref_client(host, 2, cipher, &[], valid, !expired, self.peer)
            .await;
        let outcome = match started {
            Err(e) => format!("start refused: {e}"),
            Ok(id) => {
                // With aes-cbc a wrong key goes unnoticed by the client: our
                // server must close the link.
                let deadline = Instant::now() + LIMIT;
                while self.driver.client_connected(id).await? {
                    ensure!(
                        Instant::now() < deadline,
                        "the reference client is still connected"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                "link closed by our server right after the handshake".to_string()
            }
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        ensure!(
            !self.server.hostnames().iter().any(|h| h == host),
            "our server registered {host}"
        );
        refused(self.sni4, host).await?;
        Ok(outcome)
    }

    async fn slow_endpoint(&mut self) -> R<String> {
        let host = "slow.a.interop.test";
        let id = self
            .ref_client(host, 1, Cipher::AesGcm, &[], 600.0, false, self.peer)
            .await?;
        wait_our_host(&self.server, host, true).await?;
        self.driver.flow().await?;
        let started = Instant::now();
        upload(self.sni4, host, SLOW_UP, 5, true).await?;
        let up_secs = started.elapsed().as_secs_f64();
        let sent = self.driver.flow().await?;
        ensure!(
            sent.pause_sent >= 1 && sent.resume_sent >= 1,
            "slow endpoint behind the reference client: it sent {} PAUSE and {} RESUME, \
             expected both",
            sent.pause_sent,
            sent.resume_sent
        );
        ensure!(
            sent.max_incoming < PAUSED_QUEUE_BOUND,
            "the reference client's channel queue reached {} bytes: our server did not \
             honour its PAUSE",
            sent.max_incoming
        );
        let started = Instant::now();
        download(self.sni4, host, SLOW, 6, true, CloseFirst::Sender).await?;
        let down_secs = started.elapsed().as_secs_f64();
        let received = self.driver.flow().await?;
        ensure!(
            received.pause_received >= 1 && received.resume_received >= 1,
            "slow caller in front of our server: the reference client received {} PAUSE and \
             {} RESUME, expected both",
            received.pause_received,
            received.resume_received
        );
        echo(self.sni4, host, ECHO).await?;
        self.driver.stop_client(id).await?;
        Ok(format!(
            "protocol 1: slow endpoint 32 MiB in {up_secs:.1} s, ref client sent \
             {}xPAUSE/{}xRESUME, its queue peaked at {:.1} MiB; slow caller 16 MiB in \
             {down_secs:.1} s, ref client received {}xPAUSE/{}xRESUME from us",
            sent.pause_sent,
            sent.resume_sent,
            sent.max_incoming as f64 / MIB as f64,
            received.pause_received,
            received.resume_received
        ))
    }

    /// Known reference bug: a caller that closes right after uploading to
    /// a slow endpoint (our server sends CLOSE while the reference client's
    /// queue for the endpoint is over high water).
    async fn sender_closes_first(&mut self) -> R<(usize, String)> {
        let host = "close-first.a.interop.test";
        let id = self
            .ref_client(host, 2, Cipher::AesGcm, &[], 600.0, false, self.peer)
            .await?;
        wait_our_host(&self.server, host, true).await?;
        let runs: Vec<_> = (40..44u8)
            .map(|seed| {
                let (sni, endpoint) = (self.sni4, self.endpoint.clone());
                tokio::spawn(
                    async move { upload_then_close(sni, host, BULK, seed, &endpoint).await },
                )
            })
            .collect();
        let mut lost = Vec::new();
        for run in runs {
            if let Delivery::Truncated { got } = run.await.map_err(|e| e.to_string())?? {
                lost.push(BULK - got);
            }
        }
        echo(self.sni4, host, ECHO).await?;
        self.driver.stop_client(id).await?;
        Ok((
            lost.len(),
            sender_close_detail(&lost, 4, "the reference client", "endpoint"),
        ))
    }

    async fn pings(&mut self) -> R<String> {
        // Their client pings our server.
        let host = "ping.a.interop.test";
        let id = self
            .ref_client(host, 2, Cipher::AesGcmSiv, &[], 600.0, false, self.peer)
            .await?;
        wait_our_host(&self.server, host, true).await?;
        let answer = self
            .driver
            .call(json!({"cmd": "client_ping", "id": id}))
            .await?;
        let theirs_ms = answer["ms"].as_f64().unwrap_or_default();
        self.driver.stop_client(id).await?;

        // Our multiplexer, as a server, pings their client.
        let keys = KeyRing::from_strings([self.fernet.as_str()]).map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let accept = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (token, state) = server_handshake(
                &mut stream,
                BytesMut::new(),
                &keys,
                &HandshakeConfig::default(),
            )
            .await
            .map_err(|e| format!("our handshake with the reference client: {e}"))?;
            Ok::<_, String>(Multiplexer::new(
                stream,
                state,
                token.protocol_version,
                Role::Responder,
                MuxConfig::default(),
            ))
        });
        let id = self
            .ref_client(
                "ping-raw.a.interop.test",
                2,
                Cipher::AesGcm,
                &[],
                600.0,
                false,
                addr,
            )
            .await?;
        let mux = within(LIMIT, "our raw server handshake", accept)
            .await?
            .map_err(|e| e.to_string())??;
        let started = Instant::now();
        within(
            Duration::from_secs(10),
            "the reference client's pong",
            mux.ping(),
        )
        .await?
        .map_err(|e| format!("our ping to the reference client: {e}"))?;
        let ours_ms = started.elapsed().as_secs_f64() * 1000.0;
        mux.shutdown();
        let _ = self.driver.stop_client(id).await;
        Ok(format!(
            "ref client -> our server pong in {theirs_ms:.1} ms; our multiplexer -> ref \
             client pong in {ours_ms:.1} ms"
        ))
    }

    async fn abrupt_disconnect(&mut self, env: &Env) -> R<String> {
        let host = "kill.a.interop.test";
        let bystander = "bystander.a.interop.test";
        let by_id = self
            .ref_client(bystander, 2, Cipher::AesCbc, &[], 600.0, false, self.peer)
            .await?;
        wait_our_host(&self.server, bystander, true).await?;
        let mut open = caller(self.sni4, bystander, b'E', 0, 0).await?;
        echo_on(&mut open, bystander, ECHO).await?;

        let mut doomed = Driver::start(env, "ref-client-killed").await?;
        let (key, iv) = random_aes();
        let token = doomed
            .token(&self.fernet, host, &key, &iv, 2, Cipher::AesGcm, &[], 600.0)
            .await?;
        doomed
            .start_client(
                self.peer,
                &token,
                &key,
                &iv,
                2,
                Cipher::AesGcm,
                self.endpoint.addr,
            )
            .await?;
        wait_our_host(&self.server, host, true).await?;
        let down = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicUsize::new(0));
        let transfers = vec![
            tokio::spawn(doomed_transfer(self.sni4, host.into(), b'D', down.clone())),
            tokio::spawn(doomed_transfer(self.sni4, host.into(), b'D', down.clone())),
            tokio::spawn(doomed_transfer(self.sni4, host.into(), b'U', up.clone())),
        ];
        wait_progress(&down, 8 * MIB, "downloads through the doomed client").await?;
        wait_progress(&up, 4 * MIB, "upload through the doomed client").await?;
        doomed.kill().await;
        let killed_at = Instant::now();
        for transfer in transfers {
            transfer.await.map_err(|e| e.to_string())??;
        }
        let cut_secs = killed_at.elapsed().as_secs_f64();
        wait_our_host(&self.server, host, false).await?;
        let dropped_secs = killed_at.elapsed().as_secs_f64();

        // The rest of the server is unharmed.
        echo_on(&mut open, bystander, ECHO).await?;
        drop(open);
        let id = self
            .ref_client(host, 2, Cipher::AesGcm, &[], 600.0, false, self.peer)
            .await?;
        wait_our_host(&self.server, host, true).await?;
        echo(self.sni4, host, ECHO).await?;
        upload(self.sni4, host, BULK, 1, false).await?;
        download(self.sni4, host, BULK, 2, false, CloseFirst::Sender).await?;
        self.driver.stop_client(id).await?;
        self.driver.stop_client(by_id).await?;
        Ok(format!(
            "killed the reference client's process after {:.0} MiB down / {:.0} MiB up: \
             callers cut in {cut_secs:.2} s, peer dropped in {dropped_secs:.2} s; bystander \
             channel still echoes; a new client for the name moves 8 MiB each way",
            down.load(Ordering::Relaxed) as f64 / MIB as f64,
            up.load(Ordering::Relaxed) as f64 / MIB as f64,
        ))
    }

    async fn finish(self) -> PathBuf {
        let log = self.driver.exit().await;
        let _ = self.server.shutdown(Duration::from_secs(5)).await;
        let _ = self.single.shutdown(Duration::from_secs(5)).await;
        log
    }
}

/// The cases every direction runs, in order. A macro rather than a generic
/// function: the two sides are unrelated types with the same method names.
macro_rules! run_direction {
    ($env:expr, $report:expr, $group:expr, $side:ty, $tag:literal) => {{
        let (env, report): (&Env, &mut Report) = ($env, $report);
        const G: &str = $group;
        let mut side = match <$side>::start(env).await {
            Ok(side) => side,
            Err(e) => {
                report.case(G, "setup", async { Err::<String, _>(e) }).await;
                return;
            }
        };
        for (version, cipher, mode) in combinations() {
            let name = format!("{} p{version} {}", mode.name(), cipher.name());
            let mut rate = None;
            report
                .case(G, &name, async {
                    let (line, r) = side.combination(version, cipher, mode).await?;
                    rate = Some(r);
                    Ok(line)
                })
                .await;
            if let Some(rate) = rate {
                report.rate(G, rate);
            }
        }
        report
            .case(G, "aliases + unknown host", side.aliases_and_unknown())
            .await;
        report
            .case(
                G,
                "expired token",
                side.refused_client(
                    concat!("expired.", $tag, ".interop.test"),
                    Cipher::AesCbc,
                    true,
                ),
            )
            .await;
        report
            .case(
                G,
                "wrong AES key (aes-cbc)",
                side.refused_client(
                    concat!("wrongkey-cbc.", $tag, ".interop.test"),
                    Cipher::AesCbc,
                    false,
                ),
            )
            .await;
        report
            .case(
                G,
                "wrong AES key (aes-gcm)",
                side.refused_client(
                    concat!("wrongkey-gcm.", $tag, ".interop.test"),
                    Cipher::AesGcm,
                    false,
                ),
            )
            .await;
        report
            .case(G, "slow endpoint/caller", side.slow_endpoint())
            .await;
        report
            .known_case(G, "sender closes first", side.sender_closes_first())
            .await;
        report.case(G, "ping both ways", side.pings()).await;
        report
            .case(G, "client killed mid-transfer", side.abrupt_disconnect(env))
            .await;
        let log = side.finish().await;
        report
            .case(G, "reference log clean", async { clean_log(&log) })
            .await;
    }};
}

async fn ours_theirs(env: &Env, report: &mut Report) {
    run_direction!(env, report, OURS_THEIRS, OursTheirs, "a");
}

// ---------------------------------------------------------------------------
// Direction 2: the reference server, our client
// ---------------------------------------------------------------------------

struct TheirsOurs {
    driver: Driver,
    keys: KeyRing,
    /// The reference's dual-port server, on which every case but the
    /// single-port combinations runs.
    server_id: i64,
    sni4: SocketAddr,
    sni6: SocketAddr,
    peer: SocketAddr,
    /// The reference's single-port server (same keys).
    single_id: i64,
    single_ports: Ports,
    endpoint: Endpoint,
}

impl TheirsOurs {
    async fn start(env: &Env) -> R<TheirsOurs> {
        let keys = KeyRing::new(vec![FernetKey::generate()]).map_err(|e| e.to_string())?;
        let mut driver = Driver::start(env, "ref-server-our-client").await?;
        let answer = driver
            .call(json!({
                "cmd": "start_server",
                "mode": "dual",
                "fernet_keys": [keys.primary().to_base64()],
                "sni_hosts": ["127.0.0.1", "::1"],
                "peer_host": "127.0.0.1",
            }))
            .await?;
        let sni = socket_addrs(&answer["sni"]);
        let peer = socket_addrs(&answer["peer"]);
        let server_id = answer["id"].as_i64().unwrap_or_default();
        let single = driver
            .call(json!({
                "cmd": "start_server",
                "mode": "single",
                "fernet_keys": [keys.primary().to_base64()],
                "hosts": ["127.0.0.1", "::1"],
            }))
            .await?;
        let listen = socket_addrs(&single["listen"]);
        Ok(TheirsOurs {
            server_id,
            sni4: pick(&sni, false)?,
            sni6: pick(&sni, true)?,
            peer: pick(&peer, false)?,
            single_id: single["id"].as_i64().unwrap_or_default(),
            single_ports: Ports {
                sni4: pick(&listen, false)?,
                sni6: pick(&listen, true)?,
                peer: pick(&listen, false)?,
            },
            driver,
            keys,
            endpoint: start_endpoint().await,
        })
    }

    /// Mint (with our minter) and connect one of our clients.
    async fn client(
        &self,
        claims: &TokenClaims,
        server: SocketAddr,
        probe: Arc<Probe>,
        wrong_key: bool,
    ) -> snitun::Result<Session> {
        let key = if wrong_key {
            random_aes().0
        } else {
            claims.aes_key
        };
        our_client(
            server,
            self.keys.mint(claims),
            key,
            claims.aes_iv,
            claims.protocol_version,
            claims.cipher,
            self.endpoint.addr,
            probe,
        )
        .await
    }

    async fn connected(
        &mut self,
        host: &str,
        version: u8,
        cipher: Cipher,
        aliases: &[&str],
        probe: Arc<Probe>,
    ) -> R<Session> {
        let claims = TokenClaims::new(host, Duration::from_secs(600))
            .with_protocol_version(version)
            .with_cipher(cipher)
            .with_aliases(aliases.iter().map(|a| a.to_string()).collect());
        let session = self
            .client(&claims, self.peer, probe, false)
            .await
            .map_err(|e| format!("our client cannot connect to the reference server: {e}"))?;
        self.driver.wait_host(self.server_id, host, true).await?;
        Ok(session)
    }

    async fn combination(&mut self, version: u8, cipher: Cipher, mode: Mode) -> R<(String, f64)> {
        let host = format!(
            "p{version}-{}-{}.b.interop.test",
            cipher.name(),
            mode.name()
        );
        let (server_id, ports) = match mode {
            Mode::Dual => (
                self.server_id,
                Ports {
                    sni4: self.sni4,
                    sni6: self.sni6,
                    peer: self.peer,
                },
            ),
            Mode::Single => (self.single_id, self.single_ports),
        };
        let probe = Arc::new(Probe::default());
        let claims = TokenClaims::new(&host, Duration::from_secs(600))
            .with_protocol_version(version)
            .with_cipher(cipher);
        let session = self
            .client(&claims, ports.peer, probe.clone(), false)
            .await
            .map_err(|e| format!("our client cannot connect to the reference server: {e}"))?;
        self.driver.wait_host(server_id, &host, true).await?;
        echo(ports.sni6, &host, ECHO).await?;
        let want = if version >= 2 { "::1" } else { "0.0.0.0" };
        let ips = probe.take_ips();
        ensure!(
            ips == [want],
            "an IPv6 caller (::1) was announced to our client as {ips:?}, expected [{want}]"
        );
        let rate = bulk(ports.sni4, &host, CloseFirst::Receiver).await?;
        let ips = probe.take_ips();
        ensure!(
            ips.len() == 8 && ips.iter().all(|ip| ip == "127.0.0.1"),
            "8 IPv4 callers (127.0.0.1) were announced to our client as {ips:?}"
        );
        ensure!(
            session.is_connected(),
            "our client's link ended: {:?}",
            session.stats().last_error
        );
        session.disconnect().await;
        self.driver.wait_host(server_id, &host, false).await?;
        Ok((
            format!(
                "echo + caller {want} ok; 4x8 MiB up, 4x8 MiB down, SHA-256 ok, caller \
                 127.0.0.1 ok; {rate:.1} MB/s"
            ),
            rate,
        ))
    }

    async fn aliases_and_unknown(&mut self) -> R<String> {
        let host = "alias-main.b.interop.test";
        let aliases = ["alias-one.b.interop.test", "alias-two.b.interop.test"];
        let probe = Arc::new(Probe::default());
        let session = self
            .connected(host, 2, Cipher::AesCbc, &aliases, probe)
            .await?;
        let names = self.driver.server_hostnames(self.server_id).await?;
        for name in [host, aliases[0], aliases[1]] {
            ensure!(
                names.iter().any(|n| n == name),
                "the reference server does not list {name} (lists {names:?})"
            );
            echo(self.sni4, name, ECHO).await?;
        }
        let before = self.endpoint.connections.load(Ordering::SeqCst);
        refused(self.sni4, "nobody.b.interop.test").await?;
        refused(self.sni6, "alias-three.b.interop.test").await?;
        ensure!(
            self.endpoint.connections.load(Ordering::SeqCst) == before,
            "an unknown hostname reached the endpoint"
        );
        echo(self.sni6, aliases[0], ECHO).await?;
        session.disconnect().await;
        self.driver.wait_host(self.server_id, host, false).await?;
        let names = self.driver.server_hostnames(self.server_id).await?;
        ensure!(
            !names.iter().any(|n| aliases.contains(&n.as_str())),
            "aliases still listed after our client left: {names:?}"
        );
        Ok(
            "token with 2 aliases (our minter): all 3 names routed; unknown names closed \
             without data, endpoint untouched"
                .into(),
        )
    }

    async fn refused_client(&mut self, host: &str, cipher: Cipher, expired: bool) -> R<String> {
        let mut claims = TokenClaims::new(host, Duration::from_secs(600)).with_cipher(cipher);
        if expired {
            claims.valid = now_unix() - 60.0;
        }
        let outcome = match self
            .client(&claims, self.peer, Arc::new(Probe::default()), !expired)
            .await
        {
            Err(e) => format!("connect refused: {e}"),
            Ok(session) => {
                // aes-cbc: a wrong key shows only when the server closes.
                let end = within(
                    LIMIT,
                    "the reference server closing our link",
                    session.wait(),
                )
                .await?;
                format!("link closed by the reference server after the handshake ({end})")
            }
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let names = self.driver.server_hostnames(self.server_id).await?;
        ensure!(
            !names.iter().any(|n| n == host),
            "the reference server registered {host}"
        );
        refused(self.sni4, host).await?;
        Ok(outcome)
    }

    async fn slow_endpoint(&mut self) -> R<String> {
        let host = "slow.b.interop.test";
        let probe = Arc::new(Probe::default());
        let session = self
            .connected(host, 2, Cipher::AesCbc, &[], probe.clone())
            .await?;
        self.driver.flow().await?;
        probe.reset_flow();
        let started = Instant::now();
        upload(self.sni4, host, SLOW_UP, 5, true).await?;
        let up_secs = started.elapsed().as_secs_f64();
        let theirs = self.driver.flow().await?;
        let max_incoming = probe.max_incoming.load(Ordering::SeqCst);
        ensure!(
            probe.pause_sent.load(Ordering::SeqCst) && probe.resume_sent.load(Ordering::SeqCst),
            "slow endpoint behind our client: our channel never went through PAUSE then \
             RESUME (pause seen: {})",
            probe.pause_sent.load(Ordering::SeqCst)
        );
        ensure!(
            theirs.pause_received >= 1 && theirs.resume_received >= 1,
            "the reference server received {} PAUSE and {} RESUME from our client, expected both",
            theirs.pause_received,
            theirs.resume_received
        );
        ensure!(
            max_incoming < PAUSED_QUEUE_BOUND,
            "our channel's queue reached {max_incoming} bytes: the reference server did not \
             honour our PAUSE"
        );
        probe.reset_flow();
        let started = Instant::now();
        download(self.sni4, host, SLOW, 6, true, CloseFirst::Receiver).await?;
        let down_secs = started.elapsed().as_secs_f64();
        let theirs_sent = self.driver.flow().await?;
        ensure!(
            theirs_sent.pause_sent >= 1 && theirs_sent.resume_sent >= 1,
            "slow caller: the reference server sent {} PAUSE and {} RESUME, expected both",
            theirs_sent.pause_sent,
            theirs_sent.resume_sent
        );
        ensure!(
            probe.remote_paused.load(Ordering::SeqCst)
                && probe.remote_resumed.load(Ordering::SeqCst),
            "slow caller: our channel never saw the reference server's PAUSE then RESUME \
             (paused seen: {})",
            probe.remote_paused.load(Ordering::SeqCst)
        );
        // The caller closes right after its last byte: the reference
        // server's CLOSE reaches our client while our queue is over high
        // water, and everything queued must still reach the endpoint.
        probe.reset_flow();
        let delivery = upload_then_close(self.sni4, host, SLOW, 7, &self.endpoint).await?;
        ensure!(
            delivery == Delivery::Complete,
            "caller closing right after 16 MiB to a slow endpoint behind our client: \
             {delivery:?} of {SLOW} bytes reached the endpoint"
        );
        ensure!(
            probe.pause_sent.load(Ordering::SeqCst),
            "caller closing first: our channel's queue never reached high water, so the \
             CLOSE-while-paused path was not exercised"
        );
        echo(self.sni4, host, ECHO).await?;
        session.disconnect().await;
        Ok(format!(
            "slow endpoint 32 MiB in {up_secs:.1} s, our client sent PAUSE/RESUME, ref server \
             received {}x/{}x, our queue peaked at {:.1} MiB; slow caller 16 MiB in \
             {down_secs:.1} s, ref server sent {}xPAUSE/{}xRESUME, our channel paused and \
             resumed; caller closing right after 16 MiB (CLOSE while we were paused): all \
             delivered",
            theirs.pause_received,
            theirs.resume_received,
            max_incoming as f64 / MIB as f64,
            theirs_sent.pause_sent,
            theirs_sent.resume_sent
        ))
    }

    /// Known reference bug: a slow caller downloading from an endpoint that
    /// closes right after its last byte (our client sends CLOSE while the
    /// reference server's queue for the caller is over high water).
    async fn sender_closes_first(&mut self) -> R<(usize, String)> {
        let host = "close-first.b.interop.test";
        let session = self
            .connected(host, 2, Cipher::AesGcm, &[], Arc::new(Probe::default()))
            .await?;
        let sni = self.sni4;
        let runs: Vec<_> = (40..44u8)
            .map(|seed| {
                tokio::spawn(async move {
                    download_delivery(sni, host, BULK, seed, true, CloseFirst::Sender).await
                })
            })
            .collect();
        let mut lost = Vec::new();
        for run in runs {
            if let Delivery::Truncated { got } = run.await.map_err(|e| e.to_string())?? {
                lost.push(BULK - got);
            }
        }
        echo(self.sni4, host, ECHO).await?;
        session.disconnect().await;
        Ok((
            lost.len(),
            sender_close_detail(&lost, 4, "the reference server", "caller"),
        ))
    }

    async fn pings(&mut self) -> R<String> {
        // Their server pings our client.
        let host = "ping.b.interop.test";
        let session = self
            .connected(host, 2, Cipher::AesGcmSiv, &[], Arc::new(Probe::default()))
            .await?;
        let answer = self
            .driver
            .call(json!({"cmd": "server_ping", "id": self.server_id, "hostname": host}))
            .await?;
        let theirs_ms = answer["ms"].as_f64().unwrap_or_default();
        session.disconnect().await;

        // Our multiplexer, as a client, pings their server.
        let raw_host = "ping-raw.b.interop.test";
        let claims = TokenClaims::new(raw_host, Duration::from_secs(600))
            .with_cipher(Cipher::AesGcm)
            .with_protocol_version(1);
        let mut stream = within(
            LIMIT,
            "connecting to the peer port",
            TcpStream::connect(self.peer),
        )
        .await?
        .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let state = client_handshake(
            &mut stream,
            self.keys.mint(&claims).as_bytes(),
            claims.cipher,
            &claims.aes_key,
            &claims.aes_iv,
            &HandshakeConfig::default(),
        )
        .await
        .map_err(|e| format!("our handshake with the reference server: {e}"))?;
        let mux = Multiplexer::new(stream, state, 1, Role::Initiator, MuxConfig::default());
        self.driver
            .wait_host(self.server_id, raw_host, true)
            .await?;
        let started = Instant::now();
        within(
            Duration::from_secs(10),
            "the reference server's pong",
            mux.ping(),
        )
        .await?
        .map_err(|e| format!("our ping to the reference server: {e}"))?;
        let ours_ms = started.elapsed().as_secs_f64() * 1000.0;
        mux.shutdown();
        self.driver
            .wait_host(self.server_id, raw_host, false)
            .await?;
        Ok(format!(
            "ref server -> our client pong in {theirs_ms:.1} ms; our multiplexer -> ref \
             server pong in {ours_ms:.1} ms"
        ))
    }

    /// Our `snitun` binary as the client, killed mid-transfer.
    async fn abrupt_disconnect(&mut self, env: &Env) -> R<String> {
        let host = "kill.b.interop.test";
        let bystander = "bystander.b.interop.test";
        let by_session = self
            .connected(
                bystander,
                2,
                Cipher::AesCbc,
                &[],
                Arc::new(Probe::default()),
            )
            .await?;
        let mut open = caller(self.sni4, bystander, b'E', 0, 0).await?;
        echo_on(&mut open, bystander, ECHO).await?;

        let claims = TokenClaims::new(host, Duration::from_secs(600)).with_cipher(Cipher::AesGcm);
        let log = env.logs.join("our-client-killed.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_snitun"))
            .arg("client")
            .arg("--server")
            .arg(self.peer.to_string())
            .arg("--token")
            .arg(self.keys.mint(&claims))
            .arg("--aes-key")
            .arg(hex::encode(claims.aes_key))
            .arg("--aes-iv")
            .arg(hex::encode(claims.aes_iv))
            .arg("--endpoint")
            .arg(self.endpoint.addr.to_string())
            .arg("--cipher")
            .arg("aes-gcm")
            .arg("--protocol-version")
            .arg("2")
            .arg("--no-reconnect")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the snitun binary: {e}"))?;
        self.driver.wait_host(self.server_id, host, true).await?;
        let down = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicUsize::new(0));
        let transfers = vec![
            tokio::spawn(doomed_transfer(self.sni4, host.into(), b'D', down.clone())),
            tokio::spawn(doomed_transfer(self.sni4, host.into(), b'D', down.clone())),
            tokio::spawn(doomed_transfer(self.sni4, host.into(), b'U', up.clone())),
        ];
        wait_progress(&down, 8 * MIB, "downloads through our doomed client").await?;
        wait_progress(&up, 4 * MIB, "upload through our doomed client").await?;
        child.kill().await.map_err(|e| e.to_string())?;
        let killed_at = Instant::now();
        for transfer in transfers {
            transfer.await.map_err(|e| e.to_string())??;
        }
        let cut_secs = killed_at.elapsed().as_secs_f64();
        self.driver.wait_host(self.server_id, host, false).await?;
        let dropped_secs = killed_at.elapsed().as_secs_f64();

        echo_on(&mut open, bystander, ECHO).await?;
        drop(open);
        let session = self
            .connected(host, 2, Cipher::AesGcm, &[], Arc::new(Probe::default()))
            .await?;
        echo(self.sni4, host, ECHO).await?;
        upload(self.sni4, host, BULK, 1, false).await?;
        download(self.sni4, host, BULK, 2, false, CloseFirst::Receiver).await?;
        session.disconnect().await;
        by_session.disconnect().await;
        Ok(format!(
            "killed our snitun client process after {:.0} MiB down / {:.0} MiB up: callers \
             cut in {cut_secs:.2} s, peer dropped in {dropped_secs:.2} s; bystander channel \
             still echoes; a new client for the name moves 8 MiB each way",
            down.load(Ordering::Relaxed) as f64 / MIB as f64,
            up.load(Ordering::Relaxed) as f64 / MIB as f64,
        ))
    }

    async fn finish(mut self) -> PathBuf {
        for id in [self.server_id, self.single_id] {
            let _ = self
                .driver
                .call(json!({"cmd": "stop_server", "id": id}))
                .await;
        }
        self.driver.exit().await
    }
}

async fn theirs_ours(env: &Env, report: &mut Report) {
    run_direction!(env, report, THEIRS_OURS, TheirsOurs, "b");
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn reference_interop() {
    if std::env::var_os("SNITUN_SKIP_INTEROP").is_some_and(|v| v != "0" && !v.is_empty()) {
        say("interop: SKIPPED (SNITUN_SKIP_INTEROP is set): the reference snitun was not run");
        return;
    }
    let started = Instant::now();
    let python = match find_python() {
        Ok(python) => python,
        Err(e) => panic!("{e}"),
    };
    let venv_python = match ensure_venv(&python) {
        Ok(path) => path,
        Err(e) => panic!("interop setup: {e}"),
    };
    let logs = target_dir().join("interop-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let env = Env {
        python: venv_python,
        script: repo_root().join("interop").join("reference.py"),
        logs,
    };
    say(&format!(
        "interop: reference snitun {REFERENCE_VERSION} on Python {} (setup {:.1} s)",
        python.version,
        started.elapsed().as_secs_f64()
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        let mut report = Report::default();
        ours_theirs(&env, &mut report).await;
        theirs_ours(&env, &mut report).await;
        report
    });
    runtime.shutdown_timeout(Duration::from_secs(5));

    for group in [OURS_THEIRS, THEIRS_OURS] {
        let rates: Vec<f64> = report
            .rates
            .iter()
            .filter(|(g, _)| *g == group)
            .map(|(_, r)| *r)
            .collect();
        if !rates.is_empty() {
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rates.iter().copied().fold(0.0, f64::max);
            say(&format!(
                "interop {group}: bulk {mean:.1} MB/s on average (min {min:.1}, max {max:.1}) \
                 over {} combinations",
                rates.len()
            ));
        }
    }
    for known in &report.known {
        say(&format!("interop: known reference issue seen: {known}"));
    }
    say(&format!(
        "interop: {} cases ok, {} failed, {} showed a known reference issue, in {:.0} s \
         (reference logs: {})",
        report.passed,
        report.failures.len(),
        report.known.len(),
        started.elapsed().as_secs_f64(),
        env.logs.display()
    ));
    assert!(
        report.failures.is_empty(),
        "interop failures:\n{}",
        report.failures.join("\n")
    );
}
