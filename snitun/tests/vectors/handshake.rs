//! Vector checker for handshake.json: token, challenge and answer.

use crate::common::*;
use serde_json::Value;
use snitun::crypto::{Cipher, CipherState, Role};
use snitun::handshake::{Challenge, answer_challenge};
use snitun::token::KeyRing;

pub fn check(_file: &Value, case: &Value) -> CaseResult {
    match kind(case)? {
        "transcript" => transcript(case),
        "server_verify" => server_verify(case),
        "client_decrypt" => client_decrypt(case),
        other => unknown_kind(other),
    }
}

fn cipher_of(case: &Value) -> Result<Cipher, String> {
    Cipher::from_name(text(case, "cipher")?).map_err(|e| e.to_string())
}

fn iv_of(case: &Value) -> Result<[u8; 16], String> {
    match case.get("iv").and_then(Value::as_str) {
        Some(_) => hex_array(case, "iv"),
        None => Ok([0; 16]),
    }
}

fn transcript(case: &Value) -> CaseResult {
    let cipher = cipher_of(case)?;
    let key: [u8; 32] = hex_array(case, "key")?;
    let iv = iv_of(case)?;
    let deterministic = cipher != Cipher::AesGcmSiv;

    // The token the client sent validates, with the right fields.
    let keys: Vec<&str> = case["fernet_keys"]
        .as_array()
        .ok_or("no fernet_keys")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let ring = KeyRing::from_strings(keys).map_err(|e| e.to_string())?;
    let token = ring
        .validate(text(case, "token")?.as_bytes())
        .map_err(|e| format!("token refused: {e}"))?;
    same("hostname", token.hostname.as_str(), text(case, "hostname")?)?;
    same("cipher", token.cipher, cipher)?;
    same(
        "protocol version",
        token.protocol_version as u64,
        uint(case, "protocol_version")?,
    )?;
    same("aes key", token.aes_key, key)?;

    let mut server = CipherState::new(cipher, Role::Responder, &key, &iv);
    let mut client = CipherState::new(cipher, Role::Initiator, &key, &iv);
    let seed = hex_field(case, "R")?;
    let (challenge, challenge_wire) =
        Challenge::from_seed(&seed, &mut server.encryptor).map_err(|e| e.to_string())?;
    let reference_challenge = hex_field(case, "challenge_wire")?;
    if deterministic {
        same(
            "challenge",
            hex::encode(&challenge_wire),
            hex::encode(&reference_challenge),
        )?;
    }
    // The client decrypts the reference's challenge and answers.
    let mut unit = reference_challenge.clone();
    let answer = answer_challenge(&mut client, &mut unit).map_err(|e| e.to_string())?;
    let reference_answer = hex_field(case, "answer_wire")?;
    if deterministic {
        same(
            "answer",
            hex::encode(&answer),
            hex::encode(&reference_answer),
        )?;
    }
    // The server accepts the reference client's answer.
    let mut unit = reference_answer.clone();
    let verdict = challenge.verify(&mut server.decryptor, &mut unit);
    same(
        "accepted",
        verdict.is_ok(),
        case["accepted"].as_bool() == Some(true),
    )?;

    // Both sides continue with the same state.
    let after = &case["after_handshake"];
    let up = &after["client_to_server_first_header"];
    let down = &after["server_to_client_first_header"];
    let up_plain = hex_field(up, "plain")?;
    let down_plain = hex_field(down, "plain")?;
    let mut out = vec![0u8; 32 + cipher.overhead()];
    client
        .encryptor
        .encrypt(&up_plain, &mut out)
        .map_err(|e| e.to_string())?;
    if deterministic {
        same(
            "first client header",
            hex::encode(&out),
            text(up, "wire")?.to_string(),
        )?;
    }
    let mut unit = hex_field(up, "wire")?;
    let opened = server
        .decryptor
        .decrypt(&mut unit)
        .map_err(|e| e.to_string())?;
    same("first client header (server view)", opened, &up_plain[..])?;
    server
        .encryptor
        .encrypt(&down_plain, &mut out)
        .map_err(|e| e.to_string())?;
    if deterministic {
        same(
            "first server header",
            hex::encode(&out),
            text(down, "wire")?.to_string(),
        )?;
    }
    let mut unit = hex_field(down, "wire")?;
    let opened = client
        .decryptor
        .decrypt(&mut unit)
        .map_err(|e| e.to_string())?;
    same("first server header (client view)", opened, &down_plain[..])?;

    // The recorded streams are exactly these pieces in order.
    let mut upstream = text(case, "token")?.as_bytes().to_vec();
    upstream.extend_from_slice(&reference_answer);
    upstream.extend_from_slice(&hex_field(up, "wire")?);
    same(
        "client to server stream",
        hex::encode(upstream),
        text(case, "client_to_server_stream")?.to_string(),
    )?;
    let mut downstream = reference_challenge;
    downstream.extend_from_slice(&hex_field(down, "wire")?);
    same(
        "server to client stream",
        hex::encode(downstream),
        text(case, "server_to_client_stream")?.to_string(),
    )
}

fn server_verify(case: &Value) -> CaseResult {
    let cipher = cipher_of(case)?;
    let key: [u8; 32] = hex_array(case, "key")?;
    let iv = iv_of(case)?;
    let mut server = CipherState::new(cipher, Role::Responder, &key, &iv);
    let (challenge, wire) = Challenge::from_seed(&hex_field(case, "R")?, &mut server.encryptor)
        .map_err(|e| e.to_string())?;
    if cipher != Cipher::AesGcmSiv {
        same(
            "challenge",
            hex::encode(wire),
            text(case, "challenge_wire")?.to_string(),
        )?;
    }
    let mut answer = hex_field(case, "answer_wire")?;
    // A short answer means the connection ended before the answer was whole:
    // the server's exact read fails.
    let ours: Result<(), String> = if answer.len() < 32 + cipher.overhead() {
        Err("connection closed mid-answer".into())
    } else {
        challenge
            .verify(&mut server.decryptor, &mut answer)
            .map_err(|e| e.to_string())
    };
    match expected_result(case)? {
        "accept" => accepted_as_reference(case, "verdict", ours, ()),
        "reject" => match ours {
            Err(_) => Ok(()),
            Ok(()) => Err("accepted an answer the reference rejects".into()),
        },
        other => Err(format!("unknown expected result {other:?}")),
    }
}

fn client_decrypt(case: &Value) -> CaseResult {
    let cipher = cipher_of(case)?;
    let key: [u8; 32] = hex_array(case, "key")?;
    let mut client = CipherState::new(cipher, Role::Initiator, &key, &[0; 16]);
    let mut wire = hex_field(case, "challenge_wire")?;
    let ours = client.decryptor.decrypt(&mut wire).map(hex::encode);
    match expected_result(case)? {
        "accept" => accepted_as_reference(
            case,
            "challenge token",
            ours,
            text(&case["expected"], "token")?.to_string(),
        ),
        "reject" => match ours {
            Err(_) => Ok(()),
            Ok(token) => Err(format!("accepted a tampered challenge: {token}")),
        },
        other => Err(format!("unknown expected result {other:?}")),
    }
}
