//! One error type for the command line: a message, shown as one line.
//!
//! Library errors are kept as text with the step that failed in front
//! ("binding the server: I/O error: address in use"); the CLI prints it once
//! as `error: ...` and exits with code 1.

use std::fmt;

/// A failed command, already phrased for the user.
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure(message.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep the promise of one line even if a library message has several.
        let mut first = true;
        for line in self.0.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(line)?;
            first = false;
        }
        Ok(())
    }
}

/// Any error converts into a failure, its source chain appended.
impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Failure {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // thiserror's `#[error("...: {0}")]` already embeds the source.
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Failure(message)
    }
}

/// The result of a command.
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// Put the failed step in front of an error, anyhow-style.
pub trait Context<T> {
    /// Prefix the error with `what` ("connecting to the server: ...").
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Failure>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|error| Failure(format!("{what}: {}", error.into().0)))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Failure(what.to_string()))
    }
}

/// Return early with a formatted [`Failure`].
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::fail::Failure::new(format!($($arg)*)))
    };
}
pub(crate) use bail;
