//! A stage's root filesystem, seen through overlayfs: every layer is
//! extracted once into its own directory (whiteouts in overlay form) and a
//! stage's tree is those directories stacked, so nothing is copied. `RUN`
//! gets a fresh upper directory, which afterwards *is* the step's layer in
//! overlay form. Where overlayfs cannot be mounted (no privilege), the tree
//! is flattened into a plain directory and `RUN` changes are found by
//! comparing snapshots.

use std::io;
use std::path::{Path, PathBuf};

/// An overlay mount, unmounted when dropped.
#[derive(Debug)]
pub(crate) struct OverlayMount {
    target: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// Mounts `lowers` (bottom first) with an optional `(upper, work)` pair at `target`.
    pub fn mount(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> io::Result<OverlayMount> {
        use std::fmt::Write as _;
        let mut data = String::from("lowerdir=");
        let mut first = true;
        for l in lowers.iter().rev() {
            let s = l.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 layer path"))?;
            if s.contains([':', ',']) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("layer path {s} has ':' or ','")));
            }
            if !first {
                data.push(':');
            }
            first = false;
            data.push_str(s);
        }
        if let Some((u, w)) = upper {
            let _ = write!(data, ",upperdir={},workdir={}", u.display(), w.display());
        }
        // One page holds the mount options.
        if data.len() >= 4000 {
            return Err(io::Error::other(format!("too many layers to stack with overlayfs ({})", lowers.len())));
        }
        let mount = |data: String| -> io::Result<()> {
            let data = std::ffi::CString::new(data).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())?;
            Ok(())
        };
        if upper.is_some() {
            // the upper directory must hold plain copies: no redirects for
            // renamed directories, no metadata-only copy-ups (kernels where
            // these features default to on); older kernels lack the options
            if mount(format!("{data},redirect_dir=off,metacopy=off,index=off")).is_err() {
                mount(data)?;
            }
        } else {
            mount(data)?;
        }
        Ok(OverlayMount { target: target.to_owned(), mounted: true })
    }

    /// The merged tree.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting a failure.
    pub fn unmount(mut self) -> io::Result<()> {
        self.mounted = false;
        rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::empty()).map_err(io::Error::from)
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Whether overlayfs can be mounted here (checked once per process).
pub(crate) fn overlay_available(scratch: &Path) -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let Ok(dir) = tempfile::Builder::new().prefix("probe-").tempdir_in(scratch) else { return false };
        let (lower, upper, work, merged) =
            (dir.path().join("l"), dir.path().join("u"), dir.path().join("w"), dir.path().join("m"));
        for d in [&lower, &upper, &work, &merged] {
            if std::fs::create_dir(d).is_err() {
                return false;
            }
        }
        match OverlayMount::mount(&[lower], Some((&upper, &work)), &merged) {
            Ok(m) => m.unmount().is_ok(),
            Err(_) => false,
        }
    })
}

/// Removes the mount point `rel` that the runtime made under `root` for a
/// `RUN`, if it is still what the runtime made: an empty directory or an
/// empty regular file. Every component is opened relative to the one
/// before without following symlinks, so a path the container changed (a
/// parent swapped for a symlink to a host directory) is left alone rather
/// than followed out of `root`.
pub(crate) fn remove_stub(root: &Path, rel: &Path) {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = parts.split_last() else { return };
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let Ok(mut dir) = rustix::fs::open(root, flags, Mode::empty()) else { return };
    for p in parents {
        match rustix::fs::openat(&dir, *p, flags, Mode::empty()) {
            Ok(d) => dir = d,
            // gone, not a directory, or a symlink: not the runtime's any more
            Err(_) => return,
        }
    }
    let Ok(st) = rustix::fs::statat(&dir, *last, AtFlags::SYMLINK_NOFOLLOW) else { return };
    match FileType::from_raw_mode(st.st_mode) {
        // fails when not empty: then the command put something there
        FileType::Directory => {
            let _ = rustix::fs::unlinkat(&dir, *last, AtFlags::REMOVEDIR);
        }
        FileType::RegularFile if st.st_size == 0 => {
            let _ = rustix::fs::unlinkat(&dir, *last, AtFlags::empty());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_removal_never_follows_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let (root, host) = (d.path().join("root"), d.path().join("host"));
        std::fs::create_dir_all(root.join("moved/b")).unwrap();
        std::fs::create_dir_all(host.join("b")).unwrap();
        std::fs::write(host.join("f"), "").unwrap();
        std::os::unix::fs::symlink(&host, root.join("a")).unwrap();
        remove_stub(&root, Path::new("a/b"));
        remove_stub(&root, Path::new("a/f"));
        remove_stub(&root, Path::new("a"));
        assert!(host.join("b").is_dir() && host.join("f").is_file(), "followed the symlink out of the root");
        assert!(std::fs::symlink_metadata(root.join("a")).unwrap().is_symlink());
        // what the runtime made and nobody touched goes
        std::fs::write(root.join("moved/empty"), "").unwrap();
        std::fs::write(root.join("moved/full"), "x").unwrap();
        remove_stub(&root, Path::new("moved/b"));
        remove_stub(&root, Path::new("moved/empty"));
        remove_stub(&root, Path::new("moved/full"));
        remove_stub(&root, Path::new("moved"));
        assert!(!root.join("moved/b").exists() && !root.join("moved/empty").exists());
        assert!(root.join("moved/full").exists(), "a file with content is the command's");
    }
}
