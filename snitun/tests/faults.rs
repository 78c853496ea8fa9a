//! Faults on loopback, with shrunk timeouts: processes killed, a link that
//! stalls without closing, endpoints that reset or never read. Abnormal
//! endings must reach the callers as resets, tunnels must come back, and
//! nothing may hang.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{client_hello, pattern};

use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use snitun::client::{Client, ClientBuilder, ClientEvent, ReconnectPolicy, Session};
use snitun::mux::MuxConfig;
use snitun::server::{Server, ServerHandle};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_snitun");
const LIMIT: Duration = Duration::from_secs(30);
const HOST: &str = "device.faults.test";

async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    bounded(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
        multiplier: 2.0,
        jitter: 0.1,
    }
}

/// An endpoint that skips the hello record, then streams pattern bytes
/// until the connection breaks (`stream`), or echoes (`echo`).
async fn endpoint(stream_forever: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 5];
                conn.read_exact(&mut head).await?;
                let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[3], head[4]]))];
                conn.read_exact(&mut body).await?;
                if stream_forever {
                    let block = pattern(64 * 1024, 3);
                    loop {
                        conn.write_all(&block).await?;
                    }
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = conn.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, io::Error>(());
                    }
                    conn.write_all(&buf[..n]).await?;
                }
            });
        }
    });
    addr
}

async fn server(keys: &KeyRing) -> (ServerHandle, SocketAddr, SocketAddr) {
    let server = Server::builder(keys.clone())
        .sni_listen("127.0.0.1:0".parse().unwrap())
        .peer_listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .unwrap();
    let addrs = server.local_addrs();
    (server.spawn(), addrs.sni[0], addrs.peer[0])
}

fn claims() -> TokenClaims {
    TokenClaims::new(HOST, Duration::from_secs(600)).with_protocol_version(2)
}

