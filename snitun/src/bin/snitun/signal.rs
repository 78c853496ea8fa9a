//! The signals that stop a long-running command.
//!
//! The handlers are installed by [`listen`], before the command prints that
//! it is ready: a SIGTERM sent right after the `listening`/`connected` line
//! must shut down gracefully, not kill the process with the default action
//! (seen in the CLI tests under load).

use tracing::{info, warn};

/// SIGINT (Ctrl-C) and SIGTERM, listened for since [`listen`]. Windows has
/// no SIGTERM: there the console's Ctrl-C, Ctrl-Break, close and shutdown
/// events stand for both.
pub struct Shutdown {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(windows)]
    ctrl_c: Option<tokio::signal::windows::CtrlC>,
    #[cfg(windows)]
    ctrl_break: Option<tokio::signal::windows::CtrlBreak>,
    #[cfg(windows)]
    ctrl_close: Option<tokio::signal::windows::CtrlClose>,
    #[cfg(windows)]
    ctrl_shutdown: Option<tokio::signal::windows::CtrlShutdown>,
}

/// A handler that could not be installed is logged, and never fires.
fn installed<T>(made: std::io::Result<T>, name: &str) -> Option<T> {
    match made {
        Ok(listener) => Some(listener),
        Err(e) => {
            warn!("cannot listen for {name}: {e}");
            None
        }
    }
}

/// Install the handlers now (needs the runtime).
pub fn listen() -> Shutdown {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        Shutdown {
            interrupt: installed(signal(SignalKind::interrupt()), "SIGINT"),
            terminate: installed(signal(SignalKind::terminate()), "SIGTERM"),
        }
    }
    // `tokio::signal::ctrl_c()` would only register its handler when first
    // polled, leaving the default action (end the process at once) for an
    // event that comes before: register every handler here, as on Unix.
    // Ctrl-Break and closing the console window end the process by default
    // too; a service host sends the shutdown event.
    #[cfg(windows)]
    {
        use tokio::signal::windows;
        Shutdown {
            ctrl_c: installed(windows::ctrl_c(), "Ctrl-C"),
            ctrl_break: installed(windows::ctrl_break(), "Ctrl-Break"),
            ctrl_close: installed(windows::ctrl_close(), "console close"),
            ctrl_shutdown: installed(windows::ctrl_shutdown(), "system shutdown"),
        }
    }
}

impl Shutdown {
    /// Resolve on the next SIGINT or SIGTERM (on Windows: console event).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.interrupt) => info!("SIGINT received, shutting down"),
                () = next(&mut self.terminate) => info!("SIGTERM received, shutting down"),
            }
        }
        #[cfg(windows)]
        {
            // Each event has its own listener type, with no common trait to
            // write `next` above against. A listener that could not be
            // installed never fires.
            macro_rules! next {
                ($event:expr) => {
                    async {
                        match $event {
                            Some(event) => {
                                event.recv().await;
                            }
                            None => std::future::pending().await,
                        }
                    }
                };
            }
            let Shutdown {
                ctrl_c,
                ctrl_break,
                ctrl_close,
                ctrl_shutdown,
            } = self;
            tokio::select! {
                () = next!(ctrl_c) => info!("Ctrl-C received, shutting down"),
                () = next!(ctrl_break) => info!("Ctrl-Break received, shutting down"),
                () = next!(ctrl_close) => info!("console closed, shutting down"),
                () = next!(ctrl_shutdown) => info!("system shutdown, shutting down"),
            }
        }
    }
}
