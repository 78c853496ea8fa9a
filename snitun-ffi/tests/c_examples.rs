//! Builds the C examples (examples/c) with their Makefile against the
//! library cargo just built, linked once to libsnitun.so and once to
//! libsnitun.a, and runs them together on loopback: the C server (ports
//! chosen by the system, a token minted for the device), the C client
//! relaying to a TCP echo endpoint, and a caller that sends a TLS
//! ClientHello with SNI and data through the server's SNI port and gets
//! them back; once more under valgrind when it is installed (no invalid
//! access, no definite leak). Also checks a bad argument is reported
//! through the C API, and that the pkg-config file from `make install`
//! builds a program. c_api_test_program builds and runs tests/c/api_test.c,
//! which checks the C API alone (every error path, a whole tunnel in one
//! process), the same ways.
//!
//! Needs `make` and a C compiler (`cc`); every wait is bounded, and only
//! the processes started here are stopped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg(unix)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

// The core crate's test helpers, which name it `snitun` (this package's
// own library of that name is C-only).
extern crate snitun_core as snitun;
#[path = "../../snitun/tests/support/mod.rs"]
mod support;
use support::client_hello;

const LIMIT: Duration = Duration::from_secs(30);
const HOST: &str = "device.example.test";

/// The folder cargo put libsnitun.so and libsnitun.a in: this test runs
/// from `<target>/<profile>/deps/`.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps");
    for lib in ["libsnitun.so", "libsnitun.a"] {
        assert!(
            profile_dir.join(lib).exists(),
            "{lib} not found in {}: build the library first (cargo build -p snitun-ffi)",
            profile_dir.display()
        );
    }
    // A program linked to libsnitun.so records its soname, which is what
    // the loader looks for; cargo writes only the unversioned file.
    let soname = profile_dir.join(format!("libsnitun.so.{}", env!("CARGO_PKG_VERSION_MAJOR")));
    if std::fs::symlink_metadata(&soname).is_err() {
        let _ = std::os::unix::fs::symlink("libsnitun.so", &soname);
    }
    profile_dir.to_path_buf()
}

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A scratch folder, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("snitun-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

fn make(out: &Path, lib_dir: &Path, targets: &[&str]) -> String {
    run(Command::new("make")
        .arg("-C")
        .arg(repo_dir().join("examples/c"))
        .arg(format!("OUT={}", out.display()))
        .arg(format!("SNITUN_LIB={}", lib_dir.display()))
        .arg(format!(
            "SNITUN_INCLUDE={}",
            repo_dir().join("include").display()
        ))
        .arg("CFLAGS=-O1 -g")
        .args(targets))
}

/// A process started by this test: killed (by its own handle) if it is
/// still running when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(name: &'static str, command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Log records on stderr: shown when the test runs with --nocapture.
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{name}] {line}");
            }
        });
        Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Read stdout lines until one starts with `prefix`; return it.
    fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line starting with {prefix:?} within {LIMIT:?}; saw {:?}",
                    self.name, self.seen
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: output ended without a line starting with {prefix:?} ({:?}); saw {:?}",
                    self.name,
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Send SIGTERM to this process (by its id).
    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Wait (bounded) for the process to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {LIMIT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP echo server on loopback.
fn echo_endpoint() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Send a ClientHello for `host` and `payload` to the SNI port; check that
/// both come back.
fn call_through(sni_port: u16, host: &str, payload: &[u8]) {
    let mut caller = TcpStream::connect(("127.0.0.1", sni_port)).unwrap();
    caller.set_read_timeout(Some(LIMIT)).unwrap();
    let mut sent = client_hello(host);
    sent.extend_from_slice(payload);
    let mut writer = caller.try_clone().unwrap();
    let to_send = sent.clone();
    let sender = std::thread::spawn(move || writer.write_all(&to_send));
    let mut back = Vec::with_capacity(sent.len());
    let mut buf = vec![0u8; 64 * 1024];
    while back.len() < sent.len() {
        match caller.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the echo: {e} after {} bytes", back.len()),
        }
    }
    sender.join().unwrap().unwrap();
    assert_eq!(back.len(), sent.len(), "echo length");
    assert!(back == sent, "echoed bytes differ");
    caller.shutdown(Shutdown::Both).unwrap();
}

