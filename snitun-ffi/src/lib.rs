//! # libsnitun: the C ABI of snitun
//!
//! This crate builds `libsnitun.so` and `libsnitun.a`; its functions and
//! types are declared in the generated `include/snitun.h`, whose comments
//! are the reference documentation (the general rules are at its top).
//!
//! Conventions, after rustls-ffi: opaque handles; fallible functions
//! return a [`snitun_result`] and leave a message for
//! [`snitun_last_error`]; configuration through config handles and
//! setters; callbacks carry `void *userdata`; every `_new` (or `_start`,
//! `_connect`, `_mint`) has a `_free`, and freeing NULL does nothing; the
//! library runs its own threads. No function lets a panic unwind into the
//! caller.
//!
//! # Safety
//!
//! The functions are meant to be called from C; from Rust, every pointer
//! argument must be NULL or valid for its documented use: handles live
//! (not freed) and of the right type, strings NUL-terminated, buffers of
//! the stated length, output pointers writable. A handle may not be freed
//! while another thread uses it, nor freed twice.

// C names for C types; the shared safety rules are in the crate docs.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

// Declared in the order the header presents them.
mod client;
mod error;
mod log;
mod server;
mod token;

mod args;
mod runtime;

#[cfg(test)]
mod tests;
// The core crate's shared test helpers (tests/support) name it `snitun`.
#[cfg(test)]
extern crate snitun_core as snitun;

use std::ffi::c_char;

pub use client::*;
pub use error::*;
pub use log::*;
pub use server::*;
pub use token::*;

/// A timeout argument meaning "no time limit".
pub const SNITUN_TIMEOUT_INFINITE: u64 = u64::MAX;

/// The library's version, for example `"0.1.0"`: a static NUL-terminated
/// string. It equals `SNITUN_VERSION` (and the `SNITUN_VERSION_MAJOR`,
/// `_MINOR`, `_PATCH` macros) of the header the library was built with; a
/// program compares them to learn whether it loaded the library it was
/// compiled against.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub extern "C" fn snitun_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
