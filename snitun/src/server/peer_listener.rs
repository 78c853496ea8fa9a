//! The peer port: token, challenge, then a registered multiplexer.
//!
//! A client peer writes its Fernet token; the server checks it, runs the
//! challenge, starts the multiplexer on the same stream and registers the
//! peer under its hostname and aliases. The peer stays registered until its
//! link ends, its token expires (checked every
//! [`revalidate_interval`](super::ServerLimits::revalidate_interval)), a
//! newer peer takes its hostname, or the server shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::Context;
use super::admission::Limit;
use super::registry::PeerEntry;
use crate::crypto::{CipherState, Role};
use crate::error::Error;
use crate::handshake::{read_token, run_challenge};
use crate::mux::Multiplexer;
use crate::token::PeerToken;

const AUTH_ATTEMPTS: &str = "snitun.auth.attempts";
const AUTH_FAILURES: &str = "snitun.auth.failures";

/// The shortest token re-check period used, whatever the limits say.
const MIN_REVALIDATE_INTERVAL: Duration = Duration::from_millis(10);

/// Serve one connection on the peer port. `received` holds bytes already
/// read from it (single-port mode); it may be empty.
pub(crate) async fn serve_peer(
    ctx: Arc<Context>,
    mut stream: TcpStream,
    remote: SocketAddr,
    received: BytesMut,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "cannot set TCP_NODELAY on a peer connection");
    }
    let Some(in_handshake) =
        ctx.admission
            .enter(Limit::Handshakes, ctx.limits.max_handshakes, remote)
    else {
        return;
    };
    let (token, state) = tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        done = handshake(&ctx, &mut stream, remote, received) => match done {
            Some(done) => done,
            None => return,
        },
    };
    drop(in_handshake);
    // A peer taking over a connected hostname does not add to the count.
    let max_peers = ctx.limits.max_peers;
    if ctx.registry.len() >= max_peers && ctx.registry.lookup(&token.hostname).is_none() {
        ctx.admission.refuse(Limit::Peers, max_peers, remote);
        return;
    }
    let mux = Multiplexer::new_tcp(
        stream,
        state,
        token.protocol_version,
        Role::Responder,
        ctx.mux_config.clone(),
    );
    let entry = Arc::new(PeerEntry::new(ctx.registry.next_id(), &token, remote, mux));
    tracing::info!(
        hostname = %token.hostname,
        aliases = ?token.aliases,
        %remote,
        protocol_version = token.protocol_version,
        cipher = %token.cipher.name(),
        "peer connected"
    );
    ctx.registry.register(&entry);
    let reason = supervise(&ctx, &entry, token.valid).await;
    entry.end("server shutting down");
    tracing::info!(hostname = %entry.hostname(), %remote, %reason, "peer disconnected");
    ctx.registry.remove(&entry, reason);
}

/// Run the handshake, counting and logging the outcome. Nothing is sent on
/// failure; the caller drops the connection.
async fn handshake(
    ctx: &Context,
    stream: &mut TcpStream,
    remote: SocketAddr,
    received: BytesMut,
) -> Option<(PeerToken, CipherState)> {
    let token = match read_token(stream, received, &ctx.keys, &ctx.handshake).await {
        Ok(token) => {
            metrics::counter!(AUTH_ATTEMPTS, "result" => "started").increment(1);
            token
        }
        // Nothing arrived: not an authentication attempt.
        Err(e @ (Error::Timeout { .. } | Error::ConnectionClosed { .. } | Error::Io(_))) => {
            tracing::debug!(%remote, error = %e, "peer connection ended before a token arrived");
            return None;
        }
        Err(e) => {
            metrics::counter!(AUTH_ATTEMPTS, "result" => "started").increment(1);
            metrics::counter!(AUTH_FAILURES, "reason" => "invalid_token").increment(1);
            // The error's own text may quote payload fields; log its kind
            // only, never token bytes.
            tracing::debug!(%remote, reason = token_error_kind(&e), "refused a peer: invalid token");
            return None;
        }
    };
    match run_challenge(stream, &token, &ctx.handshake).await {
        Ok(state) => {
            metrics::counter!(AUTH_ATTEMPTS, "result" => "success").increment(1);
            Some((token, state))
        }
        Err(e) => {
            metrics::counter!(AUTH_FAILURES, "reason" => "challenge_failed").increment(1);
            tracing::debug!(
                %remote,
                hostname = %token.hostname,
                error = %e,
                "refused a peer: challenge failed"
            );
            None
        }
    }
}

/// A log-safe description of a token error.
fn token_error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidToken => "not a Fernet token for any configured key",
        Error::InvalidTokenPayload(_) => "payload is not UTF-8 JSON",
        Error::MalformedToken(_) => "payload field missing or malformed",
        Error::TokenExpired { .. } => "token expired",
        Error::UnsupportedCipher(_) => "unsupported cipher",
        _ => "token rejected",
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Wait for the peer's end and say why it ended.
async fn supervise(ctx: &Context, entry: &PeerEntry, valid: f64) -> String {
    // A zero interval would spin.
    let interval = ctx.limits.revalidate_interval.max(MIN_REVALIDATE_INTERVAL);
    loop {
        tokio::select! {
            end = entry.mux().closed() => {
                return match entry.end_reason() {
                    Some(reason) => reason.to_string(),
                    None => end.to_string(),
                };
            }
            _ = ctx.cancel.cancelled() => return "server shutting down".to_string(),
            _ = tokio::time::sleep(interval) => {
                if valid < unix_now() {
                    tracing::info!(hostname = %entry.hostname(), "peer token expired: dropping the peer");
                    entry.end("token expired");
                    return "token expired".to_string();
                }
            }
        }
    }
}
