//! Temporary files and directories that a writer holds an exclusive
//! `flock` on while it works: when the writer dies (even by `SIGKILL`) the
//! kernel drops the lock, and the next writer in the same place can tell
//! the leftovers of a dead writer (lock free) from the work of a live one
//! (lock held) and remove only the former.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `flock(file, op)`, again when a signal interrupts it.
pub(crate) fn flock(file: &File, op: rustix::fs::FlockOperation) -> io::Result<()> {
    loop {
        match rustix::fs::flock(file, op) {
            Err(rustix::io::Errno::INTR) => {}
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Takes the exclusive lock on `file` without waiting; true when taken.
fn try_lock(file: &File) -> bool {
    flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

/// Locks a temporary file or directory just made at `path` through
/// `file`, its open handle: true when the lock is held and `path` still
/// names that file (a reclaimer may have taken it between the creation and
/// the lock; the caller then makes another).
fn lock_new(path: &Path, file: &File) -> bool {
    if !try_lock(file) {
        return false;
    }
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A fresh temporary directory in `parent` (named `prefix` + random) that
/// its creator holds locked for as long as it keeps the returned file: the
/// kind [`reclaim_stale`] leaves alone while its writer lives and reclaims
/// once the writer is gone, even killed.
///
/// # Errors
/// When the directory cannot be made.
pub fn locked_tempdir_in(parent: &Path, prefix: &str) -> io::Result<(tempfile::TempDir, File)> {
    loop {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
        // a reclaimer may take it between creation and lock: then another
        if let Ok(held) = File::open(tmp.path())
            && lock_new(tmp.path(), &held)
        {
            return Ok((tmp, held));
        }
    }
}

/// A fresh temporary file in `dir` (named `prefix` + random, mode `0644`
/// less the umask), locked like [`locked_tempdir_in`]'s directories for as
/// long as it is open.
pub(crate) fn locked_tempfile_in(dir: &Path, prefix: &str) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    loop {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)?;
        if lock_new(tmp.path(), tmp.as_file()) {
            return Ok(tmp);
        }
    }
}

/// Removes the entries of `dir` whose names start with `prefix` and that
/// no live writer holds (their lock can be taken): the leftovers of killed
/// writers. Symlinks are never followed. Returns what was removed.
///
/// # Errors
/// When `dir` cannot be listed (a missing `dir` has nothing to reclaim).
pub fn reclaim_stale(dir: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
    reclaim_stale_with(dir, prefix, &mut |path, is_dir| {
        if is_dir { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }
    })
}

/// [`reclaim_stale`], with `clean(path, is_dir)` doing the removal (while
/// the lock is held), for leftovers that need more than deleting: a build's
/// scratch with mounts and runtime state in it. An entry counts as removed
/// when `clean` succeeds.
///
/// # Errors
/// When `dir` cannot be listed (a missing `dir` has nothing to reclaim).
pub fn reclaim_stale_with(
    dir: &Path,
    prefix: &str,
    clean: &mut dyn FnMut(&Path, bool) -> io::Result<()>,
) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !(meta.is_dir() || meta.is_file()) {
            continue;
        }
        // opening a directory read-only is enough to lock it
        let Ok(file) = File::open(&path) else { continue };
        if !try_lock(&file) {
            continue;
        }
        if clean(&path, meta.is_dir()).is_ok() {
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unheld_leftovers_are_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join(".tmp-live");
        let dead = d.path().join(".tmp-dead");
        let dead_dir = d.path().join(".tmp-dead-dir");
        std::fs::write(&live, "x").unwrap();
        std::fs::write(&dead, "x").unwrap();
        std::fs::create_dir_all(dead_dir.join("inner")).unwrap();
        std::fs::write(d.path().join("other"), "x").unwrap();
        let held = File::open(&live).unwrap();
        assert!(lock_new(&live, &held));
        let mut removed = reclaim_stale(d.path(), ".tmp-").unwrap();
        removed.sort();
        assert_eq!(removed, vec![dead, dead_dir]);
        assert!(live.exists() && d.path().join("other").exists());
        drop(held);
        assert_eq!(reclaim_stale(d.path(), ".tmp-").unwrap(), vec![live]);
        assert!(reclaim_stale(&d.path().join("missing"), ".tmp-").unwrap().is_empty());
    }
}
