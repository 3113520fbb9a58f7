//! Bridges between blocking readers/writers and the async store streams, with bounded buffers so
//! memory stays flat whatever the backup size.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::archive::ArchiveWriter;
use crate::error::{Error, Result};
use crate::progress::Cancel;
use crate::store::ByteStream;

/// Size of each chunk handed to the uploader.
pub const CHUNK: usize = 1 << 20;
/// Chunks queued between the encryption thread and the uploader.
pub const QUEUE_DEPTH: usize = 4;

/// A `Write` that sends its bytes, in chunks, to an async consumer.
pub struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
    cancel: Cancel,
}

impl ChannelWriter {
    pub fn new(sender: mpsc::Sender<io::Result<Bytes>>, cancel: Cancel) -> Self {
        ChannelWriter {
            sender,
            buffer: BytesMut::with_capacity(CHUNK),
            cancel,
        }
    }

    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.cancel.check()?;
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Whether the consumer (the upload) has stopped taking data.
    pub fn consumer_gone(&self) -> bool {
        self.sender.is_closed()
    }

    /// Makes the consumer fail instead of completing: used when an earlier stage failed.
    pub fn fail(self, error: io::Error) {
        let _ = self.sender.blocking_send(Err(error));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = room.min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= CHUNK {
            let chunk = self.buffer.split().freeze();
            self.buffer.reserve(CHUNK);
            self.send(chunk)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let chunk = self.buffer.split().freeze();
            self.send(chunk)?;
        }
        Ok(())
    }
}

/// A blocking, buffered reader over an object's byte stream. Must be used off the async
/// runtime (inside `spawn_blocking`).
pub struct ObjectReader {
    inner: io::BufReader<SyncIoBridge<StreamReader<ByteStream, Bytes>>>,
    cancel: Cancel,
}

impl ObjectReader {
    pub fn new(stream: ByteStream, handle: tokio::runtime::Handle, cancel: Cancel) -> Self {
        let bridge = SyncIoBridge::new_with_handle(StreamReader::new(stream), handle);
        ObjectReader {
            inner: io::BufReader::with_capacity(CHUNK, bridge),
            cancel,
        }
    }
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectReader")
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.read(buf)
    }
}

impl BufRead for ObjectReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.cancel.check()?;
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount)
    }
}

enum Piece {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Creates an in-process pipe of `depth` chunks of [`CHUNK`] bytes between two threads.
///
/// Unlike an OS pipe it moves whole 1 MiB buffers without system calls, and it tells a clean end
/// from a writer that died: only [`ChunkWriter::finish`] produces end-of-file; a writer dropped
/// without it makes the reader fail, so a failed stage can never look like a complete stream.
pub fn chunk_pipe(depth: usize) -> (ChunkWriter, ChunkReader) {
    let (sender, receiver) = std_mpsc::sync_channel(depth);
    (
        ChunkWriter {
            sender,
            buffer: Vec::with_capacity(CHUNK),
        },
        ChunkReader {
            receiver,
            current: Vec::new(),
            position: 0,
            ended: false,
            failed: None,
        },
    )
}

pub struct ChunkWriter {
    sender: std_mpsc::SyncSender<Piece>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.sender
            .send(Piece::Data(full))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the encryption stage stopped"))
    }

    /// Sends what is buffered and marks a clean end of the stream.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.send_buffer()?;
        }
        self.sender
            .send(Piece::End)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the encryption stage stopped"))
    }
}

/// Ends a tar written into the pipe: the tar's end, the buffer, then a clean end of the stream.
pub fn finish_archive(archive: ArchiveWriter<io::BufWriter<ChunkWriter>>) -> Result<()> {
    let failed = |e: io::Error| Error::Other(format!("cannot write the archive: {e}"));
    let mut out = archive.finish()?;
    out.flush().map_err(failed)?;
    out.into_inner()
        .map_err(|e| failed(e.into_error()))?
        .finish()
        .map_err(failed)
}

