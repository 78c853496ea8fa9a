//! `snitun-bench`: snitun-rs side by side with the Python reference.
//!
//! `snitun-bench run` (the default) starts every topology at once (`direct`,
//! `ours`, `reference` and the two mixed pairs, each server and client in
//! its own process), then measures them in rounds: every round runs each
//! workload on every topology in turn, rotating the order, so drift of this
//! shared machine hits all variants alike. It prints a markdown table with
//! the ratios the performance targets are stated in, and writes it with
//! the raw figures (JSON) under `bench/results/`.
//!
//! `snitun-bench memory` connects N idle peers and M idle channels to one
//! of our servers and reports the resident memory each costs.

mod endpoint;
mod load;
mod memory;
mod procs;
mod relay;
mod report;
mod run;
mod stats;
mod wire;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

/// The error type of the tool: every failure is reported and ends it.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Shorthand.
pub type Res<T> = Result<T, Error>;

/// Side-by-side benchmark of snitun-rs and the Python reference snitun.
#[derive(Debug, Parser)]
#[command(name = "snitun-bench")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The side-by-side benchmark (the default).
    Run(run::RunArgs),
    /// Resident memory per idle peer and per idle channel on our server.
    Memory(memory::MemoryArgs),
    /// A plain TCP forwarder (the `relays` topology runs two).
    #[command(hide = true)]
    Relay(relay::RelayArgs),
}

/// Where the tool finds the programs it starts.
#[derive(Debug, Clone, Args)]
pub struct ProgramArgs {
    /// The `snitun` binary (default: build it with cargo and use
    /// target/release/snitun).
    #[arg(long, value_name = "PATH")]
    snitun_bin: Option<PathBuf>,
    /// A Python with the reference snitun 0.47.0 installed (default: the
    /// interop venv target/interop-venv, created if missing).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
}

/// The workspace root (the bench crate's parent).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory this tool was built into.
pub fn target_dir() -> PathBuf {
    // The binary is target/<profile>/snitun-bench.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| repo_root().join("target"))
}

impl ProgramArgs {
    /// The `snitun` binary, built in release mode unless given.
    pub fn snitun(&self) -> Res<PathBuf> {
        if let Some(path) = &self.snitun_bin {
            return Ok(path.clone());
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building the snitun CLI (cargo build --release -p snitun)");
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "-p", "snitun", "--bin", "snitun"])
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", target_dir())
            .status()?;
        if !status.success() {
            return Err("building the snitun CLI failed".into());
        }
        let path = target_dir().join("release").join("snitun");
        procs::existing(&path).ok_or_else(|| format!("{} not found", path.display()).into())
    }

    /// The reference's Python, with the venv made on first use.
    pub fn python(&self) -> Res<PathBuf> {
        if let Some(path) = &self.python {
            return Ok(path.clone());
        }
        ensure_venv()
    }
}

/// The interop suite's venv (same place and stamp as
/// snitun/tests/interop.rs, so the two share it).
fn ensure_venv() -> Res<PathBuf> {
    let venv = target_dir().join("interop-venv");
    let venv_python = venv.join("bin").join("python");
    let requirements = repo_root().join("interop").join("requirements.txt");
    let pinned = std::fs::read_to_string(&requirements)?;
    let stamp_file = venv.join("snitun-interop.stamp");
    if let Ok(stamp) = std::fs::read_to_string(&stamp_file)
        && stamp.ends_with(&pinned)
        && venv_python.exists()
    {
        return Ok(venv_python);
    }
    let base = std::process::Command::new("python")
        .env("PYENV_VERSION", "3.13.0")
        .args([
            "-c",
            "import sys; print(sys.version.split()[0]); print(sys.executable)",
        ])
        .output()?;
    let text = String::from_utf8(base.stdout)?;
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default().to_string();
    let exe = lines.next().unwrap_or_default().to_string();
    if !base.status.success() || !version.starts_with("3.1") || exe.is_empty() {
        return Err("no Python 3.13 found (PYENV_VERSION=3.13.0 python); pass --python".into());
    }
    eprintln!(
        "creating {} with Python {version} and the reference",
        venv.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    let ok = std::process::Command::new(&exe)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?
        .success()
        && std::process::Command::new(&venv_python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "-r",
            ])
            .arg(&requirements)
            .status()?
            .success();
    if !ok {
        return Err("installing the reference into the venv failed".into());
    }
    std::fs::write(&stamp_file, format!("python {version}\n{pinned}"))?;
    Ok(venv_python)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Run(args)) => run::run(args).await,
            Some(Command::Memory(args)) => memory::run(args).await,
            Some(Command::Relay(args)) => relay::run(args).await,
            None => run::run(cli.run).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
