//! Micro-benchmarks guarding the hot paths against regressions:
//! header encode/decode per cipher, the queues (a multiplexer pair over an
//! in-memory pipe: channel write -> outgoing queue -> writer -> reader ->
//! incoming queue -> channel read), and the SNI parser.
//!
//! `cargo bench -p snitun --bench core` (add `-- --quick` for a fast pass).

// A benchmark that cannot set itself up should stop loudly: `expect` says
// what failed.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use snitun::mux::{ChannelId, Flow, FrameDecoder, FrameEncoder, FrameHeader};
use snitun::server::sni::parse_sni;
use snitun::{Cipher, CipherState, Multiplexer, MuxConfig, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: [u8; 32] = [7; 32];
const IV: [u8; 16] = [9; 16];
/// Frames per decode batch.
const BATCH: usize = 1024;

fn pair(cipher: Cipher) -> (FrameEncoder, FrameDecoder) {
    let sender = CipherState::new(cipher, Role::Responder, &KEY, &IV);
    let receiver = CipherState::new(cipher, Role::Initiator, &KEY, &IV);
    (
        FrameEncoder::new(sender.encryptor),
        FrameDecoder::new(receiver.decryptor, 2, 1 << 20),
    )
}

fn headers(c: &mut Criterion) {
    let header = FrameHeader::new(ChannelId([3; 16]), Flow::Data, 65536, &[]);
    let mut group = c.benchmark_group("header");
    group.throughput(Throughput::Elements(1));
    for cipher in Cipher::ALL {
        let (mut encoder, _) = pair(cipher);
        group.bench_function(format!("encode/{cipher}"), |b| {
            b.iter(|| encoder.header(black_box(&header)))
        });
    }
    group.throughput(Throughput::Elements(BATCH as u64));
    for cipher in Cipher::ALL {
        // Each batch needs a fresh pair: the ciphers chain state across
        // units, so a decoder only reads the stream its encoder wrote.
        let wire = || {
            let (mut encoder, decoder) = pair(cipher);
            let mut wire = BytesMut::new();
            for _ in 0..BATCH {
                if let Ok(unit) =
                    encoder.header(&FrameHeader::new(ChannelId([3; 16]), Flow::Data, 16, &[]))
                {
                    wire.extend_from_slice(unit.as_ref());
                }
                wire.extend_from_slice(&[0u8; 16]);
            }
            (decoder, wire)
        };
        group.bench_function(format!("decode/{cipher}"), |b| {
            b.iter_batched(
                wire,
                |(mut decoder, mut wire)| {
                    let mut frames = 0;
                    while let Ok(Some(frame)) = decoder.decode(&mut wire) {
                        black_box(&frame);
                        frames += 1;
                    }
                    assert_eq!(frames, BATCH);
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// A connected multiplexer pair on an in-memory pipe.
fn mux_pair() -> (Multiplexer, Multiplexer) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let cipher = Cipher::AesCbc;
    let server = Multiplexer::new(
        a,
        CipherState::new(cipher, Role::Responder, &KEY, &IV),
        2,
        Role::Responder,
        MuxConfig::default(),
    );
    let client = Multiplexer::new(
        b,
        CipherState::new(cipher, Role::Initiator, &KEY, &IV),
        2,
        Role::Initiator,
        MuxConfig::default(),
    );
    (server, client)
}

fn queues(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("queues");
    const TOTAL: usize = 16 << 20;
    group.throughput(Throughput::Bytes(TOTAL as u64));
    for channels in [1usize, 16] {
        group.bench_function(format!("mux_pipe/{channels}_channels"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let (server, client) = mux_pair();
                    let per_channel = TOTAL / channels;
                    let chunk = Bytes::from(vec![0x5au8; 64 * 1024]);
                    let mut readers = Vec::new();
                    for _ in 0..channels {
                        let mut tx = server
                            .open_channel(IpAddr::from([127, 0, 0, 1]))
                            .expect("open");
                        let mut rx = client.accept().await.expect("accept");
                        let chunk = chunk.clone();
                        tokio::spawn(async move {
                            let mut left = per_channel;
                            while left > 0 {
                                let n = left.min(chunk.len());
                                tx.send(chunk.slice(..n)).await.expect("send");
                                left -= n;
                            }
                        });
                        readers.push(tokio::spawn(async move {
                            let mut got = 0;
                            let mut buf = vec![0u8; 64 * 1024];
                            while got < per_channel {
                                let n = rx.read(&mut buf).await.expect("read");
                                assert!(n > 0, "early EOF");
                                got += n;
                            }
                            got
                        }));
                    }
                    for reader in readers {
                        black_box(reader.await.expect("reader"));
                    }
                    server.shutdown();
                    client.shutdown();
                })
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("echo_1KiB_round_trip", |b| {
        // The multiplexer spawns its tasks on the runtime it is made in.
        let (server, client) = {
            let _inside = runtime.enter();
            mux_pair()
        };
        let (mut near, mut far) = runtime.block_on(async {
            let near = server
                .open_channel(IpAddr::from([127, 0, 0, 1]))
                .expect("open");
            let far = client.accept().await.expect("accept");
            (near, far)
        });
        let message = [0x42u8; 1024];
        let mut back = [0u8; 1024];
        b.iter(|| {
            runtime.block_on(async {
                near.write_all(&message).await.expect("write");
                let mut got = [0u8; 1024];
                far.read_exact(&mut got).await.expect("read far");
                far.write_all(&got).await.expect("write far");
                near.read_exact(&mut back).await.expect("read near");
            })
        });
    });
    group.finish();
}

fn client_hello(host: &str) -> Vec<u8> {
    snitun::server::sni::build_client_hello(Some(host), 300)
}

fn sni(c: &mut Criterion) {
    let hello = client_hello("device.example.org");
    let mut group = c.benchmark_group("sni");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_client_hello", |b| {
        b.iter(|| parse_sni(black_box(&hello)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = headers, queues, sni
}
criterion_main!(benches);
