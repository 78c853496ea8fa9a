//! The side-by-side run: start every topology, measure in interleaved
//! rounds, report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use snitun::token::{FernetKey, KeyRing, TokenClaims};

use crate::procs::{self, Credentials, Impl, Proc, Programs, ServerProc};
use crate::report::{self, Metric};
use crate::stats::percentile;
use crate::{ProgramArgs, Res, load};

const MIB: u64 = 1024 * 1024;
const GIB: f64 = (1u64 << 30) as f64;
/// Host name of the benchmark's device.
const HOSTNAME: &str = "bench.snitun.test";
/// Channels of the aggregate workload.
const CHANNELS: usize = 16;
/// Echo message size.
const ECHO_SIZE: usize = 1024;
/// Short connections in flight.
const IN_FLIGHT: usize = 8;
/// Echo size of a short connection.
const CONNECTION_ECHO: usize = 64;
/// Longest any one measurement may take.
const STEP_LIMIT: Duration = Duration::from_secs(600);

/// Options of `snitun-bench run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Small sizes and 3 rounds (a minute or two; below the issue's
    /// minimums, for iterating).
    #[arg(long)]
    quick: bool,
    /// Rounds (repetitions of every figure); default 5 (3 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// MiB per one-channel transfer; default 256 (32 with --quick).
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// Round trips per echo figure; default 2000 (300 with --quick).
    #[arg(long)]
    echoes: Option<usize>,
    /// Connections per connection-rate figure; default 2000 (300 with
    /// --quick).
    #[arg(long)]
    connections: Option<usize>,
    /// Connections in flight at once in the connection-rate figure;
    /// default 8.
    #[arg(long)]
    in_flight: Option<usize>,
    /// Only these topologies (comma-separated: direct, relays, ours,
    /// reference, ours-ref, ref-ours, baseline, and relays-splice, which
    /// runs only when named).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these workloads (comma-separated: upload, download, aggregate,
    /// echo, connections), e.g. to profile one of them.
    #[arg(long, value_delimiter = ',', value_parser = ["upload", "download", "aggregate", "echo", "connections"])]
    workloads: Vec<String>,
    /// Tunnel cipher: aes-cbc (the reference's default), aes-gcm,
    /// aes-gcm-siv.
    #[arg(long, default_value = "aes-cbc")]
    cipher: String,
    /// Write the results here (`.md` and `.json` are appended); default
    /// bench/results/latest (quick-latest with --quick).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Also run `baseline`: server and client from this other build of
    /// the `snitun` CLI (e.g. the main branch's), for before/after ratios
    /// measured in the same run.
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    #[command(flatten)]
    programs: ProgramArgs,
}

/// The sizes of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// Rounds.
    pub reps: usize,
    /// Bytes of each one-channel transfer.
    pub bulk_bytes: u64,
    /// Concurrent channels of the aggregate workload.
    pub channels: usize,
    /// Bytes per channel of the aggregate workload.
    pub channel_bytes: u64,
    /// Echo round trips per figure.
    pub echoes: usize,
    /// Echo size.
    pub echo_size: usize,
    /// Short connections per figure.
    pub connections: usize,
    /// Of which in flight at once.
    pub in_flight: usize,
    /// Tunnel cipher.
    pub cipher: String,
}

/// What stands between the callers and the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Nothing: callers go straight to the endpoint.
    Direct,
    /// Two forwarders (`snitun-bench relay`, with `--splice` or not).
    Relays { splice: bool },
    /// A tunnel: which implementation runs the server and the client.
    Tunnel(Impl, Impl),
}

/// One topology.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Short name, as in the table.
    pub name: &'static str,
    /// What it is.
    pub label: &'static str,
    path: Path,
}

/// The optional before/after topology (`--baseline-bin`).
pub const BASELINE: Topology = Topology {
    name: "baseline",
    label: "baseline: server + client from --baseline-bin",
    path: Path::Tunnel(Impl::Baseline, Impl::Baseline),
};

/// Two splice(2) forwarders: run only when named in `--only`.
pub const RELAYS_SPLICE: Topology = Topology {
    name: "relays-splice",
    label: "two splice(2) forwarders in a chain (no copy through user space; Linux)",
    path: Path::Relays { splice: true },
};

