//! The device's endpoint: a TCP server on loopback that skips the caller's
//! ClientHello record and then obeys the command after it (see
//! [`wire`](crate::wire)).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{ACK, BULK_BUFFER, COMMAND_LEN, DOWNLOAD, ECHO, UPLOAD, parse_command};

/// Bind on loopback (port 0) and serve every connection on its own task
/// until the runtime ends. Returns the bound address.
pub async fn spawn() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(async move {
                        // A caller that breaks off mid-way is not an error
                        // of the endpoint's: the load generator reports it.
                        let _ = serve(stream).await;
                    });
                }
                Err(e) => {
                    // Out of descriptors or similar: back off briefly.
                    eprintln!("endpoint: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(addr)
}

/// Buffer for everything but bulk transfers: the ClientHello skip, echoes
/// and the final wait for EOF. Short connections must not pay for zeroing a
/// bulk buffer: at thousands of connections per second a 256 KiB `calloc`
/// each made `memset` a fifth of this process's CPU, taken from the very
/// CPUs the tunnel under test runs on.
const SMALL_BUFFER: usize = 16 * 1024;

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    // Skip the ClientHello record the tunnel forwarded unchanged.
    let mut record_header = [0u8; 5];
    stream.read_exact(&mut record_header).await?;
    let [_, _, _, hi, lo] = record_header;
    let mut skip = usize::from(u16::from_be_bytes([hi, lo]));
    let mut buf = vec![0u8; SMALL_BUFFER];
    while skip > 0 {
        let want = skip.min(buf.len());
        let chunk = buf.get_mut(..want).unwrap_or_default();
        stream.read_exact(chunk).await?;
        skip -= want;
    }
    let mut cmd = [0u8; COMMAND_LEN];
    stream.read_exact(&mut cmd).await?;
    match parse_command(&cmd) {
        (UPLOAD, n) => {
            let mut bulk = vec![0u8; BULK_BUFFER];
            let mut left = n;
            while left > 0 {
                let got = stream.read(&mut bulk).await?;
                if got == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                left = left.saturating_sub(got as u64);
            }
            stream.write_all(&[ACK]).await?;
        }
        (DOWNLOAD, n) => {
            let bulk = vec![0x5au8; BULK_BUFFER];
            let mut left = n;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(bulk.len());
                stream
                    .write_all(bulk.get(..want).unwrap_or_default())
                    .await?;
                left -= want as u64;
            }
        }
        (ECHO, _) => loop {
            let got = stream.read(&mut buf).await?;
            if got == 0 {
                return Ok(());
            }
            stream.write_all(buf.get(..got).unwrap_or_default()).await?;
        },
        _ => return Err(std::io::ErrorKind::InvalidData.into()),
    }
    // Wait for the caller to end the connection first.
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}
