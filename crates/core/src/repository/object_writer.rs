//! Writing one stored object: a plaintext writer on one blocking thread, OpenPGP encryption on
//! a second, the store's upload on the async side, joined by bounded buffers (`pipe`). If any
//! stage fails the upload is aborted, so a half-written object never becomes visible. The one
//! place an object is written this way: a backup's volumes, runs and base, and WAL files.

use std::io::Write;

use futures::StreamExt;
use secrecy::SecretString;
use tokio::sync::mpsc;

use crate::crypto::{self, Packing};
use crate::error::{Error, Result};
use crate::progress::Cancel;
use crate::store::ByteStream;

use super::pipe::{chunk_pipe, ChannelWriter, ChunkWriter, QUEUE_DEPTH};
use super::OpContext;

/// Runs `write` through the pipeline into an upload of `name`, compressed or not as `packing`
/// says; what `write` returned and the object's size.
pub(crate) async fn write_object<T: Send + 'static>(
    ctx: &OpContext<'_>,
    name: &str,
    expected_bytes: u64,
    packing: Packing,
    write: impl FnOnce(ChunkWriter, &Cancel) -> Result<T> + Send + 'static,
) -> Result<(T, u64)> {
    let (sender, mut receiver) = mpsc::channel::<std::io::Result<bytes::Bytes>>(QUEUE_DEPTH);
    let body: ByteStream = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed();
    let pipeline = {
        let passphrase = ctx.passphrase()?.clone();
        let cancel = ctx.cancel.clone();
        tokio::task::spawn_blocking(move || {
            run_pipeline(write, passphrase, packing, sender, cancel)
        })
    };
    // Tar and OpenPGP add a little; the hint only sizes multipart parts.
    let size_hint = expected_bytes + expected_bytes / 50 + (1 << 20);
    let uploaded = ctx.store.put(name, body, Some(size_hint)).await;
    let archived = pipeline
        .await
        .map_err(|e| Error::task_failed("backup", e))?;
    if ctx.cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    // The root cause: a store failure stops the pipeline, and a pipeline failure makes the
    // upload fail; each side's error names the other one only as a symptom.
    match (archived, uploaded) {
        (Ok(archived), Ok(object_bytes)) => Ok((archived, object_bytes)),
        (Err(PipelineError::Failed(e)), _) => Err(e),
        (Err(PipelineError::UploadStopped), Err(e)) | (Ok(_), Err(e)) => Err(e),
        (Err(PipelineError::UploadStopped), Ok(_)) => Err(Error::Other(format!(
            "the upload of {name} ended before the whole object was written"
        ))),
    }
}

/// How the pipeline ended when it did not complete.
enum PipelineError {
    /// The uploader stopped taking data: its own error is the cause.
    UploadStopped,
    /// The pipeline failed by itself (a file, pg_dump, encryption, Ctrl-C).
    Failed(Error),
}

/// Runs `write` (which writes a plaintext archive) on one thread and encrypts what it writes
/// into `sender` on this one.
fn run_pipeline<T: Send + 'static>(
    write: impl FnOnce(ChunkWriter, &Cancel) -> Result<T> + Send + 'static,
    passphrase: SecretString,
    packing: Packing,
    sender: mpsc::Sender<std::io::Result<bytes::Bytes>>,
    cancel: Cancel,
) -> Result<T, PipelineError> {
    let (pipe_writer, pipe_reader) = chunk_pipe(QUEUE_DEPTH);
    let tar_thread = {
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || write(pipe_writer, &cancel))
            .map_err(|e| {
                PipelineError::Failed(Error::Other(format!(
                    "cannot start the archive thread: {e}"
                )))
            })?
    };
    let mut out = ChannelWriter::new(sender, cancel);
    let encrypted = crypto::encrypt(pipe_reader, &mut out, &passphrase, packing);
    let archived = tar_thread
        .join()
        .map_err(|_| PipelineError::Failed(Error::task_failed("archive", "it panicked")))?;
    let failed = match (archived, encrypted) {
        (Ok(archived), Ok(())) => match out.flush() {
            Ok(()) => return Ok(archived),
            Err(_) if out.consumer_gone() => return Err(PipelineError::UploadStopped),
            Err(e) => Error::Other(format!("the upload stopped: {e}")),
        },
        (Err(e), _) | (Ok(_), Err(e)) => e,
    };
    if out.consumer_gone() {
        return Err(PipelineError::UploadStopped);
    }
    // Makes the upload abort instead of completing a half backup.
    out.fail(std::io::Error::other(failed.to_string()));
    Err(PipelineError::Failed(failed))
}
