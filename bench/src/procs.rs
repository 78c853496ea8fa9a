//! Servers and clients as child processes, and what /proc says about them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::Res;

/// Which implementation runs a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// snitun-rs (the `snitun` CLI).
    Ours,
    /// The Python reference, `snitun` 0.47.0.
    Reference,
    /// Another build of the `snitun` CLI (`--baseline-bin`), to compare a
    /// change with what it replaces in the same run.
    Baseline,
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `snitun` CLI binary.
    pub snitun: PathBuf,
    /// The baseline build of the CLI, if any.
    pub baseline: Option<PathBuf>,
    /// The venv's Python with the reference installed.
    pub python: PathBuf,
    /// `bench/reference_peer.py`.
    pub reference_script: PathBuf,
}

impl Programs {
    /// The CLI binary that runs `which`.
    fn cli(&self, which: Impl) -> Res<&Path> {
        match which {
            Impl::Baseline => Ok(self.baseline.as_deref().ok_or("no --baseline-bin given")?),
            _ => Ok(&self.snitun),
        }
    }
}

/// A child process: killed when dropped.
pub struct Proc {
    child: Child,
    pid: u32,
    /// Kept open: the reference runner exits when its stdin closes.
    _stdin: Option<tokio::process::ChildStdin>,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU seconds (user + system) used so far.
    pub fn cpu_seconds(&self) -> Res<f64> {
        cpu_seconds(self.pid)
    }

    /// Resident and peak resident memory, bytes.
    pub fn rss(&self) -> Res<(u64, u64)> {
        rss(self.pid)
    }

    /// Stop it (SIGKILL; the benchmark needs nothing more from it).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn spawn(mut cmd: Command) -> Res<(Proc, ChildStdout)> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or("child exited at once")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stdin = child.stdin.take();
    Ok((
        Proc {
            child,
            pid,
            _stdin: stdin,
        },
        stdout,
    ))
}

/// Read lines until `done` says the startup output is complete, within
/// `limit`.
async fn read_startup(
    stdout: ChildStdout,
    limit: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> Res<()> {
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if done(&line) {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(true)) => {
            // Drain the rest so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(())
        }
        Ok(Ok(false)) => Err("the process exited during startup".into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("the process did not start in time".into()),
    }
}

/// A running server: its process and its SNI and peer addresses.
pub struct ServerProc {
    /// The process.
    pub proc: Proc,
    /// Where callers connect.
    pub sni: SocketAddr,
    /// Where devices connect.
    pub peer: SocketAddr,
}

/// Start a server of `which` on loopback with free ports.
pub async fn start_server(which: Impl, programs: &Programs, fernet_key: &str) -> Res<ServerProc> {
    let cmd = match which {
        Impl::Ours | Impl::Baseline => {
            let mut cmd = Command::new(programs.cli(which)?);
            cmd.args(["server", "--sni", "127.0.0.1:0", "--peer", "127.0.0.1:0"])
                .arg("--fernet-key")
                .arg(fernet_key)
                .env("RUST_LOG", "warn");
            cmd
        }
        Impl::Reference => {
            let mut cmd = Command::new(&programs.python);
            cmd.arg(&programs.reference_script)
                .args(["server", "--fernet-key", fernet_key]);
            cmd
        }
    };
    let (proc, stdout) = spawn(cmd)?;
    let mut sni = None;
    let mut peer = None;
    read_startup(stdout, Duration::from_secs(30), |line| {
        let mut words = line.split_whitespace();
        if words.next() == Some("listening") {
            let kind = words.next();
            let addr = words.next().and_then(|a| a.parse::<SocketAddr>().ok());
            match kind {
                Some("sni") => sni = sni.or(addr),
                Some("peer") => peer = peer.or(addr),
                _ => {}
            }
        }
        sni.is_some() && peer.is_some()
    })
    .await?;
    Ok(ServerProc {
        proc,
        sni: sni.ok_or("no SNI address")?,
        peer: peer.ok_or("no peer address")?,
    })
}

/// Start a plain forwarder (this program's `relay` command) to `to`;
/// returns it and where it listens.
pub async fn start_relay(to: SocketAddr, splice: bool) -> Res<(Proc, SocketAddr)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["relay", "--to", &to.to_string()]);
    if splice {
        cmd.arg("--splice");
    }
    let (proc, stdout) = spawn(cmd)?;
    let mut addr = None;
    read_startup(stdout, Duration::from_secs(30), |line| {
        addr = line
            .strip_prefix("listening relay ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok());
        addr.is_some()
    })
    .await?;
    Ok((proc, addr.ok_or("no relay address")?))
}

/// What a client needs from its token.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The Fernet token.
    pub token: String,
    /// AES key, hex.
    pub aes_key: String,
    /// AES IV, hex.
    pub aes_iv: String,
    /// Cipher name.
    pub cipher: String,
}

/// Start a client of `which` connecting to `server` and relaying to
/// `endpoint`; returns once it reports the connection.
pub async fn start_client(
    which: Impl,
    programs: &Programs,
    server: SocketAddr,
    endpoint: SocketAddr,
    creds: &Credentials,
) -> Res<Proc> {
    let server = server.to_string();
    let endpoint = endpoint.to_string();
    let cmd = match which {
        Impl::Ours | Impl::Baseline => {
            let mut cmd = Command::new(programs.cli(which)?);
            cmd.arg("client")
                .args(["--server", &server, "--endpoint", &endpoint])
                .args(["--token", &creds.token])
                .args(["--aes-key", &creds.aes_key, "--aes-iv", &creds.aes_iv])
                .args(["--cipher", &creds.cipher])
                .arg("--no-reconnect")
                .env("RUST_LOG", "warn");
            cmd
        }
        Impl::Reference => {
            let mut cmd = Command::new(&programs.python);
            cmd.arg(&programs.reference_script)
                .arg("client")
                .args(["--server", &server, "--endpoint", &endpoint])
                .args(["--token", &creds.token])
                .args(["--aes-key", &creds.aes_key, "--aes-iv", &creds.aes_iv])
                .args(["--cipher", &creds.cipher]);
            cmd
        }
    };
    let (proc, stdout) = spawn(cmd)?;
    read_startup(stdout, Duration::from_secs(30), |line| {
        line.starts_with("connected")
    })
    .await?;
    Ok(proc)
}

/// Clock ticks per second of /proc/PID/stat's times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("bad stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are 14 and 15.
    let utime: f64 = fields.get(11).ok_or("bad stat")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("bad stat")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// Resident and peak resident memory of `pid`, bytes.
pub fn rss(pid: u32) -> Res<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Ok((
        field("VmRSS:").ok_or("no VmRSS")?,
        field("VmHWM:").ok_or("no VmHWM")?,
    ))
}

/// The benchmark process's own CPU seconds.
pub fn own_cpu_seconds() -> Res<f64> {
    cpu_seconds(std::process::id())
}

/// `path` if it exists.
pub fn existing(path: &Path) -> Option<PathBuf> {
    path.exists().then(|| path.to_path_buf())
}