/// Every topology, in table order.
pub const TOPOLOGIES: [Topology; 6] = [
    Topology {
        name: "direct",
        label: "direct (no tunnel)",
        path: Path::Direct,
    },
    Topology {
        name: "relays",
        label: "two plain TCP forwarders in a chain (no tunnel, the same three hops)",
        path: Path::Relays { splice: false },
    },
    Topology {
        name: "ours",
        label: "ours: Rust server + Rust client",
        path: Path::Tunnel(Impl::Ours, Impl::Ours),
    },
    Topology {
        name: "reference",
        label: "reference: Python server + Python client",
        path: Path::Tunnel(Impl::Reference, Impl::Reference),
    },
    Topology {
        name: "ours-ref",
        label: "Rust server + Python client",
        path: Path::Tunnel(Impl::Ours, Impl::Reference),
    },
    Topology {
        name: "ref-ours",
        label: "Python server + Rust client",
        path: Path::Tunnel(Impl::Reference, Impl::Ours),
    },
];

/// A started topology and what was measured on it.
struct Live {
    topology: Topology,
    /// Where callers connect.
    addr: SocketAddr,
    server: Option<ServerProc>,
    client: Option<Proc>,
    samples: BTreeMap<Metric, Vec<f64>>,
    /// CPU and bytes of this round's bulk workloads.
    round_cpu: (f64, f64, f64),
    round_bytes: f64,
}

impl Live {
    fn push(&mut self, metric: Metric, value: f64) {
        self.samples.entry(metric).or_default().push(value);
    }

    /// Server, client and this process's CPU seconds so far.
    fn cpu_with_own(&self) -> Res<(f64, f64, f64)> {
        let (server, client) = self.cpu()?;
        Ok((server, client, procs::own_cpu_seconds()?))
    }

    fn cpu(&self) -> Res<(f64, f64)> {
        let server = match &self.server {
            Some(s) => s.proc.cpu_seconds()?,
            None => 0.0,
        };
        let client = match &self.client {
            Some(c) => c.cpu_seconds()?,
            None => 0.0,
        };
        Ok((server, client))
    }

    /// Run a bulk workload, charging the CPU it cost to this round.
    async fn bulk<F: std::future::Future<Output = Res<T>>, T>(
        &mut self,
        bytes: u64,
        work: F,
    ) -> Res<T> {
        let (s0, c0, own0) = self.cpu_with_own()?;
        let out = limited(work).await?;
        let (s1, c1, own1) = self.cpu_with_own()?;
        self.round_cpu.0 += s1 - s0;
        self.round_cpu.1 += c1 - c0;
        self.round_cpu.2 += own1 - own0;
        self.round_bytes += bytes as f64;
        Ok(out)
    }

    fn end_round(&mut self) {
        let gib = self.round_bytes / GIB;
        if gib > 0.0 && self.topology.path != Path::Direct {
            self.push(Metric::CpuServer, self.round_cpu.0 / gib);
            self.push(Metric::CpuClient, self.round_cpu.1 / gib);
        }
        if gib > 0.0 {
            self.push(Metric::CpuLoad, self.round_cpu.2 / gib);
        }
        self.round_cpu = (0.0, 0.0, 0.0);
        self.round_bytes = 0.0;
    }

    fn memory(&mut self, idle: bool) -> Res<()> {
        let (server_metric, client_metric) = if idle {
            (Metric::IdleRssServer, Metric::IdleRssClient)
        } else {
            (Metric::PeakRssServer, Metric::PeakRssClient)
        };
        let server = match &self.server {
            Some(s) => Some(s.proc.rss()?),
            None => None,
        };
        let client = match &self.client {
            Some(c) => Some(c.rss()?),
            None => None,
        };
        // Idle: resident now; peak: the high-water mark of the whole run.
        let pick = |(rss, hwm): (u64, u64)| if idle { rss } else { hwm } as f64 / MIB as f64;
        if let Some(server) = server {
            self.push(server_metric, pick(server));
        }
        if let Some(client) = client {
            self.push(client_metric, pick(client));
        }
        Ok(())
    }
}

async fn limited<T>(work: impl std::future::Future<Output = Res<T>>) -> Res<T> {
    tokio::time::timeout(STEP_LIMIT, work)
        .await
        .map_err(|_| "a measurement took too long")?
}

fn plan(args: &RunArgs) -> Plan {
    let quick = args.quick;
    let bulk_mib = args.bulk_mib.unwrap_or(if quick { 32 } else { 256 }).max(1);
    Plan {
        reps: args.reps.unwrap_or(if quick { 3 } else { 5 }).max(1),
        bulk_bytes: bulk_mib * MIB,
        channels: CHANNELS,
        channel_bytes: (bulk_mib * MIB / CHANNELS as u64).max(1),
        echoes: args.echoes.unwrap_or(if quick { 300 } else { 2000 }).max(1),
        echo_size: ECHO_SIZE,
        connections: args
            .connections
            .unwrap_or(if quick { 300 } else { 2000 })
            .max(1),
        in_flight: args.in_flight.unwrap_or(IN_FLIGHT).max(1),
        cipher: args.cipher.clone(),
    }
}

