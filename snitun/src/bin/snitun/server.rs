//! `snitun server`: the public server, until SIGINT or SIGTERM.

use std::time::Duration;

use snitun::server::{Server, ServerHandle};

use crate::cli::ServerArgs;
use crate::fail::{Context, Result};
use crate::signal;
use crate::token::key_ring;

/// Bind, print the bound addresses (one `listening KIND ADDR` line each, so
/// scripts that asked for port 0 can read the ports), and serve until a
/// signal; then shut down gracefully.
pub async fn run(args: ServerArgs) -> Result<()> {
    let mut stop = signal::listen();
    let keys = key_ring(&args.fernet_keys)?;
    // The reference's MULTIPLEXER_* environment overrides apply to the CLI.
    let mut builder = Server::builder(keys)
        .mux_config(snitun::MuxConfig::from_env())
        .proxy_protocol(args.proxy_protocol)
        .throttling(args.throttling);
    for addr in &args.sni {
        builder = builder.sni_listen(*addr);
    }
    for addr in &args.peer {
        builder = builder.peer_listen(*addr);
    }
    for addr in &args.listen {
        builder = builder.listen(*addr);
    }
    let server = builder.bind().await.context("starting the server")?;

    let addrs = server.local_addrs();
    for (kind, list) in [
        ("sni", &addrs.sni),
        ("peer", &addrs.peer),
        ("single", &addrs.listen),
    ] {
        for addr in list {
            println!("listening {kind} {addr}");
        }
    }
    if let Some(seconds) = args.stats_interval {
        tokio::spawn(print_stats(
            server.handle(),
            Duration::from_secs(u64::from(seconds)),
        ));
    }
    server
        .run_until(async move { stop.recv().await })
        .await
        .context("running the server")
}

/// One `stats {json}` line every `interval` until the server stops.
async fn print_stats(server: ServerHandle, interval: Duration) {
    let runtime = tokio::runtime::Handle::current();
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    while !server.is_shutting_down() {
        ticks.tick().await;
        let peers = server.peers();
        let channels: usize = peers.iter().map(|peer| peer.channels).sum();
        let (handshakes, hellos) = server.pending();
        let refused = server.refusals();
        let line = serde_json::json!({
            "peers": peers.len(),
            "channels": channels,
            "tasks": runtime.metrics().num_alive_tasks(),
            "pending_handshakes": handshakes,
            "pending_hellos": hellos,
            "refused": {
                "handshakes": refused.handshakes,
                "peers": refused.peers,
                "channels_per_peer": refused.channels_per_peer,
                "pending_hellos": refused.pending_hellos,
                "hello_bytes": refused.hello_bytes,
            },
        });
        println!("stats {line}");
    }
}
