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
