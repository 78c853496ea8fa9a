//! `snitun server`: the public server, until SIGINT or SIGTERM.

use snitun::server::Server;

use crate::cli::ServerArgs;
use crate::fail::{Context, Result};
use crate::signal;
use crate::token::key_ring;

/// Bind, print the bound addresses (one `listening KIND ADDR` line each, so
/// scripts that asked for port 0 can read the ports), and serve until a
/// signal; then shut down gracefully.
pub async fn run(args: ServerArgs) -> Result<()> {
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
    server
        .run_until(signal::shutdown())
        .await
        .context("running the server")
}
