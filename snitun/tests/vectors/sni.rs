//! Vector checker for sni.json: the SNI parser against the reference, case
//! by case, plus the streaming reader on every hello we accept.

use crate::common::*;
use bytes::BytesMut;
use serde_json::Value;
use snitun::Error;
use snitun::server::sni::{SniParse, parse_sni, read_client_hello};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

pub fn check(_file: &Value, case: &Value) -> CaseResult {
    match kind(case)? {
        "parse" => check_parse(case),
        other => unknown_kind(other),
    }
}

fn check_parse(case: &Value) -> CaseResult {
    let input = hex_field(case, "input")?;
    let expected = &case["expected"];
    let ours = parse_sni(&input);
    match expected_result(case)? {
        "hostname" => {
            let reference = text(expected, "hostname")?;
            let reference_hex = hex_field(expected, "hostname_hex")?;
            same(
                "hostname_hex vs hostname",
                reference_hex.as_slice(),
                reference.as_bytes(),
            )?;
            let ours = match ours {
                Ok(SniParse::Hostname(name)) => Ok(name),
                Ok(SniParse::Incomplete) => {
                    return Err("we say incomplete, reference found a host name".into());
                }
                Err(e) => Err(e),
            };
            if let Ok(name) = &ours {
                check_reader(&input, name)?;
            }
            accepted_as_reference(case, "hostname", ours, reference.to_owned())
        }
        "error" => {
            let error = text(expected, "error")?;
            match (error, ours) {
                ("invalid", Err(Error::InvalidClientHello(_))) => Ok(()),
                ("incomplete", Ok(SniParse::Incomplete)) => Ok(()),
                // A quirk case may be rejected where the reference waits.
                ("incomplete", Err(Error::InvalidClientHello(_))) if is_quirk(case) => Ok(()),
                ("invalid" | "incomplete", other) => {
                    Err(format!("reference: {error}, ours: {other:?}"))
                }
                (unknown, _) => Err(format!("unknown expected error {unknown:?}")),
            }
        }
        other => Err(format!("unknown expected result {other:?}")),
    }
}

/// The streaming reader must agree with the parser when the bytes arrive in
/// small pieces, and keep every byte it read.
fn check_reader(input: &[u8], name: &str) -> CaseResult {
    let chunks = input.chunks(7).map(<[u8]>::to_vec).collect();
    let mut reader = Chunks(chunks);
    let mut buf = BytesMut::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    let got = runtime
        .block_on(read_client_hello(&mut reader, &mut buf))
        .map_err(|e| format!("read_client_hello failed where parse_sni succeeded: {e}"))?;
    same("read_client_hello host name", got.as_str(), name)?;
    if !input.starts_with(&buf) {
        return Err("read_client_hello buffer is not a prefix of the input".into());
    }
    Ok(())
}

/// A reader that delivers its chunks one read at a time, then EOF.
struct Chunks(Vec<Vec<u8>>);

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(first) = self.0.first_mut() {
            let n = first.len().min(out.remaining());
            out.put_slice(first.get(..n).unwrap_or_default());
            first.drain(..n);
            if first.is_empty() {
                self.0.remove(0);
            }
        }
        Poll::Ready(Ok(()))
    }
}
