//! `snitun-bench relay`: a plain TCP forwarder, the floor of a tunnel.
//!
//! The `relays` topology chains two of these (load generator -> relay ->
//! relay -> endpoint): the same three loopback hops and four processes as a
//! tunnel, with nothing but kernel copies and one task per direction.
//! What a tunnel costs beyond it is the multiplexer's; what it costs below
//! `direct` is the hops'.

use std::net::SocketAddr;

use clap::Args;
use tokio::net::{TcpListener, TcpStream};

use crate::Res;
use crate::wire::BULK_BUFFER;

/// Options of `snitun-bench relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Where to listen (prints `listening relay ADDR` once bound).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where every accepted connection is forwarded.
    #[arg(long)]
    to: SocketAddr,
}

/// Forward every connection until killed.
pub async fn run(args: RelayArgs) -> Res<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening relay {}", listener.local_addr()?);
    loop {
        let (inbound, _) = listener.accept().await?;
        let to = args.to;
        tokio::spawn(async move {
            // A connection that breaks off is the load generator's to report.
            let _ = forward(inbound, to).await;
        });
    }
}

async fn forward(mut inbound: TcpStream, to: SocketAddr) -> std::io::Result<()> {
    let mut outbound = TcpStream::connect(to).await?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut outbound, BULK_BUFFER, BULK_BUFFER)
        .await?;
    Ok(())
}
