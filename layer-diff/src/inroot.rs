//! Paths resolved inside a root directory the way a process chrooted there
//! would see them: symlinks followed, absolute targets and `..` kept inside
//! the root, at most [`MAX_SYMLINKS`] links per resolution. One walk serves
//! layer extraction (which creates what is missing) and the builder's
//! lookups in an image's tree (which do not).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The most symlinks one resolution follows before it counts as a loop:
/// the kernel's `MAXSYMLINKS` (40), so that what resolves here resolves
/// in a container and the other way round.
pub const MAX_SYMLINKS: usize = 40;

/// A component that is neither a directory nor a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Other {
    /// Nothing is there.
    Missing,
    /// A file (or another non-directory) is there.
    NotDir,
}

/// How a walk failed.
#[derive(Debug)]
pub(crate) enum WalkError<E> {
    /// More than [`MAX_SYMLINKS`] links.
    TooManyLinks,
    /// A component could not be read (the path relative to the root).
    Io(&'static str, PathBuf, io::Error),
    /// The caller's own failure, from `other`.
    Other(E),
}

/// Resolves `parts` inside `root`. At a component that is missing or not
/// a directory, `other(host_path, root_relative_path, what)` decides:
/// `Ok(true)` takes the component as it is (having made it a directory,
/// say) and goes on, `Ok(false)` stops the walk with `None`.
pub(crate) fn walk<E>(
    root: &Path,
    parts: impl IntoIterator<Item = OsString>,
    mut other: impl FnMut(&Path, &Path, Other) -> Result<bool, E>,
) -> Result<Option<PathBuf>, WalkError<E>> {
    let mut done: Vec<OsString> = Vec::new();
    let mut todo: Vec<OsString> = parts.into_iter().collect();
    todo.reverse();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            done.pop();
            continue;
        }
        let rel: PathBuf = done.iter().chain(std::iter::once(&part)).collect();
        let host = root.join(&rel);
        let found = match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => None,
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(WalkError::TooManyLinks);
                }
                let target = fs::read_link(&host).map_err(|e| WalkError::Io("read link", rel.clone(), e))?;
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(n) => todo.push(n.to_owned()),
                        Component::ParentDir => todo.push("..".into()),
                        Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
                    }
                }
                if target.is_absolute() {
                    done.clear();
                }
                continue;
            }
            Ok(_) => Some(Other::NotDir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Other::Missing),
            Err(e) => return Err(WalkError::Io("stat", rel, e)),
        };
        if let Some(what) = found
            && !other(&host, &rel, what).map_err(WalkError::Other)?
        {
            return Ok(None);
        }
        done.push(part);
    }
    Ok(Some(done.iter().collect()))
}

/// `path` (inside `root`, `/`-separated, absolute or not) as a process
/// chrooted to `root` would find it: every symlink on the way followed,
/// the last component's too, absolute targets and `..` kept inside `root`.
/// What does not exist is taken as written. `None` past [`MAX_SYMLINKS`]
/// links, or when a component cannot be read.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let parts = path.split('/').map(OsString::from);
    match walk::<std::convert::Infallible>(root, parts, |_, _, _| Ok(true)) {
        Ok(Some(rel)) => Some(root.join(rel)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_in_the_root_and_loops_end() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("/../../etc", r.join("escape")).unwrap();
        assert_eq!(resolve_in_root(r, "/bin/x").unwrap(), r.join("usr/bin/x"));
        assert_eq!(resolve_in_root(r, "escape/passwd").unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve_in_root(r, "../../x").unwrap(), r.join("x"));
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in_root(r, "loop/x").is_none());
    }

    #[test]
    fn the_kernels_limit_of_links() {
        // a chain of n links: l1 -> l2 -> ... -> ln -> target
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("target")).unwrap();
        let chain = |n: usize, prefix: &str| {
            for i in 1..=n {
                let to = if i == n { "target".to_owned() } else { format!("{prefix}{}", i + 1) };
                std::os::unix::fs::symlink(to, r.join(format!("{prefix}{i}"))).unwrap();
            }
        };
        chain(MAX_SYMLINKS, "a");
        chain(MAX_SYMLINKS + 1, "b");
        assert_eq!(resolve_in_root(r, "a1/f").unwrap(), r.join("target/f"));
        assert!(resolve_in_root(r, "b1/f").is_none());
        // the same as the kernel: 40 links resolve, 41 are a loop (ELOOP)
        assert!(fs::metadata(r.join("a1")).is_ok());
        assert_eq!(
            fs::metadata(r.join("b1")).unwrap_err().raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
    }
}