async fn start(
    topology: Topology,
    programs: &Programs,
    endpoint: SocketAddr,
    keys: &KeyRing,
    creds: &Credentials,
) -> Res<Live> {
    let (addr, server, client) = match topology.path {
        Path::Direct => (endpoint, None, None),
        Path::Relays { splice } => {
            // The "client" relay forwards to the endpoint, the "server" one
            // to it; callers connect to the latter.
            let (client, client_addr) = procs::start_relay(endpoint, splice).await?;
            let (server, server_addr) = procs::start_relay(client_addr, splice).await?;
            let server = ServerProc {
                proc: server,
                sni: server_addr,
                peer: server_addr,
            };
            (server_addr, Some(server), Some(client))
        }
        Path::Tunnel(server_impl, client_impl) => {
            let key = keys.primary().to_base64();
            let server = procs::start_server(server_impl, programs, &key).await?;
            let client =
                procs::start_client(client_impl, programs, server.peer, endpoint, creds).await?;
            (server.sni, Some(server), Some(client))
        }
    };
    let hello = crate::wire::client_hello(HOSTNAME);
    load::wait_routable(addr, &hello, Duration::from_secs(30))
        .await
        .map_err(|e| format!("{}: {e}", topology.name))?;
    Ok(Live {
        topology,
        addr,
        server,
        client,
        samples: BTreeMap::new(),
        round_cpu: (0.0, 0.0, 0.0),
        round_bytes: 0.0,
    })
}

