//! Generates the C header with cbindgen, and gives the Linux shared library
//! its soname.
//!
//! The header is written to `$OUT_DIR/snitun.h` on every build (so a build
//! fails if cbindgen cannot read the API), and to the committed
//! `include/snitun.h` when that file is missing or `SNITUN_UPDATE_HEADER=1`
//! is set. The test `header_is_up_to_date` fails when the committed file
//! differs from a fresh generation.

use std::path::PathBuf;

#[path = "header.rs"]
mod header;

fn main() {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=header.rs");
    println!("cargo:rerun-if-env-changed=SNITUN_UPDATE_HEADER");

    // rustc names no soname on a cdylib; without one, a program linked to
    // `libsnitun.so` records that unversioned name and a distribution cannot
    // install two ABI versions side by side. The soname carries the major
    // version, which changes only when the C ABI breaks (VERSIONING.md).
    // Only GNU-style ELF linkers take `-soname`.
    // macOS's equivalent is the install name, which the release tarball's
    // libsnitun.MAJOR.dylib matches.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    match os.as_str() {
        "linux" => println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsnitun.so.{major}"),
        "macos" => {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-install_name,@rpath/libsnitun.{major}.dylib")
        }
        _ => {}
    }

    let bindings = match header::generate(&crate_dir) {
        Ok(bindings) => bindings,
        Err(e) => panic!("{e}"),
    };
    bindings.write_to_file(out_dir.join("snitun.h"));

    let committed = crate_dir.join("../include/snitun.h");
    let update = std::env::var("SNITUN_UPDATE_HEADER").is_ok_and(|v| v == "1");
    if update || !committed.exists() {
        bindings.write_to_file(&committed);
    }
}