fn values(lines: &[String]) -> HashMap<String, String> {
    lines
        .iter()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// How to run the example programs: directly, or under valgrind.
#[derive(Clone, Copy, PartialEq)]
enum Runner {
    Direct,
    Valgrind,
}

impl Runner {
    fn command(self, program: PathBuf) -> Command {
        let mut command = self.command_for(program);
        // A program finds libsnitun through the rpath it was linked with:
        // the LD_LIBRARY_PATH cargo sets for tests would put
        // target/<profile>'s library first, whatever the program was built
        // against (a release tarball, say).
        command.env_remove("LD_LIBRARY_PATH");
        command
    }

    fn command_for(self, program: PathBuf) -> Command {
        match self {
            Runner::Direct => Command::new(program),
            Runner::Valgrind => {
                let mut command = Command::new("valgrind");
                // Invalid reads and writes, uses of uninitialised memory and
                // definite leaks fail the run (exit status 99). The library's
                // runtime threads live until the process ends, which
                // valgrind counts as "possibly lost" and "still reachable".
                command
                    .args([
                        "--quiet",
                        "--error-exitcode=99",
                        "--leak-check=full",
                        "--errors-for-leak-kinds=definite",
                    ])
                    .arg(program);
                command
            }
        }
    }
}

/// The C server and the C client (`suffix` "" or "-static") on loopback.
fn tunnel_through_the_c_programs(bin: &Path, suffix: &str, echo_port: u16, runner: Runner) {
    let mut server = Proc::start(
        "server",
        runner
            .command(bin.join(format!("server{suffix}")))
            .args(["--mint", HOST, "--log", "info"]),
    );
    server.expect_line("READY");
    let config = values(&server.seen);
    let sni_port: u16 = config["SNI_PORT"].parse().unwrap();
    let peer_port: u16 = config["PEER_PORT"].parse().unwrap();
    assert_ne!(sni_port, 0);
    assert_ne!(peer_port, 0);

    let mut client = Proc::start(
        "client",
        runner.command(bin.join(format!("client{suffix}"))).args([
            "--server",
            &format!("127.0.0.1:{peer_port}"),
            "--token",
            &config["TOKEN"],
            "--aes-key",
            &config["AES_KEY"],
            "--aes-iv",
            &config["AES_IV"],
            "--endpoint",
            &format!("127.0.0.1:{echo_port}"),
            "--log",
            "info",
        ]),
    );
    client.expect_line("CONNECTED");
    let connected = server.expect_line("PEER_CONNECTED");
    assert!(
        connected.starts_with(&format!("PEER_CONNECTED {HOST} 127.0.0.1:")),
        "{connected}"
    );

    // Small and bulk, one after the other and two at once.
    call_through(sni_port, HOST, b"hello through the tunnel");
    let size = if runner == Runner::Valgrind {
        200_000
    } else {
        1_000_000
    };
    let bulk: Vec<u8> = (0..size).map(|i: u32| (i * 31 % 253) as u8).collect();
    let parallel = {
        let bulk = bulk.clone();
        std::thread::spawn(move || call_through(sni_port, HOST, &bulk))
    };
    call_through(sni_port, HOST, &bulk);
    parallel.join().unwrap();

    // Stop the server: it reports its peer and stops; the client's session
    // ends by itself (exit status 3).
    server.terminate();
    let peers = server.expect_line("PEERS=");
    assert_eq!(peers, format!("PEERS=1 {HOST}"));
    server.expect_line("STOPPED");
    assert_eq!(server.wait_exit(), Some(0), "server exit status");
    client.expect_line("DISCONNECTED");
    client.expect_line("END ");
    assert_eq!(client.wait_exit(), Some(3), "client exit status");
}

/// A client stopped by a signal disconnects cleanly (exit status 0), and
/// bad arguments are reported with the library's message (exit status 1).
fn client_signal_and_bad_arguments(bin: &Path, echo_port: u16) {
    let mut server = Proc::start(
        "server",
        Command::new(bin.join("server")).args(["--listen", "127.0.0.1:0", "--mint", HOST]),
    );
    server.expect_line("READY");
    let config = values(&server.seen);
    let port = &config["LISTEN_PORT"];
    let args = |endpoint: &str| {
        vec![
            "--server".to_string(),
            format!("127.0.0.1:{port}"),
            "--token".into(),
            config["TOKEN"].clone(),
            "--aes-key".into(),
            config["AES_KEY"].clone(),
            "--aes-iv".into(),
            config["AES_IV"].clone(),
            "--endpoint".into(),
            endpoint.to_string(),
        ]
    };
    let mut client = Proc::start(
        "client",
        Command::new(bin.join("client")).args(args(&format!("127.0.0.1:{echo_port}"))),
    );
    client.expect_line("CONNECTED");
    server.expect_line("PEER_CONNECTED");
    // Single-port mode: callers on the same port.
    call_through(port.parse().unwrap(), HOST, b"single port");
    client.terminate();
    client.expect_line("DISCONNECTED shut down");
    client.expect_line("END shut down");
    assert_eq!(client.wait_exit(), Some(0), "client exit status");
    server.expect_line("PEER_DISCONNECTED");

    let output = Command::new(bin.join("client"))
        .args(args("bad endpoint:80"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--endpoint failed (2, invalid argument)")
            && stderr.contains("endpoint \"bad endpoint:80\""),
        "{stderr}"
    );

    server.terminate();
    server.expect_line("STOPPED");
    assert_eq!(server.wait_exit(), Some(0), "server exit status");
}

/// Valgrind runs when it is installed, unless `SNITUN_SKIP_VALGRIND=1`.
fn valgrind_wanted() -> bool {
    if std::env::var("SNITUN_SKIP_VALGRIND").is_ok_and(|v| v == "1") {
        return false;
    }
    let installed = Command::new("valgrind").arg("--version").output().is_ok();
    if !installed {
        eprintln!("valgrind not installed: the valgrind run is skipped");
    }
    installed
}

#[test]
fn c_examples_build_and_run() {
    let lib_dir = library_dir();
    let scratch = Scratch::new("c-examples");
    let bin = &scratch.0;
    make(bin, &lib_dir, &["shared", "static"]);
    let echo_port = echo_endpoint();

    tunnel_through_the_c_programs(bin, "", echo_port, Runner::Direct);
    tunnel_through_the_c_programs(bin, "-static", echo_port, Runner::Direct);
    client_signal_and_bad_arguments(bin, echo_port);
    if valgrind_wanted() {
        tunnel_through_the_c_programs(bin, "", echo_port, Runner::Valgrind);
    }

    // The static programs do not need the shared library.
    let needed = run(Command::new("ldd").arg(bin.join("client-static")));
    assert!(!needed.contains("libsnitun"), "{needed}");
    let needed = run(Command::new("ldd").arg(bin.join("client")));
    assert!(needed.contains("libsnitun.so"), "{needed}");
}

#[test]
fn pkg_config_file_builds_a_program() {
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("pkg-config not installed: skipped");
        return;
    }
    let lib_dir = library_dir();
    let scratch = Scratch::new("c-pkg-config");
    let prefix = scratch.0.join("prefix");
    let out = scratch.0.join("out");
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(repo_dir().join("examples/c"))
        .arg(format!("OUT={}", out.display()))
        .arg(format!("SNITUN_LIB={}", lib_dir.display()))
        .arg(format!("PREFIX={}", prefix.display()))
        .arg("install"));
    let pc_path = prefix.join("lib/pkgconfig");
    let flags = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &pc_path)
        .args(["--cflags", "--libs", "snitun"]));
    let version = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &pc_path)
        .args(["--modversion", "snitun"]));
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
    let program = out.join("client-pc");
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&program)
        .arg(repo_dir().join("examples/c/client.c"))
        .args(flags.split_whitespace()));
    let printed = run(Command::new(&program)
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .arg("--version"));
    assert_eq!(
        printed.trim(),
        format!("libsnitun {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `SNITUN_C_DIST=DIR`: DIR is an unpacked release tarball of the C library
/// (scripts/dist, `c/snitun-VERSION-TRIPLE.tar.gz`) for this machine. The
/// examples are built against it the two ways a user would, with
/// pkg-config (examples/c/Makefile, `PKG_CONFIG=pkg-config`) and with
/// CMake (`find_package(snitun)`, examples/c/CMakeLists.txt), shared and
/// static, and each build runs a whole tunnel. scripts/dist-check sets the
/// variable; without it there is no tarball to test and this says so.
#[test]
fn c_examples_against_the_release_tarball() {
    let Some(prefix) = std::env::var_os("SNITUN_C_DIST").map(PathBuf::from) else {
        eprintln!("SNITUN_C_DIST not set (scripts/dist-check sets it): skipped");
        return;
    };
    let prefix = prefix.canonicalize().unwrap();
    let pc_path = prefix.join("lib/pkgconfig");
    let version = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &pc_path)
        .args(["--modversion", "snitun"]));
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
    let scratch = Scratch::new("c-release");
    let echo_port = echo_endpoint();

    let with_pkg_config = scratch.0.join("pkg-config");
    std::fs::create_dir_all(&with_pkg_config).unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(repo_dir().join("examples/c"))
        .env("PKG_CONFIG_PATH", &pc_path)
        .arg("PKG_CONFIG=pkg-config")
        .arg(format!("OUT={}", with_pkg_config.display()))
        .args(["shared", "static"]));

    let with_cmake = scratch.0.join("cmake");
    run(Command::new("cmake")
        .arg("-S")
        .arg(repo_dir().join("examples/c"))
        .arg("-B")
        .arg(&with_cmake)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg("-DCMAKE_BUILD_TYPE=Release"));
    run(Command::new("cmake").arg("--build").arg(&with_cmake));

    for bin in [&with_pkg_config, &with_cmake] {
        // The shared programs load the tarball's library by its soname.
        let needed = run(Command::new("ldd")
            .env_remove("LD_LIBRARY_PATH")
            .arg(bin.join("client")));
        let soname = format!("libsnitun.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
        let loaded = needed
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("{soname} => ")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|path| Path::new(path).canonicalize().ok());
        assert_eq!(
            loaded,
            prefix.join("lib").join(&soname).canonicalize().ok(),
            "{} does not load the tarball's {soname}:\n{needed}",
            bin.join("client").display()
        );
        let needed = run(Command::new("ldd").arg(bin.join("client-static")));
        assert!(!needed.contains("libsnitun"), "{needed}");
        tunnel_through_the_c_programs(bin, "", echo_port, Runner::Direct);
        tunnel_through_the_c_programs(bin, "-static", echo_port, Runner::Direct);
    }
}

