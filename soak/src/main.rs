//! `snitun-soak`: a soak and load test of a SniTun server.
//!
//! Starts the `snitun server` binary (a separate process, so its memory and
//! descriptors are its own), connects `--peers` client peers from this
//! process (each serves its channels by echoing them), then keeps
//! `--callers` caller connections open, spread over the peers' hostnames,
//! each sending a `--message`-byte message every `--period-ms` and timing
//! its echo. Every `--interval` seconds it prints throughput, latency
//! percentiles, the server's RSS, descriptors and tasks (from its
//! `--stats-interval` lines), its own RSS and tasks, and errors. At the end
//! it judges the run: no errors, RSS growth after the warm-up under 5 %, no
//! growth in descriptors or tasks; and writes a JSON report with `--json`.
//!
//! ```sh
//! cargo build --release -p snitun -p snitun-soak
//! target/release/snitun-soak --peers 1000 --callers 10000 --duration 600
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use snitun::client::{Client, Session};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use snitun::{Channel, Error};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

mod hello;
mod report;

use report::{Report, Sample};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Soak and load test of a SniTun server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Client peers connected from this process.
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Caller connections kept open, spread over the peers.
    #[arg(long, default_value_t = 10_000)]
    callers: usize,
    /// How long to run, in seconds (after everything is connected).
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds between reports.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Each caller sends one message this often, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    period_ms: u64,
    /// Message size in bytes (at least 8).
    #[arg(long, default_value_t = 1024)]
    message: usize,
    /// Share of the run (0-1) counted as warm-up for the growth checks.
    #[arg(long, default_value_t = 0.2)]
    warmup: f64,
    /// The `snitun` binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What callers and peers count, shared.
#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    messages: AtomicU64,
    connect_errors: AtomicU64,
    io_errors: AtomicU64,
    mismatches: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl Counters {
    fn errors(&self) -> u64 {
        self.connect_errors.load(Ordering::Relaxed)
            + self.io_errors.load(Ordering::Relaxed)
            + self.mismatches.load(Ordering::Relaxed)
    }

    fn take_latencies(&self) -> Vec<u32> {
        std::mem::take(
            &mut *self
                .latencies_us
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("snitun-soak: cannot start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("snitun-soak: {err}");
            ExitCode::from(2)
        }
    }
}

/// The server process and what it reports.
struct ServerProcess {
    child: Child,
    pid: u32,
    sni: SocketAddr,
    peer: SocketAddr,
    /// The latest `stats` line.
    stats: Arc<Mutex<serde_json::Value>>,
}

async fn start_server(args: &Args, key: &FernetKey) -> Res<ServerProcess> {
    let bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("snitun"),
    };
    let mut child = Command::new(&bin)
        .args(["server", "--fernet-key", &key.to_base64()])
        .args(["--sni", "127.0.0.1:0", "--peer", "127.0.0.1:0"])
        .args(["--stats-interval", &args.interval.max(1).to_string()])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", bin.display()))?;
    let pid = child.id().ok_or("the server exited at once")?;
    let stdout = child.stdout.take().ok_or("no server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut sni, mut peer) = (None, None);
    while sni.is_none() || peer.is_none() {
        let line = lines.next_line().await?.ok_or("the server exited")?;
        if let Some(addr) = line.strip_prefix("listening sni ") {
            sni = Some(addr.parse()?);
        } else if let Some(addr) = line.strip_prefix("listening peer ") {
            peer = Some(addr.parse()?);
        }
    }
    let stats = Arc::new(Mutex::new(serde_json::Value::Null));
    let latest = stats.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(json) = line.strip_prefix("stats ")
                && let Ok(value) = serde_json::from_str(json)
            {
                *latest.lock().unwrap_or_else(PoisonError::into_inner) = value;
            }
        }
    });
    Ok(ServerProcess {
        child,
        pid,
        sni: sni.ok_or("no SNI address")?,
        peer: peer.ok_or("no peer address")?,
        stats,
    })
}

fn hostname(i: usize) -> String {
    format!("peer-{i}.soak.test")
}

/// Serve a channel by echoing it.
async fn echo(mut channel: Channel) -> snitun::Result<()> {
    while let Some(chunk) = channel.recv().await.map_err(Error::Io)? {
        channel.send(chunk).await.map_err(Error::Io)?;
    }
    Ok(())
}

async fn connect_peers(args: &Args, keys: &KeyRing, server: SocketAddr) -> Res<Vec<Session>> {
    let mut sessions = Vec::with_capacity(args.peers);
    // A few dozen handshakes at a time, well under the server's limit.
    for batch in (0..args.peers).collect::<Vec<_>>().chunks(50) {
        let mut connecting = Vec::new();
        for &i in batch {
            let claims =
                TokenClaims::new(hostname(i), Duration::from_secs(86_400)).with_protocol_version(2);
            let builder = Client::builder(server.to_string())
                .token(keys.mint(&claims))
                .aes(claims.aes_key, claims.aes_iv)
                .protocol_version(2)
                .connector(echo);
            connecting.push(tokio::spawn(builder.connect()));
        }
        for task in connecting {
            sessions.push(task.await??);
        }
    }
    Ok(sessions)
}

