//! Layer compression: parallel gzip, zstd and none, and decompression.
//!
//! The deflate codec of levels 0 and 4-9 is `flate2` on its `zlib-rs`
//! backend; levels 1-3 ([`FAST_LEVELS`]) are kiln's own encoder
//! (`fastdeflate`: a single-probe hash match finder, greedy at 1, lazy at
//! 2 and 3, dynamic Huffman codes per 128 KiB; 3-4x faster than zlib-rs
//! level 6 for 4-9% more bytes on a Debian root filesystem, and the same
//! bytes on every CPU). What is written here is the pigz-style framing
//! around the codec, which no crate offers with the two properties a layer
//! needs: the work spreads across threads, and the bytes are identical for
//! any thread count. The input is cut into fixed
//! 512 KiB blocks; each block is deflated on its own with the 32 KiB of input
//! before it as the preset dictionary and ends with a sync flush (the last
//! block with a final flush), so the blocks concatenate into one deflate
//! stream. The CRC-32 of every block is combined in order for the trailer.
//! Memory stays at a fixed number of blocks in flight.
//!
//! zstd uses libzstd's own multi-threaded mode, always with at least one
//! worker: then libzstd's output is the same for any worker count (its
//! single-threaded mode frames differently).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Crc, FlushCompress, Status};
use oci_image::Compression;

/// Size of one independently compressed gzip block.
///
/// 512 KiB rather than pigz's 128 KiB: every block re-hashes its 32 KiB
/// dictionary and sets up a fresh compressor, and at 512 KiB that costs 5%
/// fewer instructions in all (cachegrind, level 6 on a Debian root tar).
const BLOCK: usize = 512 * 1024;
/// Blocks in flight per deflate thread: queued, being deflated, or done and
/// waiting to be written in order. 4 rather than 2: the thread that reads
/// the files and feeds the workers shares the cores with them and with the
/// hashing threads, and a deeper queue keeps the workers busy while it
/// waits for a core (the bench's `COPY` build 2.2% faster for the same CPU,
/// medians of 21 alternating runs); memory grows by 2 blocks per thread.
const IN_FLIGHT: usize = 4;
/// Size of the preset dictionary taken from the preceding input.
const DICT: usize = 32 * 1024;
/// The gzip levels kiln's own fast deflate encoder makes
/// (the `fastdeflate` module); 0 and 4-9 are zlib-rs's.
pub const FAST_LEVELS: std::ops::RangeInclusive<u32> = 1..=3;
/// The engine that writes a layer compressed as `compression` at `level`
/// (`None`: the default), versioned: a name changes whenever the bytes it
/// writes for the same input may change, so that caches keyed by it never
/// hand out bytes another engine made.
pub fn compression_engine(compression: Compression, level: Option<i32>) -> &'static str {
    match compression {
        Compression::Gzip => {
            if FAST_LEVELS.contains(&gzip_level(level)) {
                "gzip:kiln-deflate/3"
            } else {
                "gzip:zlib-rs"
            }
        }
        Compression::Zstd => "zstd:libzstd",
        _ => "none",
    }
}

/// The gzip level a layer is written at for `level` (`None` or a
/// negative level: the default; above 9: 9).
fn gzip_level(level: Option<i32>) -> u32 {
    level.and_then(|l| u32::try_from(l).ok()).unwrap_or(DEFAULT_GZIP_LEVEL).min(9)
}

/// The gzip level when none is given: kiln's fast deflate at its greedy
/// level, about 4x faster than zlib-rs level 6 for 9% more bytes on a
/// Debian root filesystem (level 2: 3.6x for 6%; BENCHMARKS.md).
pub const DEFAULT_GZIP_LEVEL: u32 = 1;
/// Input per zstd worker job.
const ZSTD_JOB: u32 = 2 << 20;

/// Deflates `input[dict_len..]` as one block of a pigz-style stream, with
/// `input[..dict_len]` as its dictionary, with kiln's fast deflate at
/// [`FAST_LEVELS`], else zlib-rs. Returns the raw deflate bytes and the
/// block's CRC.
fn deflate_block(
    level: u32,
    input: &[u8],
    dict_len: usize,
    last: bool,
    scratch: &mut crate::fastdeflate::Scratch,
) -> io::Result<(Vec<u8>, Crc)> {
    let (dict, data) = input.split_at(dict_len.min(input.len()));
    #[cfg(test)]
    assert!(!data.starts_with(tests::PANIC_MARK), "injected: a block that panics");
    let deflated = if FAST_LEVELS.contains(&level) {
        crate::fastdeflate::deflate(level, input, dict_len, last, scratch)
    } else {
        zlib_block(level, dict, data, last)?
    };
    let mut crc = Crc::new();
    crc.update(data);
    Ok((deflated, crc))
}

