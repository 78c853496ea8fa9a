//! How `include/snitun.h` is generated, shared by `build.rs` (which writes
//! it) and `tests/header.rs` (which checks the committed copy): one
//! definition, so the two can never disagree about what the header holds.
//!
//! cbindgen reads the API from `src/`; the version macros come from this
//! package's version, so a C program can check at compile time which
//! library it was written against (and at run time, with
//! `snitun_version()`, which one it loaded).

use std::path::Path;

/// The version macros placed after the includes.
fn version_macros() -> String {
    format!(
        "/** The version of libsnitun this header belongs to (semver). */\n\
         #define SNITUN_VERSION_MAJOR {}\n\
         #define SNITUN_VERSION_MINOR {}\n\
         #define SNITUN_VERSION_PATCH {}\n\
         /** The same as a string; snitun_version() returns the loaded library's. */\n\
         #define SNITUN_VERSION \"{}\"\n",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
    )
}

/// The header for the crate at `crate_dir`, as cbindgen makes it.
pub fn generate(crate_dir: &Path) -> Result<cbindgen::Bindings, String> {
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|e| format!("reading cbindgen.toml: {e}"))?;
    config.after_includes = Some(version_macros());
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .map_err(|e| format!("generating the C header: {e}"))
}
