//! Helpers shared by the vector checkers.

#![allow(dead_code)]

use serde_json::Value;
use std::fmt::Debug;
use std::path::PathBuf;

/// Outcome of one case: `Err` carries what differed.
pub type CaseResult = Result<(), String>;

/// The vectors directory: `$SNITUN_VECTORS`, else the copy kept in the
/// repository (`tests/vectors/data`).
pub fn vectors_dir() -> PathBuf {
    match std::env::var_os("SNITUN_VECTORS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/data"),
    }
}

/// The case's `kind`, or an error naming the case shape we do not know.
pub fn kind(case: &Value) -> Result<&str, String> {
    case["kind"]
        .as_str()
        .ok_or_else(|| "case has no `kind`".to_string())
}

/// Error for a case kind a checker does not understand.
pub fn unknown_kind(kind: &str) -> CaseResult {
    Err(format!(
        "unknown case kind {kind:?}: teach the checker about it"
    ))
}

/// True when the reference was lenient or surprising for this case.
pub fn is_quirk(case: &Value) -> bool {
    case.get("quirk").is_some()
}

/// A string field.
pub fn text<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v[field]
        .as_str()
        .ok_or_else(|| format!("field `{field}` missing or not a string"))
}

/// A hex field decoded to bytes.
pub fn hex_field(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = text(v, field)?;
    hex::decode(s).map_err(|e| format!("field `{field}` is not hex: {e}"))
}

/// A fixed-size hex field.
pub fn hex_array<const N: usize>(v: &Value, field: &str) -> Result<[u8; N], String> {
    let bytes = hex_field(v, field)?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("field `{field}` has {} bytes, want {N}", b.len()))
}

/// An unsigned integer field.
pub fn uint(v: &Value, field: &str) -> Result<u64, String> {
    v[field]
        .as_u64()
        .ok_or_else(|| format!("field `{field}` missing or not an unsigned integer"))
}

/// The `expected.result` of a case.
pub fn expected_result(case: &Value) -> Result<&str, String> {
    text(&case["expected"], "result")
}

/// Compare two values, naming the field on mismatch.
pub fn same<T: PartialEq + Debug>(what: &str, ours: T, reference: T) -> CaseResult {
    if ours == reference {
        Ok(())
    } else {
        Err(format!("{what}: ours {ours:?}, reference {reference:?}"))
    }
}

/// The rule for accepted results: equal to the reference, or, for a case
/// marked `quirk`, a rejection (we may be stricter than the reference where
/// it is lenient, never differently lenient).
pub fn accepted_as_reference<T: PartialEq + Debug, E: Debug>(
    case: &Value,
    what: &str,
    ours: Result<T, E>,
    reference: T,
) -> CaseResult {
    match ours {
        Ok(value) => same(what, value, reference),
        Err(_) if is_quirk(case) => Ok(()),
        Err(e) => Err(format!(
            "{what}: we rejected ({e:?}), reference accepted {reference:?}"
        )),
    }
}
