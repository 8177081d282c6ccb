//! Snapshots: a sorted record of every entry under a directory.
//!
//! The walk is hand-written rather than taken from a crate such as `walkdir`
//! because the layer needs one exact order (siblings sorted by the bytes of
//! their names, parents before children; the order of [`Path`]'s `Ord`) and
//! the metadata a layer records (hard-link identity, device numbers, a
//! filtered set of xattrs), which a generic walker does not give in one pass.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

/// Why a tree could not be snapshotted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading the tree failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// A point in time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

/// What kind of file an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link with its target, stored as is.
    Symlink(PathBuf),
    /// A named pipe.
    Fifo,
    /// A character device.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

impl Kind {
    /// Is this a directory?
    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir)
    }

    /// Is this an overlayfs whiteout (a character device 0:0)?
    pub fn is_overlay_whiteout(&self) -> bool {
        matches!(self, Kind::Char { major: 0, minor: 0 })
    }
}

/// One file system entry of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The path relative to the snapshot's root (never empty, no `.` or `..`).
    pub path: PathBuf,
    /// The file type and its type-specific data.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (regular files; 0 for the others).
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time (used by diffs only, never written to a layer).
    pub ctime: Timestamp,
    /// Device of the file system holding it (hard-link identity).
    pub dev: u64,
    /// Inode number (hard-link identity).
    pub ino: u64,
    /// Number of hard links.
    pub nlink: u64,
    /// Extended attributes kept in layers (`user.*`, `security.capability`,
    /// `trusted.*`), without overlay, `SELinux` and `NFSv4` ACL attributes, and
    /// without empty values (PAX cannot store them).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    /// An entry made up rather than read from disk (a directory a build
    /// creates, say): no size, times, xattrs or link identity.
    pub fn new(path: impl Into<PathBuf>, kind: Kind, mode: u32, uid: u32, gid: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size: 0,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            dev: 0,
            ino: 0,
            nlink: 1,
            xattrs: BTreeMap::new(),
        }
    }

    /// Reads one entry from `full` (not following a final symlink); `Ok(None)`
    /// for a socket, which a layer cannot hold.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] when the entry cannot be read.
    pub fn read(full: &Path, rel: PathBuf) -> Result<Option<Entry>, SnapshotError> {
        let meta = fs::symlink_metadata(full).map_err(io_err("stat", full))?;
        Entry::from_metadata(full, rel, &meta)
    }

    fn from_metadata(full: &Path, rel: PathBuf, meta: &fs::Metadata) -> Result<Option<Entry>, SnapshotError> {
        let ft = meta.file_type();
        let dev_parts = || {
            let rdev = meta.rdev();
            (rustix::fs::major(rdev), rustix::fs::minor(rdev))
        };
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(full).map_err(io_err("read link", full))?)
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() {
            let (major, minor) = dev_parts();
            Kind::Char { major, minor }
        } else if ft.is_block_device() {
            let (major, minor) = dev_parts();
            Kind::Block { major, minor }
        } else {
            // sockets (and anything unknown) cannot be put in a tar
            return Ok(None);
        };
        let xattrs = read_xattrs(full)?;
        Ok(Some(Entry {
            path: rel,
            size: if kind == Kind::File { meta.len() } else { 0 },
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: Timestamp { sec: meta.mtime(), nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0) },
            ctime: Timestamp { sec: meta.ctime(), nsec: u32::try_from(meta.ctime_nsec()).unwrap_or(0) },
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            xattrs,
        }))
    }
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { op, path: path.to_owned(), source }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub(crate) fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Is this xattr one a layer may carry?
pub fn keep_xattr(name: &str) -> bool {
    let overlay = name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.");
    let allowed = name.starts_with("user.") || name.starts_with("trusted.") || name == "security.capability";
    allowed && !overlay
}