/// [`deflate_block`]'s deflate bytes from zlib-rs. Every block gets a
/// fresh compressor: a reset one can carry state from the block it did
/// before (seen with zlib-rs), which would make the output depend on how
/// blocks were spread over the threads.
fn zlib_block(level: u32, dict: &[u8], data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut compress = Compress::new(flate2::Compression::new(level), false);
    let compress = &mut compress;
    if !dict.is_empty() {
        compress.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    let start = compress.total_in();
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = usize::try_from(compress.total_in() - start).unwrap_or(usize::MAX);
        let rest = data.get(consumed..).unwrap_or_default();
        let status = compress.compress_vec(rest, &mut out, flush).map_err(io::Error::other)?;
        let consumed = usize::try_from(compress.total_in() - start).unwrap_or(usize::MAX);
        let done =
            if last { status == Status::StreamEnd } else { consumed >= data.len() && out.len() < out.capacity() };
        if done {
            break;
        }
    }
    Ok(out)
}

/// A block to deflate: `input` is its dictionary (`dict_len` bytes) and
/// then its data, in one buffer so that no worker copies them together.
struct Job {
    seq: u64,
    input: Vec<u8>,
    dict_len: usize,
    last: bool,
}

type Done = (u64, io::Result<(Vec<u8>, Crc)>);

/// Worker threads that deflate blocks.
struct Pool {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize, level: u32) -> Pool {
        let (job_tx, job_rx) = sync_channel::<Job>(threads * IN_FLIGHT);
        let (done_tx, done_rx) = sync_channel::<Done>(threads * IN_FLIGHT);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    let mut scratch = crate::fastdeflate::Scratch::default();
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // a block that panics fails the stream: its result
                        // never coming would leave the writer waiting forever
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            deflate_block(level, &job.input, job.dict_len, job.last, &mut scratch)
                        }))
                        .unwrap_or_else(|_| {
                            scratch = crate::fastdeflate::Scratch::default();
                            Err(io::Error::other(format!("the gzip worker failed on block {}", job.seq)))
                        });
                        if done_tx.send((job.seq, result)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Pool { jobs: Some(job_tx), done: done_rx, workers }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // closing the job channel ends the workers; no I/O here
        self.jobs = None;
        while self.done.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            // a worker blocked on a full result channel exits once we drop `done`,
            // so drain until each one has finished
            while !w.is_finished() {
                while self.done.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = w.join();
        }
    }
}

/// A gzip encoder that compresses blocks in parallel with output identical
/// for any thread count (see the module docs).
pub struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    /// The next block's dictionary (`dict_len` bytes: the end of the block
    /// before), then its data as it is written.
    block: Vec<u8>,
    dict_len: usize,
    /// The caller's thread's deflate memory, when it compresses (one thread).
    scratch: crate::fastdeflate::Scratch,
    crc: Crc,
    header_written: bool,
    pool: Option<Pool>,
    next_seq: u64,
    next_out: u64,
    pending: BTreeMap<u64, (Vec<u8>, Crc)>,
    in_flight: usize,
    max_in_flight: usize,
}