/// Compile tests/c/api_test.c against the header, linked to the shared
/// (`static_link` false) or the static library.
fn build_api_test(out: &Path, lib_dir: &Path, static_link: bool) -> PathBuf {
    let program = out.join(if static_link {
        "api_test-static"
    } else {
        "api_test"
    });
    let mut command = Command::new("cc");
    command
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .args(["-O1", "-g", "-I"])
        .arg(repo_dir().join("include"))
        .arg("-o")
        .arg(&program)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/api_test.c"));
    if static_link {
        // What the Rust static library needs from the system (as in
        // examples/c/Makefile).
        command.arg(lib_dir.join("libsnitun.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]);
    } else {
        command
            .arg(format!("-L{}", lib_dir.display()))
            .arg("-lsnitun")
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .args(["-lpthread", "-lm"]);
    }
    run(&mut command);
    program
}

/// Run the C API test program; it prints a line per failed check, phase
/// lines, and "API_TEST OK" when every check passed.
fn run_api_test(program: PathBuf, runner: Runner) {
    let mut test = Proc::start("api_test", &mut runner.command(program));
    for phase in ["errors", "refused", "connected", "echoed", "stopped"] {
        test.expect_line(&format!("PHASE {phase}"));
    }
    let last = test.expect_line("API_TEST ");
    let code = test.wait_exit();
    let failed: Vec<&String> = test
        .seen
        .iter()
        .filter(|line| line.starts_with("FAIL"))
        .collect();
    assert!(
        last == "API_TEST OK" && code == Some(0) && failed.is_empty(),
        "C API test failed (exit {code:?}): {last}\n{failed:#?}"
    );
}

/// The C API alone, from C: every error path, and a whole tunnel (server,
/// token, client, echo endpoint, caller) on loopback in one process.
#[test]
fn c_api_test_program() {
    let lib_dir = library_dir();
    let scratch = Scratch::new("c-api-test");
    let shared = build_api_test(&scratch.0, &lib_dir, false);
    let static_program = build_api_test(&scratch.0, &lib_dir, true);

    run_api_test(shared.clone(), Runner::Direct);
    run_api_test(static_program.clone(), Runner::Direct);
    if valgrind_wanted() {
        run_api_test(shared, Runner::Valgrind);
        run_api_test(static_program, Runner::Valgrind);
    }
}
