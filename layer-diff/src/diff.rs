//! Changes between two snapshots, and from an overlayfs upper directory.
//!
//! Written here because the rules are the layer format's, not a generic tree
//! diff's (containers/storage `ChangesDirs` is the reference): one merge pass
//! over two sorted snapshots; type, mode, owner, xattrs, link target and
//! device numbers decide first, then size and mtime, and file contents are
//! read only when those agree but the change times differ; a deleted
//! directory is one deletion; parents of a change are part of the layer.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::snapshot::{Entry, Kind, Snapshot, SnapshotError, io_err, raw_xattr};

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

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

/// Is `upper` a changed version of `lower` (same path, both existing)?
/// Type, mode, owner, xattrs, link target and device numbers decide first,
/// then size and mtime (a touched file or directory is modified); content
/// is compared only when those agree but the change times differ.
fn modified(lower: &Entry, upper: &Entry, lower_root: &Path, upper_root: &Path) -> Result<bool, SnapshotError> {
    if !same_metadata(lower, upper) || lower.mtime != upper.mtime {
        return Ok(true);
    }
    match upper.kind {
        Kind::File => {
            if lower.size != upper.size {
                return Ok(true);
            }
            if lower.ctime == upper.ctime {
                return Ok(false);
            }
            Ok(!same_content(&lower_root.join(&lower.path), &upper_root.join(&upper.path))?)
        }
        _ => Ok(false),
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
    let mut out: BTreeMap<PathBuf, ChangeKind> = BTreeMap::new();
    let (lows, ups) = (lower.entries(), upper.entries());
    let (mut li, mut ui) = (0, 0);
    // a deleted directory hides everything below it
    let mut deleted_dir: Option<PathBuf> = None;
    while li < lows.len() || ui < ups.len() {
        let order = match (lows.get(li), ups.get(ui)) {
            (Some(lo), Some(up)) => lo.path.cmp(&up.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let Some(lo) = lows.get(li) else { break };
                let hidden = deleted_dir.as_ref().is_some_and(|d| lo.path.starts_with(d));
                // a path under a directory that became a file is covered by that change
                let parent_replaced = lo
                    .path
                    .ancestors()
                    .skip(1)
                    .any(|p| upper.get(p).is_some_and(|e| !e.kind.is_dir()) && out.contains_key(p));
                if !hidden && !parent_replaced {
                    out.insert(lo.path.clone(), ChangeKind::Delete);
                    if lo.kind.is_dir() {
                        deleted_dir = Some(lo.path.clone());
                    }
                }
                li += 1;
            }
            std::cmp::Ordering::Greater => {
                let Some(up) = ups.get(ui) else { break };
                out.insert(up.path.clone(), ChangeKind::Add);
                ui += 1;
            }
            std::cmp::Ordering::Equal => {
                if let (Some(lo), Some(up)) = (lows.get(li), ups.get(ui))
                    && modified(lo, up, lower.root(), upper.root())?
                {
                    out.insert(up.path.clone(), ChangeKind::Modify);
                }
                li += 1;
                ui += 1;
            }
        }
    }
    // parents of every change are part of the layer
    let paths: Vec<PathBuf> = out.keys().cloned().collect();
    for p in paths {
        for parent in p.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            out.entry(parent.to_owned()).or_insert(ChangeKind::Modify);
        }
    }
    Ok(out.into_iter().map(|(path, kind)| Change::new(path, kind)).collect())
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
}