fn read_xattrs(full: &Path) -> Result<BTreeMap<String, Vec<u8>>, SnapshotError> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(full) {
        Ok(names) => names,
        // file systems without xattr support have none
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => return Ok(out),
        Err(e) => return Err(io_err("list xattrs of", full)(e)),
    };
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if !keep_xattr(name) {
            continue;
        }
        if let Some(value) = xattr::get(full, name).map_err(io_err("read xattr of", full))?
            && !value.is_empty()
        {
            out.insert(name.to_owned(), value);
        }
    }
    Ok(out)
}

/// Reads one raw xattr (any name, overlay ones included) without following symlinks.
pub(crate) fn raw_xattr(full: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(full, name).ok().flatten()
}

/// Every entry under a root, in [`Path`] order (parents before children,
/// siblings by the bytes of their names). The root itself is not an entry.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// std::fs::create_dir(dir.path().join("b"))?;
/// std::fs::write(dir.path().join("b/f"), "x")?;
/// std::fs::write(dir.path().join("a"), "y")?;
/// let snap = layer_diff::Snapshot::walk(dir.path())?;
/// let names: Vec<_> = snap.entries().iter().map(|e| e.path.to_str().unwrap()).collect();
/// assert_eq!(names, ["a", "b", "b/f"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Snapshot {
    root: PathBuf,
    entries: Vec<Entry>,
}

impl Snapshot {
    /// Walks the tree under `root`. Sockets are skipped.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] naming the path that could not be read.
    pub fn walk(root: &Path) -> Result<Snapshot, SnapshotError> {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(WALKERS);
        let entries = if threads > 1 {
            walk_parallel(root, threads)?
        } else {
            let mut entries = Vec::new();
            walk_each(root, &mut |e| {
                entries.push(e);
                true
            })?;
            entries
        };
        Ok(Snapshot { root: root.to_owned(), entries })
    }

    /// Builds a snapshot from entries already read (sorted here).
    pub fn from_entries(root: &Path, mut entries: Vec<Entry>) -> Snapshot {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|a, b| a.path == b.path);
        Snapshot { root: root.to_owned(), entries }
    }

    /// The directory the snapshot was taken of.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries in order, taken out of the snapshot.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// The entry at `path` (relative), if any.
    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.as_path().cmp(path)).ok().and_then(|i| self.entries.get(i))
    }
}

/// Walks the tree under `root` as [`Snapshot::walk`] does, handing each
/// entry to `sink` as soon as it is read, in the snapshot's order. The walk
/// stops early, returning `Ok(false)`, when `sink` returns `false`.
pub(crate) fn walk_each(root: &Path, sink: &mut dyn FnMut(Entry) -> bool) -> Result<bool, SnapshotError> {
    walk_from(Path::new(""), &mut |rel| read_dir(root, rel), sink)
}

/// Hands `sink` the entries of the directory `rel` and of every directory
/// below it in walk order, each directory's as `next` gives them (read
/// now, or read before on other threads), until `sink` says stop
/// (`Ok(false)`) or a directory's failure is reached in that order.
fn walk_from(
    rel: &Path,
    next: &mut dyn FnMut(&Path) -> DirRead,
    sink: &mut dyn FnMut(Entry) -> bool,
) -> Result<bool, SnapshotError> {
    let DirRead { entries, failed } = next(rel);
    for entry in entries {
        let below = entry.kind.is_dir().then(|| entry.path.clone());
        if !sink(entry) {
            return Ok(false);
        }
        if let Some(p) = below
            && !walk_from(&p, next, sink)?
        {
            return Ok(false);
        }
    }
    failed.map_or(Ok(true), Err)
}

/// The threads [`Snapshot::walk`] reads directories on, at most.
const WALKERS: usize = 4;

/// One directory's entries in walk order, each read: those before the first
/// that could not be read, and that failure.
struct DirRead {
    entries: Vec<Entry>,
    failed: Option<SnapshotError>,
}

