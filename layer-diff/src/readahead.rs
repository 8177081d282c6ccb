//! Read-ahead for the files a layer is about to read.
//!
//! The writer reads one file after another on one thread. When the files are
//! not in the page cache (a fresh checkout, a tree written a while ago) every
//! small file is a synchronous disk read, and the compressor threads wait for
//! them. A helper thread therefore walks a bounded distance ahead of the
//! writer and asks the kernel to start reading each file
//! (`posix_fadvise(WILLNEED)`), so the reads are in flight together. It only
//! hints: it never reads content itself, and the writer's own reads stay the
//! ones that count.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How many files the helper may be ahead of the writer.
const AHEAD_FILES: usize = 256;
/// How many bytes the helper may be ahead of the writer.
const AHEAD_BYTES: u64 = 32 << 20;

/// A helper thread hinting the files at and after the writer's position.
pub(crate) struct ReadAhead {
    /// Index (into the list given to [`ReadAhead::start`]) of the file the writer is at.
    at: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts hinting `files` (path and size, in the order they will be read).
    /// Returns `None` when there is nothing worth hinting.
    pub(crate) fn start(files: Vec<(PathBuf, u64)>) -> Option<ReadAhead> {
        if files.len() < 2 {
            return None;
        }
        let at = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (at2, stop2) = (Arc::clone(&at), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("layer-readahead".into())
            .spawn(move || hint_all(&files, &at2, &stop2))
            .ok()?;
        Some(ReadAhead { at, stop, thread: Some(thread) })
    }

    /// The writer has reached file `index`.
    pub(crate) fn advance(&self, index: usize) {
        self.at.store(index, Ordering::Relaxed);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn hint_all(files: &[(PathBuf, u64)], at: &AtomicUsize, stop: &AtomicBool) {
    // bytes[i]: total size of the files before i
    let mut before = Vec::with_capacity(files.len() + 1);
    let mut sum = 0u64;
    for (_, size) in files {
        before.push(sum);
        sum = sum.saturating_add(*size);
    }
    before.push(sum);
    for (i, (path, size)) in files.iter().enumerate() {
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let writer = at.load(Ordering::Relaxed);
            if i < writer {
                break; // the writer is past it already
            }
            let ahead_bytes =
                before.get(i).copied().unwrap_or(0).saturating_sub(before.get(writer).copied().unwrap_or(0));
            if i - writer <= AHEAD_FILES && ahead_bytes <= AHEAD_BYTES {
                hint(path, *size);
                break;
            }
            // the writer unparks on every file; the timeout only guards against a lost wake-up
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
}

/// Asks the kernel to start reading `path` into the page cache.
pub(crate) fn hint(path: &std::path::Path, size: u64) {
    use rustix::fs::{Advice, Mode, OFlags};
    if size == 0 {
        return;
    }
    // O_NOFOLLOW and O_NONBLOCK: never follow a swapped-in symlink, never wait on a FIFO
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if let Ok(fd) = rustix::fs::open(path, flags, Mode::empty()) {
        let _ = rustix::fs::fadvise(&fd, 0, std::num::NonZeroU64::new(size), Advice::WillNeed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The helper ends when dropped wherever it is: before starting, while
    /// waiting for the writer, and with paths that do not exist or are FIFOs.
    #[test]
    fn stops_when_dropped_and_tolerates_any_list() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 10_000]).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, d.path().join("fifo"), rustix::fs::FileType::Fifo, 0o600.into(), 0)
            .unwrap();
        let mut files = vec![(d.path().join("a"), 10_000), (d.path().join("fifo"), 1)];
        files.extend((0..10_000).map(|i| (d.path().join(format!("missing{i}")), 1 << 20)));
        let ahead = ReadAhead::start(files.clone()).unwrap();
        // it is now waiting for the writer, far ahead of it
        std::thread::sleep(Duration::from_millis(20));
        ahead.advance(5);
        drop(ahead);
        // a writer that runs past the end of the list
        let ahead = ReadAhead::start(files).unwrap();
        ahead.advance(usize::MAX);
        drop(ahead);
        assert!(ReadAhead::start(vec![(d.path().join("a"), 1)]).is_none());
    }
}