impl<W: Write> ParallelGzip<W> {
    /// A gzip stream at `level` (0-9) on `threads` threads (0 or 1: on the caller's thread).
    pub fn new(out: W, level: u32, threads: usize) -> ParallelGzip<W> {
        let level = level.min(9);
        // one thread: compress on the caller's thread
        let pool = (threads > 1).then(|| Pool::new(threads, level));
        ParallelGzip {
            out,
            level,
            block: Vec::with_capacity(DICT + BLOCK),
            dict_len: 0,
            scratch: crate::fastdeflate::Scratch::default(),
            crc: Crc::new(),
            header_written: false,
            pool,
            next_seq: 0,
            next_out: 0,
            pending: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: threads * IN_FLIGHT,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            let xfl = match self.level {
                9 => 2,
                0 | 1 => 4,
                _ => 0,
            };
            // magic, deflate, no flags, mtime 0, xfl, OS unknown
            self.out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff])?;
            self.header_written = true;
        }
        Ok(())
    }

    fn emit(&mut self, deflated: &[u8], crc: &Crc) -> io::Result<()> {
        self.write_header()?;
        self.out.write_all(deflated)?;
        self.crc.combine(crc);
        Ok(())
    }

    /// Writes out finished blocks in order; with `wait`, blocks until at least one arrives.
    fn collect(&mut self, wait: bool) -> io::Result<()> {
        let Some(pool) = &self.pool else { return Ok(()) };
        let mut got = Vec::new();
        if wait {
            match pool.done.recv() {
                Ok(d) => got.push(d),
                Err(_) => return Err(io::Error::other("gzip worker stopped")),
            }
        }
        while let Ok(d) = pool.done.try_recv() {
            got.push(d);
        }
        for (seq, result) in got {
            self.in_flight -= 1;
            self.pending.insert(seq, result?);
        }
        while let Some((deflated, crc)) = self.pending.remove(&self.next_out) {
            self.emit(&deflated, &crc)?;
            self.next_out += 1;
        }
        Ok(())
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let input = std::mem::replace(&mut self.block, Vec::with_capacity(if last { 0 } else { DICT + BLOCK }));
        let dict_len = self.dict_len;
        // the next block's dictionary: the last 32 KiB of this one's data
        let tail = input.len().saturating_sub(DICT).max(dict_len);
        if !last {
            self.block.extend_from_slice(input.get(tail..).unwrap_or_default());
        }
        self.dict_len = self.block.len();
        if self.pool.is_none() {
            let (deflated, crc) = deflate_block(self.level, &input, dict_len, last, &mut self.scratch)?;
            return self.emit(&deflated, &crc);
        }
        while self.in_flight >= self.max_in_flight {
            self.collect(true)?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent =
            self.pool.as_ref().and_then(|p| p.jobs.as_ref()).map(|tx| tx.send(Job { seq, input, dict_len, last }));
        match sent {
            Some(Ok(())) => {
                self.in_flight += 1;
                self.collect(false)
            }
            _ => Err(io::Error::other("gzip worker stopped")),
        }
    }

    /// Ends the stream (final block and trailer) and returns the writer.
    ///
    /// # Errors
    /// The writer's I/O errors.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while self.in_flight > 0 {
            self.collect(true)?;
        }
        self.write_header()?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        self.out.write_all(&trailer)?;
        self.out.flush()?;
        let pool = self.pool.take();
        drop(pool);
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.dict_len + BLOCK - self.block.len();
        let n = room.min(buf.len());
        self.block.extend_from_slice(buf.get(..n).unwrap_or_default());
        if self.block.len() == self.dict_len + BLOCK {
            self.dispatch(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // blocks are cut at fixed offsets for reproducibility; nothing to force
        Ok(())
    }
}

