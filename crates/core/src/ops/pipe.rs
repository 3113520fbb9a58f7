//! Bridges between blocking readers/writers and the async store streams, with bounded buffers so
//! memory stays flat whatever the backup size.

use std::io::{self, BufRead, Read, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::progress::Cancel;
use crate::store::ByteStream;

/// Size of each chunk handed to the uploader.
pub const CHUNK: usize = 1 << 20;
/// Chunks queued between the encryption thread and the uploader.
pub const QUEUE_DEPTH: usize = 8;

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
