//! The load generator: each function opens callers to an SNI address (or
//! straight to the endpoint, for `direct`) and times one workload.
//!
//! Bulk transfers write from and read into one 256 KiB buffer per
//! connection, so the generator costs little more than the system calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Res;
use crate::wire::{ACK, BULK_BUFFER, DOWNLOAD, ECHO, UPLOAD, command};

/// Connect, send the ClientHello and a command.
async fn open(addr: SocketAddr, hello: &[u8], mode: u8, n: u64) -> Res<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut first = hello.to_vec();
    first.extend_from_slice(&command(mode, n));
    stream.write_all(&first).await?;
    Ok(stream)
}

/// Send `n` bytes and wait for the endpoint's acknowledgement.
pub async fn upload(addr: SocketAddr, hello: &[u8], n: u64) -> Res<Duration> {
    let mut stream = open(addr, hello, UPLOAD, n).await?;
    let started = Instant::now();
    let buf = vec![0xa5u8; BULK_BUFFER];
    let mut left = n;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        stream
            .write_all(buf.get(..want).unwrap_or_default())
            .await?;
        left -= want as u64;
    }
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).await?;
    let elapsed = started.elapsed();
    if ack != [ACK] {
        return Err("upload: wrong acknowledgement".into());
    }
    Ok(elapsed)
}

/// Have the endpoint send `n` bytes; the time until the last arrived.
pub async fn download(addr: SocketAddr, hello: &[u8], n: u64) -> Res<Duration> {
    let started = Instant::now();
    let mut stream = open(addr, hello, DOWNLOAD, n).await?;
    let mut buf = vec![0u8; BULK_BUFFER];
    let mut left = n;
    while left > 0 {
        let got = stream.read(&mut buf).await?;
        if got == 0 {
            return Err(format!("download: EOF with {left} bytes missing").into());
        }
        left = left.saturating_sub(got as u64);
    }
    Ok(started.elapsed())
}

/// `channels` concurrent downloads of `n` bytes each: the time until the
/// last finished, and each channel's own time.
pub async fn aggregate(
    addr: SocketAddr,
    hello: &[u8],
    channels: usize,
    n: u64,
) -> Res<(Duration, Vec<Duration>)> {
    let hello: Arc<[u8]> = hello.into();
    let barrier = Arc::new(tokio::sync::Barrier::new(channels));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(channels);
    for _ in 0..channels {
        let hello = hello.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            // All channels connect first, then start together.
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            barrier.wait().await;
            let own = Instant::now();
            let mut first = hello.to_vec();
            first.extend_from_slice(&command(DOWNLOAD, n));
            stream.write_all(&first).await?;
            let mut buf = vec![0u8; BULK_BUFFER];
            let mut left = n;
            while left > 0 {
                let got = stream.read(&mut buf).await?;
                if got == 0 {
                    return Err::<Duration, crate::Error>(
                        format!("aggregate: EOF with {left} bytes missing").into(),
                    );
                }
                left = left.saturating_sub(got as u64);
            }
            Ok(own.elapsed())
        }));
    }
    let mut each = Vec::with_capacity(channels);
    for task in tasks {
        each.push(task.await??);
    }
    Ok((started.elapsed(), each))
}

/// `count` round trips of `size` bytes on one connection; each one's time.
pub async fn echo(addr: SocketAddr, hello: &[u8], size: usize, count: usize) -> Res<Vec<Duration>> {
    let mut stream = open(addr, hello, ECHO, 0).await?;
    let out = vec![0x3cu8; size];
    let mut back = vec![0u8; size];
    // One unmeasured round trip: the channel is set up by then.
    stream.write_all(&out).await?;
    stream.read_exact(&mut back).await?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        stream.write_all(&out).await?;
        stream.read_exact(&mut back).await?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// One short connection: ClientHello, one echo of `size` bytes, close.
pub async fn one_connection(addr: SocketAddr, hello: &[u8], size: usize) -> Res<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut first = hello.to_vec();
    first.extend_from_slice(&command(ECHO, 0));
    first.extend(std::iter::repeat_n(0x42u8, size));
    stream.write_all(&first).await?;
    let mut back = vec![0u8; size];
    stream.read_exact(&mut back).await?;
    Ok(())
}

/// `total` short connections, `in_flight` at a time; the time they took.
pub async fn connections(
    addr: SocketAddr,
    hello: &[u8],
    total: usize,
    in_flight: usize,
    size: usize,
) -> Res<Duration> {
    let hello: Arc<[u8]> = hello.into();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let hello = hello.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                one_connection(addr, &hello, size).await?;
            }
            Ok::<(), crate::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(started.elapsed())
}

/// Try short connections until one gets its echo (the device is
/// registered), for at most `limit`.
pub async fn wait_routable(addr: SocketAddr, hello: &[u8], limit: Duration) -> Res<()> {
    let deadline = Instant::now() + limit;
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), one_connection(addr, hello, 16)).await;
        match attempt {
            Ok(Ok(())) => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(format!("{addr} does not route to the endpoint").into());
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client_hello;

    /// Every workload against the endpoint directly (no tunnel, no child
    /// processes): the generator and the endpoint agree on the protocol.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workloads_run_against_the_endpoint() {
        let addr = crate::endpoint::spawn().await.unwrap();
        let hello = client_hello("smoke.test");
        wait_routable(addr, &hello, Duration::from_secs(5))
            .await
            .unwrap();
        upload(addr, &hello, 3 << 20).await.unwrap();
        download(addr, &hello, 3 << 20).await.unwrap();
        let (all, each) = aggregate(addr, &hello, 4, 1 << 20).await.unwrap();
        assert_eq!(each.len(), 4);
        assert!(each.iter().all(|d| *d <= all));
        assert_eq!(echo(addr, &hello, 1024, 20).await.unwrap().len(), 20);
        connections(addr, &hello, 40, 8, 64).await.unwrap();
    }
}
