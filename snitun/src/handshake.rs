//! The peer handshake: token, then challenge and response.
//!
//! 1. The client writes its Fernet token, nothing else.
//! 2. The server validates it, draws 40 random bytes `R` and sends
//!    `Enc(T)` with `T = SHA-256(R)`.
//! 3. The client answers `Enc(SHA-256(Dec(challenge)))`.
//! 4. The server compares (in constant time) and either closes or goes on.
//!
//! There is no "accepted" message: both sides continue with the same cipher
//! state in the multiplexer, so both functions return it.
//!
//! The reference reads the token with a single `read()`, so a token split
//! over TCP segments fails there. We keep reading while bytes keep coming
//! (each further segment within [`HandshakeConfig::token_grace`], all within
//! [`HandshakeConfig::token_timeout`]) until the token validates.

use std::time::Duration;

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use crate::crypto::{Cipher, CipherState, Decryptor, Encryptor, IV_SIZE, KEY_SIZE, Role};
use crate::error::{Error, Result};
use crate::token::{KeyRing, PeerToken};

/// Length of the challenge plaintext (a SHA-256 digest).
pub const CHALLENGE_SIZE: usize = 32;
/// Length of the random seed the challenge digest is drawn from.
pub const SEED_SIZE: usize = 40;

/// Time and size limits of the handshake (the reference's values by
/// default).
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Server: the whole token must arrive within this (2 s).
    pub token_timeout: Duration,
    /// Server: once some token bytes arrived, how long to wait for a further
    /// segment before judging what we have.
    pub token_grace: Duration,
    /// Server: the most token bytes read (2048).
    pub max_token_size: usize,
    /// Both: challenge and answer must cross within this (60 s).
    pub challenge_timeout: Duration,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            token_timeout: Duration::from_secs(2),
            token_grace: Duration::from_millis(500),
            max_token_size: 2048,
            challenge_timeout: Duration::from_secs(60),
        }
    }
}

/// The server's side of one challenge: what it sent and what it expects.
pub struct Challenge {
    expected: [u8; CHALLENGE_SIZE],
}

impl Challenge {
    /// Draw a fresh challenge and encrypt it; returns the challenge and the
    /// bytes to send.
    pub fn new(encryptor: &mut Encryptor) -> Result<(Challenge, Vec<u8>)> {
        let mut seed = [0u8; SEED_SIZE];
        rand::fill(&mut seed);
        Challenge::from_seed(&seed, encryptor)
    }

    /// A challenge from a given seed `R` (tests replay reference transcripts
    /// with it).
    pub fn from_seed(seed: &[u8], encryptor: &mut Encryptor) -> Result<(Challenge, Vec<u8>)> {
        let token: [u8; CHALLENGE_SIZE] = Sha256::digest(seed).into();
        let mut wire = vec![0u8; CHALLENGE_SIZE + encryptor.overhead()];
        encryptor.encrypt(&token, &mut wire)?;
        let expected = Sha256::digest(token).into();
        Ok((Challenge { expected }, wire))
    }

    /// Check the client's answer (exactly `32 + overhead` bytes).
    pub fn verify(&self, decryptor: &mut Decryptor, answer: &mut [u8]) -> Result<()> {
        let plain = decryptor
            .decrypt(answer)
            .map_err(|_| Error::ChallengeFailed)?;
        if bool::from(plain.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(Error::ChallengeFailed)
        }
    }
}

/// The client's side: decrypt the challenge and produce the encrypted
/// answer.
pub fn answer_challenge(state: &mut CipherState, challenge: &mut [u8]) -> Result<Vec<u8>> {
    let token = state.decryptor.decrypt(challenge)?;
    let answer: [u8; CHALLENGE_SIZE] = Sha256::digest(token).into();
    let mut wire = vec![0u8; CHALLENGE_SIZE + state.overhead()];
    state.encryptor.encrypt(&answer, &mut wire)?;
    Ok(wire)
}

/// Run the client (initiator) half over `stream`: send `token`, answer the
/// challenge. Returns the cipher state the multiplexer continues with.
///
/// With aes-cbc a wrong key cannot be detected here (the challenge decrypts
/// to garbage and the server closes); with the AEADs it fails with
/// [`Error::DecryptFailed`].
pub async fn client_handshake<S>(
    stream: &mut S,
    token: &[u8],
    cipher: Cipher,
    key: &[u8; KEY_SIZE],
    iv: &[u8; IV_SIZE],
    config: &HandshakeConfig,
) -> Result<CipherState>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = CipherState::new(cipher, Role::Initiator, key, iv);
    let deadline = Instant::now() + config.challenge_timeout;
    let exchange = async {
        stream.write_all(token).await?;
        stream.flush().await?;
        let mut challenge = vec![0u8; CHALLENGE_SIZE + state.overhead()];
        read_exact_or(stream, &mut challenge, "waiting for the challenge").await?;
        let answer = answer_challenge(&mut state, &mut challenge)?;
        stream.write_all(&answer).await?;
        stream.flush().await?;
        Ok::<_, Error>(())
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| Error::Timeout {
            during: "waiting for the challenge",
        })??;
    Ok(state)
}

