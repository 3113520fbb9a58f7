//! Measures the OpenPGP encryption and decryption throughput of one core, in memory, as the
//! benchmark's "encryption limit". Usage: `cargo run --release --example crypto_throughput [MiB]`.

use std::io::{BufReader, Read, Write};
use std::time::Instant;

use secrecy::SecretString;
use synapse_backup_core::crypto;

/// A reader of `len` pseudo-random bytes that costs almost nothing to produce.
struct Source {
    left: u64,
    state: u64,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts bytes and drops them.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let len = mib * 1024 * 1024;
    let passphrase = SecretString::from("benchmark passphrase".to_string());

    let started = Instant::now();
    let mut sink = Sink(0);
    crypto::encrypt(
        BufReader::with_capacity(
            1 << 20,
            Source {
                left: len,
                state: 1,
            },
        ),
        &mut sink,
        &passphrase,
        crypto::Packing::Plain,
    )?;
    let encrypt = started.elapsed().as_secs_f64();

    let mut message = Vec::with_capacity(len as usize + 4096);
    crypto::encrypt(
        Source {
            left: len.min(256 << 20),
            state: 1,
        },
        &mut message,
        &passphrase,
        crypto::Packing::Plain,
    )?;
    let started = Instant::now();
    let mut reader = crypto::decrypt(
        BufReader::with_capacity(1 << 20, &message[..]),
        &passphrase,
        "bench",
    )?;
    let decrypted = std::io::copy(&mut reader, &mut Sink(0))?;
    let decrypt = started.elapsed().as_secs_f64();

    let mb = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;
    println!("encrypt_mb_s={:.1}", mb(len, encrypt));
    println!("decrypt_mb_s={:.1}", mb(decrypted, decrypt));
    Ok(())
}
