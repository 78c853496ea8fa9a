//! Link settings a Node addon needs (napi symbols resolved by the host at load time).

fn main() {
    napi_build::setup();
}
