//! `snitun client`: a client peer, until SIGINT or SIGTERM.

use std::time::Duration;

use snitun::Error;
use snitun::client::{AccessList, Client, ClientBuilder, ReconnectPolicy, Session};
use snitun::crypto::{IV_SIZE, KEY_SIZE};
use tracing::{info, warn};

use crate::cli::ClientArgs;
use crate::fail::{Context, Result, bail};
use crate::signal;

/// Connect and serve until a signal. Reconnecting is on unless
/// `--no-reconnect`: then the first failure, or the end of the link, ends
/// the command (with an error).
pub async fn run(args: ClientArgs) -> Result<()> {
    let mut stop = signal::listen();
    let key: [u8; KEY_SIZE] = decode_hex("--aes-key", &args.aes_key)?;
    let iv: [u8; IV_SIZE] = decode_hex("--aes-iv", &args.aes_iv)?;
    if args.token.trim().is_empty() {
        bail!("--token must not be empty");
    }
    let access_list = if !args.allow.is_empty() {
        AccessList::allow(args.allow.clone())
    } else if !args.block.is_empty() {
        AccessList::block(args.block.clone())
    } else {
        AccessList::allow_all()
    };
    let policy = (!args.no_reconnect).then(ReconnectPolicy::default);
    let builder = || {
        Client::builder(args.server.clone())
            // The reference's MULTIPLEXER_* environment overrides.
            .mux_config(snitun::MuxConfig::from_env())
            .token(args.token.trim().as_bytes().to_vec())
            .aes(key, iv)
            .cipher(args.cipher.into())
            .protocol_version(args.protocol_version)
            .endpoint(args.endpoint.clone())
            .access_list(access_list.clone())
            .throttling(args.throttling)
            .reconnect(policy.clone())
    };

    let connecting = connect(builder, policy.as_ref());
    let session = tokio::select! {
        session = connecting => session?,
        () = stop.recv() => return Ok(()),
    };
    info!(endpoint = %args.endpoint, "serving callers");
    // One line on stdout for scripts waiting for the tunnel to be up.
    println!("connected {} endpoint {}", args.server, args.endpoint);
    tokio::select! {
        end = session.wait() => {
            bail!("connection to {} ended: {end}", args.server)
        }
        () = stop.recv() => {
            session.disconnect().await;
            Ok(())
        }
    }
}

/// The first connection. The library gives up when it fails; with a
/// reconnect policy the CLI keeps trying (the server may not be up yet),
/// except for errors no retry can fix.
async fn connect(
    builder: impl Fn() -> ClientBuilder,
    policy: Option<&ReconnectPolicy>,
) -> Result<Session> {
    let Some(policy) = policy else {
        return builder()
            .connect()
            .await
            .context("connecting to the server");
    };
    let mut delay = policy.initial.max(Duration::from_millis(100));
    loop {
        match builder().connect().await {
            Ok(session) => return Ok(session),
            Err(e @ (Error::Config(_) | Error::InvalidKey(_) | Error::UnsupportedCipher(_))) => {
                return Err(e).context("connecting to the server");
            }
            Err(e) => {
                warn!(
                    "connecting to the server failed: {e}; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                delay = delay
                    .mul_f64(policy.multiplier.clamp(1.0, 10.0))
                    .min(policy.max.max(policy.initial));
            }
        }
    }
}

/// Hex of exactly `N` bytes, checked without echoing the secret.
fn decode_hex<const N: usize>(flag: &str, text: &str) -> Result<[u8; N]> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| crate::fail::Failure::new(format!("{flag}: not hex ({e})")))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        crate::fail::Failure::new(format!(
            "{flag}: {len} bytes, expected {N} ({} hex digits)",
            2 * N
        ))
    })
}
