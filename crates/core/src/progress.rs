//! How long-running operations report progress and learn that the user wants them to stop.
//!
//! The library knows nothing of terminals: the CLI implements [`Progress`] with progress bars,
//! and sets the [`Cancel`] flag from its signal handler.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::find_cause;

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

    /// Resolves once cancelled, for racing an async wait against Ctrl-C.
    pub async fn cancelled(&self) {
        while !self.is_cancelled() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
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
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cancelled by the user")]
pub struct Cancelled;

/// True when `err` (or what it wraps) is a [`Cancelled`] marker.
pub fn is_cancelled_error(err: &io::Error) -> bool {
    find_cause::<Cancelled>(err).is_some()
}
