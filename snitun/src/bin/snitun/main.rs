//! The `snitun` command line.

fn main() {}
