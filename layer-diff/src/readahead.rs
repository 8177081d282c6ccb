//! Read-ahead for the files a layer is about to read.
//!
//! The writer reads one file after another on one thread. When the files are
//! not in the page cache (a fresh checkout, a tree written a while ago) every
//! small file is a synchronous disk read, and the compressor threads wait for
//! them. A helper thread therefore works a bounded number of files ahead of
//! the writer: it opens each one, asks the kernel to start reading it
//! (`posix_fadvise(WILLNEED)`), so the reads are in flight together, and
//! hands the open file to the writer, which takes it only when it is the
//! file it is about to read. It never reads content itself.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};

/// How many opened files the helper may hold ahead of the writer.
const AHEAD_FILES: usize = 128;
/// How much of each file is hinted; the kernel's own read-ahead follows
/// the writer's sequential reads through the rest.
const HINT_BYTES: u64 = 8 << 20;

/// One file opened and hinted ahead: its index in the list and its path.
type Opened = (usize, PathBuf, File);

/// A helper thread that opens and hints the files at and after the writer's
/// position, and hands the writer the open files: the path lookups leave
/// the writer's thread too.
///
/// Dropping it never waits for the helper, which may be waiting for the
/// next file of a list still being made: the helper stops on its own
/// before its next file.
pub(crate) struct ReadAhead {
    rx: Receiver<Opened>,
    /// A file received for a later position than the writer asked for.
    early: Option<Opened>,
    stop: Arc<AtomicBool>,
}

impl ReadAhead {
    /// Starts on `files` (path and size, in the order they will be read; a
    /// channel's receiver when the list is still being made). `None` when
    /// no thread can be started.
    pub(crate) fn start<I>(files: I) -> Option<ReadAhead>
    where
        I: IntoIterator<Item = (PathBuf, u64)> + Send + 'static,
        I::IntoIter: Send,
    {
        // the channel's bound is how far ahead the helper may get
        let (tx, rx) = sync_channel::<Opened>(AHEAD_FILES);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("layer-readahead".into())
            .spawn(move || {
                for (i, (path, size)) in files.into_iter().enumerate() {
                    if stopped.load(Ordering::Relaxed) {
                        return; // the writer is done
                    }
                    if let Some(file) = open_and_hint(&path, size)
                        && tx.send((i, path, file)).is_err()
                    {
                        return;
                    }
                }
            })
            .ok()?;
        Some(ReadAhead { rx, early: None, stop })
    }

    /// The file at `index` of the list, if the helper has it open already
    /// and it is `path`; `None` tells the writer to open it itself. Never waits.
    pub(crate) fn take(&mut self, index: usize, path: &Path) -> Option<File> {
        loop {
            let (i, p, file) = match self.early.take() {
                Some(opened) => opened,
                None => match self.rx.try_recv() {
                    Ok(opened) => opened,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
                },
            };
            if i < index {
                continue; // the writer opened that one itself
            }
            if i > index {
                self.early = Some((i, p, file));
                return None;
            }
            return (p == path).then_some(file);
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // the flag stops the helper before its next file, and the channel
        // (closed once `rx` goes) stops it from waiting with one in hand
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Opens `path` (never following a final symlink, never waiting on a FIFO)
/// and asks the kernel to start reading its first [`HINT_BYTES`].
fn open_and_hint(path: &Path, size: u64) -> Option<File> {
    use rustix::fs::{Advice, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty()).ok()?;
    // only a regular file is handed over: anything else the writer opens and judges itself
    if !rustix::fs::fstat(&fd).is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file()) {
        return None;
    }
    // regular files ignore O_NONBLOCK, but the writer gets a plain descriptor
    let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
    let _ = rustix::fs::fadvise(&fd, 0, std::num::NonZeroU64::new(size.min(HINT_BYTES)), Advice::WillNeed);
    Some(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The writer gets the helper's open files when they match, opens its
    /// own otherwise, never waits, and the helper ends when dropped.
    #[test]
    fn hands_over_matching_files_and_stops_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..4 {
            std::fs::write(d.path().join(format!("f{i}")), format!("content {i}")).unwrap();
        }
        rustix::fs::mknodat(rustix::fs::CWD, d.path().join("fifo"), rustix::fs::FileType::Fifo, 0o600.into(), 0)
            .unwrap();
        let mut files: Vec<(PathBuf, u64)> = (0..4).map(|i| (d.path().join(format!("f{i}")), 9)).collect();
        files.insert(2, (d.path().join("fifo"), 1));
        files.extend((0..1000).map(|i| (d.path().join(format!("missing{i}")), 1 << 20)));
        let mut ahead = ReadAhead::start(files.clone()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut f0 = ahead.take(0, &d.path().join("f0")).expect("opened ahead");
        let mut text = String::new();
        f0.read_to_string(&mut text).unwrap();
        assert_eq!(text, "content 0");
        // a path that does not match the list is not handed over
        assert!(ahead.take(1, &d.path().join("other")).is_none());
        // a FIFO is never opened for the writer
        assert!(ahead.take(2, &d.path().join("fifo")).is_none());
        let mut f3 = ahead.take(4, &d.path().join("f3")).expect("opened ahead");
        text.clear();
        f3.read_to_string(&mut text).unwrap();
        assert_eq!(text, "content 3");
        drop(ahead);
        // a list still being made: files arrive as they are found
        let (tx, rx) = std::sync::mpsc::channel();
        let mut ahead = ReadAhead::start(rx).unwrap();
        tx.send((d.path().join("f1"), 9)).unwrap();
        let mut got = None;
        for _ in 0..500 {
            got = ahead.take(0, &d.path().join("f1"));
            if got.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        text.clear();
        got.expect("opened ahead").read_to_string(&mut text).unwrap();
        assert_eq!(text, "content 1");
        // dropped while the helper waits for the list to go on: the drop
        // does not wait, and the helper ends (dropping the list's receiver)
        drop(ahead);
        assert!(helper_ends(&tx, &d.path().join("f2")));
        // dropped while the helper waits on a full channel
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 * AHEAD_FILES {
            tx.send((d.path().join("f1"), 9)).unwrap();
        }
        let ahead = ReadAhead::start(rx).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(ahead);
        assert!(helper_ends(&tx, &d.path().join("f1")));
    }

    /// Whether the helper reading `tx`'s list stops taking files within 10 s.
    fn helper_ends(tx: &std::sync::mpsc::Sender<(PathBuf, u64)>, file: &Path) -> bool {
        for _ in 0..1000 {
            if tx.send((file.to_owned(), 9)).is_err() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }
}
