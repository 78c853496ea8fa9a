//! `snitun demo`: the whole tunnel on loopback, proven with real HTTPS.
//!
//! A server (port 0), a client peer, and an HTTPS endpoint whose certificate
//! for `demo.snitun.localhost` comes from a CA made on the spot. The caller
//! connects to the server's SNI port and verifies that certificate against
//! the CA alone, so a successful request proves the TLS session runs end to
//! end through the server and the client peer. Then a bulk download is
//! checked with SHA-256, and a caller asking for an unknown name must be
//! turned away.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use snitun::Cipher;
use snitun::client::Client;
use snitun::server::{Server, ServerHandle};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::cli::DemoArgs;
use crate::fail::{Context, Failure, Result, bail};
use crate::https::{self, Bulk, Endpoint, IO_TIMEOUT, ResponseHead};
use crate::tls::DemoPki;

/// The name the device serves and the certificate is issued for.
const HOST: &str = "demo.snitun.localhost";
/// A name nobody serves: the server must close such callers.
const UNKNOWN_HOST: &str = "unknown.snitun.localhost";
/// Limit for setting up and tearing down each part.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Run the demo; any failure is returned as one line.
pub async fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let cipher = Cipher::from(args.cipher);
    let version = args.protocol_version;
    println!(
        "snitun demo: server, client peer and HTTPS endpoint on loopback ({cipher}, protocol {version}{})",
        if args.single_port {
            ", single port"
        } else {
            ""
        }
    );

    // The endpoint: the device's local HTTPS service.
    let pki = DemoPki::generate(HOST)?;
    let bytes = args.bytes;
    let bulk = Arc::new(
        tokio::task::spawn_blocking(move || Bulk::new(bytes))
            .await
            .context("preparing the bulk body")?,
    );
    let endpoint =
        Endpoint::start(TlsAcceptor::from(pki.server_config()?), Arc::clone(&bulk)).await?;
    println!(
        "  endpoint   {} serves https://{HOST}/ (certificate issued by a throw-away demo CA)",
        endpoint.addr
    );

    // The session master: a Fernet key and a token for the device.
    let ring = KeyRing::new(vec![FernetKey::generate()])?;
    let claims = TokenClaims::new(HOST, Duration::from_secs(3600))
        .with_cipher(cipher)
        .with_protocol_version(version);
    let token = ring.mint(&claims);

    // The public server.
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let builder = Server::builder(ring);
    let builder = if args.single_port {
        builder.listen(loopback)
    } else {
        builder.sni_listen(loopback).peer_listen(loopback)
    };
    let server = step(builder.bind(), "starting the server").await?;
    let addrs = server.local_addrs();
    let (sni_addr, peer_addr) = if args.single_port {
        let addr = *addrs.listen.first().context("the server bound no port")?;
        println!("  server     {addr} (callers and devices on one port)");
        (addr, addr)
    } else {
        let sni = *addrs.sni.first().context("the server bound no SNI port")?;
        let peer = *addrs
            .peer
            .first()
            .context("the server bound no peer port")?;
        println!("  server     sni {sni}, peer {peer}");
        (sni, peer)
    };
    let server = server.spawn();

    // The device.
    let connecting = Instant::now();
    let session = step(
        Client::builder(peer_addr.to_string())
            .token(token.into_bytes())
            .aes(claims.aes_key, claims.aes_iv)
            .cipher(cipher)
            .protocol_version(version)
            .endpoint(endpoint.addr.to_string())
            .reconnect(None)
            .connect(),
        "connecting the client peer",
    )
    .await?;
    wait_registered(&server, HOST).await?;
    println!(
        "  peer       connected and registered in {}: route {HOST} -> {}",
        millis(connecting.elapsed()),
        endpoint.addr
    );

    let result = requests(&pki, &bulk, &server, sni_addr).await;

    // Tear down in order, whatever happened.
    if tokio::time::timeout(STEP_TIMEOUT, session.disconnect())
        .await
        .is_err()
    {
        tracing::warn!("the client peer did not stop in time");
    }
    let stopped = server.shutdown(STEP_TIMEOUT).await;
    endpoint.stop();
    result?;
    stopped.context("stopping the server")?;
    println!(
        "ok: end-to-end TLS through snitun verified in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The caller's part: the small GET, the bulk download, the unknown name.
async fn requests(
    pki: &DemoPki,
    bulk: &Bulk,
    server: &ServerHandle,
    sni_addr: SocketAddr,
) -> Result<()> {
    let connector = TlsConnector::from(pki.client_config()?);

    // A small GET: who does the endpoint see?
    let started = Instant::now();
    let (mut tls, caller) = connect_tls(&connector, pki, sni_addr).await?;
    let tls_info = describe_tls(&tls);
    // What the server knows, while this caller's channel is open.
    let Some(peer) = server.peers().into_iter().find(|p| p.hostname == HOST) else {
        bail!("the server registry does not list {HOST}");
    };
    let mut body = Vec::new();
    let head = https::get(&mut tls, HOST, "/hello", |chunk| {
        body.extend_from_slice(chunk)
    })
    .await
    .context("GET /hello through the tunnel")?;
    expect_ok(&head, "/hello")?;
    let elapsed = started.elapsed();
    let body = String::from_utf8_lossy(&body);
    let seen = |key: &str| {
        body.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|value| value.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "  GET /hello {} in {}, {tls_info}, certificate verified against the demo CA",
        head.status_line.trim_start_matches("HTTP/1.1 "),
        millis(elapsed)
    );
    println!("             caller connected from {caller} to the SNI port");
    println!(
        "             endpoint saw TCP peer {} (the client peer's own connection), SNI {}",
        seen("caller:"),
        seen("sni:")
    );
    println!(
        "             server registry: {HOST} <- peer {} (protocol {}, {}), {} channel(s) open during the request",
        peer.remote_addr, peer.protocol_version, peer.cipher, peer.channels
    );
    drop(tls);

    // The bulk download, checked with SHA-256 on a thread of its own so the
    // hashing does not slow the transfer down.
    let started = Instant::now();
    let (mut tls, _) = connect_tls(&connector, pki, sni_addr).await?;
    let (head, mut body) = https::request(&mut tls, HOST, "/bulk")
        .await
        .context("GET /bulk through the tunnel")?;
    expect_ok(&head, "/bulk")?;
    let (chunks, mut to_hash) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        while let Some(chunk) = to_hash.blocking_recv() {
            hasher.update(&chunk);
        }
        <[u8; 32]>::from(hasher.finalize())
    });
    let mut received = 0u64;
    while let Some(chunk) = body
        .next_chunk(&mut tls)
        .await
        .context("GET /bulk through the tunnel")?
    {
        received += chunk.len() as u64;
        chunks
            .send(chunk)
            .await
            .map_err(|_| Failure::new("GET /bulk: the hashing thread ended early"))?;
    }
    let elapsed = started.elapsed();
    drop(chunks);
    let digest = hasher.await.context("hashing the bulk body")?;
    if received != bulk.len() || head.content_length != bulk.len() {
        bail!(
            "GET /bulk: received {received} bytes, expected {}",
            bulk.len()
        );
    }
    if digest != bulk.sha256() {
        bail!(
            "GET /bulk: SHA-256 mismatch: got {}, expected {}",
            hex::encode(digest),
            hex::encode(bulk.sha256())
        );
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "  GET /bulk  {received} bytes in {secs:.3} s = {:.1} MiB/s ({:.0} Mbit/s), SHA-256 ok ({})",
        received as f64 / secs / f64::from(1u32 << 20),
        received as f64 * 8.0 / secs / 1e6,
        hex::encode(digest.get(..8).unwrap_or_default())
    );
    drop(tls);
    if let Some(peer) = server.peers().into_iter().find(|p| p.hostname == HOST) {
        println!(
            "             server registry: link traffic {} bytes in, {} bytes out",
            peer.bytes_in, peer.bytes_out
        );
    }

    // A name nobody serves: the server closes without a byte.
    let tcp = step(TcpStream::connect(sni_addr), "connecting to the SNI port").await?;
    let other = rustls::pki_types::ServerName::try_from(UNKNOWN_HOST).context("demo host name")?;
    match tokio::time::timeout(STEP_TIMEOUT, connector.connect(other, tcp)).await {
        Err(_) => bail!("a caller for {UNKNOWN_HOST} was neither served nor closed"),
        Ok(Ok(_)) => bail!("a caller for {UNKNOWN_HOST} got a TLS session"),
        Ok(Err(e)) if closed_without_reply(&e) => {
            println!("  unknown    {UNKNOWN_HOST}: refused (connection closed without a byte)");
        }
        Ok(Err(e)) => bail!("a caller for {UNKNOWN_HOST}: unexpected failure: {e}"),
    }
    Ok(())
}

