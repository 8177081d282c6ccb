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
            // these features default to on); older kernels lack the options.
            // `volatile` (Linux 5.10): the upper directory is thrown away or
            // read back by this process, never needed after a crash, and
            // without it every unmount syncs the whole file system under
            // it, everything anyone wrote there (276 ms at the start of a
            // build with 400 MB of someone else's writes pending)
            let plain = format!("{data},redirect_dir=off,metacopy=off,index=off");
            if mount(format!("{plain},volatile")).is_err() && mount(plain).is_err() {
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

/// Opens the directory holding `rel` under `root`, component by component
/// without following symlinks: the directory and the last name. `None`
/// when a component is missing, not a directory, or a symlink (a path the
/// container changed is never followed out of `root`).
fn open_parent(root: &Path, rel: &Path) -> Option<(rustix::fd::OwnedFd, std::ffi::OsString)> {
    use rustix::fs::{Mode, OFlags};
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let (last, parents) = parts.split_last()?;
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let mut dir = rustix::fs::open(root, flags, Mode::empty()).ok()?;
    for p in parents {
        dir = rustix::fs::openat(&dir, *p, flags, Mode::empty()).ok()?;
    }
    Some((dir, (*last).to_owned()))
}

/// Removes the mount point `rel` that the runtime made under `root` for a
/// `RUN`, if it is still what the runtime made: an empty directory or an
/// empty regular file. Every component is opened relative to the one
/// before without following symlinks, so a path the container changed (a
/// parent swapped for a symlink to a host directory) is left alone rather
/// than followed out of `root`.
pub(crate) fn remove_stub(root: &Path, rel: &Path) {
    use rustix::fs::{AtFlags, FileType};
    let Some((dir, last)) = open_parent(root, rel) else { return };
    let Ok(st) = rustix::fs::statat(&dir, &last, AtFlags::SYMLINK_NOFOLLOW) else { return };
    match FileType::from_raw_mode(st.st_mode) {
        // fails when not empty: then the command put something there
        FileType::Directory => {
            let _ = rustix::fs::unlinkat(&dir, &last, AtFlags::REMOVEDIR);
        }
        FileType::RegularFile if st.st_size == 0 => {
            let _ = rustix::fs::unlinkat(&dir, &last, AtFlags::empty());
        }
        _ => {}
    }
}

/// A directory above a mount point, as it was before the `RUN`.
#[derive(Debug, Clone)]
pub(crate) struct Parent {
    rel: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    atime: rustix::fs::Timespec,
    mtime: rustix::fs::Timespec,
}

impl Parent {
    /// `rel` under `root` as it is now, when it is a directory.
    pub(crate) fn read(root: &Path, rel: &Path) -> Option<Parent> {
        let (dir, last) = open_parent(root, rel)?;
        Parent::at(&dir, &last, rel)
    }

    /// `last` in the open directory `dir` (which is `rel`'s parent), when
    /// it is a directory.
    fn at(dir: &rustix::fd::OwnedFd, last: &std::ffi::OsStr, rel: &Path) -> Option<Parent> {
        let st = rustix::fs::statat(dir, last, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory).then(|| Parent {
            rel: rel.to_owned(),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: rustix::fs::Timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec.cast_signed() },
            mtime: rustix::fs::Timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec.cast_signed() },
        })
    }
}

/// Makes the directories above the mount points of a `RUN` what they were
/// before it, when the command left them alone (same mode and owner, and
/// nothing in them the command made), so that no mount point leaves a
/// trace in the layer. On an overlay's upper directory (`upper`), a parent
/// the runtime's `mkdir` copied up is dropped again (unless opaque: the
/// command re-created it); on a flattened tree, its times are put back.
/// Paths are opened without following symlinks, as in [`remove_stub`].
pub(crate) fn restore_parents(root: &Path, parents: &[Parent], upper: bool) {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let mut deepest_first: Vec<&Parent> = parents.iter().collect();
    deepest_first.sort_by_key(|p| std::cmp::Reverse(p.rel.components().count()));
    for p in deepest_first {
        let Some((dir, last)) = open_parent(root, &p.rel) else { continue };
        let Some(now) = Parent::at(&dir, &last, &p.rel) else { continue };
        if (now.mode, now.uid, now.gid) != (p.mode, p.uid, p.gid) {
            continue;
        }
        if upper {
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
            let Ok(fd) = rustix::fs::openat(&dir, &last, flags, Mode::empty()) else { continue };
            let mut buf = [0u8; 8];
            if rustix::fs::fgetxattr(&fd, "trusted.overlay.opaque", &mut buf).is_ok() {
                continue;
            }
            // fails when not empty: then the command changed something in it
            let _ = rustix::fs::unlinkat(&dir, &last, AtFlags::REMOVEDIR);
        } else {
            let times = rustix::fs::Timestamps { last_access: p.atime, last_modification: p.mtime };
            let _ = rustix::fs::utimensat(&dir, &last, &times, AtFlags::SYMLINK_NOFOLLOW);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overlay with an upper directory is mounted `volatile` where the
    /// kernel has it (5.10 on), so that its unmount does not sync the whole
    /// file system under it.
    #[test]
    fn an_overlay_with_an_upper_directory_is_volatile() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("note: not root, overlayfs not mounted; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = ["l", "u", "w", "m"].iter().map(|n| d.path().join(n)).collect();
        for dir in &dirs {
            std::fs::create_dir(dir).unwrap();
        }
        let Ok(m) = OverlayMount::mount(&dirs[..1], Some((&dirs[1], &dirs[2])), &dirs[3]) else {
            eprintln!("note: overlayfs cannot be mounted here; skipping");
            return;
        };
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let target = dirs[3].to_str().unwrap();
        let line = info.lines().find(|l| l.split(' ').nth(4) == Some(target)).unwrap().to_owned();
        m.unmount().unwrap();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_owned();
        let mut version = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
        if (major, minor) >= (5, 10) {
            // newer kernels show it as `fsync=volatile`
            let volatile = line.split([' ', ',']).any(|o| o == "volatile" || o == "fsync=volatile");
            assert!(volatile, "not volatile on {release}: {line}");
        }
    }

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
