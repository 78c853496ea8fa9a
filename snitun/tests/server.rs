//! The server end to end over real loopback sockets: a hand-made client
//! peer (handshake + initiator multiplexer) and hand-made callers that send
//! a ClientHello and then bytes.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{client_hello_for, pattern, u16be};

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snitun::crypto::{Cipher, Role};
use snitun::handshake::{HandshakeConfig, client_handshake};
use snitun::mux::{Channel, LinkEnd, Multiplexer, MuxConfig};
use snitun::server::{PeerEvent, Server, ServerHandle, ServerLimits};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

fn ring() -> KeyRing {
    KeyRing::new(vec![FernetKey::generate()]).unwrap()
}

fn claims(hostname: &str, cipher: Cipher, version: u8) -> TokenClaims {
    let mut claims = TokenClaims::new(hostname, Duration::from_secs(600));
    claims.cipher = cipher;
    claims.protocol_version = version;
    claims
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Await `future`, failing the test after [`LIMIT`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match timeout(LIMIT, future).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Poll `check` until it holds.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    bounded(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A dual-port server on loopback.
async fn dual_port(keys: KeyRing) -> (ServerHandle, SocketAddr, SocketAddr) {
    dual_port_with(Server::builder(keys)).await
}

async fn dual_port_with(
    builder: snitun::server::ServerBuilder,
) -> (ServerHandle, SocketAddr, SocketAddr) {
    let server = builder
        .sni_listen(local())
        .peer_listen(local())
        .bind()
        .await
        .unwrap();
    let addrs = server.local_addrs();
    assert!(addrs.listen.is_empty());
    let (sni, peer) = (addrs.sni[0], addrs.peer[0]);
    assert_ne!(sni.port(), 0);
    (server.spawn(), sni, peer)
}

/// Connect a hand-made client peer; returns its multiplexer once the
/// handshake is done (or the handshake error).
async fn try_device(
    addr: SocketAddr,
    token: &str,
    claims: &TokenClaims,
) -> snitun::Result<Multiplexer> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let state = client_handshake(
        &mut stream,
        token.as_bytes(),
        claims.cipher,
        &claims.aes_key,
        &claims.aes_iv,
        &HandshakeConfig::default(),
    )
    .await?;
    Ok(Multiplexer::new(
        stream,
        state,
        claims.protocol_version,
        Role::Initiator,
        MuxConfig::default(),
    ))
}

/// Connect a device and wait until the server has registered its hostname.
async fn device(
    handle: &ServerHandle,
    addr: SocketAddr,
    keys: &KeyRing,
    claims: &TokenClaims,
) -> Multiplexer {
    let token = keys.mint(claims);
    let mux = bounded("device handshake", try_device(addr, &token, claims))
        .await
        .unwrap();
    let hostname = claims.hostname.clone();
    wait_for("registration", || handle.hostnames().contains(&hostname)).await;
    mux
}

/// A caller: connects, sends `prefix` (PROXY header or nothing), the
/// ClientHello for `host`, then `after`.
async fn caller(addr: SocketAddr, prefix: &[u8], host: &str, after: &[u8]) -> TcpStream {
    let mut stream = bounded("caller connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let mut first = prefix.to_vec();
    first.extend_from_slice(&client_hello_for(Some(host)));
    first.extend_from_slice(after);
    stream.write_all(&first).await.unwrap();
    stream
}

/// Accept the channel for a caller and check that it starts with the
/// ClientHello and `after`.
async fn accept_caller(device: &Multiplexer, host: &str, after: &[u8]) -> Channel {
    let mut channel = bounded("channel", device.accept()).await.unwrap();
    let mut expected = client_hello_for(Some(host));
    expected.extend_from_slice(after);
    let mut got = vec![0u8; expected.len()];
    bounded("hello on the channel", channel.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, expected);
    channel
}

/// Read until EOF; what arrived, or the error (a reset).
async fn read_all(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    bounded("read to end", stream.read_to_end(&mut out))
        .await
        .map(|_| out)
}

/// The server closed without sending a byte (EOF or reset).
async fn assert_closed_silently(stream: &mut TcpStream, what: &str) {
    match read_all(stream).await {
        Ok(bytes) => assert!(bytes.is_empty(), "{what}: got {} bytes", bytes.len()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

/// Exchange a message both ways between a caller and its channel.
async fn ping_pong(stream: &mut TcpStream, channel: &mut Channel, tag: u8) {
    let up = pattern(1000, tag);
    let down = pattern(700, tag.wrapping_add(1));
    stream.write_all(&up).await.unwrap();
    let mut got = vec![0u8; up.len()];
    bounded("up", channel.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, up);
    channel.write_all(&down).await.unwrap();
    let mut got = vec![0u8; down.len()];
    bounded("down", stream.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, down);
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_both_ways_for_every_cipher_and_version() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    for cipher in Cipher::ALL {
        for version in 0..=2u8 {
            let host = format!("{}-v{version}.example", cipher.name());
            let claims = claims(&host, cipher, version);
            let dev = device(&handle, peer, &keys, &claims).await;
            let mut stream = caller(sni, b"", &host, b"early").await;
            let mut channel = accept_caller(&dev, &host, b"early").await;
            let expected_ip: IpAddr = "127.0.0.1".parse().unwrap();
            assert_eq!(channel.peer_ip(), expected_ip);

            // Bulk both ways at once.
            let upload = pattern(600_000, 1);
            let download = pattern(900_000, 2);
            let (mut rd, mut wr) = stream.split();
            let (got_up, got_down, ()) = bounded("bulk", async {
                tokio::join!(
                    async {
                        let mut got = vec![0u8; upload.len()];
                        channel.read_exact(&mut got).await.unwrap();
                        channel.write_all(&download).await.unwrap();
                        got
                    },
                    async {
                        let mut got = vec![0u8; download.len()];
                        rd.read_exact(&mut got).await.unwrap();
                        got
                    },
                    async { wr.write_all(&upload).await.unwrap() },
                )
            })
            .await;
            assert_eq!(got_up, upload, "{host}");
            assert_eq!(got_down, download, "{host}");

            // The registry counts the traffic (bytes_in: from the device).
            // The link's writer counts a write once it has returned, which
            // may be after the device has read it: wait a little.
            let info = || {
                handle
                    .peers()
                    .into_iter()
                    .find(|p| p.hostname == host)
                    .unwrap()
            };
            wait_for("byte counters", || {
                let info = info();
                info.bytes_in > download.len() as u64 && info.bytes_out > upload.len() as u64
            })
            .await;
            let info = info();
            assert_eq!(info.channels, 1);
            assert_eq!(info.protocol_version, version);
            assert_eq!(info.cipher, cipher);

            // The device closes: the caller gets the last bytes, then EOF.
            channel.write_all(b"bye").await.unwrap();
            drop(channel);
            assert_eq!(read_all(&mut stream).await.unwrap(), b"bye");
            dev.shutdown();
        }
    }
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn caller_eof_closes_the_channel_after_its_data() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("eof.example", Cipher::AesGcm, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let mut stream = caller(sni, b"", "eof.example", b"").await;
    let mut channel = accept_caller(&dev, "eof.example", b"").await;
    // Sizes on both sides of the close settle threshold.
    for size in [300_000, 100] {
        let data = pattern(size, 9);
        let reply = pattern(size / 3, 4);
        channel.write_all(&reply).await.unwrap();
        stream.write_all(&data).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        bounded("channel to EOF", channel.read_to_end(&mut got))
            .await
            .unwrap();
        assert_eq!(got, data);
        // The server closes the caller too, after what the device sent
        // (a FIN, not a reset).
        assert_eq!(read_all(&mut stream).await.unwrap(), reply);
        stream = caller(sni, b"", "eof.example", b"").await;
        channel = accept_caller(&dev, "eof.example", b"").await;
    }
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_close_while_the_caller_uploads_delivers_everything() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("upload.example", Cipher::AesGcm, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let stream = caller(sni, b"", "upload.example", b"").await;
    let mut channel = accept_caller(&dev, "upload.example", b"").await;
    let (mut rd, mut wr) = stream.into_split();
    // The caller uploads without pause (until the server stops taking it).
    let uploader = tokio::spawn(async move {
        let chunk = pattern(64 * 1024, 1);
        for _ in 0..200 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        wr
    });
    // The device takes some, answers, and closes in the middle of the upload.
    let mut got = vec![0u8; 256 * 1024];
    bounded("some upload", channel.read_exact(&mut got))
        .await
        .unwrap();
    let answer = pattern(500_000, 2);
    channel.write_all(&answer).await.unwrap();
    drop(channel);
    // The caller gets the whole answer and a clean end, not a reset.
    let mut received = Vec::new();
    bounded("answer", rd.read_to_end(&mut received))
        .await
        .unwrap();
    assert_eq!(received.len(), answer.len());
    assert!(received == answer);
    drop(bounded("uploader", uploader).await.unwrap());
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn unroutable_callers_get_nothing_and_others_keep_working() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("work.example", Cipher::AesCbc, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let mut good = caller(sni, b"", "work.example", b"").await;
    let mut channel = accept_caller(&dev, "work.example", b"").await;

    // Unknown host name.
    let mut unknown = caller(sni, b"", "nobody.example", b"more").await;
    assert_closed_silently(&mut unknown, "unknown SNI").await;

    // No SNI at all.
    let mut no_sni = TcpStream::connect(sni).await.unwrap();
    no_sni.write_all(&client_hello_for(None)).await.unwrap();
    assert_closed_silently(&mut no_sni, "no SNI").await;

    // Not TLS.
    let mut garbage = TcpStream::connect(sni).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: work.example\r\n\r\n")
        .await
        .unwrap();
    assert_closed_silently(&mut garbage, "garbage").await;

    // Silent: closed after the ClientHello timeout.
    let mut silent = TcpStream::connect(sni).await.unwrap();
    assert_closed_silently(&mut silent, "silent").await;

    // A PROXY header when the server does not expect one.
    let mut proxied = caller(
        sni,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n",
        "work.example",
        b"",
    )
    .await;
    assert_closed_silently(&mut proxied, "unexpected PROXY header").await;

    // None of it reached the device, and the first caller still works.
    ping_pong(&mut good, &mut channel, 3).await;
    assert!(
        timeout(Duration::from_millis(100), dev.accept())
            .await
            .is_err()
    );
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn client_hello_split_over_many_writes() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("split.example", Cipher::AesGcmSiv, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let mut stream = TcpStream::connect(sni).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let hello = client_hello_for(Some("split.example"));
    for piece in hello.chunks(9) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut channel = accept_caller(&dev, "split.example", b"").await;
    ping_pong(&mut stream, &mut channel, 4).await;
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn single_port_serves_peers_and_callers() {
    let keys = ring();
    let server = Server::builder(keys.clone())
        .listen(local())
        .bind()
        .await
        .unwrap();
    let addrs = server.local_addrs();
    assert!(addrs.sni.is_empty() && addrs.peer.is_empty());
    let addr = addrs.listen[0];
    let handle = server.spawn();
    assert_eq!(handle.local_addrs().listen, vec![addr]);

    let claims = claims("single.example", Cipher::AesGcm, 2);
    let dev = device(&handle, addr, &keys, &claims).await;
    let mut stream = caller(addr, b"", "single.example", b"x").await;
    let mut channel = accept_caller(&dev, "single.example", b"x").await;
    ping_pong(&mut stream, &mut channel, 5).await;

    // A split hello works here too.
    let mut split = TcpStream::connect(addr).await.unwrap();
    split.set_nodelay(true).unwrap();
    for piece in client_hello_for(Some("single.example")).chunks(50) {
        split.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut channel2 = accept_caller(&dev, "single.example", b"").await;
    ping_pong(&mut split, &mut channel2, 6).await;

    // Neither TLS nor a token.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
    assert_closed_silently(&mut garbage, "garbage").await;
    // Looks like a token, is not one.
    let mut fake = TcpStream::connect(addr).await.unwrap();
    fake.write_all(b"gAAAAABnotatoken").await.unwrap();
    assert_closed_silently(&mut fake, "fake token").await;
    assert_eq!(handle.peer_count(), 1);

    ping_pong(&mut stream, &mut channel, 7).await;
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn both_modes_combined() {
    let keys = ring();
    let server = Server::builder(keys.clone())
        .sni_listen(local())
        .peer_listen(local())
        .listen(local())
        .bind()
        .await
        .unwrap();
    let addrs = server.local_addrs();
    let handle = server.spawn();
    let claims = claims("both.example", Cipher::AesCbc, 1);
    // Peer on the single port, caller on the SNI port.
    let dev = device(&handle, addrs.listen[0], &keys, &claims).await;
    let mut stream = caller(addrs.sni[0], b"", "both.example", b"").await;
    let mut channel = accept_caller(&dev, "both.example", b"").await;
    ping_pong(&mut stream, &mut channel, 8).await;
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn aliases_route_to_the_same_peer() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let mut claims = claims("main.example", Cipher::AesGcm, 2);
    claims.aliases = vec!["alias-one.example".into(), "alias-two.example".into()];
    let dev = device(&handle, peer, &keys, &claims).await;
    assert_eq!(
        handle.hostnames(),
        vec!["alias-one.example", "alias-two.example", "main.example"]
    );
    let info = &handle.peers()[0];
    assert_eq!(info.aliases, claims.aliases);
    for host in ["alias-two.example", "main.example", "alias-one.example"] {
        let mut stream = caller(sni, b"", host, b"").await;
        let mut channel = accept_caller(&dev, host, b"").await;
        ping_pong(&mut stream, &mut channel, 9).await;
    }
    drop(dev);
    wait_for("aliases removed", || handle.hostnames().is_empty()).await;
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_peer_replaces_the_older() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let mut events = handle.subscribe();
    let mut first_claims = claims("same.example", Cipher::AesGcm, 2);
    first_claims.aliases = vec!["old-alias.example".into()];
    let first = device(&handle, peer, &keys, &first_claims).await;
    let second_claims = claims("same.example", Cipher::AesCbc, 1);
    let second = bounded(
        "second device",
        try_device(peer, &keys.mint(&second_claims), &second_claims),
    )
    .await
    .unwrap();
    // The first link is shut down by the server.
    assert_eq!(
        bounded("first link ends", first.closed()).await,
        LinkEnd::PeerClosed
    );
    wait_for("one peer left", || handle.peer_count() == 1).await;
    // The old alias went with the old peer; the name stays with the new one.
    assert_eq!(handle.hostnames(), vec!["same.example"]);
    assert_eq!(handle.peers()[0].protocol_version, 1);
    assert!(second.is_connected());

    let mut stream = caller(sni, b"", "same.example", b"").await;
    let mut channel = accept_caller(&second, "same.example", b"").await;
    ping_pong(&mut stream, &mut channel, 10).await;

    // Events: first connected, second connected, first disconnected.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(bounded("event", events.recv()).await.unwrap());
    }
    assert!(matches!(&seen[0], PeerEvent::Connected(p) if p.protocol_version == 2));
    assert!(matches!(&seen[1], PeerEvent::Connected(p) if p.protocol_version == 1));
    assert_eq!(
        seen[2],
        PeerEvent::Disconnected {
            hostname: "same.example".into(),
            reason: "replaced by a newer connection".into()
        }
    );
    handle.shutdown(LIMIT).await.unwrap();
}

fn proxy_v2_inet6(src: [u8; 16]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    header.push(0x21); // INET6, STREAM
    header.extend_from_slice(&u16be(36));
    header.extend_from_slice(&src);
    header.extend_from_slice(&[0u8; 15]);
    header.push(1); // destination ::1
    header.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
    header
}

fn proxy_v2_inet(src: [u8; 4]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&u16be(12));
    header.extend_from_slice(&src);
    header.extend_from_slice(&[10, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb]);
    header
}

#[tokio::test]
async fn proxy_protocol_sources_reach_the_peer() {
    let keys = ring();
    let builder = Server::builder(keys.clone()).proxy_protocol(true);
    let (handle, sni, peer) = dual_port_with(builder).await;
    let claims = claims("proxied.example", Cipher::AesGcm, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let host = "proxied.example";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n".to_vec(),
            "203.0.113.7",
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n".to_vec(),
            "2001:db8::7",
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
        (proxy_v2_inet([198, 51, 100, 9]), "198.51.100.9"),
        (
            proxy_v2_inet6(
                "2001:db8::99"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            ),
            "2001:db8::99",
        ),
        // No header at all: the socket's address.
        (Vec::new(), "127.0.0.1"),
    ];
    for (prefix, source) in cases {
        let mut stream = caller(sni, &prefix, host, b"after").await;
        let mut channel = accept_caller(&dev, host, b"after").await;
        assert_eq!(channel.peer_ip(), source.parse::<IpAddr>().unwrap());
        ping_pong(&mut stream, &mut channel, 11).await;
    }
    // A malformed header: closed, nothing sent.
    let mut bad = caller(sni, b"PROXY TCP4 nonsense\r\n", host, b"").await;
    assert_closed_silently(&mut bad, "bad PROXY header").await;
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn proxy_protocol_on_the_single_port() {
    let keys = ring();
    let server = Server::builder(keys.clone())
        .listen(local())
        .proxy_protocol(true)
        .bind()
        .await
        .unwrap();
    let addr = server.local_addrs().listen[0];
    let handle = server.spawn();
    let claims = claims("single-proxy.example", Cipher::AesCbc, 2);
    let dev = device(&handle, addr, &keys, &claims).await;
    // A v1 header, then the hello in a later segment.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(b"PROXY TCP4 192.0.2.44 10.0.0.1 5555 443\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream
        .write_all(&client_hello_for(Some("single-proxy.example")))
        .await
        .unwrap();
    let mut channel = accept_caller(&dev, "single-proxy.example", b"").await;
    assert_eq!(channel.peer_ip(), "192.0.2.44".parse::<IpAddr>().unwrap());
    ping_pong(&mut stream, &mut channel, 12).await;
    // A v2 header in front of a ClientHello.
    let mut stream = caller(
        addr,
        &proxy_v2_inet([192, 0, 2, 45]),
        "single-proxy.example",
        b"",
    )
    .await;
    let channel = accept_caller(&dev, "single-proxy.example", b"").await;
    assert_eq!(channel.peer_ip(), "192.0.2.45".parse::<IpAddr>().unwrap());
    drop(channel);
    assert_eq!(read_all(&mut stream).await.unwrap(), b"");
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn ipv6_caller() {
    let keys = ring();
    let builder = Server::builder(keys.clone())
        .sni_listen("[::1]:0".parse().unwrap())
        .peer_listen(local());
    let server = match builder.bind().await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("skipping: cannot bind [::1]: {e}");
            return;
        }
    };
    let addrs = server.local_addrs();
    let sni = addrs.sni[0];
    assert!(sni.is_ipv6());
    let handle = server.spawn();
    for (version, expected) in [(2u8, "::1"), (1, "0.0.0.0"), (0, "0.0.0.0")] {
        let host = format!("v6-{version}.example");
        let claims = claims(&host, Cipher::AesGcm, version);
        let dev = device(&handle, addrs.peer[0], &keys, &claims).await;
        let mut stream = caller(sni, b"", &host, b"").await;
        let mut channel = accept_caller(&dev, &host, b"").await;
        assert_eq!(channel.peer_ip(), expected.parse::<IpAddr>().unwrap());
        ping_pong(&mut stream, &mut channel, 13).await;
    }
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn refused_peers_are_not_registered() {
    let keys = ring();
    let (handle, _sni, peer) = dual_port(keys.clone()).await;
    let mut events = handle.subscribe();

    // Expired token: closed before the challenge.
    let mut expired = claims("expired.example", Cipher::AesGcm, 2);
    expired.valid = unix_now() - 60.0;
    let result = bounded("expired", try_device(peer, &keys.mint(&expired), &expired)).await;
    assert!(
        matches!(result, Err(snitun::Error::ConnectionClosed { .. })),
        "{result:?}"
    );

    // Token from another Fernet key.
    let other = claims("other.example", Cipher::AesGcm, 2);
    let result = bounded(
        "wrong fernet key",
        try_device(peer, &ring().mint(&other), &other),
    )
    .await;
    assert!(
        matches!(result, Err(snitun::Error::ConnectionClosed { .. })),
        "{result:?}"
    );

    // Wrong AES key, AEAD: the client cannot open the challenge.
    let good = claims("wrongkey.example", Cipher::AesGcm, 2);
    let token = keys.mint(&good);
    let mut wrong = good.clone();
    wrong.aes_key = [0x42; 32];
    let result = bounded("wrong aes key (gcm)", try_device(peer, &token, &wrong)).await;
    assert!(
        matches!(result, Err(snitun::Error::DecryptFailed)),
        "{result:?}"
    );

    // Wrong AES key, CBC: the client cannot tell, the server hangs up.
    let good = claims("wrongkey-cbc.example", Cipher::AesCbc, 2);
    let token = keys.mint(&good);
    let mut wrong = good.clone();
    wrong.aes_key = [0x42; 32];
    let mux = bounded("wrong aes key (cbc)", try_device(peer, &token, &wrong))
        .await
        .unwrap();
    assert_eq!(
        bounded("server hangs up", mux.closed()).await,
        LinkEnd::PeerClosed
    );

    // Not a token at all.
    let mut junk = TcpStream::connect(peer).await.unwrap();
    junk.write_all(&client_hello_for(Some("x.example")))
        .await
        .unwrap();
    assert_closed_silently(&mut junk, "junk on the peer port").await;

    assert_eq!(handle.peer_count(), 0);
    assert!(handle.hostnames().is_empty());
    assert!(events.try_recv().is_err());
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_ends_peers_and_callers() {
    let keys = ring();
    let server = Server::builder(keys.clone())
        .sni_listen(local())
        .peer_listen(local())
        .bind()
        .await
        .unwrap();
    let addrs = server.local_addrs();
    let handle = server.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run_until(async {
        let _ = stop_rx.await;
    }));
    let mut events = handle.subscribe();
    let claims = claims("bye.example", Cipher::AesGcm, 2);
    let dev = device(&handle, addrs.peer[0], &keys, &claims).await;
    let mut stream = caller(addrs.sni[0], b"", "bye.example", b"").await;
    let mut channel = accept_caller(&dev, "bye.example", b"").await;
    ping_pong(&mut stream, &mut channel, 14).await;
    assert!(matches!(
        bounded("connected", events.recv()).await.unwrap(),
        PeerEvent::Connected(_)
    ));

    stop_tx.send(()).unwrap();
    bounded("run_until returns", run).await.unwrap().unwrap();
    bounded("closed", handle.closed()).await;
    assert!(handle.is_shutting_down());
    assert_eq!(
        bounded("device link ends", dev.closed()).await,
        LinkEnd::PeerClosed
    );
    assert_eq!(
        bounded("disconnected", events.recv()).await.unwrap(),
        PeerEvent::Disconnected {
            hostname: "bye.example".into(),
            reason: "server shutting down".into()
        }
    );
    assert_eq!(handle.peer_count(), 0);
    // The caller is cut off (reset or EOF) and nobody listens any more.
    let _ = read_all(&mut stream).await;
    assert!(TcpStream::connect(addrs.sni[0]).await.is_err());
    assert!(TcpStream::connect(addrs.peer[0]).await.is_err());
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn handle_shutdown_stops_a_spawned_server() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("spawned.example", Cipher::AesCbc, 0);
    let dev = device(&handle, peer, &keys, &claims).await;
    // A caller half-way through its hello and a peer half-way through its
    // handshake must not hold the shutdown up.
    let mut half = TcpStream::connect(sni).await.unwrap();
    half.write_all(&client_hello_for(Some("spawned.example"))[..20])
        .await
        .unwrap();
    let _silent_peer = TcpStream::connect(peer).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    handle.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    bounded("closed", handle.closed()).await;
    assert_eq!(
        bounded("device link ends", dev.closed()).await,
        LinkEnd::PeerClosed
    );
    assert_closed_silently(&mut half, "half hello").await;
}

#[tokio::test]
async fn peer_events_and_registry_view() {
    let keys = ring();
    let (handle, _sni, peer) = dual_port(keys.clone()).await;
    let mut events = handle.subscribe();
    let claims = claims("events.example", Cipher::AesGcmSiv, 2);
    let before = SystemTime::now();
    let dev = device(&handle, peer, &keys, &claims).await;
    match bounded("connected", events.recv()).await.unwrap() {
        PeerEvent::Connected(info) => {
            assert_eq!(info.hostname, "events.example");
            assert_eq!(info.cipher, Cipher::AesGcmSiv);
            assert_eq!(info.protocol_version, 2);
            assert_eq!(
                info.remote_addr.ip(),
                "127.0.0.1".parse::<IpAddr>().unwrap()
            );
            assert!(info.connected_at >= before - Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(handle.peer_count(), 1);
    drop(dev);
    match bounded("disconnected", events.recv()).await.unwrap() {
        PeerEvent::Disconnected { hostname, reason } => {
            assert_eq!(hostname, "events.example");
            assert_eq!(reason, "closed by the peer");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(handle.peer_count(), 0);
    assert!(handle.peers().is_empty());
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn expired_token_is_dropped_on_revalidation() {
    let keys = ring();
    let limits = ServerLimits {
        revalidate_interval: Duration::from_millis(100),
        ..ServerLimits::default()
    };
    let (handle, _sni, peer) = dual_port_with(Server::builder(keys.clone()).limits(limits)).await;
    let mut events = handle.subscribe();
    let mut claims = claims("short.example", Cipher::AesGcm, 2);
    claims.valid = unix_now() + 1.0;
    let dev = device(&handle, peer, &keys, &claims).await;
    assert!(matches!(
        bounded("connected", events.recv()).await.unwrap(),
        PeerEvent::Connected(_)
    ));
    assert_eq!(
        bounded("disconnected", events.recv()).await.unwrap(),
        PeerEvent::Disconnected {
            hostname: "short.example".into(),
            reason: "token expired".into()
        }
    );
    assert_eq!(
        bounded("link ends", dev.closed()).await,
        LinkEnd::PeerClosed
    );
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn link_failure_resets_the_caller() {
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("reset.example", Cipher::AesGcm, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let mut stream = caller(sni, b"", "reset.example", b"").await;
    let mut channel = accept_caller(&dev, "reset.example", b"").await;
    ping_pong(&mut stream, &mut channel, 15).await;
    // The device's link dies with the channel open.
    dev.shutdown();
    let err = read_all(&mut stream).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn idle_callers_are_closed() {
    let keys = ring();
    let limits = ServerLimits {
        caller_idle_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let (handle, sni, peer) = dual_port_with(Server::builder(keys.clone()).limits(limits)).await;
    let claims = claims("idle.example", Cipher::AesGcm, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let mut stream = caller(sni, b"", "idle.example", b"").await;
    let mut channel = accept_caller(&dev, "idle.example", b"").await;
    // Activity keeps it open past the timeout.
    for tag in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ping_pong(&mut stream, &mut channel, tag).await;
    }
    let started = std::time::Instant::now();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut rest = Vec::new();
    bounded("channel ends", channel.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    handle.shutdown(LIMIT).await.unwrap();
}

#[tokio::test]
async fn builder_rejects_bad_configurations() {
    let none = Server::builder(ring()).bind().await;
    assert!(matches!(none, Err(snitun::Error::Config(_))), "{none:?}");
    let half = Server::builder(ring()).sni_listen(local()).bind().await;
    assert!(matches!(half, Err(snitun::Error::Config(_))), "{half:?}");
    let zero = Server::builder(ring())
        .listen(local())
        .throttling(Some(0))
        .bind()
        .await;
    assert!(matches!(zero, Err(snitun::Error::Config(_))), "{zero:?}");
    // An address in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = Server::builder(ring())
        .listen(taken.local_addr().unwrap())
        .bind()
        .await;
    assert!(matches!(busy, Err(snitun::Error::Io(_))), "{busy:?}");
    // Dropping an unrun server closes its sockets and marks it closed.
    let server = Server::builder(ring())
        .listen(local())
        .bind()
        .await
        .unwrap();
    let handle = server.handle();
    let addr = server.local_addrs().listen[0];
    drop(server);
    bounded("closed", handle.closed()).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

/// A ClientHello made by Python's `ssl` module (TLS 1.2, SNI example.com),
/// from the reference vectors (`sni.json`, case `ssl_tls12_only`).
const PYTHON_SSL_HELLO: &str = "16030100b1010000ad03039bc74e01ed842362038b4be380de54717316da05c5b73e8326734bbe69\
f8c87000001ec02cc030c02bc02fcca9cca8c024c028c023c027009f009e006b006700ff01000066\
00000010000e00000b6578616d706c652e636f6d000b000403000102000a000c000a001d0017001e\
00190018002300000016000000170000000d002a0028040305030603080708080809080a080b0804\
08050806040105010601030303010302040205020602";

#[tokio::test]
async fn real_client_hello_is_routed_unchanged() {
    let hello = hex::decode(PYTHON_SSL_HELLO).unwrap();
    let keys = ring();
    let (handle, sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("example.com", Cipher::AesCbc, 2);
    let dev = device(&handle, peer, &keys, &claims).await;
    let mut stream = TcpStream::connect(sni).await.unwrap();
    stream.write_all(&hello).await.unwrap();
    let mut channel = bounded("channel", dev.accept()).await.unwrap();
    let mut got = vec![0u8; hello.len()];
    bounded("hello", channel.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, hello);
    ping_pong(&mut stream, &mut channel, 16).await;
    handle.shutdown(LIMIT).await.unwrap();
}

/// A metrics recorder for the tests: every counter and gauge by name and
/// sorted labels. Installed once for the whole test binary, so other
/// tests running at the same time add to the counters too.
#[derive(Default)]
struct TestRecorder {
    values: Mutex<std::collections::HashMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn slot(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.values.lock().unwrap().entry(name).or_default().clone()
    }

    fn get(&self, name: &str) -> Option<u64> {
        self.values
            .lock()
            .unwrap()
            .get(name)
            .map(|v| v.load(Ordering::SeqCst))
    }

    fn counter(&self, name: &str) -> u64 {
        self.get(name).unwrap_or(0)
    }
}

struct SharedRecorder(Arc<TestRecorder>);

impl metrics::Recorder for SharedRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.0.slot(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.0.slot(key))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<Arc<TestRecorder>> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = Arc::new(TestRecorder::default());
        metrics::set_global_recorder(SharedRecorder(recorder.clone())).unwrap();
        recorder
    })
}

#[tokio::test]
async fn auth_metrics_use_the_reference_names() {
    let metrics = recorder();
    const STARTED: &str = "snitun.auth.attempts{result=started}";
    const SUCCESS: &str = "snitun.auth.attempts{result=success}";
    const INVALID: &str = "snitun.auth.failures{reason=invalid_token}";
    const CHALLENGE: &str = "snitun.auth.failures{reason=challenge_failed}";
    let before = [STARTED, SUCCESS, INVALID, CHALLENGE].map(|name| metrics.counter(name));

    let keys = ring();
    let (handle, _sni, peer) = dual_port(keys.clone()).await;
    let claims = claims("metrics.example", Cipher::AesGcm, 2);
    let _dev = device(&handle, peer, &keys, &claims).await;
    // A token from another key.
    let _ = bounded(
        "bad token",
        try_device(peer, &ring().mint(&claims), &claims),
    )
    .await;
    // The right token, the wrong AES key (CBC: the server sees a wrong answer).
    let cbc = self::claims("metrics-cbc.example", Cipher::AesCbc, 2);
    let mut wrong = cbc.clone();
    wrong.aes_key = [7; 32];
    let mux = bounded("wrong key", try_device(peer, &keys.mint(&cbc), &wrong))
        .await
        .unwrap();
    bounded("hang up", mux.closed()).await;

    let after = [STARTED, SUCCESS, INVALID, CHALLENGE].map(|name| metrics.counter(name));
    assert!(after[0] >= before[0] + 3, "{before:?} {after:?}");
    assert!(after[1] > before[1], "{before:?} {after:?}");
    assert!(after[2] > before[2], "{before:?} {after:?}");
    assert!(after[3] > before[3], "{before:?} {after:?}");
    assert!(metrics.get("snitun.worker.peer_connections{}").is_some());
    assert!(
        metrics
            .get("snitun.worker.peer_connections{protocol_version=2}")
            .is_some()
    );
    handle.shutdown(LIMIT).await.unwrap();
}
