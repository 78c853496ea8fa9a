//! The signals that stop a long-running command.
//!
//! The handlers are installed by [`listen`], before the command prints that
//! it is ready: a SIGTERM sent right after the `listening`/`connected` line
//! must shut down gracefully, not kill the process with the default action
//! (seen in the CLI tests under load).

use tracing::{info, warn};

/// SIGINT (Ctrl-C) and SIGTERM, listened for since [`listen`].
pub struct Shutdown {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

/// Install the handlers now (needs the runtime).
pub fn listen() -> Shutdown {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(e) => {
                warn!("cannot listen for {name}: {e}");
                None
            }
        };
        Shutdown {
            interrupt: install(SignalKind::interrupt(), "SIGINT"),
            terminate: install(SignalKind::terminate(), "SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    Shutdown {}
}

impl Shutdown {
    /// Resolve on the next SIGINT or SIGTERM.
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
        #[cfg(not(unix))]
        {
            if let Err(e) = tokio::signal::ctrl_c().await {
                warn!("cannot listen for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
            info!("Ctrl-C received, shutting down");
        }
    }
}