/// `snitun-bench run`.
pub async fn run(args: RunArgs) -> Res<()> {
    let plan = plan(&args);
    let mut all = TOPOLOGIES.to_vec();
    if args.baseline_bin.is_some() {
        all.push(BASELINE);
    }
    if args.only.iter().any(|o| o == RELAYS_SPLICE.name) {
        all.push(RELAYS_SPLICE);
    }
    let selected: Vec<Topology> = all
        .into_iter()
        .filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t.name))
        .collect();
    if selected.is_empty() {
        return Err("--only selects no topology".into());
    }
    let needs_reference = selected.iter().any(
        |t| matches!(t.path, Path::Tunnel(a, b) if a == Impl::Reference || b == Impl::Reference),
    );
    let programs = Programs {
        snitun: args.programs.snitun()?,
        baseline: args.baseline_bin.clone(),
        python: if needs_reference {
            args.programs.python()?
        } else {
            PathBuf::from("python3")
        },
        reference_script: crate::repo_root().join("bench").join("reference_peer.py"),
    };
    let cipher = snitun::Cipher::from_name(&plan.cipher)?;
    let keys = KeyRing::new(vec![FernetKey::generate()])?;
    let claims = TokenClaims::new(HOSTNAME, Duration::from_secs(24 * 3600)).with_cipher(cipher);
    let creds = Credentials {
        token: keys.mint(&claims),
        aes_key: hex(&claims.aes_key),
        aes_iv: hex(&claims.aes_iv),
        cipher: plan.cipher.clone(),
    };
    let hello = crate::wire::client_hello(HOSTNAME);

    eprintln!(
        "snitun-bench: {} rounds; one channel {} MiB; {} channels x {} MiB; {} echoes of {} B; \
         {} connections, {} in flight; cipher {}",
        plan.reps,
        plan.bulk_bytes / MIB,
        plan.channels,
        plan.channel_bytes / MIB,
        plan.echoes,
        plan.echo_size,
        plan.connections,
        plan.in_flight,
        plan.cipher
    );
    let mut live = Vec::new();
    for topology in &selected {
        eprintln!("starting {}", topology.label);
        // An endpoint of its own: the connection workloads leave thousands
        // of sockets in TIME_WAIT towards the endpoint, and with one shared
        // endpoint every topology's connect() had to search past the
        // others' (28,000 ephemeral ports, about 12,000 new connections to
        // it per round), so whoever ran after a busy variant paid for it.
        let endpoint = crate::endpoint::spawn().await?;
        live.push(start(*topology, &programs, endpoint, &keys, &creds).await?);
    }
    // Let every process settle before the idle figures.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for l in live.iter_mut() {
        l.memory(true)?;
    }

    let wants = |name: &str| args.workloads.is_empty() || args.workloads.iter().any(|w| w == name);
    let started = std::time::Instant::now();
    for round in 0..plan.reps {
        eprintln!(
            "round {}/{} ({:.0} s so far)",
            round + 1,
            plan.reps,
            started.elapsed().as_secs_f64()
        );
        // Rotate the order every round: no variant always goes first.
        let order: Vec<usize> = (0..live.len()).map(|i| (i + round) % live.len()).collect();
        for &i in order.iter().filter(|_| wants("upload")) {
            let Some(l) = live.get_mut(i) else { continue };
            let t = l
                .bulk(
                    plan.bulk_bytes,
                    load::upload(l.addr, &hello, plan.bulk_bytes),
                )
                .await
                .map_err(|e| format!("{} upload: {e}", l.topology.name))?;
            l.push(Metric::Upload, mbs(plan.bulk_bytes, t));
        }
        for &i in order.iter().filter(|_| wants("download")) {
            let Some(l) = live.get_mut(i) else { continue };
            let t = l
                .bulk(
                    plan.bulk_bytes,
                    load::download(l.addr, &hello, plan.bulk_bytes),
                )
                .await
                .map_err(|e| format!("{} download: {e}", l.topology.name))?;
            l.push(Metric::Download, mbs(plan.bulk_bytes, t));
        }
        for &i in order.iter().filter(|_| wants("aggregate")) {
            let Some(l) = live.get_mut(i) else { continue };
            let total = plan.channel_bytes * plan.channels as u64;
            let (all, each) = l
                .bulk(
                    total,
                    load::aggregate(l.addr, &hello, plan.channels, plan.channel_bytes),
                )
                .await
                .map_err(|e| format!("{} aggregate: {e}", l.topology.name))?;
            l.push(Metric::Aggregate, mbs(total, all));
            let rates: Vec<f64> = each.iter().map(|d| mbs(plan.channel_bytes, *d)).collect();
            let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let fastest = rates.iter().copied().fold(0.0, f64::max);
            l.push(Metric::Fairness, slowest / fastest);
        }
        for &i in order.iter().filter(|_| wants("echo")) {
            let Some(l) = live.get_mut(i) else { continue };
            let times = limited(load::echo(l.addr, &hello, plan.echo_size, plan.echoes))
                .await
                .map_err(|e| format!("{} echo: {e}", l.topology.name))?;
            let micros: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e6).collect();
            l.push(Metric::EchoP50, percentile(&micros, 50.0));
            l.push(Metric::EchoP99, percentile(&micros, 99.0));
        }
        for &i in order.iter().filter(|_| wants("connections")) {
            let Some(l) = live.get_mut(i) else { continue };
            let (s0, c0, own0) = l.cpu_with_own()?;
            let t = limited(load::connections(
                l.addr,
                &hello,
                plan.connections,
                plan.in_flight,
                CONNECTION_ECHO,
            ))
            .await
            .map_err(|e| format!("{} connections: {e}", l.topology.name))?;
            let (s1, c1, own1) = l.cpu_with_own()?;
            let per_connection = 1e6 / plan.connections as f64;
            l.push(Metric::ConnRate, plan.connections as f64 / t.as_secs_f64());
            if l.topology.path != Path::Direct {
                l.push(Metric::CpuConnTunnel, (s1 - s0 + c1 - c0) * per_connection);
            }
            l.push(Metric::CpuConnLoad, (own1 - own0) * per_connection);
        }
        for l in live.iter_mut() {
            l.end_round();
        }
    }
    for l in live.iter_mut() {
        l.memory(false)?;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let results: Vec<report::TopologyResult> = live
        .iter()
        .map(|l| report::TopologyResult {
            name: l.topology.name,
            label: l.topology.label,
            samples: l.samples.clone(),
        })
        .collect();
    let report = report::Report::new(plan.clone(), results, elapsed);
    let markdown = report.markdown();
    println!("{markdown}");
    let out = args.out.clone().unwrap_or_else(|| {
        crate::repo_root()
            .join("bench")
            .join("results")
            .join(if args.quick { "quick-latest" } else { "latest" })
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let md_path = out.with_extension("md");
    let json_path = out.with_extension("json");
    std::fs::write(&md_path, &markdown)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.json())?)?;
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    for l in live {
        if let Some(client) = l.client {
            client.stop().await;
        }
        if let Some(server) = l.server {
            server.proc.stop().await;
        }
    }
    Ok(())
}

fn mbs(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64().max(1e-9)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
