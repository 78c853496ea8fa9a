//! The `snitun` command line: `server`, `client`, `token`, `keygen` and
//! `demo`.
//!
//! Results go to stdout; logs (`RUST_LOG`, default `info`, `warn` for the
//! demo) go to stderr. A failure is one `error: ...` line on stderr and exit
//! code 1; a usage error exits with code 2.

mod cli;
mod client;
mod demo;
mod fail;
mod https;
mod server;
mod signal;
mod tls;
mod token;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::fail::{Context, Result};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    init_logging(&cli.command);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Keygen => {
            token::keygen();
            Ok(())
        }
        Command::Token(args) => token::token(&args),
        Command::Server(args) => {
            let runtime = runtime(args.workers.map(usize::from))?;
            runtime.block_on(server::run(args))
        }
        Command::Client(args) => runtime(None)?.block_on(client::run(args)),
        Command::Demo(args) => runtime(None)?.block_on(demo::run(args)),
    }
}

/// A multi-threaded tokio runtime, built by hand so `--workers` can size it.
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("snitun-worker");
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder.build().context("starting the runtime")
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `info`; the demo shows
/// only warnings of its parts so its report stays readable).
fn init_logging(command: &Command) {
    let default = match command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
}

/// Print a clap error: help and version as clap formats them (exit 0), any
/// other error as one `error: ...` line (exit 2).
fn usage_error(error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = error.render().to_string();
    // Drop clap's usage block and "For more information" hint, then fold the
    // rest (e.g. a list of missing arguments) onto one line.
    let message: Vec<&str> = rendered
        .split("\n\n")
        .filter(|part| {
            let part = part.trim_start();
            !part.starts_with("Usage:") && !part.starts_with("For more information")
        })
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let mut line = message.join(" ");
    if !line.starts_with("error:") {
        line = format!("error: {line}");
    }
    eprintln!("{line} (see --help)");
    ExitCode::from(2)
}
