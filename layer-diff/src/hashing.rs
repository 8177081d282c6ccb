//! sha256 of a byte stream, computed on a helper thread.
//!
//! A layer is hashed twice (the tar for its diff id, the compressed blob for
//! its digest). On the thread that also reads the files and feeds the
//! compressor, the two hashes were the largest share of its work (16% of all
//! samples of a zstd layer), and that thread, not the compressor's workers,
//! set the pace: the workers sat idle while it hashed. Here the bytes go
//! over a bounded channel to a thread of their own, in buffers that come
//! back to be reused, so memory stays at a fixed number of buffers.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use oci_image::{Digest, Hasher};

/// Size of the buffers handed to the hashing thread.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Buffers queued for the hashing thread at most.
const DEPTH: usize = 8;

/// A hashing thread and the buffers it hands back.
struct Helper {
    tx: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
    worker: JoinHandle<Hasher>,
    /// Small writes gathered into one buffer before it is sent.
    pending: Vec<u8>,
}

/// A sha256 of everything fed to it, in order, on a helper thread or (with
/// `threaded` false, or when no thread can be started) on the caller's.
pub(crate) struct OffloadHash {
    helper: Option<Helper>,
    inline: Hasher,
    size: u64,
}

fn stopped() -> io::Error {
    io::Error::other("the layer hashing thread stopped")
}

impl Helper {
    fn start() -> Option<Helper> {
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        let (back, spare) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let worker = std::thread::Builder::new()
            .name("layer-hash".into())
            .spawn(move || {
                let mut hasher = Hasher::sha256();
                for buf in rx {
                    hasher.update(&buf);
                    // handed back uncleared, so its bytes stay initialised for the
                    // next fill; dropped if the owner has stopped taking buffers back
                    let _ = back.try_send(buf);
                }
                hasher
            })
            .ok()?;
        Some(Helper { tx, spare, worker, pending: Vec::with_capacity(CHUNK) })
    }

    /// A buffer of at least `CHUNK` bytes' capacity, holding stale bytes.
    fn buffer(&self) -> Vec<u8> {
        match self.spare.try_recv() {
            Ok(buf) if buf.capacity() >= CHUNK => buf,
            _ => Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self, buf: Vec<u8>) -> io::Result<()> {
        self.tx.send(buf).map_err(|_| stopped())
    }

    fn send_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let mut next = self.buffer();
            next.clear();
            let full = std::mem::replace(&mut self.pending, next);
            self.send(full)?;
        }
        Ok(())
    }
}

impl OffloadHash {
    /// A hash on its own thread when `threaded`, else on the caller's.
    pub(crate) fn new(threaded: bool) -> OffloadHash {
        let helper = if threaded { Helper::start() } else { None };
        OffloadHash { helper, inline: Hasher::sha256(), size: 0 }
    }

    /// Feeds a copy of `bytes`.
    pub(crate) fn update(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.size += bytes.len() as u64;
        let Some(h) = &mut self.helper else {
            self.inline.update(bytes);
            return Ok(());
        };
        while !bytes.is_empty() {
            let room = CHUNK.saturating_sub(h.pending.len()).max(1);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            h.pending.extend_from_slice(now);
            bytes = rest;
            if h.pending.len() >= CHUNK {
                h.send_pending()?;
            }
        }
        Ok(())
    }

    /// Feeds `buf` without copying it and returns a buffer (of `CHUNK`
    /// bytes' capacity or more) to fill next. That buffer is handed back
    /// with the stale bytes it held, not cleared: a caller that overwrites
    /// them in place need not zero it first.
    pub(crate) fn update_owned(&mut self, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        self.size += buf.len() as u64;
        let Some(h) = &mut self.helper else {
            self.inline.update(&buf);
            return Ok(buf);
        };
        h.send_pending()?;
        let next = h.buffer();
        h.send(buf)?;
        Ok(next)
    }

    /// The digest and the number of bytes fed.
    pub(crate) fn finish(self) -> io::Result<(Digest, u64)> {
        let hasher = match self.helper {
            None => self.inline,
            Some(mut h) => {
                h.send_pending()?;
                let Helper { tx, worker, .. } = h;
                drop(tx);
                worker.join().map_err(|_| stopped())?
            }
        };
        Ok((hasher.finish(), self.size))
    }
}

/// A writer that hashes what it passes on to `inner`.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hash: OffloadHash,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W, threaded: bool) -> Self {
        HashingWriter { inner, hash: OffloadHash::new(threaded) }
    }

    /// The inner writer, the digest of what was written and its size.
    pub(crate) fn finish(self) -> io::Result<(W, Digest, u64)> {
        let (digest, size) = self.hash.finish()?;
        Ok((self.inner, digest, size))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(buf.get(..n).unwrap_or(buf))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(data: &[u8]) -> Digest {
        let mut h = Hasher::sha256();
        h.update(data);
        h.finish()
    }

    #[test]
    fn threaded_and_inline_agree_for_any_split() {
        let data: Vec<u8> = (0..3 * CHUNK + 1234).map(|i| u8::try_from(i * 7 % 251).unwrap()).collect();
        for threaded in [false, true] {
            // small copies, owned buffers and large copies, interleaved
            let mut h = OffloadHash::new(threaded);
            let (a, rest) = data.split_at(100);
            h.update(a).unwrap();
            let (b, rest) = rest.split_at(CHUNK + 5);
            let back = h.update_owned(b.to_vec()).unwrap();
            assert!(back.capacity() >= CHUNK);
            let (c, rest) = rest.split_at(2 * CHUNK);
            h.update(c).unwrap();
            h.update(rest).unwrap();
            h.update(&[]).unwrap();
            let (digest, size) = h.finish().unwrap();
            assert_eq!(size, data.len() as u64);
            assert_eq!(digest, expected(&data), "threaded {threaded}");
        }
        let (digest, size) = OffloadHash::new(true).finish().unwrap();
        assert_eq!((digest, size), (expected(b""), 0));
    }

    #[test]
    fn writer_hashes_only_what_the_inner_writer_took() {
        /// Takes at most 3 bytes per write.
        struct Slow(Vec<u8>);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashingWriter::new(Slow(Vec::new()), true);
        assert_eq!(w.write(b"abcdef").unwrap(), 3);
        w.write_all(b"ghij").unwrap();
        let (inner, digest, size) = w.finish().unwrap();
        assert_eq!(inner.0, b"abcghij");
        assert_eq!((digest, size), (expected(b"abcghij"), 7));
    }
}
