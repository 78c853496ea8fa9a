//! Vector checker for proxy_protocol.json: the PROXY header parser (`parse`
//! cases) and the connection reader (`stream` cases) against the reference.

use crate::common::*;
use bytes::BytesMut;
use serde_json::Value;
use snitun::Error;
use snitun::server::proxy_protocol::{
    ProxyParse, V2_SIGNATURE, parse_proxy_header, read_proxy_header,
};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

pub fn check(file: &Value, case: &Value) -> CaseResult {
    same(
        "v2_signature",
        hex_field(file, "v2_signature")?.as_slice(),
        V2_SIGNATURE.as_slice(),
    )?;
    match kind(case)? {
        "parse" => check_parse(case),
        "stream" => check_stream(case),
        other => unknown_kind(other),
    }
}

/// Addresses are compared in their canonical text form; a reference source
/// that is not a plain IP address (e.g. with an IPv6 zone) stays as it is,
/// so only a rejection can match it (quirk cases).
fn reference_source(expected: &Value) -> Result<Option<String>, String> {
    match &expected["source"] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(
            s.parse::<IpAddr>()
                .map_or_else(|_| s.clone(), |ip| ip.to_string()),
        )),
        other => Err(format!(
            "field `source` is neither null nor a string: {other}"
        )),
    }
}

fn our_source(source: Option<IpAddr>) -> Option<String> {
    source.map(|ip| ip.to_string())
}

fn check_parse(case: &Value) -> CaseResult {
    let input = hex_field(case, "input")?;
    if let Some(line) = case.get("input_text_line") {
        let line = line
            .as_str()
            .ok_or("field `input_text_line` is not a string")?;
        if !input.starts_with(line.as_bytes()) {
            return Err("input does not start with input_text_line".into());
        }
    }
    let expected = &case["expected"];
    let ours = parse_proxy_header(&input);
    match expected_result(case)? {
        "header" => {
            let size = usize::try_from(uint(expected, "size")?).map_err(|e| e.to_string())?;
            let remaining = hex_field(expected, "remaining")?;
            same(
                "remaining vs input",
                input.get(size..),
                Some(remaining.as_slice()),
            )?;
            let ours = match ours {
                Ok(ProxyParse::Header { source, size }) => Ok((our_source(source), size)),
                Ok(other) => return Err(format!("ours {other:?}, reference a header")),
                Err(e) => Err(e),
            };
            accepted_as_reference(
                case,
                "header (source, size)",
                ours,
                (reference_source(expected)?, size),
            )
        }
        "none" => match ours {
            Ok(ProxyParse::None) => Ok(()),
            Err(Error::InvalidProxyHeader(_)) if is_quirk(case) => Ok(()),
            other => Err(format!("ours {other:?}, reference none")),
        },
        "error" => {
            let error = text(expected, "error")?;
            match (error, ours) {
                ("invalid", Err(Error::InvalidProxyHeader(_))) => Ok(()),
                ("incomplete", Ok(ProxyParse::Incomplete)) => Ok(()),
                ("incomplete", Err(Error::InvalidProxyHeader(_))) if is_quirk(case) => Ok(()),
                ("invalid" | "incomplete", other) => {
                    Err(format!("reference: {error}, ours: {other:?}"))
                }
                (unknown, _) => Err(format!("unknown expected error {unknown:?}")),
            }
        }
        other => Err(format!("unknown expected result {other:?}")),
    }
}

fn check_stream(case: &Value) -> CaseResult {
    let chunks = case["chunks"]
        .as_array()
        .ok_or("field `chunks` missing or not a list")?
        .iter()
        .map(|c| {
            c.as_str()
                .ok_or_else(|| "a chunk is not a string".to_string())
                .and_then(|s| hex::decode(s).map_err(|e| format!("a chunk is not hex: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let expected = &case["expected"];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    let mut reader = Chunks(chunks);
    let mut buf = BytesMut::new();
    let ours = runtime.block_on(read_proxy_header(&mut reader, &mut buf));
    match expected_result(case)? {
        "header" => {
            let size = usize::try_from(uint(expected, "size")?).map_err(|e| e.to_string())?;
            let leftover = hex_field(expected, "leftover")?;
            let ours = match ours {
                Ok(Some(header)) => Ok((our_source(header.source), header.size)),
                Ok(None) => return Err("ours: no header, reference a header".into()),
                Err(e) => Err(e),
            };
            let accepted = ours.is_ok();
            accepted_as_reference(
                case,
                "header (source, size)",
                ours,
                (reference_source(expected)?, size),
            )?;
            if accepted {
                same("leftover", &buf[..], leftover.as_slice())?;
            }
            Ok(())
        }
        "none" => {
            let leftover = hex_field(expected, "leftover")?;
            match ours {
                Ok(None) => same("leftover", &buf[..], leftover.as_slice()),
                Err(_) if is_quirk(case) => Ok(()),
                other => Err(format!("ours {other:?}, reference none")),
            }
        }
        "error" => match (text(expected, "error")?, ours) {
            ("invalid", Err(_)) => Ok(()),
            ("invalid", Ok(other)) => Err(format!("ours {other:?}, reference rejected")),
            (unknown, _) => Err(format!("unknown expected error {unknown:?}")),
        },
        other => Err(format!("unknown expected result {other:?}")),
    }
}

/// A reader that delivers its chunks one read at a time (a chunk larger than
/// the read buffer over several reads), then EOF.
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