/// The compressing end of a layer pipeline.
pub(crate) enum Compressor<W: Write> {
    None(W),
    Gzip(Box<ParallelGzip<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub(crate) fn new(w: W, compression: Compression, level: Option<i32>, threads: usize) -> io::Result<Self> {
        Ok(match compression {
            Compression::Gzip => Compressor::Gzip(Box::new(ParallelGzip::new(w, gzip_level(level), threads))),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(w, level.unwrap_or(3))?;
                enc.multithread(u32::try_from(threads.max(1)).unwrap_or(1))?;
                // a fixed job size (not derived from the worker count) keeps the output the
                // same for any count and bounds libzstd's buffers (the default, four windows,
                // needs over 100 MiB with two workers)
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                enc.include_checksum(false)?;
                enc.include_contentsize(false)?;
                Compressor::Zstd(enc)
            }
            _ => Compressor::None(w),
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => {
                let mut w = z.finish()?;
                w.flush()?;
                Ok(w)
            }
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.write_all(buf),
            Compressor::Gzip(g) => g.write_all(buf),
            Compressor::Zstd(z) => z.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}

/// Detects the compression of a blob from its first bytes.
pub fn detect(head: &[u8]) -> Compression {
    Compression::detect(head)
}

/// A reader that decompresses a layer blob (gzip, zstd or plain tar).
pub struct Decompressor<R: Read> {
    inner: DecompressorInner<R>,
}

enum DecompressorInner<R: Read> {
    None(BufReader<R>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<R>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
}

impl<R: Read> Decompressor<R> {
    /// Decompresses `r` as `compression`, or detects it from the magic bytes when `None`.
    ///
    /// # Errors
    /// I/O errors reading the first bytes or setting up zstd.
    pub fn new(r: R, compression: Option<Compression>) -> io::Result<Decompressor<R>> {
        let mut r = BufReader::with_capacity(128 * 1024, r);
        let compression = match compression {
            Some(c) => c,
            None => detect(r.fill_buf()?),
        };
        let inner = match compression {
            Compression::Gzip => DecompressorInner::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(r))),
            Compression::Zstd => DecompressorInner::Zstd(Box::new(zstd::stream::read::Decoder::with_buffer(r)?)),
            _ => DecompressorInner::None(r),
        };
        Ok(Decompressor { inner })
    }
}

impl<R: Read> Read for Decompressor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            DecompressorInner::None(r) => r.read(buf),
            DecompressorInner::Gzip(r) => r.read(buf),
            DecompressorInner::Zstd(r) => r.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        let mut x: u32 = 1;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 3 == 0 { x.to_le_bytes()[2] } else { b"abcdefgh"[i % 8] }
            })
            .collect()
    }

    fn gz(input: &[u8], threads: usize) -> Vec<u8> {
        gz_at(input, 6, threads)
    }

    /// A block whose data starts with this panics in [`deflate_block`].
    pub(super) const PANIC_MARK: &[u8] = b"kiln test: this block panics";

    #[test]
    fn a_worker_that_panics_fails_the_stream_instead_of_hanging_it() {
        for level in [1, 6] {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut input = data(BLOCK);
                input.extend_from_slice(PANIC_MARK);
                input.extend(data(3 * BLOCK));
                let mut g = ParallelGzip::new(Vec::new(), level, 2);
                let written = g.write_all(&input).and_then(|()| g.finish().map(drop));
                let _ = tx.send(written.map_err(|e| e.to_string()));
            });
            let written = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the stream hung");
            let err = written.expect_err("a block that could not be deflated still made a stream");
            assert!(err.contains("gzip"), "{err}");
        }
    }

    fn gz_at(input: &[u8], level: u32, threads: usize) -> Vec<u8> {
        let mut g = ParallelGzip::new(Vec::new(), level, threads);
        for chunk in input.chunks(10_000) {
            g.write_all(chunk).unwrap();
        }
        g.finish().unwrap()
    }

    #[test]
    fn gzip_is_identical_for_any_thread_count_and_decodes() {
        for size in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 77] {
            let input = data(size);
            let one = gz(&input, 1);
            for t in [2, 3, 8] {
                assert_eq!(one, gz(&input, t), "size {size} threads {t}");
            }
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, input, "size {size}");
        }
    }

    #[test]
    fn every_level_is_identical_for_1_2_and_8_threads_and_decodes_as_one_member() {
        let mut input = data(3 * BLOCK + 12_345);
        for f in ["/usr/bin/tar", "/etc/services"] {
            input.extend(std::fs::read(f).unwrap_or_default());
        }
        for level in 0..=9 {
            let one = gz_at(&input, level, 1);
            assert_eq!(one, gz_at(&input, level, 2), "level {level}");
            assert_eq!(one, gz_at(&input, level, 8), "level {level}");
            // a single-member reader sees all of it
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
            assert!(back == input, "level {level}");
        }
    }

    #[test]
    fn gzip_is_identical_on_real_data() {
        // binaries and text: long matches across block boundaries
        let mut input = Vec::new();
        for f in ["/usr/bin/tar", "/usr/bin/gzip", "/etc/services", "/usr/bin/ls", "/usr/bin/cp"] {
            input.extend(std::fs::read(f).unwrap_or_default());
        }
        input.extend_from_within(..);
        let one = gz(&input, 1);
        assert_eq!(one, gz(&input, 2));
        assert_eq!(one, gz(&input, 3));
    }

    #[test]
    fn zstd_is_identical_for_any_worker_count() {
        let input = data(3 * 1024 * 1024);
        let z = |t| {
            let mut c = Compressor::new(Vec::new(), Compression::Zstd, Some(3), t).unwrap();
            c.write_all(&input).unwrap();
            c.finish().unwrap()
        };
        let one = z(1);
        assert_eq!(one, z(2));
        assert_eq!(one, z(4));
        let mut back = Vec::new();
        Decompressor::new(&one[..], None).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn detect_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"file"), Compression::None);
    }
}
