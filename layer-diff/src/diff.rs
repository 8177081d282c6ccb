//! Changes between two snapshots, and from an overlayfs upper directory.
//!
//! Written here because the rules are the layer format's, not a generic tree
//! diff's (containers/storage `ChangesDirs` is the reference): one merge pass
//! over two sorted snapshots; type, mode, owner, xattrs, link target and
//! device numbers decide first, then size and mtime, and file contents are
//! read only when those agree but the change times differ; a deleted
//! directory is one deletion; parents of a change are part of the layer.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::snapshot::{Entry, Kind, Snapshot, SnapshotError, io_err, raw_xattr, read_full};

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The path is new.
    Add,
    /// The path exists on both sides but differs (content, type, metadata,
    /// link target), or is a parent directory of a change.
    Modify,
    /// The path is gone (for a directory: the whole subtree).
    Delete,
}

/// One change, as it goes into a layer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Change {
    /// The path relative to the root.
    pub path: PathBuf,
    /// What happened.
    pub kind: ChangeKind,
    /// For a directory: lower contents are hidden (an opaque directory).
    pub opaque: bool,
}

impl Change {
    /// A change of `kind` at `path`.
    pub fn new(path: impl Into<PathBuf>, kind: ChangeKind) -> Change {
        Change { path: path.into(), kind, opaque: false }
    }

    /// An opaque directory at `path` (its lower contents are hidden).
    pub fn opaque(path: impl Into<PathBuf>) -> Change {
        Change { path: path.into(), kind: ChangeKind::Modify, opaque: true }
    }
}

fn same_metadata(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.xattrs == b.xattrs
}