/// TCP to the SNI port, then a TLS handshake with the endpoint through the
/// tunnel. Returns the stream and the caller's own address.
async fn connect_tls(
    connector: &TlsConnector,
    pki: &DemoPki,
    sni_addr: SocketAddr,
) -> Result<(TlsStream<TcpStream>, SocketAddr)> {
    let tcp = step(TcpStream::connect(sni_addr), "connecting to the SNI port").await?;
    let caller = tcp.local_addr()?;
    let tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(pki.server_name()?, tcp))
        .await
        .map_err(|_| Failure::new("TLS handshake through the tunnel timed out"))?
        .context("TLS handshake through the tunnel")?;
    Ok((tls, caller))
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384"-style summary.
fn describe_tls(tls: &TlsStream<TcpStream>) -> String {
    let conn = tls.get_ref().1;
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS ?");
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("?");
    format!("{version} {suite}")
}

fn expect_ok(head: &ResponseHead, path: &str) -> Result<()> {
    if head.status != 200 {
        bail!("GET {path}: {}", head.status_line);
    }
    Ok(())
}

/// Whether a TLS connect failed because the other side hung up.
fn closed_without_reply(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Wait until the server routes `hostname` (registration follows the
/// handshake closely but not atomically).
async fn wait_registered(server: &ServerHandle, hostname: &str) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !server.hostnames().iter().any(|name| name == hostname) {
        if Instant::now() > deadline {
            bail!(
                "the server did not register {hostname} within {} s",
                STEP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Await a setup step, failing after [`STEP_TIMEOUT`].
async fn step<T, E, F>(future: F, what: &str) -> Result<T>
where
    F: Future<Output = std::result::Result<T, E>>,
    E: Into<Failure>,
{
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(result) => result.context(what),
        Err(_) => bail!("{what}: timed out after {} s", STEP_TIMEOUT.as_secs()),
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}
