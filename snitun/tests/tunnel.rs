//! The whole tunnel on loopback: our server, our client peer, a TCP
//! endpoint behind the client, and callers speaking to the SNI port.
//!
//! Callers send a ClientHello (the server routes on it and forwards it), then
//! a one-byte command and a length; the endpoint skips the hello record and
//! obeys: `U` read that many bytes and answer their SHA-256, `D` send that
//! many pattern bytes, `E` echo until the end, `S` like `U` but read slowly.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{client_hello, pattern};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use snitun::client::{Client, ClientEvent, Session};
use snitun::crypto::Cipher;
use snitun::server::{Server, ServerHandle};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
const HOST: &str = "device.tunnel.test";
const MIB: usize = 1024 * 1024;

/// What the endpoint saw, for assertions.
#[derive(Default)]
struct EndpointStats {
    connections: AtomicUsize,
}

async fn skip_record<R: AsyncRead + Unpin>(stream: &mut R) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(())
}

async fn serve_endpoint(mut stream: TcpStream) -> std::io::Result<()> {
    skip_record(&mut stream).await?;
    let mut command = [0u8; 9];
    stream.read_exact(&mut command).await?;
    let len = u64::from_be_bytes(command[1..].try_into().unwrap()) as usize;
    match command[0] {
        b'U' | b'S' => {
            let slow = command[0] == b'S';
            let mut hasher = Sha256::new();
            let mut left = len;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = left.min(buf.len());
                let n = stream.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                hasher.update(&buf[..n]);
                left -= n;
                if slow {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            stream.write_all(&hasher.finalize()).await?;
        }
        b'D' => {
            let data = pattern(len, 9);
            stream.write_all(&data).await?;
        }
        b'E' => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

async fn start_endpoint(stats: Arc<EndpointStats>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stats.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_endpoint(stream));
        }
    });
    addr
}

struct Tunnel {
    server: ServerHandle,
    session: Session,
    sni: SocketAddr,
    endpoint_stats: Arc<EndpointStats>,
}

async fn tunnel(cipher: Cipher, version: u8) -> Tunnel {
    let stats = Arc::new(EndpointStats::default());
    let endpoint = start_endpoint(stats.clone()).await;
    let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let server = Server::builder(keys.clone())
        .sni_listen("127.0.0.1:0".parse().unwrap())
        .peer_listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .unwrap();
    let addrs = server.local_addrs();
    let server = server.spawn();
    let claims = TokenClaims::new(HOST, Duration::from_secs(600))
        .with_cipher(cipher)
        .with_protocol_version(version);
    let session = timeout(
        LIMIT,
        Client::builder(addrs.peer[0].to_string())
            .token(keys.mint(&claims))
            .aes(claims.aes_key, claims.aes_iv)
            .cipher(cipher)
            .protocol_version(version)
            .endpoint(endpoint.to_string())
            .connect(),
    )
    .await
    .unwrap()
    .unwrap();
    // The server registers the peer right after the handshake.
    timeout(LIMIT, async {
        while server.peer_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    Tunnel {
        server,
        session,
        sni: addrs.sni[0],
        endpoint_stats: stats,
    }
}

async fn caller(tunnel: &Tunnel, command: u8, len: usize) -> TcpStream {
    let mut stream = TcpStream::connect(tunnel.sni).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&client_hello(HOST)).await.unwrap();
    let mut head = vec![command];
    head.extend_from_slice(&(len as u64).to_be_bytes());
    stream.write_all(&head).await.unwrap();
    stream
}

async fn upload(tunnel: &Tunnel, len: usize, seed: u8, slow: bool) {
    let mut stream = caller(tunnel, if slow { b'S' } else { b'U' }, len).await;
    let data = pattern(len, seed);
    let (mut rd, mut wr) = stream.split();
    let send = async { wr.write_all(&data).await.unwrap() };
    let mut digest = [0u8; 32];
    let receive = async { rd.read_exact(&mut digest).await.unwrap() };
    timeout(LIMIT, async { tokio::join!(send, receive) })
        .await
        .unwrap();
    assert_eq!(
        digest[..],
        Sha256::digest(&data)[..],
        "upload of {len} bytes"
    );
}

async fn download(tunnel: &Tunnel, len: usize) {
    let mut stream = caller(tunnel, b'D', len).await;
    let mut got = Vec::with_capacity(len);
    timeout(LIMIT, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), len);
    assert_eq!(Sha256::digest(&got), Sha256::digest(pattern(len, 9)));
}

