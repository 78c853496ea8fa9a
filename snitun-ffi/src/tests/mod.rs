//! Tests of the C API called from Rust (unit tests, so that the crate
//! needs no rlib: an rlib named `snitun` would collide with the core
//! crate's in workspace builds).

mod api;
mod log;
