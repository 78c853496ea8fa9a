//! The multiplexer end to end over real loopback TCP: two links joined by a
//! handshake, channels carrying data both ways, flow control, close
//! ordering, liveness.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::pattern;

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use snitun::crypto::{Cipher, CipherState, Role};
use snitun::handshake::{HandshakeConfig, client_handshake, server_handshake};
use snitun::mux::{ChannelId, Flow, FrameHeader, LinkEnd, Multiplexer, MuxConfig};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

/// A server-side and a client-side multiplexer over loopback TCP.
/// One end of a handshaken link: its stream, cipher state and protocol
/// version.
type End = (TcpStream, CipherState, u8);

/// A TCP pair over loopback after a successful handshake: (server, client).
async fn handshaken(cipher: Cipher, version: u8) -> (End, End) {
    let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let claims = TokenClaims::new("device.test", Duration::from_secs(600))
        .with_cipher(cipher)
        .with_protocol_version(version);
    let token = keys.mint(&claims);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hs = HandshakeConfig::default();
    let server = async {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (peer, state) = server_handshake(&mut stream, BytesMut::new(), &keys, &hs)
            .await
            .unwrap();
        (stream, state, peer.protocol_version)
    };
    let client = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let state = client_handshake(
            &mut stream,
            token.as_bytes(),
            cipher,
            &claims.aes_key,
            &claims.aes_iv,
            &hs,
        )
        .await
        .unwrap();
        (stream, state, version)
    };
    timeout(LIMIT, async { tokio::join!(server, client) })
        .await
        .unwrap()
}

async fn link_pair(cipher: Cipher, version: u8, config: MuxConfig) -> (Multiplexer, Multiplexer) {
    let ((s_stream, s_state, s_version), (c_stream, c_state, c_version)) =
        handshaken(cipher, version).await;
    let server = Multiplexer::new(
        s_stream,
        s_state,
        s_version,
        Role::Responder,
        config.clone(),
    );
    let client = Multiplexer::new(c_stream, c_state, c_version, Role::Initiator, config);
    (server, client)
}

#[tokio::test]
async fn data_both_ways_every_cipher_and_version() {
    for cipher in Cipher::ALL {
        for version in 0..=2u8 {
            let (server, client) = link_pair(cipher, version, MuxConfig::default()).await;
            let caller: IpAddr = "2001:db8::5".parse().unwrap();
            let mut up = server.open_channel(caller).unwrap();
            let mut down = timeout(LIMIT, client.accept()).await.unwrap().unwrap();
            let expected_ip: IpAddr = if version >= 2 {
                caller
            } else {
                "0.0.0.0".parse().unwrap()
            };
            assert_eq!(down.peer_ip(), expected_ip, "{cipher} v{version}");
            assert_eq!(down.id(), up.id());

            let upload = pattern(300_000, 1);
            let download = pattern(200_000, 2);
            let (a, b) = tokio::join!(
                async {
                    up.write_all(&upload).await.unwrap();
                    let mut got = vec![0u8; download.len()];
                    up.read_exact(&mut got).await.unwrap();
                    got
                },
                async {
                    let mut got = vec![0u8; upload.len()];
                    down.read_exact(&mut got).await.unwrap();
                    down.write_all(&download).await.unwrap();
                    got
                }
            );
            assert_eq!(a, download, "{cipher} v{version}");
            assert_eq!(b, upload, "{cipher} v{version}");
            server.shutdown();
            assert_eq!(
                timeout(LIMIT, client.closed()).await.unwrap(),
                LinkEnd::PeerClosed
            );
        }
    }
}