async fn finish(tunnel: Tunnel) {
    tunnel.session.disconnect().await;
    timeout(LIMIT, tunnel.server.shutdown(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_every_cipher_and_version() {
    for cipher in Cipher::ALL {
        for version in 0..=2u8 {
            let tunnel = tunnel(cipher, version).await;
            upload(&tunnel, 64 * MIB, version, false).await;
            download(&tunnel, 64 * MIB).await;
            if cfg!(target_os = "linux") {
                // Bulk payloads went on to the sockets through pipes: to
                // the endpoint on the client, to the caller on the server.
                let client = tunnel.session.stats().link.unwrap().bytes_spliced;
                let server = tunnel.server.peers()[0].bytes_spliced;
                for (side, spliced) in [("client", client), ("server", server)] {
                    assert!(
                        spliced >= MIB as u64,
                        "{cipher} v{version}: {side} spliced only {spliced} bytes"
                    );
                }
            }
            finish(tunnel).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_channels() {
    let tunnel = Arc::new(tunnel(Cipher::AesGcm, 2).await);
    let mut tasks = Vec::new();
    for i in 0..100u8 {
        let tunnel = tunnel.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                upload(&tunnel, 256 * 1024 + usize::from(i), i, false).await;
            } else {
                download(&tunnel, 256 * 1024 + usize::from(i)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(tunnel.endpoint_stats.connections.load(Ordering::SeqCst) >= 100);
    let tunnel = Arc::into_inner(tunnel).unwrap();
    finish(tunnel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_loses_nothing() {
    for version in [0u8, 2] {
        let tunnel = tunnel(Cipher::AesCbc, version).await;
        upload(&tunnel, 8 * MIB, 1, true).await;
        finish(tunnel).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_before_close_arrives_in_full() {
    let tunnel = tunnel(Cipher::AesGcmSiv, 2).await;
    // Endpoint closes right after sending: the caller must get every byte.
    download(&tunnel, 3 * MIB + 7).await;
    // Caller closes right after sending: the echo must still see it all;
    // here the caller half-closes nothing, it reads the echo then closes.
    let mut stream = caller(&tunnel, b'E', 0).await;
    let data = pattern(MIB, 3);
    stream.write_all(&data).await.unwrap();
    let mut echoed = vec![0u8; data.len()];
    timeout(LIMIT, stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, data);
    drop(stream);
    finish(tunnel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_bad_callers_do_not_disturb_a_working_channel() {
    let tunnel = tunnel(Cipher::AesCbc, 2).await;
    let mut good = caller(&tunnel, b'E', 0).await;
    let mut bad_inputs: Vec<Vec<u8>> = vec![
        client_hello("nobody.tunnel.test"),
        b"GET / HTTP/1.1\r\nHost: device.tunnel.test\r\n\r\n".to_vec(),
        vec![0x16, 3, 1, 0xff, 0xff, 1],
    ];
    // A ClientHello without SNI: cut the extensions block off.
    let mut no_sni = client_hello(HOST);
    let cut = 5 + 4 + 2 + 32 + 1 + 4 + 2;
    no_sni.truncate(cut);
    let hs_len = (cut - 9) as u32;
    no_sni[3..5].copy_from_slice(&((cut - 5) as u16).to_be_bytes());
    no_sni[6..9].copy_from_slice(&hs_len.to_be_bytes()[1..]);
    bad_inputs.push(no_sni);
    for input in bad_inputs {
        let mut stream = TcpStream::connect(tunnel.sni).await.unwrap();
        stream.write_all(&input).await.unwrap();
        let mut got = Vec::new();
        let read = timeout(LIMIT, stream.read_to_end(&mut got)).await.unwrap();
        assert!(got.is_empty(), "a bad caller got {} bytes", got.len());
        drop(read);
    }
    // A ClientHello split over many segments still routes.
    let mut split = TcpStream::connect(tunnel.sni).await.unwrap();
    split.set_nodelay(true).unwrap();
    for piece in client_hello(HOST).chunks(3) {
        split.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    split.write_all(b"E").await.unwrap();
    split.write_all(&0u64.to_be_bytes()).await.unwrap();
    split.write_all(b"split ok").await.unwrap();
    let mut echoed = [0u8; 8];
    timeout(LIMIT, split.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"split ok");
    // The first channel still works.
    good.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    timeout(LIMIT, good.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"still here");
    finish(tunnel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_refusing_keeps_the_tunnel_up() {
    let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let server = Server::builder(keys.clone())
        .sni_listen("127.0.0.1:0".parse().unwrap())
        .peer_listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .unwrap();
    let addrs = server.local_addrs();
    let server = server.spawn();
    // A port with nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_endpoint = closed.local_addr().unwrap();
    drop(closed);
    let claims = TokenClaims::new(HOST, Duration::from_secs(600));
    let errors = Arc::new(AtomicUsize::new(0));
    let counted = errors.clone();
    let session = Client::builder(addrs.peer[0].to_string())
        .token(keys.mint(&claims))
        .aes(claims.aes_key, claims.aes_iv)
        .endpoint(dead_endpoint.to_string())
        .on_endpoint_error(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .connect()
        .await
        .unwrap();
    let mut events = session.subscribe();
    timeout(LIMIT, async {
        while server.peer_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addrs.sni[0]).await.unwrap();
        stream.write_all(&client_hello(HOST)).await.unwrap();
        let mut got = Vec::new();
        let _ = timeout(LIMIT, stream.read_to_end(&mut got)).await.unwrap();
        assert!(got.is_empty());
    }
    let event = timeout(LIMIT, async {
        loop {
            if let Ok(ClientEvent::EndpointError(e)) = events.recv().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(event.caller, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert!(errors.load(Ordering::SeqCst) >= 1);
    assert!(session.is_connected());
    assert_eq!(server.peer_count(), 1);
    session.disconnect().await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
