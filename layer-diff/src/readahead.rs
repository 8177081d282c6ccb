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

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// How many opened files the helper may hold ahead of the writer.
const AHEAD_FILES: usize = 128;
/// A helper waiting for room is woken only once the writer has taken the
/// queue down to this many files: one wake-up per batch of files rather
/// than per file. Each wake-up lands on a core a compressor is using.
const REFILL_AT: usize = AHEAD_FILES / 2;
/// How much of each file is hinted; the kernel's own read-ahead follows
/// the writer's sequential reads through the rest.
const HINT_BYTES: u64 = 8 << 20;

/// One file opened and hinted ahead: its index in the list and its path.
type Opened = (usize, PathBuf, File);

/// The files opened ahead, shared by the helper and the writer.
#[derive(Default)]
struct Queue {
    opened: VecDeque<Opened>,
    /// The helper waits for room.
    waiting: bool,
    /// The writer is gone: the helper stops.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The helper: queues `opened`, first waiting for room; `false` once
    /// the writer is gone.
    fn push(&self, opened: Opened) -> bool {
        let mut q = self.lock();
        while q.opened.len() >= AHEAD_FILES && !q.closed {
            q.waiting = true;
            q = self.room.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        if q.closed {
            return false;
        }
        q.opened.push_back(opened);
        true
    }
}

/// A helper thread that opens and hints the files at and after the writer's
/// position, and hands the writer the open files: the path lookups leave
/// the writer's thread too.
///
/// Dropping it never waits for the helper, which may be waiting for the
/// next file of a list still being made: the helper stops on its own
/// before its next file.
pub(crate) struct ReadAhead {
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared::default());
        let helper = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("layer-readahead".into())
            .spawn(move || {
                for (i, (path, size)) in files.into_iter().enumerate() {
                    if helper.lock().closed {
                        return; // the writer is done
                    }
                    if let Some(file) = open_and_hint(&path, size)
                        && !helper.push((i, path, file))
                    {
                        return;
                    }
                }
            })
            .ok()?;
        Some(ReadAhead { shared })
    }

    /// The file at `index` of the list, if the helper has it open already
    /// and it is `path`; `None` tells the writer to open it itself. Never waits.
    pub(crate) fn take(&mut self, index: usize, path: &Path) -> Option<File> {
        let mut q = self.shared.lock();
        // files before `index` the writer opened itself; closed once the lock is let go
        let mut passed = Vec::new();
        let mut found = None;
        while let Some((i, _, _)) = q.opened.front() {
            if *i > index {
                break; // the helper is ahead: this one is for later
            }
            let Some((i, p, file)) = q.opened.pop_front() else { break };
            if i < index {
                passed.push(file);
            } else {
                found = (p == path).then_some(file);
                break;
            }
        }
        if q.waiting && q.opened.len() <= REFILL_AT {
            q.waiting = false;
            self.shared.room.notify_one();
        }
        drop(q);
        drop(passed);
        found
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // the flag stops the helper before its next file, and wakes it if
        // it waits for room with one in hand
        self.shared.lock().closed = true;
        self.shared.room.notify_all();
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
        // dropped while the helper waits for room
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 * AHEAD_FILES {
            tx.send((d.path().join("f1"), 9)).unwrap();
        }
        let ahead = ReadAhead::start(rx).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(ahead);
        assert!(helper_ends(&tx, &d.path().join("f1")));
    }

    /// A list longer than the helper may hold: the helper, waiting for
    /// room, is woken as the writer takes files, so every file is handed
    /// over in turn.
    #[test]
    fn refills_as_the_writer_takes() {
        let d = tempfile::tempdir().unwrap();
        let n = 3 * AHEAD_FILES + 7;
        let files: Vec<(PathBuf, u64)> = (0..n)
            .map(|i| {
                let path = d.path().join(format!("f{i}"));
                std::fs::write(&path, i.to_string()).unwrap();
                (path, 4)
            })
            .collect();
        let mut ahead = ReadAhead::start(files.clone()).unwrap();
        for (i, (path, _)) in files.iter().enumerate() {
            let mut file = None;
            for _ in 0..5000 {
                file = ahead.take(i, path);
                if file.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let mut text = String::new();
            file.unwrap_or_else(|| panic!("file {i} never handed over")).read_to_string(&mut text).unwrap();
            assert_eq!(text, i.to_string());
            // the helper never holds more than its bound
            assert!(ahead.shared.lock().opened.len() <= AHEAD_FILES);
        }
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