/// A client of `peer` (directly or through a relay) for `HOST`, relaying to
/// `endpoint`; `tune` adjusts the builder.
async fn device(
    keys: &KeyRing,
    peer: SocketAddr,
    endpoint: SocketAddr,
    tune: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> Session {
    let claims = claims();
    let builder = Client::builder(peer.to_string())
        .token(keys.mint(&claims))
        .aes(claims.aes_key, claims.aes_iv)
        .protocol_version(2)
        .endpoint(endpoint.to_string());
    bounded("connect", tune(builder).connect()).await.unwrap()
}

/// A caller: hello, then `payload`; echoes come back.
async fn echo_through(sni: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(sni).await?;
    stream.write_all(&client_hello(HOST)).await?;
    stream.write_all(payload).await?;
    let mut got = vec![0u8; payload.len()];
    timeout(Duration::from_secs(5), stream.read_exact(&mut got))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
    Ok(got)
}

/// Retry an echo until it works (a peer that just connected is being
/// registered).
async fn echo_when_ready(sni: SocketAddr) {
    bounded("echo through the tunnel", async {
        loop {
            if let Ok(got) = echo_through(sni, b"are you there").await
                && got == b"are you there"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A `snitun` child process, killed on drop.
struct Process(Child);

impl Process {
    fn spawn(args: &[&str]) -> Process {
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Process(child)
    }

    /// Wait for a stdout line starting with `prefix`.
    async fn line(&mut self, prefix: &str) -> String {
        let stdout = self.0.stdout.as_mut().unwrap();
        let mut reader = BufReader::new(stdout);
        bounded("process output", async {
            let mut line = String::new();
            loop {
                line.clear();
                assert!(
                    reader.read_line(&mut line).await.unwrap() > 0,
                    "process exited"
                );
                if line.starts_with(prefix) {
                    return line.trim().to_string();
                }
            }
        })
        .await
    }

    /// SIGKILL: no chance to close anything cleanly.
    async fn kill(mut self) {
        self.0.kill().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_process_killed_mid_transfer_resets_callers() {
    let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let (server, sni, peer) = server(&keys).await;
    let endpoint = endpoint(true).await;
    let claims = claims();
    let mut client = Process::spawn(&[
        "client",
        "--server",
        &peer.to_string(),
        "--token",
        &keys.mint(&claims),
        "--aes-key",
        &hex(&claims.aes_key),
        "--aes-iv",
        &hex(&claims.aes_iv),
        "--endpoint",
        &endpoint.to_string(),
        "--no-reconnect",
    ]);
    client.line("connected ").await;
    wait_until("peer registered", || server.peer_count() == 1).await;

    // A caller in the middle of an endless download.
    let mut caller = TcpStream::connect(sni).await.unwrap();
    caller.write_all(&client_hello(HOST)).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 4 * 1024 * 1024 {
        got += bounded("download", caller.read(&mut buf)).await.unwrap();
    }

    client.kill().await;
    let killed = Instant::now();
    // Drain what was in flight; the end must be a reset, not a clean EOF
    // (a truncated stream must not look complete).
    let end = bounded("caller notices", async {
        loop {
            match caller.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let err = end.expect_err("the caller saw a clean end of a cut stream");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "reset took {:?}",
        killed.elapsed()
    );
    // The peer's slot is free at once, and a new device takes the name.
    wait_until("peer slot freed", || server.peer_count() == 0).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_client_reconnects() {
    let key = FernetKey::generate();
    let keys = KeyRing::new(vec![key.clone()]).unwrap();
    let (sni_port, peer_port) = (free_port(), free_port());
    let sni: SocketAddr = format!("127.0.0.1:{sni_port}").parse().unwrap();
    let peer: SocketAddr = format!("127.0.0.1:{peer_port}").parse().unwrap();
    let start_server = || {
        Process::spawn(&[
            "server",
            "--fernet-key",
            &key.to_base64(),
            "--sni",
            &sni.to_string(),
            "--peer",
            &peer.to_string(),
        ])
    };
    let mut process = start_server();
    process.line("listening peer").await;

    let endpoint = endpoint(false).await;
    let session = device(&keys, peer, endpoint, |b| {
        b.reconnect(Some(fast_reconnect()))
    })
    .await;
    let mut events = session.subscribe();
    echo_when_ready(sni).await;

    process.kill().await;
    let event = bounded("disconnect event", events.recv()).await.unwrap();
    assert!(
        matches!(
            event,
            ClientEvent::Disconnected {
                will_reconnect: true,
                ..
            }
        ),
        "{event:?}"
    );
    // Down for a while: the client keeps trying with back-off.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!session.is_connected());

    let mut process = start_server();
    process.line("listening peer").await;
    bounded("reconnected", async {
        loop {
            if let Ok(ClientEvent::Connected) = events.recv().await {
                return;
            }
        }
    })
    .await;
    echo_when_ready(sni).await;
    session.disconnect().await;
    drop(process);
}

/// A TCP relay whose existing connections can be frozen: they stop
/// forwarding without closing (a NAT that lost its state, a dead route).
/// Connections made after a freeze are new routes: they work.
struct Relay {
    addr: SocketAddr,
    freezes: Arc<AtomicU64>,
}

impl Relay {
    fn freeze(&self) {
        self.freezes.fetch_add(1, Ordering::SeqCst);
    }
}

async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let freezes = Arc::new(AtomicU64::new(0));
    let counter = freezes.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let born = counter.load(Ordering::SeqCst);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pipe(in_read, out_write, counter.clone(), born));
            tokio::spawn(pipe(out_read, in_write, counter.clone(), born));
        }
    });
    Relay { addr, freezes }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    freezes: Arc<AtomicU64>,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if freezes.load(Ordering::SeqCst) > born {
            // Hold everything, close nothing.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_link_times_out_and_reconnects() {
    let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let (server, sni, peer) = server(&keys).await;
    let relay = relay(peer).await;
    let endpoint = endpoint(false).await;
    let mux = MuxConfig {
        ping_timeout: Duration::from_millis(500),
        ..MuxConfig::default()
    };
    let session = device(&keys, relay.addr, endpoint, |b| {
        b.mux_config(mux)
            .ping_interval(Duration::from_millis(200))
            .reconnect(Some(fast_reconnect()))
    })
    .await;
    let mut events = session.subscribe();
    echo_when_ready(sni).await;

    relay.freeze();
    let frozen_at = Instant::now();
    let event = bounded("ping timeout", events.recv()).await.unwrap();
    assert!(
        matches!(
            event,
            ClientEvent::Disconnected {
                will_reconnect: true,
                ..
            }
        ),
        "{event:?}"
    );
    assert!(frozen_at.elapsed() < Duration::from_secs(5));
    // The new link (a new route through the relay) takes over the name.
    bounded("reconnected", async {
        loop {
            if let Ok(ClientEvent::Connected) = events.recv().await {
                return;
            }
        }
    })
    .await;
    echo_when_ready(sni).await;
    assert_eq!(server.peer_count(), 1);
    session.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_reset_mid_stream_leaves_the_tunnel_up() {
    let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let (server, sni, peer) = server(&keys).await;
    // An endpoint that sends 256 KiB, then resets.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resetting = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = conn.write_all(&pattern(256 * 1024, 9)).await;
                let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                drop(conn);
            });
        }
    });
    let session = device(&keys, peer, resetting, |b| b).await;
    wait_until("registered", || server.peer_count() == 1).await;
    for _ in 0..5 {
        let mut caller = TcpStream::connect(sni).await.unwrap();
        caller.write_all(&client_hello(HOST)).await.unwrap();
        let mut got = Vec::new();
        // The caller gets at most what the endpoint sent, then an end.
        let _ = bounded("caller ends", caller.read_to_end(&mut got)).await;
        assert!(got.len() <= 256 * 1024);
        assert_eq!(got, pattern(256 * 1024, 9)[..got.len()]);
    }
    assert!(session.is_connected());
    assert_eq!(server.peer_count(), 1);
    session.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_that_never_reads_stalls_only_its_channel() {
    let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let (server, sni, peer) = server(&keys).await;
    // Accepts, never reads (for the first caller), echoes for the others.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = endpoint(false).await;
    tokio::spawn(async move {
        let mut first = true;
        let mut parked = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            if first {
                first = false;
                parked.push(conn);
                continue;
            }
            let mut out = TcpStream::connect(echo).await.unwrap();
            tokio::spawn(async move {
                let mut conn = conn;
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut out).await;
            });
        }
    });
    let session = device(&keys, peer, addr, |b| b).await;
    wait_until("registered", || server.peer_count() == 1).await;

    // The stuck upload: it takes bytes until every buffer on the way is
    // full (flow control), then no more; nothing unbounded.
    let mut stuck = TcpStream::connect(sni).await.unwrap();
    stuck.write_all(&client_hello(HOST)).await.unwrap();
    let block = pattern(256 * 1024, 1);
    let mut sent = 0usize;
    loop {
        match timeout(Duration::from_secs(2), stuck.write_all(&block)).await {
            Ok(Ok(())) => sent += block.len(),
            Ok(Err(e)) => panic!("the stuck upload failed: {e}"),
            Err(_) => break,
        }
        assert!(
            sent < 256 * 1024 * 1024,
            "an endpoint that never reads took 256 MiB"
        );
    }
    // Other callers on the same tunnel are served meanwhile.
    for i in 0..3u8 {
        let payload = pattern(100_000, i);
        let got = bounded("echo beside the stuck channel", echo_through(sni, &payload))
            .await
            .unwrap();
        assert_eq!(got, payload);
    }
    eprintln!(
        "the stuck upload took {} KiB before flow control held it",
        sent / 1024
    );
    drop(stuck);
    assert!(session.is_connected());
    session.disconnect().await;
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    // A server allowed 64 file descriptors, flooded with idle callers: its
    // accept fails with EMFILE. It must pause between attempts (not spin),
    // and serve again once descriptors are free.
    let key = FernetKey::generate();
    let (sni_port, peer_port) = (free_port(), free_port());
    let sni: SocketAddr = format!("127.0.0.1:{sni_port}").parse().unwrap();
    let child = Command::new("sh")
        .args([
            "-c",
            r#"ulimit -n 64 && exec "$0" server --fernet-key "$1" --sni "$2" --peer "$3" --workers 1"#,
            BIN,
            &key.to_base64(),
            &sni.to_string(),
            &format!("127.0.0.1:{peer_port}"),
        ])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut process = Process(child);
    process.line("listening peer").await;
    let pid = process.0.id().unwrap();

    // Idle callers hold their descriptors for the 2 s hello timeout; keep
    // opening more than the server can take.
    let mut flood = Vec::new();
    for _ in 0..150 {
        flood.push(TcpStream::connect(sni).await.unwrap());
    }
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "the server spun on EMFILE: {used:.2} s CPU in 1.5 s"
    );

    // Descriptors come back (the callers go, the hello timeouts fire): a
    // new caller is accepted and, naming no device, closed.
    drop(flood);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut caller = TcpStream::connect(sni).await.unwrap();
    caller
        .write_all(&client_hello("nobody.faults.test"))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let read = bounded("the server accepts again", caller.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    process.kill().await;
}
