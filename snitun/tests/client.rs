//! The client peer end to end over real loopback sockets: a hand-made
//! server (handshake + responder multiplexer) opens channels, the client
//! relays them to real TCP endpoints.

#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{client_hello, pattern};

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use snitun::client::{
    AccessList, Client, ClientBuilder, ClientEvent, Connector, EndpointConnector, EndpointError,
    ReconnectPolicy, ServeFuture, Session,
};
use snitun::crypto::{Cipher, Role};
use snitun::error::Error;
use snitun::handshake::{HandshakeConfig, server_handshake};
use snitun::mux::{Channel, LinkEnd, Multiplexer, MuxConfig};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep, timeout};

const LIMIT: Duration = Duration::from_secs(20);

/// A minimal server: a listener, a key ring and one device's token.
struct TestServer {
    listener: TcpListener,
    keys: KeyRing,
    claims: TokenClaims,
    token: String,
    config: MuxConfig,
}

impl TestServer {
    async fn new(cipher: Cipher, version: u8) -> TestServer {
        let keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
        let mut claims = TokenClaims::new("device.test", Duration::from_secs(600));
        claims.cipher = cipher;
        claims.protocol_version = version;
        let token = keys.mint(&claims);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestServer {
            listener,
            keys,
            claims,
            token,
            config: MuxConfig::default(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// A client configured for this server (no connector yet).
    fn client(&self) -> ClientBuilder {
        Client::builder(self.addr().to_string())
            .token(self.token.clone())
            .aes(self.claims.aes_key, self.claims.aes_iv)
            .cipher(self.claims.cipher)
            .protocol_version(self.claims.protocol_version)
    }

    /// Accept one device and run the server side of its link.
    async fn accept(&self) -> Multiplexer {
        timeout(LIMIT, async {
            let (mut stream, _) = self.listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (peer, state) = server_handshake(
                &mut stream,
                BytesMut::new(),
                &self.keys,
                &HandshakeConfig::default(),
            )
            .await
            .unwrap();
            Multiplexer::new(
                stream,
                state,
                peer.protocol_version,
                Role::Responder,
                self.config.clone(),
            )
        })
        .await
        .expect("the client did not connect in time")
    }

    /// Connect `builder` and accept it.
    async fn connect(&self, builder: ClientBuilder) -> (Session, Multiplexer) {
        let (session, mux) = tokio::join!(timeout(LIMIT, builder.connect()), self.accept());
        (session.unwrap().unwrap(), mux)
    }
}

/// A TCP endpoint echoing every connection back.
async fn echo_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// An address where nothing listens.
async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Send `data` through `channel` and read as much back.
async fn round_trip(channel: &mut Channel, data: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = tokio::io::split(channel);
    let (got, ()) = timeout(LIMIT, async {
        tokio::join!(
            async {
                let mut got = vec![0u8; data.len()];
                read.read_exact(&mut got).await.unwrap();
                got
            },
            async { write.write_all(data).await.unwrap() }
        )
    })
    .await
    .expect("round trip timed out");
    got
}

/// The server side reads the end of the channel (CLOSE from the client).
async fn expect_closed(channel: &mut Channel) {
    let mut buf = [0u8; 64];
    let n = timeout(LIMIT, channel.read(&mut buf))
        .await
        .expect("the client did not close the channel")
        .unwrap();
    assert_eq!(n, 0, "expected the end of the channel");
}

/// The next event that `pick` accepts (others are skipped).
async fn next_event<T>(
    events: &mut broadcast::Receiver<ClientEvent>,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> T {
    timeout(LIMIT, async {
        loop {
            if let Some(found) = pick(events.recv().await.unwrap()) {
                return found;
            }
        }
    })
    .await
    .expect("event did not come")
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    timeout(LIMIT, async {
        while !condition() {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

#[tokio::test]
async fn data_both_ways_every_cipher_and_version() {
    let echo = echo_endpoint().await;
    for cipher in Cipher::ALL {
        for version in 0..=2u8 {
            let server = TestServer::new(cipher, version).await;
            let (session, mux) = server.connect(server.client().endpoint(&echo)).await;
            assert!(session.is_connected());

            let caller: IpAddr = "192.0.2.10".parse().unwrap();
            let mut channel = mux.open_channel(caller).unwrap();
            let data = pattern(300_000, version);
            assert_eq!(
                round_trip(&mut channel, &data).await,
                data,
                "{cipher} v{version}"
            );
            // A second channel at the same time, then both closed by us.
            let mut other = mux.open_channel(caller).unwrap();
            assert_eq!(round_trip(&mut other, b"second").await, b"second");
            channel.shutdown().await.unwrap();
            other.shutdown().await.unwrap();

            let stats = session.stats();
            assert!(stats.connected);
            assert_eq!(stats.connects, 1);
            assert_eq!(stats.channels, 2);
            assert!(stats.link.unwrap().bytes_in > 300_000);

            timeout(LIMIT, session.disconnect()).await.unwrap();
            assert_eq!(session.wait().await, LinkEnd::Shutdown);
            assert!(!session.is_connected());
            assert_eq!(
                timeout(LIMIT, mux.closed()).await.unwrap(),
                LinkEnd::PeerClosed
            );
        }
    }
}

#[tokio::test]
async fn endpoint_closing_closes_the_channel_after_its_data() {
    // An endpoint that sends a greeting and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let greeting = pattern(200_000, 9);
    let sent = greeting.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(&sent).await.unwrap();
    });
    let server = TestServer::new(Cipher::AesGcmSiv, 2).await;
    let (session, mux) = server.connect(server.client().endpoint(endpoint)).await;
    let mut channel = mux.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, channel.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, greeting);
    session.disconnect().await;
}

/// First channel to `first`, the others to `then`.
struct Switch {
    first: EndpointConnector,
    then: EndpointConnector,
    calls: AtomicUsize,
}

impl Connector for Switch {
    fn serve(&self, channel: Channel) -> ServeFuture {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first.serve(channel)
        } else {
            self.then.serve(channel)
        }
    }

    fn endpoint(&self) -> String {
        self.first.endpoint()
    }
}

#[tokio::test]
async fn unreachable_endpoint_closes_the_channel_and_reports() {
    let dead = dead_addr().await;
    let echo = echo_endpoint().await;
    let reported: Arc<Mutex<Vec<EndpointError>>> = Arc::default();
    let server = TestServer::new(Cipher::AesCbc, 2).await;
    let builder = server
        .client()
        .connector(Switch {
            first: EndpointConnector::new(&dead),
            then: EndpointConnector::new(&echo),
            calls: AtomicUsize::new(0),
        })
        .on_endpoint_error({
            let reported = reported.clone();
            move |e| reported.lock().unwrap().push(e.clone())
        });
    let (session, mux) = server.connect(builder).await;
    let mut events = session.subscribe();

    let caller: IpAddr = "2001:db8::77".parse().unwrap();
    let mut refused = mux.open_channel(caller).unwrap();
    expect_closed(&mut refused).await;
    let error = next_event(&mut events, |e| match e {
        ClientEvent::EndpointError(error) => Some(error),
        _ => None,
    })
    .await;
    assert_eq!(error.channel, refused.id());
    assert_eq!(error.caller, caller);
    assert_eq!(error.endpoint, dead);
    assert!(error.error.contains("cannot connect"), "{}", error.error);
    assert_eq!(reported.lock().unwrap().as_slice(), &[error]);

    // The tunnel stays up: the next channel is served.
    assert!(session.is_connected());
    let mut channel = mux.open_channel(caller).unwrap();
    assert_eq!(round_trip(&mut channel, b"still here").await, b"still here");
    let stats = session.stats();
    assert_eq!(stats.endpoint_errors, 1);
    assert_eq!(stats.channels, 2);
    session.disconnect().await;
}

/// Counts the channels it is given, relays them to an endpoint.
struct Counting {
    inner: EndpointConnector,
    calls: Arc<AtomicUsize>,
}

impl Connector for Counting {
    fn serve(&self, channel: Channel) -> ServeFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.serve(channel)
    }
}

async fn check_access_list(list: AccessList, cases: &[(&str, bool)]) {
    let echo = echo_endpoint().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::new(Cipher::AesGcm, 2).await;
    let builder = server
        .client()
        .connector(Counting {
            inner: EndpointConnector::new(echo),
            calls: calls.clone(),
        })
        .access_list(list.clone());
    let (session, mux) = server.connect(builder).await;
    let mut served = 0;
    for (caller, allowed) in cases {
        let mut channel = mux.open_channel(caller.parse().unwrap()).unwrap();
        if *allowed {
            assert_eq!(
                round_trip(&mut channel, b"hello").await,
                b"hello",
                "{caller}"
            );
            served += 1;
        } else {
            expect_closed(&mut channel).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), served, "{list} {caller}");
    }
    let stats = session.stats();
    assert_eq!(stats.channels as usize, served);
    assert_eq!(stats.refused as usize, cases.len() - served);
    session.disconnect().await;
}

#[tokio::test]
async fn access_list_allow() {
    let list = AccessList::parse_allow(["10.0.0.0/8", "2001:db8::/32", "192.0.2.5"]).unwrap();
    check_access_list(
        list,
        &[
            ("10.1.2.3", true),
            ("192.0.2.5", true),
            ("192.0.2.6", false),
            ("2001:db8:5::1", true),
            ("2001:db9::1", false),
            ("::ffff:10.9.9.9", true),
            ("::ffff:11.9.9.9", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn access_list_block() {
    let list: AccessList = "block:203.0.113.0/24,2001:db8::bad".parse().unwrap();
    check_access_list(
        list,
        &[
            ("203.0.113.77", false),
            ("198.51.100.1", true),
            ("2001:db8::bad", false),
            ("2001:db8::600d", true),
            ("::ffff:203.0.113.1", false),
        ],
    )
    .await;
}

fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.1,
    }
}

#[tokio::test]
async fn reconnects_after_the_server_drops_the_link() {
    let echo = echo_endpoint().await;
    let server = TestServer::new(Cipher::AesGcm, 2).await;
    let builder = server
        .client()
        .endpoint(&echo)
        .reconnect(Some(fast_reconnect()));
    let (session, mux) = server.connect(builder).await;
    let mut events = session.subscribe();
    let mut channel = mux.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    assert_eq!(round_trip(&mut channel, b"one").await, b"one");

    // The server drops the link: the client comes back by itself.
    mux.shutdown();
    drop(mux);
    let (reason, will_reconnect) = next_event(&mut events, |e| match e {
        ClientEvent::Disconnected {
            reason,
            will_reconnect,
        } => Some((reason, will_reconnect)),
        _ => None,
    })
    .await;
    assert!(will_reconnect);
    assert_eq!(reason, LinkEnd::PeerClosed.to_string());
    let mux = server.accept().await;
    next_event(&mut events, |e| (e == ClientEvent::Connected).then_some(())).await;
    wait_until(|| session.is_connected()).await;
    let mut channel = mux.open_channel("192.0.2.2".parse().unwrap()).unwrap();
    assert_eq!(round_trip(&mut channel, b"two").await, b"two");
    assert_eq!(session.stats().connects, 2);

    // While the server is gone, attempts fail and back off; it comes back.
    let addr = server.addr();
    let TestServer {
        listener,
        keys,
        claims,
        token,
        config,
    } = server;
    drop(listener);
    mux.shutdown();
    drop(mux);
    wait_until(|| session.stats().failed_attempts >= 2).await;
    assert!(!session.is_connected());
    assert!(session.stats().last_error.is_some());
    let server = TestServer {
        listener: TcpListener::bind(addr).await.unwrap(),
        keys,
        claims,
        token,
        config,
    };
    let mux = server.accept().await;
    wait_until(|| session.is_connected()).await;
    let mut channel = mux.open_channel("192.0.2.3".parse().unwrap()).unwrap();
    assert_eq!(round_trip(&mut channel, b"three").await, b"three");

    timeout(LIMIT, session.disconnect()).await.unwrap();
    assert_eq!(session.wait().await, LinkEnd::Shutdown);
    let last = next_event(&mut events, |e| match e {
        ClientEvent::Disconnected {
            will_reconnect: false,
            reason,
        } => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(last, LinkEnd::Shutdown.to_string());
}

#[tokio::test]
async fn without_reconnect_the_session_ends_with_the_link() {
    let echo = echo_endpoint().await;
    let server = TestServer::new(Cipher::AesCbc, 1).await;
    let (session, mux) = server.connect(server.client().endpoint(echo)).await;
    let mut events = session.subscribe();
    let mut channel = mux.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    assert_eq!(round_trip(&mut channel, b"v1").await, b"v1");
    mux.shutdown();
    assert_eq!(
        timeout(LIMIT, session.wait()).await.unwrap(),
        LinkEnd::PeerClosed
    );
    assert!(!session.is_connected());
    let event = timeout(LIMIT, events.recv()).await.unwrap().unwrap();
    assert_eq!(
        event,
        ClientEvent::Disconnected {
            reason: LinkEnd::PeerClosed.to_string(),
            will_reconnect: false
        }
    );
    // Disconnecting an ended session returns at once.
    timeout(Duration::from_secs(1), session.disconnect())
        .await
        .unwrap();
}

#[tokio::test]
async fn disconnect_ends_everything_and_resets_endpoints() {
    let endpoint = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = TestServer::new(Cipher::AesGcmSiv, 2).await;
    let builder = server
        .client()
        .endpoint(endpoint.local_addr().unwrap().to_string())
        .reconnect(Some(fast_reconnect()));
    let (session, mux) = server.connect(builder).await;
    let waiter = tokio::spawn({
        let session = session.clone();
        async move { session.wait().await }
    });

    let mut channel = mux.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    channel.write_all(b"request").await.unwrap();
    let (mut upstream, _) = timeout(LIMIT, endpoint.accept()).await.unwrap().unwrap();
    let mut buf = [0u8; 7];
    timeout(LIMIT, upstream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"request");

    let started = Instant::now();
    timeout(LIMIT, session.disconnect()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!session.is_connected());
    assert_eq!(
        timeout(LIMIT, waiter).await.unwrap().unwrap(),
        LinkEnd::Shutdown
    );
    // The server's link and channel end; the endpoint sees a reset, not a
    // clean end (the caller's stream was cut).
    assert_eq!(
        timeout(LIMIT, mux.closed()).await.unwrap(),
        LinkEnd::PeerClosed
    );
    assert!(channel.read(&mut buf).await.is_err());
    let read = timeout(LIMIT, upstream.read(&mut buf)).await.unwrap();
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    // No reconnect happens after a disconnect.
    let again = timeout(Duration::from_millis(500), server.listener.accept()).await;
    assert!(again.is_err(), "the client reconnected after disconnect");
}

#[tokio::test]
async fn disconnect_during_back_off_returns_at_once() {
    let echo = echo_endpoint().await;
    let server = TestServer::new(Cipher::AesCbc, 2).await;
    let builder = server
        .client()
        .endpoint(echo)
        .reconnect(Some(ReconnectPolicy {
            initial: Duration::from_secs(60),
            ..ReconnectPolicy::default()
        }));
    let (session, mux) = server.connect(builder).await;
    let mut events = session.subscribe();
    mux.shutdown();
    next_event(&mut events, |e| match e {
        ClientEvent::Disconnected {
            will_reconnect: true,
            ..
        } => Some(()),
        _ => None,
    })
    .await;
    timeout(Duration::from_secs(5), session.disconnect())
        .await
        .unwrap();
    assert_eq!(session.wait().await, LinkEnd::Shutdown);
    next_event(&mut events, |e| match e {
        ClientEvent::Disconnected {
            will_reconnect: false,
            ..
        } => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn dropping_every_session_handle_disconnects() {
    let echo = echo_endpoint().await;
    let server = TestServer::new(Cipher::AesGcm, 2).await;
    let (session, mux) = server.connect(server.client().endpoint(echo)).await;
    let clone = session.clone();
    drop(session);
    assert!(clone.is_connected());
    drop(clone);
    assert_eq!(
        timeout(LIMIT, mux.closed()).await.unwrap(),
        LinkEnd::PeerClosed
    );
}

#[tokio::test]
async fn nothing_listening_fails_fast() {
    let dead = dead_addr().await;
    let started = Instant::now();
    let result = timeout(
        LIMIT,
        Client::builder(&dead)
            .token("gAAAAAB-token")
            .aes([1; 32], [2; 16])
            .endpoint("127.0.0.1:1")
            .reconnect(Some(ReconnectPolicy::default()))
            .connect_timeout(Duration::from_secs(5))
            .connect(),
    )
    .await
    .unwrap();
    match result {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            assert!(e.to_string().contains(&dead), "{e}");
        }
        other => panic!("expected connection refused, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn silent_server_times_out_in_the_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accepts, reads the token, never answers.
    let silent = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    let started = Instant::now();
    let result = Client::builder(addr)
        .token("gAAAAAB-token")
        .aes([1; 32], [2; 16])
        .endpoint("127.0.0.1:1")
        .handshake_config(HandshakeConfig {
            challenge_timeout: Duration::from_millis(300),
            ..HandshakeConfig::default()
        })
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    timeout(LIMIT, silent).await.unwrap().unwrap();
}

#[tokio::test]
async fn refused_token_is_explained() {
    let server = TestServer::new(Cipher::AesGcm, 2).await;
    let other_keys = KeyRing::new(vec![FernetKey::generate()]).unwrap();
    let builder = server
        .client()
        .token(other_keys.mint(&server.claims))
        .endpoint("127.0.0.1:1");
    let refuse = async {
        let (mut stream, _) = server.listener.accept().await.unwrap();
        let result = server_handshake(
            &mut stream,
            BytesMut::new(),
            &server.keys,
            &HandshakeConfig::default(),
        )
        .await;
        assert!(matches!(result, Err(Error::InvalidToken)));
    };
    let (result, ()) = timeout(LIMIT, async { tokio::join!(builder.connect(), refuse) })
        .await
        .unwrap();
    let error = result.unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed { .. }), "{error:?}");
    assert!(error.to_string().contains("refused the token"), "{error}");
}

#[tokio::test]
async fn wrong_aead_key_fails_the_connect() {
    let server = TestServer::new(Cipher::AesGcm, 2).await;
    let builder = server
        .client()
        .aes([0x5a; 32], server.claims.aes_iv)
        .endpoint("127.0.0.1:1");
    let serve = async {
        let (mut stream, _) = server.listener.accept().await.unwrap();
        let config = HandshakeConfig {
            challenge_timeout: Duration::from_secs(2),
            ..HandshakeConfig::default()
        };
        let _ = server_handshake(&mut stream, BytesMut::new(), &server.keys, &config).await;
    };
    let (result, ()) = timeout(LIMIT, async { tokio::join!(builder.connect(), serve) })
        .await
        .unwrap();
    assert!(matches!(result, Err(Error::DecryptFailed)), "{result:?}");
}

#[tokio::test]
async fn wrong_cbc_key_is_reported_after_the_handshake() {
    let server = TestServer::new(Cipher::AesCbc, 2).await;
    let builder = server
        .client()
        .aes([0x5a; 32], server.claims.aes_iv)
        .endpoint("127.0.0.1:1");
    let serve = async {
        let (mut stream, _) = server.listener.accept().await.unwrap();
        let result = server_handshake(
            &mut stream,
            BytesMut::new(),
            &server.keys,
            &HandshakeConfig::default(),
        )
        .await;
        assert!(matches!(result, Err(Error::ChallengeFailed)));
        // The server hangs up without a word.
    };
    let (session, ()) = timeout(LIMIT, async { tokio::join!(builder.connect(), serve) })
        .await
        .unwrap();
    let session = session.unwrap();
    let end = timeout(LIMIT, session.wait()).await.unwrap();
    match &end {
        LinkEnd::Failed(why) => {
            assert!(why.contains("right after the handshake"), "{why}");
            assert!(why.contains("AES key"), "{why}");
        }
        other => panic!("expected an explained failure, got {other:?}"),
    }
}

#[tokio::test]
async fn configuration_errors() {
    let missing_connector = Client::builder("127.0.0.1:1")
        .token("gAAAA")
        .aes([1; 32], [2; 16])
        .connect()
        .await;
    assert!(matches!(missing_connector, Err(Error::Config(_))));
    let missing_key = Client::builder("127.0.0.1:1")
        .token("gAAAA")
        .endpoint("127.0.0.1:2")
        .connect()
        .await;
    assert!(matches!(missing_key, Err(Error::Config(_))));
    let missing_token = Client::builder("127.0.0.1:1")
        .aes([1; 32], [2; 16])
        .endpoint("127.0.0.1:2")
        .connect()
        .await;
    assert!(matches!(missing_token, Err(Error::Config(_))));
    let bad_version = Client::builder("127.0.0.1:1")
        .token("gAAAA")
        .aes([1; 32], [2; 16])
        .endpoint("127.0.0.1:2")
        .protocol_version(3)
        .connect()
        .await;
    assert!(matches!(bad_version, Err(Error::Config(_))));
}

#[tokio::test]
async fn pings_keep_an_idle_link_up() {
    let echo = echo_endpoint().await;
    let idle = MuxConfig {
        idle_timeout: Duration::from_millis(400),
        ..MuxConfig::default()
    };
    let mut server = TestServer::new(Cipher::AesGcm, 2).await;
    server.config = idle.clone();
    let builder = server
        .client()
        .endpoint(echo)
        .mux_config(idle)
        .ping_interval(Duration::from_millis(100));
    let (session, mux) = server.connect(builder).await;
    sleep(Duration::from_millis(1500)).await;
    assert!(session.is_connected());
    assert!(mux.is_connected());
    let mut channel = mux.open_channel("192.0.2.1".parse().unwrap()).unwrap();
    assert_eq!(round_trip(&mut channel, b"alive").await, b"alive");
    session.disconnect().await;

    // Control: without the pings the same link dies of idleness.
    let builder = server
        .client()
        .endpoint("127.0.0.1:1")
        .mux_config(server.config.clone())
        .ping_interval(Duration::from_secs(60));
    let (session, _mux) = server.connect(builder).await;
    let end = timeout(LIMIT, session.wait()).await.unwrap();
    assert!(
        matches!(end, LinkEnd::IdleTimeout | LinkEnd::PeerClosed),
        "{end:?}"
    );
}

#[tokio::test]
async fn unanswered_pings_end_the_link() {
    let server = TestServer::new(Cipher::AesCbc, 2).await;
    let builder = server
        .client()
        .endpoint("127.0.0.1:1")
        .mux_config(MuxConfig {
            ping_timeout: Duration::from_millis(200),
            ..MuxConfig::default()
        })
        .ping_interval(Duration::from_millis(100));
    // A server that completes the handshake, then only reads.
    let deaf = async {
        let (mut stream, _) = server.listener.accept().await.unwrap();
        server_handshake(
            &mut stream,
            BytesMut::new(),
            &server.keys,
            &HandshakeConfig::default(),
        )
        .await
        .unwrap();
        stream
    };
    let (session, stream) = timeout(LIMIT, async { tokio::join!(builder.connect(), deaf) })
        .await
        .unwrap();
    let session = session.unwrap();
    let mut events = session.subscribe();
    let reader = tokio::spawn(async move {
        let mut stream: TcpStream = stream;
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    assert_eq!(
        timeout(LIMIT, session.wait()).await.unwrap(),
        LinkEnd::PingTimeout
    );
    let reason = next_event(&mut events, |e| match e {
        ClientEvent::Disconnected { reason, .. } => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, LinkEnd::PingTimeout.to_string());
    timeout(LIMIT, reader).await.unwrap().unwrap();
}

/// The reference server (Python `snitun`), run when
/// `SNITUN_REFERENCE_PYTHON` names a Python with it installed: argv is
/// cipher, SNI port, peer port; prints `token key-hex iv-hex` once
/// listening, runs until stdin closes.
const REFERENCE_SERVER: &str = r#"
import asyncio, sys
from datetime import timedelta
from cryptography.fernet import Fernet
from snitun.server.run import SniTunServer
from snitun.utils.aes import generate_aes_keyset
from snitun.utils.server import generate_client_token

async def main():
    cipher, sni_port, peer_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    key = Fernet.generate_key().decode()
    aes_key, aes_iv = generate_aes_keyset()
    token = generate_client_token([key], timedelta(minutes=10), "device.test", aes_key, aes_iv, cipher)
    server = SniTunServer([key], sni_port=sni_port, sni_host="127.0.0.1",
                          peer_port=peer_port, peer_host="127.0.0.1")
    await server.start()
    print(token.decode(), aes_key.hex(), aes_iv.hex(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()

asyncio.run(main())
"#;

async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn works_with_the_reference_server() {
    let Some(python) = std::env::var_os("SNITUN_REFERENCE_PYTHON") else {
        eprintln!("SNITUN_REFERENCE_PYTHON not set: skipped");
        return;
    };
    let echo = echo_endpoint().await;
    for cipher in Cipher::ALL {
        let (sni_port, peer_port) = (free_port().await, free_port().await);
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", REFERENCE_SERVER, cipher.name()])
            .args([sni_port.to_string(), peer_port.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        timeout(
            LIMIT,
            tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
        )
        .await
        .unwrap()
        .unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let key: [u8; 32] = hex::decode(fields[1]).unwrap().try_into().unwrap();
        let iv: [u8; 16] = hex::decode(fields[2]).unwrap().try_into().unwrap();
        // A wrong key: AEADs fail in the handshake, CBC right after it.
        let wrong = Client::builder(format!("127.0.0.1:{peer_port}"))
            .token(fields[0])
            .aes([0x5a; 32], iv)
            .cipher(cipher)
            .endpoint(&echo)
            .connect();
        match timeout(LIMIT, wrong).await.unwrap() {
            Ok(session) => {
                assert_eq!(cipher, Cipher::AesCbc);
                let end = timeout(LIMIT, session.wait()).await.unwrap();
                assert!(
                    end.to_string().contains("right after the handshake"),
                    "{end}"
                );
            }
            Err(e) => assert!(matches!(e, Error::DecryptFailed), "{cipher}: {e:?}"),
        }
        let session = timeout(
            LIMIT,
            Client::builder(format!("127.0.0.1:{peer_port}"))
                .token(fields[0])
                .aes(key, iv)
                .cipher(cipher)
                .endpoint(&echo)
                .ping_interval(Duration::from_millis(200))
                .connect(),
        )
        .await
        .unwrap()
        .unwrap();
        // Let a few pings cross, then call through the server's SNI port.
        sleep(Duration::from_millis(700)).await;
        assert!(session.is_connected(), "{cipher}");
        let mut caller = TcpStream::connect(("127.0.0.1", sni_port)).await.unwrap();
        let hello = client_hello("device.test");
        let mut payload = hello.clone();
        payload.extend_from_slice(&pattern(200_000, 5));
        let (mut read, mut write) = caller.split();
        let (got, ()) = timeout(LIMIT, async {
            tokio::join!(
                async {
                    let mut got = vec![0u8; payload.len()];
                    read.read_exact(&mut got).await.unwrap();
                    got
                },
                async { write.write_all(&payload).await.unwrap() }
            )
        })
        .await
        .unwrap();
        assert!(
            got == payload,
            "{cipher}: echo through the reference differs"
        );
        drop(caller);
        timeout(LIMIT, session.disconnect()).await.unwrap();
        drop(child.stdin.take());
        let _ = timeout(LIMIT, child.wait()).await;
    }
}

#[test]
fn handles_and_futures_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Session>();
    send_sync::<ClientBuilder>();
    send_sync::<ClientEvent>();
    send_sync::<EndpointConnector>();
    let connecting = Client::builder("127.0.0.1:1").connect();
    send(&connecting);
    let session: Option<Session> = None;
    if let Some(session) = &session {
        send(&session.wait());
        send(&session.disconnect());
    }
}

#[tokio::test]
async fn connect_with_events_sees_a_link_that_ends_at_once() {
    let echo = echo_endpoint().await;
    let server = TestServer::new(Cipher::AesCbc, 2).await;
    let (connected, mux) = tokio::join!(
        timeout(LIMIT, server.client().endpoint(echo).connect_with_events()),
        server.accept()
    );
    // The link ends before the caller had any chance to subscribe.
    mux.shutdown();
    drop(mux);
    let (session, mut events) = connected.unwrap().unwrap();
    let end = timeout(LIMIT, session.wait()).await.unwrap();
    assert_ne!(end, LinkEnd::Shutdown);
    assert_eq!(
        timeout(LIMIT, events.recv()).await.unwrap().unwrap(),
        ClientEvent::Connected
    );
    assert_eq!(
        timeout(LIMIT, events.recv()).await.unwrap().unwrap(),
        ClientEvent::Disconnected {
            reason: end.to_string(),
            will_reconnect: false
        }
    );
}