/// Reads the directory `rel` under `root`: its entries sorted by name,
/// sockets left out.
fn read_dir(root: &Path, rel: &Path) -> DirRead {
    let dir = root.join(rel);
    #[cfg(test)]
    tests::maybe_panic(&dir);
    let listed = fs::read_dir(&dir).and_then(|list| {
        list.map(|entry| entry.map(|entry| (entry.file_name(), entry))).collect::<io::Result<Vec<_>>>()
    });
    let mut children = match listed {
        Ok(children) => children,
        Err(e) => return DirRead { entries: Vec::new(), failed: Some(io_err("read directory", &dir)(e)) },
    };
    children.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut entries = Vec::with_capacity(children.len());
    for (name, dirent) in children {
        let full = dirent.path();
        let read = dirent
            .metadata()
            .map_err(io_err("stat", &full))
            .and_then(|meta| Entry::from_metadata(&full, rel.join(&name), &meta));
        match read {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(e) => return DirRead { entries, failed: Some(e) },
        }
    }
    DirRead { entries, failed: None }
}

/// [`Snapshot::walk`] on `threads` threads: each takes a directory not yet
/// read, reads it and queues its subdirectories; the directories read are
/// then put together in the one walk order, and the first failure in that
/// order is the walk's, as on one thread.
fn walk_parallel(root: &Path, threads: usize) -> Result<Vec<Entry>, SnapshotError> {
    struct Shared {
        queue: Vec<PathBuf>,
        busy: usize,
        read: HashMap<PathBuf, DirRead>,
    }
    /// Held while a directory is read: a reader that panics clears the
    /// queue and counts itself out, so that the others stop instead of
    /// waiting for it forever (the scope then carries the panic on).
    struct Reading<'a>(&'a Mutex<Shared>, &'a Condvar);
    impl Drop for Reading<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                s.queue.clear();
                s.busy -= 1;
                self.1.notify_all();
            }
        }
    }
    let shared = Mutex::new(Shared { queue: vec![PathBuf::new()], busy: 0, read: HashMap::new() });
    let changed = Condvar::new();
    let lock = || shared.lock().unwrap_or_else(PoisonError::into_inner);
    let work = || {
        let mut s = lock();
        loop {
            if let Some(rel) = s.queue.pop() {
                s.busy += 1;
                drop(s);
                let reading = Reading(&shared, &changed);
                let read = read_dir(root, &rel);
                drop(reading);
                let below: Vec<PathBuf> =
                    read.entries.iter().filter(|e| e.kind.is_dir()).map(|e| e.path.clone()).collect();
                s = lock();
                let more = !below.is_empty();
                s.queue.extend(below);
                s.read.insert(rel, read);
                s.busy -= 1;
                if more || s.busy == 0 {
                    changed.notify_all();
                }
            } else if s.busy == 0 {
                return;
            } else {
                s = changed.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
    let mut read = shared.into_inner().unwrap_or_else(PoisonError::into_inner).read;
    let mut entries = Vec::new();
    gather(&mut read, Path::new(""), &mut entries)?;
    Ok(entries)
}

/// Appends the directory `rel` of `read` to `out` in walk order, each
/// subdirectory's entries after it.
fn gather(read: &mut HashMap<PathBuf, DirRead>, rel: &Path, out: &mut Vec<Entry>) -> Result<(), SnapshotError> {
    let mut next = |dir: &Path| read.remove(dir).unwrap_or(DirRead { entries: Vec::new(), failed: None });
    walk_from(rel, &mut next, &mut |e| {
        out.push(e);
        true
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_filter() {
        assert!(keep_xattr("user.test"));
        assert!(keep_xattr("security.capability"));
        assert!(keep_xattr("trusted.foo"));
        assert!(!keep_xattr("trusted.overlay.opaque"));
        assert!(!keep_xattr("user.overlay.opaque"));
        assert!(!keep_xattr("security.selinux"));
        assert!(!keep_xattr("system.nfs4_acl"));
    }

    #[test]
    fn walk_order_is_path_order_and_skips_sockets() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("a")).unwrap();
        fs::write(d.path().join("a-b"), "").unwrap();
        fs::write(d.path().join("a/z"), "").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("sock")).unwrap();
        let s = Snapshot::walk(d.path()).unwrap();
        let names: Vec<_> = s.entries().iter().map(|e| e.path.clone()).collect();
        assert_eq!(names, [PathBuf::from("a"), PathBuf::from("a/z"), PathBuf::from("a-b")]);
        assert!(s.get(Path::new("a/z")).is_some());
        assert!(s.get(Path::new("sock")).is_none());
    }

    #[test]
    fn the_parallel_walk_gives_the_walk_of_one_thread() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..40 {
            let dir = d.path().join(format!("d{}", i % 7)).join(format!("s{i}"));
            fs::create_dir_all(dir.join("deeper/still")).unwrap();
            fs::write(dir.join("f"), format!("{i}")).unwrap();
            fs::write(dir.join("deeper/still/g"), "g").unwrap();
            std::os::unix::fs::symlink("../f", dir.join("deeper/link")).unwrap();
        }
        fs::write(d.path().join("d1-"), "").unwrap();
        let mut one = Vec::new();
        assert!(
            walk_each(d.path(), &mut |e| {
                one.push(e);
                true
            })
            .unwrap()
        );
        for threads in [2, 4] {
            assert_eq!(walk_parallel(d.path(), threads).unwrap(), one);
        }
        assert_eq!(Snapshot::walk(d.path()).unwrap().entries(), &one[..]);
        assert_eq!(one.len(), 7 + 40 * 6 + 1);
    }

    /// A directory whose reading panics, for the test below.
    static PANIC_IN: Mutex<Option<PathBuf>> = Mutex::new(None);

    pub(super) fn maybe_panic(dir: &Path) {
        let injected = PANIC_IN.lock().unwrap_or_else(PoisonError::into_inner).as_deref() == Some(dir);
        assert!(!injected, "injected: reading {}", dir.display());
    }

    #[test]
    fn a_reader_that_panics_stops_the_walk_instead_of_hanging_it() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..30 {
            fs::create_dir_all(d.path().join(format!("d{i}/e/f"))).unwrap();
        }
        *PANIC_IN.lock().unwrap() = Some(d.path().join("d7/e"));
        let root = d.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let walked = std::panic::catch_unwind(|| walk_parallel(&root, 4));
            let _ = tx.send(walked.is_err());
        });
        let panicked = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the walk hung");
        *PANIC_IN.lock().unwrap() = None;
        assert!(panicked, "the reader's panic did not reach the caller");
    }

    #[test]
    fn the_first_failure_in_walk_order_is_the_walks() {
        let failure = |p: &str| SnapshotError::Io { op: "stat", path: p.into(), source: io::Error::other("gone") };
        let dir = |p: &str| Entry::new(p, Kind::Dir, 0o755, 0, 0);
        let file = |p: &str| Entry::new(p, Kind::File, 0o644, 0, 0);
        let mut read = HashMap::new();
        read.insert(PathBuf::new(), DirRead { entries: vec![dir("a"), dir("b"), file("c")], failed: None });
        read.insert(PathBuf::from("a"), DirRead { entries: vec![file("a/x")], failed: Some(failure("a/y")) });
        read.insert(PathBuf::from("b"), DirRead { entries: vec![], failed: Some(failure("b/z")) });
        let mut out = Vec::new();
        let Err(SnapshotError::Io { path, .. }) = gather(&mut read, Path::new(""), &mut out) else {
            panic!("the walk did not fail")
        };
        assert_eq!(path, Path::new("a/y"));
        let names: Vec<_> = out.iter().map(|e| e.path.clone()).collect();
        assert_eq!(names, [PathBuf::from("a"), PathBuf::from("a/x")]);
    }
}