fn same_content(a: &Path, b: &Path) -> Result<bool, SnapshotError> {
    #[cfg(test)]
    assert!(!a.ends_with(tests::PANICS), "injected: a comparison that panics");
    let mut fa = fs::File::open(a).map_err(io_err("open", a))?;
    let mut fb = fs::File::open(b).map_err(io_err("open", b))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(io_err("read", a))?;
        let nb = read_full(&mut fb, &mut bb).map_err(io_err("read", b))?;
        if na != nb || ba.get(..na) != bb.get(..nb) {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// A path of two snapshots walked side by side: on one side only, or on both.
enum Side<'a> {
    Lower(&'a Entry),
    Upper(&'a Entry),
    Both(&'a Entry, &'a Entry),
}

/// The entries of `lower` and `upper` merged in path order (both are sorted).
fn side_by_side<'a>(lower: &'a Snapshot, upper: &'a Snapshot) -> impl Iterator<Item = Side<'a>> {
    let (mut lows, mut ups) = (lower.entries().iter().peekable(), upper.entries().iter().peekable());
    std::iter::from_fn(move || {
        let order = match (lows.peek(), ups.peek()) {
            (Some(lo), Some(up)) => lo.path.cmp(&up.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => lows.next().map(Side::Lower),
            std::cmp::Ordering::Greater => ups.next().map(Side::Upper),
            std::cmp::Ordering::Equal => lows.next().zip(ups.next()).map(|(lo, up)| Side::Both(lo, up)),
        }
    })
}

/// How two entries at the same path compare without reading contents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Same,
    Changed,
    /// Regular files whose metadata agree but whose change times differ:
    /// only their contents can tell.
    ReadContents,
}

/// Is `upper` a changed version of `lower` (same path, both existing)?
/// Type, mode, owner, xattrs, link target and device numbers decide first,
/// then size and mtime (a touched file or directory is modified); content
/// is compared only when those agree but the change times differ.
fn verdict(lower: &Entry, upper: &Entry) -> Verdict {
    if !same_metadata(lower, upper) || lower.mtime != upper.mtime {
        return Verdict::Changed;
    }
    match upper.kind {
        Kind::File if lower.size != upper.size => Verdict::Changed,
        Kind::File if lower.ctime != upper.ctime => Verdict::ReadContents,
        _ => Verdict::Same,
    }
}

/// The next pair nobody has claimed, and each finished pair's answer.
type Progress = (usize, Vec<Option<Result<bool, SnapshotError>>>);

/// The content comparisons a merge needs, in merge order, shared by the
/// merging thread and a helper that works ahead of it: reading both files
/// is most of a diff's time, and two threads keep two reads going.
struct Compares {
    pairs: Vec<(PathBuf, PathBuf)>,
    state: std::sync::Mutex<Progress>,
    done: std::sync::Condvar,
    stop: std::sync::atomic::AtomicBool,
}

impl Compares {
    fn new(lower: &Snapshot, upper: &Snapshot) -> Compares {
        let pairs: Vec<(PathBuf, PathBuf)> = side_by_side(lower, upper)
            .filter_map(|side| match side {
                Side::Both(lo, up) if verdict(lo, up) == Verdict::ReadContents => {
                    Some((lower.root().join(&lo.path), upper.root().join(&up.path)))
                }
                _ => None,
            })
            .collect();
        let slots = pairs.iter().map(|_| None).collect();
        Compares {
            pairs,
            state: std::sync::Mutex::new((0, slots)),
            done: std::sync::Condvar::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compares pair `k` and records the answer: a comparison that panics
    /// is an error, as an answer that never came would leave the merge
    /// waiting for it forever.
    fn run(&self, k: usize) {
        let Some((a, b)) = self.pairs.get(k) else { return };
        let answer = std::panic::catch_unwind(|| same_content(a, b)).unwrap_or_else(|_| {
            Err(SnapshotError::Io {
                op: "compare",
                path: a.clone(),
                source: std::io::Error::other("the comparison failed"),
            })
        });
        if let Some(slot) = self.lock().1.get_mut(k) {
            *slot = Some(answer);
        }
        self.done.notify_all();
    }

    /// The helper: claims pairs in order until none are left.
    fn work(&self) {
        loop {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let k = {
                let mut st = self.lock();
                if st.0 >= self.pairs.len() {
                    return;
                }
                st.0 += 1;
                st.0 - 1
            };
            self.run(k);
        }
    }

    /// Are the files of pair `k` the same? While the answer is not there,
    /// compares the next unclaimed pair itself (up to `k`, or past it while
    /// the helper is on `k`) rather than wait: both threads then keep
    /// comparing, which is what sets the pace while unchanged files are
    /// being read and there is nothing to compress yet.
    ///
    /// `direct` compares the two files itself; it is used only for a pair
    /// the pre-pass did not list, whose answer would otherwise never come.
    fn same(&self, k: usize, direct: impl FnOnce() -> Result<bool, SnapshotError>) -> Result<bool, SnapshotError> {
        if k >= self.pairs.len() {
            return direct();
        }
        let mut st = self.lock();
        loop {
            if let Some(answer) = st.1.get_mut(k).and_then(Option::take) {
                return answer;
            }
            if st.0 < self.pairs.len() {
                let claimed = st.0;
                st.0 += 1;
                drop(st);
                self.run(claimed);
                st = self.lock();
            } else {
                st = self.done.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }
}

/// The changes that turn the tree of `lower` into the tree of `upper`, in
/// path order. A deleted directory is one [`ChangeKind::Delete`]; a new
/// directory and everything under it are [`ChangeKind::Add`]; the parent
/// directories of any change are at least [`ChangeKind::Modify`].
///
/// # Errors
/// [`SnapshotError::Io`] when file contents must be compared and cannot be read.
pub fn diff(lower: &Snapshot, upper: &Snapshot) -> Result<Vec<Change>, SnapshotError> {
    let mut out = Vec::new();
    let collected = diff_each(lower, upper, |c| {
        out.push(c);
        Ok::<(), std::convert::Infallible>(())
    });
    match collected {
        Ok(()) => Ok(out),
        Err(EachError::Diff(e)) => Err(e),
        Err(EachError::Stopped(never)) => match never {},
    }
}

/// Why [`diff_each`] stopped.
#[derive(Debug)]
pub(crate) enum EachError<E> {
    /// Comparing the trees failed.
    Diff(SnapshotError),
    /// The callback said stop.
    Stopped(E),
}

impl<E> From<SnapshotError> for EachError<E> {
    fn from(e: SnapshotError) -> Self {
        EachError::Diff(e)
    }
}

/// [`diff`], handing each change to `emit` as soon as it is known, in the
/// same order: a consumer can write the layer while the rest of the trees
/// is still being compared.
///
/// One merge pass over the two sorted snapshots. A parent directory is
/// emitted (as [`ChangeKind::Modify`]) just before the first change below
/// it: in path order everything between a directory and one of its
/// descendants lies inside that directory, so an ancestor not emitted yet
/// had no earlier change under it, and emitting it late keeps the order.
pub(crate) fn diff_each<E>(
    lower: &Snapshot,
    upper: &Snapshot,
    mut emit: impl FnMut(Change) -> Result<(), E>,
) -> Result<(), EachError<E>> {
    let compares = Compares::new(lower, upper);
    std::thread::scope(|s| {
        if compares.pairs.len() > 1 {
            s.spawn(|| compares.work());
        }
        let merged = merge(lower, upper, &compares, &mut emit);
        // on an early return the helper stops at its next pair
        compares.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        merged
    })
}

/// The merge pass of [`diff_each`].
fn merge<E>(
    lower: &Snapshot,
    upper: &Snapshot,
    compares: &Compares,
    mut emit: impl FnMut(Change) -> Result<(), E>,
) -> Result<(), EachError<E>> {
    // the next content comparison, in the order Compares::new found them
    let mut compare = 0;
    // every path emitted so far (changes and their parents)
    let mut emitted: HashSet<PathBuf> = HashSet::new();
    // a deleted directory hides everything below it
    let mut deleted_dir: Option<PathBuf> = None;
    let mut change = |path: &Path, kind: ChangeKind, emitted: &mut HashSet<PathBuf>| -> Result<(), EachError<E>> {
        let mut missing: Vec<&Path> =
            path.ancestors().skip(1).take_while(|p| !p.as_os_str().is_empty() && !emitted.contains(*p)).collect();
        while let Some(parent) = missing.pop() {
            emitted.insert(parent.to_owned());
            emit(Change::new(parent, ChangeKind::Modify)).map_err(EachError::Stopped)?;
        }
        emitted.insert(path.to_owned());
        emit(Change::new(path, kind)).map_err(EachError::Stopped)
    };
    for side in side_by_side(lower, upper) {
        match side {
            Side::Lower(lo) => {
                let hidden = deleted_dir.as_ref().is_some_and(|d| lo.path.starts_with(d));
                // a path under a directory that became a file is covered by that change
                let parent_replaced = lo
                    .path
                    .ancestors()
                    .skip(1)
                    .any(|p| upper.get(p).is_some_and(|e| !e.kind.is_dir()) && emitted.contains(p));
                if !hidden && !parent_replaced {
                    change(&lo.path, ChangeKind::Delete, &mut emitted)?;
                    if lo.kind.is_dir() {
                        deleted_dir = Some(lo.path.clone());
                    }
                }
            }
            Side::Upper(up) => change(&up.path, ChangeKind::Add, &mut emitted)?,
            Side::Both(lo, up) => {
                let modified = match verdict(lo, up) {
                    Verdict::Same => false,
                    Verdict::Changed => true,
                    Verdict::ReadContents => {
                        compare += 1;
                        let direct = || same_content(&lower.root().join(&lo.path), &upper.root().join(&up.path));
                        !compares.same(compare - 1, direct)?
                    }
                };
                if modified {
                    change(&up.path, ChangeKind::Modify, &mut emitted)?;
                }
            }
        }
    }
    Ok(())
}

/// Bytes a set of changes adds to a layer's content: regular files of added
/// or modified paths, each hard-linked inode counted once; deletions add nothing.
pub fn changes_size(upper: &Snapshot, changes: &[Change]) -> u64 {
    let mut seen = HashSet::new();
    let mut size = 0u64;
    for c in changes {
        if c.kind == ChangeKind::Delete {
            continue;
        }
        if let Some(e) = upper.get(&c.path)
            && e.kind == Kind::File
            && (e.nlink <= 1 || seen.insert((e.dev, e.ino)))
        {
            size += e.size;
        }
    }
    size
}

fn is_opaque(full: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| raw_xattr(full, name).is_some_and(|v| v == b"y"))
}

fn is_xattr_whiteout(full: &Path) -> bool {
    ["trusted.overlay.whiteout", "user.overlay.whiteout"].iter().any(|name| raw_xattr(full, name).is_some())
}

/// Reads an overlayfs upper directory as changes without looking at the lower
/// tree: a character device 0:0 or a file with `trusted.overlay.whiteout`
/// (or the `user.` form) is a [`ChangeKind::Delete`]; a directory with
/// `trusted.overlay.opaque=y` (or `user.overlay.opaque=y`) is opaque; every
/// other entry is a [`ChangeKind::Modify`]. The returned snapshot holds the
/// entries to write (whiteouts excluded).
///
/// # Errors
/// [`SnapshotError::Io`] naming the path that could not be read.
pub fn overlay_changes(upper: &Path) -> Result<(Snapshot, Vec<Change>), SnapshotError> {
    let snap = Snapshot::walk(upper)?;
    let mut changes = Vec::new();
    let mut kept = Vec::new();
    let mut deleted: BTreeSet<PathBuf> = BTreeSet::new();
    for e in snap.entries() {
        let full = upper.join(&e.path);
        let whiteout = e.kind.is_overlay_whiteout() || (e.kind == Kind::File && is_xattr_whiteout(&full));
        if whiteout {
            deleted.insert(e.path.clone());
            changes.push(Change::new(e.path.clone(), ChangeKind::Delete));
            continue;
        }
        let mut c = Change::new(e.path.clone(), ChangeKind::Modify);
        c.opaque = e.kind.is_dir() && is_opaque(&full);
        changes.push(c);
        kept.push(e.clone());
    }
    Ok((Snapshot::from_entries(upper, kept), changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose comparison panics in [`same_content`].
    pub(super) const PANICS: &str = "kiln-test-comparing-this-panics";

    #[test]
    fn a_comparison_that_panics_on_the_helper_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let (lo, up) = (d.path().join("lo"), d.path().join("up"));
        for dir in [&lo, &up] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("same"), "x").unwrap();
            fs::write(dir.join(PANICS), "y").unwrap();
        }
        let pairs: Vec<(PathBuf, PathBuf)> = ["same", PANICS].iter().map(|n| (lo.join(n), up.join(n))).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let compares = Compares {
                state: std::sync::Mutex::new((0, pairs.iter().map(|_| None).collect())),
                pairs,
                done: std::sync::Condvar::new(),
                stop: std::sync::atomic::AtomicBool::new(false),
            };
            // the helper claims both pairs before the merge asks for the second
            let helper = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compares.work()));
            let _ = tx.send((helper.is_ok(), compares.same(1, || Ok(true)).map_err(|e| e.to_string())));
        });
        let (helper_ok, answer) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the merge hung");
        assert!(helper_ok, "the helper's panic escaped it");
        let err = answer.expect_err("a comparison that failed gave an answer");
        assert!(err.contains(PANICS), "{err}");
    }

    #[test]
    fn hardlinks_count_once() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "12345").unwrap();
        fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        fs::write(d.path().join("c"), "xy").unwrap();
        let snap = Snapshot::walk(d.path()).unwrap();
        let changes: Vec<_> = snap.entries().iter().map(|e| Change::new(e.path.clone(), ChangeKind::Add)).collect();
        assert_eq!(changes_size(&snap, &changes), 7);
        let deletes = vec![Change::new("a", ChangeKind::Delete)];
        assert_eq!(changes_size(&snap, &deletes), 0);
    }

    /// A pair the pre-pass did not list is compared directly, not waited for.
    #[test]
    fn unlisted_pair_is_compared_directly() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "x").unwrap();
        let snap = Snapshot::walk(d.path()).unwrap();
        let compares = Compares::new(&snap, &snap);
        assert!(compares.pairs.is_empty());
        assert!(!compares.same(0, || Ok(false)).unwrap());
        assert!(compares.same(5, || Ok(true)).unwrap());
    }
}
