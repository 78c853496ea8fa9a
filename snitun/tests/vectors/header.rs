//! Vector checker for header.json: pack and unpack plain headers.

use crate::common::*;
use serde_json::Value;
use snitun::mux::frame::{FrameHeader, legacy_new_extra, parse_legacy_new_extra};
use snitun::mux::{ChannelId, Flow};
use std::net::IpAddr;

pub fn check(file: &Value, case: &Value) -> CaseResult {
    let flow_types = file["flow_types"]
        .as_object()
        .ok_or("file has no flow_types")?;
    for (name, value) in flow_types {
        let byte = value.as_u64().ok_or("flow value not a number")? as u8;
        same("flow name", Flow::from_byte(byte).name(), name.as_str())?;
    }
    same(
        "header size",
        snitun::mux::HEADER_SIZE as u64,
        uint(file, "header_size")?,
    )?;

    let wire: [u8; 32] = hex_array(case, "header")?;
    let header = FrameHeader {
        id: ChannelId(hex_array(case, "channel_id")?),
        flow: Flow::from_byte(uint(case, "flow_type")? as u8),
        size: uint(case, "data_size")? as u32,
        extra: hex_array(case, "extra")?,
    };
    same(
        "encoded header",
        hex::encode(header.encode()),
        hex::encode(wire),
    )?;
    same("decoded header", FrameHeader::decode(&wire), header)?;
    same("flow name", header.flow.name(), text(case, "flow_name")?)?;
    if let Some(source) = case.get("source_ip").and_then(Value::as_str) {
        let source: IpAddr = source.parse().map_err(|e| format!("source_ip: {e}"))?;
        let prefix = legacy_new_extra(source);
        // Our sender writes the same address bytes (the rest is random).
        same("legacy NEW extra", &header.extra[..5], &prefix[..])?;
    }
    if let Some(receiver_ip) = case.get("receiver_ip").and_then(Value::as_str) {
        same(
            "legacy NEW address",
            parse_legacy_new_extra(&header.extra).to_string(),
            receiver_ip.to_string(),
        )?;
    }
    if header.flow == Flow::Ping {
        let is_pong = header.extra.starts_with(b"pong");
        same("pong detection", header.is_pong(), is_pong)?;
    }
    Ok(())
}
