//! `snitun-bench memory`: resident memory per idle peer and per idle
//! channel on our server (and per channel on our client).
//!
//! One `snitun server` process. N peers connect from this process (the
//! library's client, each with its own token and host name) and stay idle;
//! the server's RSS before and after, over N, is the cost of an idle peer.
//! Then one `snitun client` process connects, M callers each open a channel
//! through it to this process's endpoint, echo once and stay idle; the RSS
//! growth of the server and of that client over M is the cost of an idle
//! channel on each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use snitun::client::Client;
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::procs::{self, Credentials, Impl, Programs};
use crate::wire::{ECHO, client_hello, command};
use crate::{ProgramArgs, Res};

/// Options of `snitun-bench memory`.
#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// Idle peers to connect.
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Idle channels to open (through one peer).
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Handshakes or channel opens in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Write the results here (`.md` and `.json` appended); default
    /// bench/results/memory-latest.
    #[arg(long, value_name = "PATH")]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    programs: ProgramArgs,
}

const KIB: f64 = 1024.0;

fn rss_kib(pid: u32) -> Res<f64> {
    Ok(procs::rss(pid)?.0 as f64 / KIB)
}

/// Let allocations settle (tasks finish handshakes, buffers shrink).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// `snitun-bench memory`.
pub async fn run(args: MemoryArgs) -> Res<()> {
    let programs = Programs {
        snitun: args.programs.snitun()?,
        baseline: None,
        python: "python3".into(),
        reference_script: crate::repo_root().join("bench").join("reference_peer.py"),
    };
    let keys = KeyRing::new(vec![FernetKey::generate()])?;
    let server = procs::start_server(Impl::Ours, &programs, &keys.primary().to_base64()).await?;
    let endpoint = crate::endpoint::spawn().await?;
    settle().await;
    let server_empty = rss_kib(server.proc.pid())?;
    let own_empty = rss_kib(std::process::id())?;

    eprintln!("connecting {} idle peers", args.peers);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.peers);
    for i in 0..args.peers {
        let claims = TokenClaims::new(format!("peer{i}.bench.test"), Duration::from_secs(3600));
        let token = keys.mint(&claims);
        let gate = gate.clone();
        let server_addr = server.peer.to_string();
        let endpoint = endpoint.to_string();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let session = Client::builder(server_addr)
                .token(token)
                .aes(claims.aes_key, claims.aes_iv)
                .endpoint(endpoint)
                .connect_timeout(Duration::from_secs(60))
                .connect()
                .await?;
            Ok::<_, crate::Error>(session)
        }));
    }
    let mut sessions = Vec::with_capacity(args.peers);
    for task in tasks {
        sessions.push(task.await??);
    }
    let connect_s = started.elapsed().as_secs_f64();
    settle().await;
    let server_peers = rss_kib(server.proc.pid())?;
    let own_peers = rss_kib(std::process::id())?;
    let per_peer_server = (server_peers - server_empty) / args.peers.max(1) as f64;
    let per_peer_client = (own_peers - own_empty) / args.peers.max(1) as f64;
    eprintln!(
        "{} peers in {connect_s:.1} s: server {server_empty:.0} -> {server_peers:.0} KiB \
         ({per_peer_server:.1} KiB per peer)",
        args.peers
    );

    // Channels: one client process, M idle callers through it.
    let hostname = "channels.bench.test";
    let claims = TokenClaims::new(hostname, Duration::from_secs(3600));
    let creds = Credentials {
        token: keys.mint(&claims),
        aes_key: claims.aes_key.iter().map(|b| format!("{b:02x}")).collect(),
        aes_iv: claims.aes_iv.iter().map(|b| format!("{b:02x}")).collect(),
        cipher: "aes-cbc".into(),
    };
    let client = procs::start_client(Impl::Ours, &programs, server.peer, endpoint, &creds).await?;
    let hello = client_hello(hostname);
    crate::load::wait_routable(server.sni, &hello, Duration::from_secs(30)).await?;
    settle().await;
    let server_before = rss_kib(server.proc.pid())?;
    let client_before = rss_kib(client.pid())?;
    eprintln!("opening {} idle channels", args.channels);
    let mut callers = Vec::with_capacity(args.channels);
    let hello: Arc<[u8]> = hello.into();
    let mut opens = Vec::new();
    for _ in 0..args.channels {
        let gate = gate.clone();
        let hello = hello.clone();
        let sni = server.sni;
        opens.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut stream = TcpStream::connect(sni).await?;
            let mut first = hello.to_vec();
            first.extend_from_slice(&command(ECHO, 0));
            first.extend_from_slice(b"ping");
            stream.write_all(&first).await?;
            let mut back = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut back))
                .await
                .map_err(|_| "no echo through a new channel")??;
            Ok::<_, crate::Error>(stream)
        }));
    }
    for open in opens {
        callers.push(open.await??);
    }
    settle().await;
    let server_after = rss_kib(server.proc.pid())?;
    let client_after = rss_kib(client.pid())?;
    let channels = args.channels.max(1) as f64;
    let per_channel_server = (server_after - server_before) / channels;
    let per_channel_client = (client_after - client_before) / channels;

    let markdown = format!(
        "## snitun-bench memory\n\n\
         | figure | value |\n|---|---|\n\
         | server RSS, no peers (KiB) | {server_empty:.0} |\n\
         | server RSS, {peers} idle peers (KiB) | {server_peers:.0} |\n\
         | **server RSS per idle peer (KiB)** | **{per_peer_server:.1}** |\n\
         | client side (library, in the benchmark process) per idle peer (KiB) | {per_peer_client:.1} |\n\
         | {channels_n} idle channels: server RSS per channel (KiB) | {per_channel_server:.1} |\n\
         | {channels_n} idle channels: client RSS per channel (KiB) | {per_channel_client:.1} |\n\
         | client RSS with {channels_n} idle channels (KiB) | {client_after:.0} |\n\
         | time to connect the peers (s) | {connect_s:.1} |\n\n\
         Target: <= 64 KiB per idle connected peer on the server at 10,000 peers: {verdict}.\n",
        peers = args.peers,
        channels_n = args.channels,
        verdict = if per_peer_server <= 64.0 {
            if args.peers >= 10_000 {
                "holds"
            } else {
                "holds at this count (run with --peers 10000 for the target's count)"
            }
        } else {
            "does not hold"
        },
    );
    println!("{markdown}");
    let json = serde_json::json!({
        "peers": args.peers,
        "channels": args.channels,
        "server_rss_kib": {"empty": server_empty, "with_peers": server_peers,
            "before_channels": server_before, "with_channels": server_after},
        "client_rss_kib": {"before_channels": client_before, "with_channels": client_after},
        "per_peer_kib": {"server": per_peer_server, "client_library": per_peer_client},
        "per_channel_kib": {"server": per_channel_server, "client": per_channel_client},
        "connect_s": connect_s,
    });
    let out = args.out.clone().unwrap_or_else(|| {
        crate::repo_root()
            .join("bench")
            .join("results")
            .join("memory-latest")
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out.with_extension("md"), &markdown)?;
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    drop(callers);
    for session in sessions {
        session.disconnect().await;
    }
    client.stop().await;
    server.proc.stop().await;
    Ok(())
}
