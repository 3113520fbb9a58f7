//! How long-running operations report progress and learn that the user wants them to stop.
//!
//! The library knows nothing of terminals: the CLI implements [`Progress`] with progress bars,
//! and sets the [`Cancel`] flag from its signal handler.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub trait Progress: Send + Sync {
    /// A new phase starts; `total` is the expected number of bytes when known.
    fn start(&self, _phase: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Progress that reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Set once when the user asks to stop (Ctrl-C, SIGTERM); checked between chunks.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The I/O error a reader returns once cancelled. Not `ErrorKind::Interrupted`: `io::copy`
    /// retries those.
    pub fn check(&self) -> io::Result<()> {
        if self.is_cancelled() {
            Err(io::Error::other(Cancelled))
        } else {
            Ok(())
        }
    }
}

/// Marker inside an `io::Error` that says the operation was cancelled.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled by the user")
    }
}

impl std::error::Error for Cancelled {}

/// True when `err` (or what it wraps) is a [`Cancelled`] marker.
pub fn is_cancelled_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<Cancelled>() || inner.to_string() == Cancelled.to_string())
}
