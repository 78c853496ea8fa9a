//! The committed `include/snitun.h` must be exactly what cbindgen makes of
//! the current sources.

use std::path::Path;

#[path = "../header.rs"]
mod header;

#[test]
fn header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bindings = header::generate(crate_dir).expect("generating the header");
    let fresh = std::env::temp_dir().join(format!("snitun-header-{}.h", std::process::id()));
    bindings.write_to_file(&fresh);
    let generated = std::fs::read_to_string(&fresh).expect("reading the generated header");
    let _ = std::fs::remove_file(&fresh);
    let committed_path = crate_dir.join("../include/snitun.h");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if generated != committed {
        let first = generated
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| generated.lines().count().min(committed.lines().count()));
        let show = |text: &str| {
            text.lines()
                .skip(first.saturating_sub(2))
                .take(6)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "include/snitun.h is out of date (first difference at line {}).\n\
             generated:\n{}\n\ncommitted:\n{}\n\n\
             Regenerate it with `SNITUN_UPDATE_HEADER=1 cargo build -p snitun-ffi` and commit it.",
            first + 1,
            show(&generated),
            show(&committed),
        );
    }
}