#[tokio::test]
async fn close_follows_data() {
    let (server, client) = link_pair(Cipher::AesGcm, 2, MuxConfig::default()).await;
    let mut up = server.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    let mut down = client.accept().await.unwrap();
    let data = pattern(1_000_000, 3);
    up.write_all(&data).await.unwrap();
    up.shutdown().await.unwrap();
    drop(up);
    let mut got = Vec::new();
    timeout(LIMIT, down.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    // The other direction is closed too: writes fail once CLOSE arrived.
    let write = down.write_all(b"late").await;
    assert!(write.is_err());
}

#[tokio::test]
async fn ping_is_answered_both_ways() {
    let (server, client) = link_pair(Cipher::AesCbc, 2, MuxConfig::default()).await;
    timeout(LIMIT, client.ping()).await.unwrap().unwrap();
    timeout(LIMIT, server.ping()).await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_link_times_out() {
    let config = MuxConfig {
        idle_timeout: Duration::from_millis(300),
        ..MuxConfig::default()
    };
    let (server, client) = link_pair(Cipher::AesCbc, 2, config).await;
    let end = timeout(LIMIT, server.closed()).await.unwrap();
    assert!(
        matches!(end, LinkEnd::IdleTimeout | LinkEnd::PeerClosed),
        "{end:?}"
    );
    timeout(LIMIT, client.closed()).await.unwrap();
}

#[tokio::test]
async fn slow_reader_pauses_and_resumes_without_loss() {
    let config = MuxConfig {
        incoming_high_watermark: 64 * 1024,
        incoming_low_watermark: 16 * 1024,
        // The cap must exceed what is in flight when PAUSE arrives: the
        // sender's outgoing queue plus the TCP buffers.
        incoming_max_bytes: 8 * 1024 * 1024,
        outgoing_high_watermark: 128 * 1024,
        outgoing_low_watermark: 64 * 1024,
        ..MuxConfig::default()
    };
    let (server, client) = link_pair(Cipher::AesGcmSiv, 2, config.clone()).await;
    let mut up = server.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    let mut down = client.accept().await.unwrap();
    let data = pattern(4 * 1024 * 1024, 4);
    let writer = async {
        for chunk in data.chunks(16 * 1024) {
            up.write_all(chunk).await.unwrap();
            assert!(up.outgoing_bytes() <= config.outgoing_max_bytes);
        }
        up.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8 * 1024];
        let mut max_queued = 0;
        let mut paused_seen = false;
        let mut resumed_after_pause = false;
        loop {
            max_queued = max_queued.max(down.incoming_bytes());
            let paused = down.pause_sent();
            resumed_after_pause |= paused_seen && !paused;
            paused_seen |= paused;
            let n = down.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        (got, max_queued, paused_seen, resumed_after_pause)
    };
    let ((), (got, max_queued, paused_seen, resumed)) =
        timeout(LIMIT, async { tokio::join!(writer, reader) })
            .await
            .unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    assert!(paused_seen, "the slow reader never sent PAUSE");
    assert!(resumed, "RESUME never followed the PAUSE");
    assert!(
        max_queued < config.incoming_max_bytes,
        "incoming queue reached {max_queued}"
    );
}

/// A server-side multiplexer and the raw client stream after the handshake,
/// with the client's encoder: for sending hand-made frames.
async fn raw_client(
    cipher: Cipher,
    version: u8,
    config: MuxConfig,
) -> (Multiplexer, TcpStream, snitun::mux::FrameEncoder) {
    let ((s_stream, s_state, s_version), (c_stream, c_state, _)) =
        handshaken(cipher, version).await;
    let server = Multiplexer::new(s_stream, s_state, s_version, Role::Responder, config);
    let (encryptor, _) = c_state.split();
    (server, c_stream, snitun::mux::FrameEncoder::new(encryptor))
}

#[tokio::test]
async fn oversize_frame_closes_the_link_naming_the_cause() {
    let config = MuxConfig {
        max_frame_size: Some(1 << 20),
        ..MuxConfig::default()
    };
    let (server, mut stream, mut encoder) = raw_client(Cipher::AesCbc, 2, config).await;
    let header = FrameHeader::new(ChannelId::random(), Flow::Data, 50 << 20, &[]);
    stream
        .write_all(encoder.header(&header).unwrap().as_ref())
        .await
        .unwrap();
    match timeout(LIMIT, server.closed()).await.unwrap() {
        LinkEnd::Failed(why) => assert!(why.contains("cipher"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn tampered_gcm_header_closes_the_link() {
    let (server, mut stream, mut encoder) =
        raw_client(Cipher::AesGcm, 2, MuxConfig::default()).await;
    let header = FrameHeader::new(ChannelId::random(), Flow::Ping, 0, b"ping");
    let mut unit = encoder.header(&header).unwrap().as_ref().to_vec();
    unit[20] ^= 1;
    stream.write_all(&unit).await.unwrap();
    match timeout(LIMIT, server.closed()).await.unwrap() {
        LinkEnd::Failed(why) => assert!(why.contains("decryption failed"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_flows_and_strays_are_ignored() {
    let (server, mut stream, mut encoder) =
        raw_client(Cipher::AesGcmSiv, 2, MuxConfig::default()).await;
    let mut wire = Vec::new();
    for flow in [
        Flow::Unknown(0x03),
        Flow::Data,
        Flow::Close,
        Flow::Pause,
        Flow::Resume,
        // NEW towards the server: it does not accept channels.
        Flow::New,
    ] {
        let size = if flow == Flow::Data || flow == Flow::Unknown(0x03) {
            3
        } else {
            0
        };
        let header = FrameHeader::new(ChannelId::random(), flow, size, &[]);
        wire.extend_from_slice(encoder.header(&header).unwrap().as_ref());
        wire.extend(std::iter::repeat_n(7u8, size as usize));
    }
    let ping = FrameHeader::new(ChannelId::random(), Flow::Ping, 0, b"ping");
    wire.extend_from_slice(encoder.header(&ping).unwrap().as_ref());
    stream.write_all(&wire).await.unwrap();
    // The server answers the ping (a 60-byte pong unit) and stays up.
    let mut pong = [0u8; 60];
    timeout(LIMIT, stream.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert!(server.is_connected());
}

#[tokio::test]
async fn protocol_0_has_no_pause_and_loses_nothing() {
    let config = MuxConfig {
        incoming_high_watermark: 64 * 1024,
        incoming_low_watermark: 16 * 1024,
        ..MuxConfig::default()
    };
    let (server, client) = link_pair(Cipher::AesCbc, 0, config).await;
    let mut up = server.open_channel("192.0.2.9".parse().unwrap()).unwrap();
    let mut down = client.accept().await.unwrap();
    assert_eq!(down.peer_ip(), "192.0.2.9".parse::<IpAddr>().unwrap());
    let data = pattern(2 * 1024 * 1024, 5);
    let writer = async {
        up.write_all(&data).await.unwrap();
        up.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8 * 1024];
        let mut paused = false;
        loop {
            paused |= down.pause_sent();
            let n = down.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        (got, paused)
    };
    let ((), (got, paused)) = timeout(LIMIT, async { tokio::join!(writer, reader) })
        .await
        .unwrap();
    assert!(!paused, "protocol 0 must not send PAUSE");
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
}

#[tokio::test]
async fn hundred_channels_at_once() {
    let (server, client) = link_pair(Cipher::AesGcm, 2, MuxConfig::default()).await;
    let server = std::sync::Arc::new(server);
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let mut channel = client.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = channel.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    channel.write_all(&buf[..n]).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        client
    });
    let mut callers = Vec::new();
    for i in 0..100u8 {
        let server = server.clone();
        callers.push(tokio::spawn(async move {
            let mut channel = server.open_channel("192.0.2.1".parse().unwrap()).unwrap();
            let data = pattern(100_000 + usize::from(i) * 1000, i);
            let (mut rd, mut wr) = tokio::io::split(channel);
            let send = async {
                wr.write_all(&data).await.unwrap();
                wr
            };
            let receive = async {
                let mut got = vec![0u8; data.len()];
                rd.read_exact(&mut got).await.unwrap();
                got
            };
            let (wr, got) = tokio::join!(send, receive);
            assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
            channel = rd.unsplit(wr);
            channel.shutdown().await.unwrap();
        }));
    }
    for caller in callers {
        timeout(LIMIT, caller).await.unwrap().unwrap();
    }
    let _client = timeout(LIMIT, echo).await.unwrap().unwrap();
}

/// Send `size` bytes to a receiver that pauses at `high` and reads nothing
/// yet: `close_after_delivery` must hold CLOSE until the receiver has read
/// it all (and resumed us), and nothing may be lost.
async fn close_waits_out_a_pause(high: usize, low: usize, size: usize, seed: u8) {
    let config = MuxConfig {
        incoming_high_watermark: high,
        incoming_low_watermark: low,
        incoming_max_bytes: 8 * 1024 * 1024,
        ..MuxConfig::default()
    };
    let (server, client) = link_pair(Cipher::AesGcm, 2, config).await;
    let mut up = server.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    let mut down = client.accept().await.unwrap();
    let data = pattern(size, seed);
    up.write_all(&data).await.unwrap();
    // Nobody reads yet: the receiver pauses us; CLOSE must wait for RESUME.
    let closer = tokio::spawn(async move {
        up.close_after_delivery(Duration::from_secs(20)).await;
        up
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(down.pause_sent(), "the unread data should have paused us");
    assert!(!closer.is_finished(), "CLOSE went out while paused");
    let mut got = Vec::new();
    timeout(LIMIT, down.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    let _up = timeout(LIMIT, closer).await.unwrap().unwrap();
}

#[tokio::test]
async fn close_after_delivery_waits_out_a_pause() {
    close_waits_out_a_pause(64 * 1024, 16 * 1024, 2 * 1024 * 1024, 6).await;
}

/// Bytes the link writes while `channel` settles and closes.
async fn bytes_written_by_close(link: &Multiplexer, channel: &mut snitun::mux::Channel) -> u64 {
    // Let the data go out first, so only the settle and CLOSE are counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = link.stats().bytes_out;
    timeout(LIMIT, channel.close_after_delivery(Duration::from_secs(20)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    link.stats().bytes_out - before
}

#[tokio::test]
async fn a_short_channel_closes_without_a_ping_and_a_long_one_pings() {
    let (server, client) = link_pair(Cipher::AesCbc, 2, MuxConfig::default()).await;
    // Read everything the device side receives, so nothing pauses.
    let reader = tokio::spawn(async move {
        let mut total = 0usize;
        while let Some(mut channel) = client.accept().await {
            let mut got = Vec::new();
            channel.read_to_end(&mut got).await.unwrap();
            total += got.len();
            if total >= 10 + 1024 * 1024 {
                break;
            }
        }
        client
    });

    // Short: nothing but the CLOSE header goes out, and CLOSE still waits
    // the grace that lets a half-closed caller's answer arrive.
    let mut short = server.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    short.write_all(b"ten bytes!").await.unwrap();
    let started = std::time::Instant::now();
    let written = bytes_written_by_close(&server, &mut short).await;
    assert_eq!(
        written, 32,
        "a short channel's close should be one CLOSE frame"
    );
    assert!(started.elapsed() >= Duration::from_millis(20));

    // Long: a PING (and its answer) proves delivery before CLOSE.
    let mut long = server.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    long.write_all(&pattern(1024 * 1024, 3)).await.unwrap();
    let written = bytes_written_by_close(&server, &mut long).await;
    assert_eq!(written, 64, "a long channel's close should be PING + CLOSE");
    let _client = timeout(LIMIT, reader).await.unwrap().unwrap();
}

/// A stream that counts the writes that reached it.
struct CountingWrites {
    inner: TcpStream,
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for CountingWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let done = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if done.is_ready() {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        done
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let done = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if done.is_ready() {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        done
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// A multi-threaded runtime on purpose: its scheduler runs a task woken by
// another right after it, which is what would give every small frame its
// own write if the writer did not let the other ready tasks go first.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn small_frames_of_tasks_ready_together_share_a_write() {
    const CHANNELS: usize = 20;
    let ((s_stream, s_state, s_version), (c_stream, c_state, c_version)) =
        handshaken(Cipher::AesCbc, 2).await;
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = CountingWrites {
        inner: s_stream,
        writes: writes.clone(),
    };
    let config = MuxConfig::default();
    let server = Multiplexer::new(counted, s_state, s_version, Role::Responder, config.clone());
    let client = Multiplexer::new(c_stream, c_state, c_version, Role::Initiator, config);
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(server.open_channel("192.0.2.1".parse().unwrap()).unwrap());
    }
    let mut accepted = Vec::new();
    for _ in 0..CHANNELS {
        accepted.push(timeout(LIMIT, client.accept()).await.unwrap().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Every task waits at the gate; opening it makes all of them ready at
    // once, and each sends one small message on its own channel.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut senders = Vec::new();
    for mut channel in channels {
        let gate = gate.clone();
        senders.push(tokio::spawn(async move {
            gate.notified().await;
            channel.write_all(b"hello").await.unwrap();
            channel
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = writes.load(std::sync::atomic::Ordering::Relaxed);
    gate.notify_waiters();
    let mut _open = Vec::new();
    for sender in senders {
        _open.push(timeout(LIMIT, sender).await.unwrap().unwrap());
    }
    for channel in accepted.iter_mut() {
        let mut got = [0u8; 5];
        timeout(LIMIT, channel.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hello");
    }
    let used = writes.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        used <= 3,
        "{CHANNELS} small frames made ready together took {used} writes"
    );
}

#[tokio::test]
async fn a_short_channel_paused_by_a_low_watermark_peer_waits_for_resume() {
    // A peer set to pause far below the usual 2 MiB: even a short channel
    // (32 KiB, under the no-ping threshold) must not send CLOSE while paused.
    close_waits_out_a_pause(8 * 1024, 4 * 1024, 32 * 1024, 9).await;
}