/// What every caller shares.
#[derive(Clone)]
struct CallerPlan {
    sni: SocketAddr,
    message: usize,
    period: Duration,
    started: Instant,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

/// One caller: a ClientHello for `host`, then (after `offset`) a timed
/// message every period until stopped.
async fn caller(plan: CallerPlan, host: String, offset: Duration) {
    let CallerPlan {
        sni,
        message,
        period,
        started,
        stop,
        counters,
    } = plan;
    let Ok(mut stream) = TcpStream::connect(sni).await else {
        counters.connect_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = stream.set_nodelay(true);
    // The peers echo everything, the forwarded ClientHello first.
    let hello = hello::client_hello(&host);
    let mut echoed = vec![0u8; hello.len()];
    let opened = async {
        stream.write_all(&hello).await?;
        stream.read_exact(&mut echoed).await
    };
    match tokio::time::timeout(Duration::from_secs(30), opened).await {
        Ok(Ok(_)) if echoed == hello => {}
        Ok(Ok(_)) => {
            counters.mismatches.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(Err(_)) | Err(_) => {
            counters.io_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    tokio::time::sleep(offset).await;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = vec![0u8; message.max(8)];
    let mut back = vec![0u8; out.len()];
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let sent = started.elapsed();
        let stamp = u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX);
        if let Some(head) = out.get_mut(..8) {
            head.copy_from_slice(&stamp.to_be_bytes());
        }
        let exchange = async {
            stream.write_all(&out).await?;
            stream.read_exact(&mut back).await
        };
        match tokio::time::timeout(Duration::from_secs(30), exchange).await {
            Ok(Ok(_)) if back == out => {
                let micros = (started.elapsed() - sent).as_micros();
                counters
                    .latencies_us
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                counters
                    .bytes
                    .fetch_add(2 * out.len() as u64, Ordering::Relaxed);
                counters.messages.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {
                counters.mismatches.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(_)) | Err(_) => {
                counters.io_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// A counter of the server's latest stats line (0 before the first).
fn stat(stats: &serde_json::Value, name: &str) -> u64 {
    stats
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

fn proc_status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

async fn run(args: Args) -> Res<bool> {
    let key = FernetKey::generate();
    let keys = KeyRing::new(vec![key.clone()])?;
    let mut server = start_server(&args, &key).await?;
    eprintln!(
        "server pid {} (sni {}, peer {}); connecting {} peers",
        server.pid, server.sni, server.peer, args.peers
    );
    let sessions = connect_peers(&args, &keys, server.peer).await?;

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let period = Duration::from_millis(args.period_ms.max(1));
    eprintln!("opening {} callers", args.callers);
    let plan = CallerPlan {
        sni: server.sni,
        message: args.message,
        period,
        started,
        stop: stop.clone(),
        counters: counters.clone(),
    };
    let mut callers = Vec::with_capacity(args.callers);
    for j in 0..args.callers {
        // Spread the sends over the period.
        let offset = period.mul_f64(j as f64 / args.callers.max(1) as f64);
        callers.push(tokio::spawn(caller(
            plan.clone(),
            hostname(j % args.peers.max(1)),
            offset,
        )));
        if j % 500 == 499 {
            // Let the server's accept queue breathe.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let mut report = Report::new(&args);
    let interval = Duration::from_secs(args.interval.max(1));
    let runtime = tokio::runtime::Handle::current();
    let me = std::process::id().to_string();
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut last_bytes = 0;
    let mut last_at = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(interval.min(deadline - Instant::now())).await;
        let now = Instant::now();
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let mut latencies = counters.take_latencies();
        latencies.sort_unstable();
        let stats = server
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sample = Sample {
            at_s: started.elapsed().as_secs_f64(),
            mb_per_s: (bytes - last_bytes) as f64 / (now - last_at).as_secs_f64() / 1e6,
            messages: latencies.len() as u64,
            p50_ms: report::percentile(&latencies, 0.50),
            p99_ms: report::percentile(&latencies, 0.99),
            max_ms: report::percentile(&latencies, 1.0),
            server_rss_kib: proc_status_kib(&server.pid.to_string(), "VmRSS:"),
            server_fds: open_fds(server.pid),
            server_tasks: stat(&stats, "tasks"),
            server_peers: stat(&stats, "peers"),
            server_channels: stat(&stats, "channels"),
            own_rss_kib: proc_status_kib(&me, "VmRSS:"),
            own_tasks: runtime.metrics().num_alive_tasks() as u64,
            peers_connected: sessions.iter().filter(|s| s.is_connected()).count() as u64,
            errors: counters.errors(),
        };
        report.print(&sample);
        report.samples.push(sample);
        last_bytes = bytes;
        last_at = now;
    }

    stop.store(true, Ordering::Relaxed);
    for task in callers {
        let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
    }
    for session in &sessions {
        session.disconnect().await;
    }
    let _ = server.child.start_kill();
    report.errors = [
        ("connect", counters.connect_errors.load(Ordering::Relaxed)),
        ("io", counters.io_errors.load(Ordering::Relaxed)),
        ("mismatch", counters.mismatches.load(Ordering::Relaxed)),
    ]
    .into_iter()
    .map(|(kind, n)| (kind.to_string(), n))
    .collect();
    let passed = report.judge();
    if let Some(path) = &args.json {
        std::fs::write(path, report.json().to_string())?;
    }
    Ok(passed)
}