impl ChunkWriter {
    /// Makes the reader fail with `error` (after the data already sent).
    pub fn fail(mut self, error: io::Error) {
        if !self.buffer.is_empty() {
            let _ = self.send_buffer();
        }
        let _ = self.sender.send(Piece::Failed(error));
    }
}

/// Reads `source` to its end on a thread of its own, handing its bytes over in 1 MiB chunks:
/// decryption then runs on one core while the caller unpacks on another. An error of `source`
/// reaches the returned reader with its kind and typed cause, after the bytes read before it.
pub fn read_ahead<R: Read + Send + 'static>(
    mut source: R,
    depth: usize,
) -> io::Result<ChunkReader> {
    let (mut writer, reader) = chunk_pipe(depth);
    std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(move || match io::copy(&mut source, &mut writer) {
            Ok(_) => {
                let _ = writer.finish();
            }
            Err(e) => writer.fail(e),
        })?;
    Ok(reader)
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (CHUNK - self.buffer.len()).min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= CHUNK {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct ChunkReader {
    receiver: std_mpsc::Receiver<Piece>,
    current: Vec<u8>,
    position: usize,
    ended: bool,
    failed: Option<Arc<io::Error>>,
}

/// The error a [`ChunkReader`] returns on every read after its writer failed, with the
/// original (and so its typed cause) as its source.
#[derive(Debug)]
struct Failed(Arc<io::Error>);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(error) = &self.failed {
            return Err(io::Error::new(error.kind(), Failed(Arc::clone(error))));
        }
        while self.position >= self.current.len() && !self.ended {
            match self.receiver.recv() {
                Ok(Piece::Data(data)) => {
                    self.current = data;
                    self.position = 0;
                }
                Ok(Piece::End) => self.ended = true,
                Ok(Piece::Failed(error)) => {
                    self.ended = true;
                    let kind = error.kind();
                    let error = Arc::new(error);
                    self.failed = Some(Arc::clone(&error));
                    return Err(io::Error::new(kind, Failed(error)));
                }
                Err(_) => {
                    return Err(io::Error::other(
                        "the archive stage stopped before the end of the stream",
                    ))
                }
            }
        }
        Ok(&self.current[self.position..])
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.current.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_pipe_ends_cleanly() {
        let (mut writer, mut reader) = chunk_pipe(2);
        let producer = std::thread::spawn(move || {
            for i in 0..3000u32 {
                writer.write_all(&i.to_le_bytes().repeat(300)).unwrap();
            }
            writer.finish().unwrap();
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        producer.join().unwrap();
        assert_eq!(all.len(), 3000 * 4 * 300);
    }

    #[test]
    fn read_ahead_passes_errors_through() {
        let failing = std::io::Cursor::new(vec![1u8; 10]).chain(Failing);
        let mut reader = read_ahead(failing, 2).unwrap();
        let mut all = Vec::new();
        let err = reader.read_to_end(&mut all).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn a_typed_cause_survives_the_pipe_on_every_read() {
        let cancelled = std::io::Cursor::new(vec![1u8; 10]).chain(CancelledRead);
        let mut reader = read_ahead(cancelled, 2).unwrap();
        let mut all = Vec::new();
        let first = reader.read_to_end(&mut all).unwrap_err();
        assert!(crate::progress::is_cancelled_error(&first), "{first}");
        let again = reader.read(&mut [0u8; 4]).unwrap_err();
        assert!(crate::progress::is_cancelled_error(&again), "{again}");
    }

    struct CancelledRead;

    impl Read for CancelledRead {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other(crate::progress::Cancelled))
        }
    }

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut"))
        }
    }

    #[test]
    fn a_dropped_writer_is_an_error_not_an_end() {
        let (mut writer, mut reader) = chunk_pipe(2);
        writer.write_all(b"partial").unwrap();
        drop(writer);
        let mut all = Vec::new();
        assert!(reader.read_to_end(&mut all).is_err());
    }
}