/// Run the server (responder) half over `stream`. `received` holds bytes
/// already read from the connection (single-port mode reads some before it
/// knows what the connection is); it may be empty. Returns the validated
/// token and the cipher state.
pub async fn server_handshake<S>(
    stream: &mut S,
    received: BytesMut,
    keys: &KeyRing,
    config: &HandshakeConfig,
) -> Result<(PeerToken, CipherState)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let token = read_token(stream, received, keys, config).await?;
    let state = run_challenge(stream, &token, config).await?;
    Ok((token, state))
}

/// Read and validate the token (the first half of [`server_handshake`]).
pub async fn read_token<S>(
    stream: &mut S,
    mut buf: BytesMut,
    keys: &KeyRing,
    config: &HandshakeConfig,
) -> Result<PeerToken>
where
    S: AsyncRead + Unpin,
{
    let deadline = Instant::now() + config.token_timeout;
    loop {
        if !buf.is_empty() {
            match keys.validate(&buf) {
                Ok(token) => return Ok(token),
                // The token may not have fully arrived yet: read on.
                Err(Error::InvalidToken) if buf.len() < config.max_token_size => {}
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        let wait_until = if buf.is_empty() {
            deadline
        } else {
            deadline.min(now + config.token_grace)
        };
        let room = config.max_token_size - buf.len();
        let mut limited = (&mut *stream).take(room as u64);
        match timeout_at(wait_until, limited.read_buf(&mut buf)).await {
            Err(_) if buf.is_empty() => {
                return Err(Error::Timeout {
                    during: "waiting for the token",
                });
            }
            // Bytes came, then stopped, and they are no token.
            Err(_) => return Err(Error::InvalidToken),
            Ok(Ok(0)) if buf.is_empty() => {
                return Err(Error::ConnectionClosed {
                    during: "waiting for the token",
                });
            }
            Ok(Ok(0)) => return Err(Error::InvalidToken),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Send the challenge for a validated token and check the answer (the
/// second half of [`server_handshake`]).
pub async fn run_challenge<S>(
    stream: &mut S,
    token: &PeerToken,
    config: &HandshakeConfig,
) -> Result<CipherState>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = CipherState::new(token.cipher, Role::Responder, &token.aes_key, &token.aes_iv);
    let (challenge, wire) = Challenge::new(&mut state.encryptor)?;
    let exchange = async {
        stream.write_all(&wire).await?;
        stream.flush().await?;
        let mut answer = vec![0u8; CHALLENGE_SIZE + state.overhead()];
        read_exact_or(stream, &mut answer, "waiting for the challenge answer").await?;
        challenge.verify(&mut state.decryptor, &mut answer)
    };
    timeout(config.challenge_timeout, exchange)
        .await
        .map_err(|_| Error::Timeout {
            during: "waiting for the challenge answer",
        })??;
    Ok(state)
}

async fn read_exact_or<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    during: &'static str,
) -> Result<()> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Error::ConnectionClosed { during })
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{FernetKey, TokenClaims};
    use tokio::io::duplex;

    fn ring() -> KeyRing {
        KeyRing::new(vec![FernetKey::generate()]).unwrap()
    }

    fn claims(cipher: Cipher) -> TokenClaims {
        let mut claims = TokenClaims::new("device.example.org", Duration::from_secs(3600));
        claims.cipher = cipher;
        claims
    }

    fn fast() -> HandshakeConfig {
        HandshakeConfig {
            token_timeout: Duration::from_millis(300),
            token_grace: Duration::from_millis(100),
            max_token_size: 2048,
            challenge_timeout: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn both_halves_agree_for_every_cipher() {
        for cipher in Cipher::ALL {
            let keys = ring();
            let claims = claims(cipher);
            let token = keys.mint(&claims);
            let (mut client_io, mut server_io) = duplex(4096);
            let config = HandshakeConfig::default();
            let (client, server) = tokio::join!(
                client_handshake(
                    &mut client_io,
                    token.as_bytes(),
                    cipher,
                    &claims.aes_key,
                    &claims.aes_iv,
                    &config
                ),
                server_handshake(&mut server_io, BytesMut::new(), &keys, &config),
            );
            let mut client = client.unwrap();
            let (peer, mut server) = server.unwrap();
            assert_eq!(peer.hostname, "device.example.org");
            assert_eq!(peer.cipher, cipher);
            // The states continue: a unit from one side opens on the other.
            let mut unit = vec![0u8; 32 + cipher.overhead()];
            client.encryptor.encrypt(&[1; 32], &mut unit).unwrap();
            assert_eq!(server.decryptor.decrypt(&mut unit).unwrap(), &[1; 32]);
            server.encryptor.encrypt(&[2; 32], &mut unit).unwrap();
            assert_eq!(client.decryptor.decrypt(&mut unit).unwrap(), &[2; 32]);
        }
    }

    #[tokio::test]
    async fn wrong_aes_key_fails_the_challenge() {
        for cipher in Cipher::ALL {
            let keys = ring();
            let claims = claims(cipher);
            let token = keys.mint(&claims);
            let (mut client_io, mut server_io) = duplex(4096);
            let config = fast();
            let wrong_key = [0x5a; 32];
            let (client, server) = tokio::join!(
                client_handshake(
                    &mut client_io,
                    token.as_bytes(),
                    cipher,
                    &wrong_key,
                    &claims.aes_iv,
                    &config
                ),
                server_handshake(&mut server_io, BytesMut::new(), &keys, &config),
            );
            match cipher {
                // CBC decrypts anything: the client only learns when the
                // server hangs up; the server sees a wrong answer.
                Cipher::AesCbc => {
                    assert!(client.is_ok());
                    assert!(matches!(server, Err(Error::ChallengeFailed)), "{server:?}");
                }
                _ => {
                    assert!(matches!(client, Err(Error::DecryptFailed)), "{client:?}");
                    // The client gave up without answering.
                    drop(client_io);
                    assert!(server.is_err());
                }
            }
        }
    }

    #[tokio::test]
    async fn truncated_challenge_is_connection_closed() {
        let (mut client_io, mut server_io) = duplex(4096);
        let server = async move {
            let mut token = vec![0u8; 16];
            let _ = server_io.read(&mut token).await;
            server_io.write_all(&[1; 20]).await.unwrap();
            drop(server_io);
        };
        let key = [1; 32];
        let config = fast();
        let (client, ()) = tokio::join!(
            client_handshake(
                &mut client_io,
                b"gAAAA",
                Cipher::AesCbc,
                &key,
                &[0; 16],
                &config
            ),
            server
        );
        assert!(
            matches!(client, Err(Error::ConnectionClosed { .. })),
            "{client:?}"
        );
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (mut client_io, _server_io) = duplex(4096);
        let started = Instant::now();
        let result = client_handshake(
            &mut client_io,
            b"gAAAA",
            Cipher::AesGcm,
            &[1; 32],
            &[0; 16],
            &fast(),
        )
        .await;
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client_io, mut server_io) = duplex(4096);
        let result = server_handshake(&mut server_io, BytesMut::new(), &ring(), &fast()).await;
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn client_that_stops_after_the_token_times_out() {
        let keys = ring();
        let claims = claims(Cipher::AesGcmSiv);
        let token = keys.mint(&claims);
        let (mut client_io, mut server_io) = duplex(4096);
        client_io.write_all(token.as_bytes()).await.unwrap();
        let result = server_handshake(&mut server_io, BytesMut::new(), &keys, &fast()).await;
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn token_split_over_segments_is_read_whole() {
        let keys = ring();
        let claims = claims(Cipher::AesCbc);
        let token = keys.mint(&claims);
        let (mut client_io, mut server_io) = duplex(4096);
        let writer = async move {
            for chunk in token.as_bytes().chunks(7) {
                client_io.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client_io
        };
        let config = HandshakeConfig::default();
        let (result, _client_io) = tokio::join!(
            read_token(&mut server_io, BytesMut::new(), &keys, &config),
            writer
        );
        assert_eq!(result.unwrap().hostname, "device.example.org");
    }

    #[tokio::test]
    async fn garbage_token_is_refused_quickly() {
        let (mut client_io, mut server_io) = duplex(4096);
        client_io.write_all(b"gAAAAAnotatoken").await.unwrap();
        let started = Instant::now();
        let result = read_token(
            &mut server_io,
            BytesMut::new(),
            &ring(),
            &HandshakeConfig::default(),
        )
        .await;
        assert!(matches!(result, Err(Error::InvalidToken)), "{result:?}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        // A client that hangs up after garbage is refused at once.
        drop(client_io);
    }

    #[tokio::test]
    async fn token_from_another_ring_is_invalid() {
        let claims = claims(Cipher::AesCbc);
        let token = ring().mint(&claims);
        let (mut client_io, mut server_io) = duplex(4096);
        client_io.write_all(token.as_bytes()).await.unwrap();
        drop(client_io);
        let result = read_token(&mut server_io, BytesMut::new(), &ring(), &fast()).await;
        assert!(matches!(result, Err(Error::InvalidToken)), "{result:?}");
    }
}
