//! Generates the C header with cbindgen.
//!
//! The header is written to `$OUT_DIR/snitun.h` on every build (so a build
//! fails if cbindgen cannot read the API), and to the committed
//! `include/snitun.h` when that file is missing or `SNITUN_UPDATE_HEADER=1`
//! is set. The test `header_is_up_to_date` fails when the committed file
//! differs from a fresh generation.

use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=SNITUN_UPDATE_HEADER");

    let config = match cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")) {
        Ok(config) => config,
        Err(e) => panic!("reading cbindgen.toml: {e}"),
    };
    let bindings = match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => bindings,
        Err(e) => panic!("generating the C header: {e}"),
    };
    bindings.write_to_file(out_dir.join("snitun.h"));

    let committed = crate_dir.join("../include/snitun.h");
    let update = std::env::var("SNITUN_UPDATE_HEADER").is_ok_and(|v| v == "1");
    if update || !committed.exists() {
        bindings.write_to_file(&committed);
    }
}
