//! Checks snitun against every case of every file of the reference
//! implementation's test vectors (`$SNITUN_VECTORS`, default the copy in
//! `tests/vectors/data`; see `tests/vectors/README.md`).
//!
//! A file this harness has no checker for, a case kind a checker does not
//! understand, or a file with no cases fails the test: new vectors can never
//! be skipped silently.

// Test code: a panic here is a test failure, not a crash of the library.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod frames;
mod sim;

mod cbc_stream;
mod fernet_token;
mod gcm;
mod gcm_siv;
mod handshake;
mod header;
mod new_message;
mod proxy_protocol;
mod sni;

use common::CaseResult;
use serde_json::Value;

type CaseCheck = fn(file: &Value, case: &Value) -> CaseResult;

const CHECKERS: &[(&str, CaseCheck)] = &[
    ("cbc_stream.json", cbc_stream::check),
    ("fernet_token.json", fernet_token::check),
    ("gcm.json", gcm::check),
    ("gcm_siv.json", gcm_siv::check),
    ("handshake.json", handshake::check),
    ("header.json", header::check),
    ("new_message.json", new_message::check),
    ("proxy_protocol.json", proxy_protocol::check),
    ("sni.json", sni::check),
];

#[test]
fn every_vector_case_matches_the_reference() {
    let dir = common::vectors_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read vectors directory {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no vector files in {}", dir.display());

    let mut failures = Vec::new();
    let mut total = 0usize;
    for name in &names {
        let Some((_, check)) = CHECKERS.iter().find(|(file, _)| file == name) else {
            failures.push(format!("{name}: no checker for this vector file"));
            continue;
        };
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
        let file: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let cases = file["cases"].as_array().cloned().unwrap_or_default();
        if cases.is_empty() {
            failures.push(format!("{name}: no cases loaded"));
            continue;
        }
        let mut checked = 0usize;
        let mut quirks = 0usize;
        for case in &cases {
            let case_name = case["name"].as_str().unwrap_or("<unnamed>");
            match check(&file, case) {
                Ok(()) => {
                    checked += 1;
                    if common::is_quirk(case) {
                        quirks += 1;
                    }
                }
                Err(why) => failures.push(format!("{name} / {case_name}: {why}")),
            }
        }
        println!(
            "{name}: {checked} of {} cases checked ({quirks} quirk cases)",
            cases.len()
        );
        total += checked;
    }
    println!("vectors: {total} cases checked in {} files", names.len());
    assert!(
        failures.is_empty(),
        "{} vector case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
