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
    /// Move bytes with splice(2) through a pipe (Linux): no copy through
    /// user space, the floor for a tunnel that would splice its payloads.
    #[arg(long)]
    splice: bool,
}

/// Forward every connection until killed.
pub async fn run(args: RelayArgs) -> Res<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening relay {}", listener.local_addr()?);
    serve(listener, args.to, args.splice).await
}

/// Accept on `listener` and forward each connection to `to`.
async fn serve(listener: TcpListener, to: SocketAddr, splice: bool) -> Res<()> {
    loop {
        let (inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A connection that breaks off is the load generator's to report.
            let _ = if splice {
                spliced::forward(inbound, to).await
            } else {
                forward(inbound, to).await
            };
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

#[cfg(target_os = "linux")]
mod spliced {
    //! The same forwarder with splice(2): socket -> pipe -> socket, the
    //! pages moved by the kernel (the library's own pipe, as the tunnel
    //! uses it for received payloads).

    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;

    use snitun::mux::splice::{Filled, Pipe};
    use tokio::net::TcpStream;

    use crate::wire::BULK_BUFFER;

    pub async fn forward(inbound: TcpStream, to: SocketAddr) -> io::Result<()> {
        let outbound = TcpStream::connect(to).await?;
        inbound.set_nodelay(true)?;
        outbound.set_nodelay(true)?;
        tokio::try_join!(pump(&inbound, &outbound), pump(&outbound, &inbound))?;
        Ok(())
    }

    /// `src` to `dst` until EOF (then FIN to `dst`).
    async fn pump(src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
        let pipe = Pipe::new()?;
        loop {
            src.readable().await?;
            match pipe.fill_from(src, BULK_BUFFER) {
                Ok(Filled::Eof) => return shutdown_write(dst),
                Ok(Filled::Moved(_) | Filled::PipeFull) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
            while pipe.queued() > 0 {
                dst.writable().await?;
                match pipe.drain_to(dst, usize::MAX) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
        // SAFETY: shutdown(2) on a socket the caller keeps open.
        let rc = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load;
    use crate::wire::client_hello;
    use std::time::Duration;

    /// Both forwarders carry every workload to the endpoint and back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_forwarders_carry_every_workload() {
        let endpoint = crate::endpoint::spawn().await.unwrap();
        for splice in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, endpoint, splice));
            let hello = client_hello("relay.test");
            load::wait_routable(addr, &hello, Duration::from_secs(5))
                .await
                .unwrap();
            load::upload(addr, &hello, 3 << 20).await.unwrap();
            load::download(addr, &hello, 3 << 20).await.unwrap();
            load::aggregate(addr, &hello, 4, 1 << 20).await.unwrap();
            assert_eq!(load::echo(addr, &hello, 1024, 20).await.unwrap().len(), 20);
            load::connections(addr, &hello, 40, 8, 64).await.unwrap();
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod spliced {
    pub async fn forward(
        _inbound: tokio::net::TcpStream,
        _to: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "splice(2) is Linux-only",
        ))
    }
}
