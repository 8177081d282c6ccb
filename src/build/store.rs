//! The local content store of builds: blobs in an OCI layout, layers
//! extracted once each (in overlayfs form, ready to stack), and the step
//! cache.
//!
//! ```text
//! <root>/oci/            OCI layout: every blob a build made or pulled
//! <root>/l/<id>/         one extracted layer per blob digest (overlay form)
//! <root>/cache/<key>     step cache records: key -> layer (or none)
//! <root>/tmp/build-*/    each build's scratch space on the same file system
//!                        (overlay mounts, runc bundles and state, staged
//!                        files), locked by its build while it runs
//! <root>/cache-mounts/   `RUN --mount=type=cache` directories
//! ```
//!
//! The cache is its user's alone: the root and kiln's own directories in
//! it are created `0700` and checked on every open (owned by the user
//! running kiln, closed to group and others), since extracted layers hold
//! setuid files and the blobs feed the next build. What is *inside* an
//! extracted layer (`l/<id>/` and below) keeps the image's owners and modes
//! and is never checked: those are the image's, as containers-storage keeps
//! its `diff/` directories.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_image::{Descriptor, Digest, Layout};

use super::{BuildError, CacheKey, StepCache, StepRecord};

#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub root: PathBuf,
    pub layout: Layout,
    build: std::sync::Arc<BuildDir>,
}

/// A build's own scratch directory under `tmp/`, held by an exclusive
/// `flock` on the directory for as long as the build runs: a build killed
/// (even by `SIGKILL`) loses the lock with its process, and the next build
/// on the cache reclaims what it left ([`reclaim_builds`]) without touching
/// a live build's directory.
#[derive(Debug)]
struct BuildDir {
    path: PathBuf,
    _lock: fs::File,
}

impl BuildDir {
    fn create(tmp: &Path) -> Result<BuildDir, BuildError> {
        let (dir, lock) = oci_image::locked_tempdir_in(tmp, "build-").map_err(BuildError::io("create", tmp))?;
        Ok(BuildDir { path: dir.keep(), _lock: lock })
    }
}

/// The mount points under `dir` (from `/proc/self/mountinfo`), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// A mountinfo path: spaces, tabs, newlines and backslashes come octal-escaped.
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes.get(i + 1..i + 4).filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(v) = octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            out.push(v);
            i += 4;
        } else {
            out.push(b);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Everything a build left in its scratch directory `dir`: its containers'
/// runtime state (`runc delete --force`, which also removes their cgroups),
/// the mounts under it (lazily unmounted, deepest first), then the files.
/// Returns what could not be undone.
fn clean_build_dir(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for bundle in fs::read_dir(dir).into_iter().flatten().flatten() {
        let state = bundle.path().join("state");
        for container in fs::read_dir(&state).into_iter().flatten().flatten() {
            let name = container.file_name();
            let args = [std::ffi::OsStr::new("delete"), "--force".as_ref(), &name];
            if !super::exec::runc_quiet(Path::new("runc"), &state, args) {
                problems.push(format!("runc delete {}", container.path().display()));
            }
        }
    }
    for m in mounts_under(dir) {
        if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
            problems.push(format!("unmount {}: {e}", m.display()));
        }
    }
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        problems.push(format!("remove {}: {e}", dir.display()));
    }
    problems
}

/// Reclaims what killed builds left under `tmp/`: every `build-*`
/// directory whose lock no live build holds, and the temporary blob files
/// of dead writers in the store's layout. Returns the directories reclaimed.
fn reclaim_builds(tmp: &Path, layout: &Layout) -> Vec<PathBuf> {
    // a file named like a build's directory is not one: left alone
    let reclaimed = oci_image::reclaim_stale_with(tmp, "build-", &mut |path, is_dir| {
        if !is_dir {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let _ = clean_build_dir(path);
        Ok(())
    });
    let _ = layout.reclaim();
    reclaimed.unwrap_or_default()
}

fn short(digest: &Digest) -> String {
    digest.encoded().chars().take(24).collect()
}

/// kiln's own directories in the cache root, each `0700`.
const OWN_DIRS: [&str; 5] = ["oci", "l", "cache", "tmp", "cache-mounts"];

/// Why a cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// No cache directory was given and the environment names none.
    #[error(
        "no cache directory: set KILN_CACHE_DIR, XDG_CACHE_HOME or HOME, or name one (kiln never falls back to a directory other users can write to, such as /tmp)"
    )]
    NoDirectory,
    /// A cache directory belongs to another user or lets other users in.
    #[error(
        "refusing cache directory {path}: owner uid {owner}, mode {mode:04o}; it must belong to uid {uid} (the user running kiln) and be closed to group and others (chmod 700)"
    )]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The user running kiln.
        uid: u32,
    },
    /// A cache directory is something else (a file, a symlink, a device).
    #[error("refusing cache directory {path}: it is {what}, not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
}

/// Creates `dir` with mode 0700 when missing (its parents as `mkdir -p`
/// would), tolerating a concurrent creator.
fn create_private_dir(dir: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::DirBuilderExt;
    if fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(BuildError::io("create", parent))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(BuildError::io("create", dir)(e)),
    }
}

/// Checks that `dir` is a directory owned by the user running kiln and
/// closed to everyone else. `follow`: a symlink to such a directory is
/// accepted (for the cache root, which a user may point elsewhere, when the
/// link is theirs too); kiln's own directories must be real directories.
fn check_private_dir(dir: &Path, follow: bool) -> Result<(), BuildError> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::geteuid().as_raw();
    let link = fs::symlink_metadata(dir).map_err(BuildError::io("inspect", dir))?;
    let meta = if link.file_type().is_symlink() {
        if !follow {
            return Err(CacheError::NotADirectory { path: dir.to_owned(), what: "a symlink" }.into());
        }
        if link.uid() != uid {
            return Err(CacheError::Unsafe { path: dir.to_owned(), owner: link.uid(), mode: 0o777, uid }.into());
        }
        fs::metadata(dir).map_err(BuildError::io("inspect", dir))?
    } else {
        link
    };
    if !meta.is_dir() {
        let what = if meta.is_file() { "a file" } else { "not a directory" };
        return Err(CacheError::NotADirectory { path: dir.to_owned(), what }.into());
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid || mode & 0o077 != 0 {
        return Err(CacheError::Unsafe { path: dir.to_owned(), owner: meta.uid(), mode, uid }.into());
    }
    Ok(())
}

impl Store {
    /// Opens the store at `root`, creating it (0700) when missing; refuses
    /// a root or one of kiln's directories in it that another user owns or
    /// can enter ([`CacheError::Unsafe`]).
    pub fn open(root: &Path) -> Result<Store, BuildError> {
        create_private_dir(root)?;
        check_private_dir(root, true)?;
        for d in OWN_DIRS {
            let dir = root.join(d);
            create_private_dir(&dir)?;
            check_private_dir(&dir, false)?;
        }
        let layout = Layout::create(root.join("oci")).map_err(|e| BuildError::Layout(Box::new(e)))?;
        let tmp = root.join("tmp");
        reclaim_builds(&tmp, &layout);
        let build = std::sync::Arc::new(BuildDir::create(&tmp)?);
        Ok(Store { root: root.to_owned(), layout, build })
    }

    /// This build's own scratch directory.
    pub fn build_dir(&self) -> &Path {
        &self.build.path
    }

    /// Removes this build's scratch directory (what a killed build leaves,
    /// the next one reclaims instead); returns what could not be undone.
    pub fn finish(&self) -> Vec<String> {
        clean_build_dir(&self.build.path)
    }

    /// Where the layer blob `digest` is (or will be) extracted: `copy` 0
    /// is the layer's directory, others are further copies for a chain that
    /// stacks the same layer again over other layers.
    pub fn layer_dir(&self, digest: &Digest, copy: usize) -> PathBuf {
        let dir = self.root.join("l");
        if copy == 0 { dir.join(short(digest)) } else { dir.join(format!("{}.{copy}", short(digest))) }
    }

    /// A fresh directory in this build's scratch space, removed when dropped.
    pub fn tempdir(&self, prefix: &str) -> Result<tempfile::TempDir, BuildError> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.build.path)
            .map_err(BuildError::io("create", &self.build.path))
    }

    /// Reads each blob of `blobs` in the store again and drops the ones
    /// that do not match their digest or size (a flipped bit, a tampered
    /// file), so that they are made or fetched again; returns those.
    pub fn drop_corrupt(&self, blobs: &[Descriptor]) -> Vec<Digest> {
        let mut dropped = Vec::new();
        for d in blobs {
            let Ok(f) = self.layout.open_blob(&d.digest) else { continue };
            if oci_image::verify(f, &d.digest, d.size).is_err() {
                let _ = fs::remove_file(self.layout.blob_path(&d.digest));
                dropped.push(d.digest.clone());
            }
        }
        dropped
    }

    /// Moves a finished extraction into place as `target`, a layer's
    /// directory (another build may have got there first: then keeps theirs).
    pub fn adopt_layer_dir(target: &Path, dir: tempfile::TempDir) -> io::Result<PathBuf> {
        let target = target.to_owned();
        if target.exists() {
            return Ok(target);
        }
        let path = dir.keep();
        match fs::rename(&path, &target) {
            Ok(()) => Ok(target),
            Err(_) if target.exists() => {
                let _ = fs::remove_dir_all(&path);
                Ok(target)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }
}

/// The default store: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
/// `$HOME/.cache/kiln`.
///
/// # Errors
/// [`CacheError::NoDirectory`] when none of them is set: kiln never falls
/// back to a shared directory such as `/tmp`, where another user could
/// prepare the cache (and the base layers a build runs) in advance.
pub fn default_cache_dir() -> Result<PathBuf, CacheError> {
    cache_dir_from(|name| std::env::var_os(name))
}

/// [`default_cache_dir`] with the environment read through `var`. Empty
/// values count as unset, and so do relative `XDG_CACHE_HOME` and `HOME`
/// (the XDG base directory specification ignores relative paths).
fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf, CacheError> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = set("KILN_CACHE_DIR") {
        return Ok(d);
    }
    if let Some(d) = set("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return Ok(d.join("kiln"));
    }
    match set("HOME").filter(|d| d.is_absolute()) {
        Some(h) => Ok(h.join(".cache").join("kiln")),
        None => Err(CacheError::NoDirectory),
    }
}

/// The default step cache: one JSON record per key in `cache/`, written
/// atomically; a record that cannot be read is a miss.
impl StepCache for Store {
    fn get(&self, key: &CacheKey) -> Option<StepRecord> {
        let bytes = fs::read(self.cache_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn put(&self, key: &CacheKey, record: &StepRecord) {
        let Ok(bytes) = serde_json::to_vec(record) else { return };
        let path = self.cache_path(key);
        let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&self.build.path) else { return };
        if io::Write::write_all(&mut tmp, &bytes).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}

impl Store {
    fn cache_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("cache").join(key.digest().encoded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).map(std::ffi::OsString::from)
    }

    #[test]
    fn without_home_or_xdg_there_is_no_default_cache_and_never_a_shared_one() {
        assert!(matches!(cache_dir_from(env(&[])), Err(CacheError::NoDirectory)));
        assert!(matches!(cache_dir_from(env(&[("HOME", "")])), Err(CacheError::NoDirectory)));
        assert!(matches!(cache_dir_from(env(&[("HOME", "relative")])), Err(CacheError::NoDirectory)));
        assert!(matches!(cache_dir_from(env(&[("TMPDIR", "/tmp")])), Err(CacheError::NoDirectory)));
        assert_eq!(cache_dir_from(env(&[("HOME", "/home/u")])).unwrap(), Path::new("/home/u/.cache/kiln"));
        let xdg = env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/c")]);
        assert_eq!(cache_dir_from(xdg).unwrap(), Path::new("/c/kiln"));
        let rel_xdg = env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "rel")]);
        assert_eq!(cache_dir_from(rel_xdg).unwrap(), Path::new("/home/u/.cache/kiln"));
        let own = env(&[("KILN_CACHE_DIR", "/k"), ("HOME", "/home/u")]);
        assert_eq!(cache_dir_from(own).unwrap(), Path::new("/k"));
        let msg = CacheError::NoDirectory.to_string();
        assert!(msg.contains("HOME") && msg.contains("XDG_CACHE_HOME"), "{msg}");
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b/c\\134d"), Path::new("/a b/c\\d"));
        assert_eq!(unescape_mountinfo("/plain"), Path::new("/plain"));
    }

    #[test]
    fn a_dead_builds_scratch_is_reclaimed_and_a_live_ones_is_not() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let live = Store::open(&root).unwrap();
        std::fs::write(live.build_dir().join("work"), "x").unwrap();
        // a build that died: its directory, with no lock held on it
        let dead = root.join("tmp/build-dead");
        std::fs::create_dir_all(dead.join("r-1/upper")).unwrap();
        let other = Store::open(&root).unwrap();
        assert!(!dead.exists(), "a dead build's scratch stays");
        assert!(live.build_dir().join("work").exists(), "a live build's scratch was taken");
        assert!(live.finish().is_empty() && other.finish().is_empty());
        assert!(!live.build_dir().exists());
    }

    #[test]
    fn the_cache_and_kilns_directories_are_created_private() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("deep/er/cache");
        Store::open(&root).unwrap();
        for p in std::iter::once(root.clone()).chain(OWN_DIRS.iter().map(|o| root.join(o))) {
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700, "{}", p.display());
        }
        // opening again is fine
        Store::open(&root).unwrap();
    }

    #[test]
    fn a_cache_directory_open_to_others_is_refused_naming_path_owner_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        Store::open(&root).unwrap();
        for dir in [root.clone(), root.join("l"), root.join("oci")] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
            let err = Store::open(&root).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, BuildError::Cache(CacheError::Unsafe { mode: 0o755, .. })), "{msg}");
            assert!(
                msg.contains(&dir.display().to_string()) && msg.contains("0755") && msg.contains("owner uid"),
                "{msg}"
            );
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        }
        // kiln's own directories are never symlinks
        fs::rename(root.join("tmp"), d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("tmp")).unwrap();
        let err = Store::open(&root).unwrap_err();
        assert!(matches!(err, BuildError::Cache(CacheError::NotADirectory { .. })), "{err}");
    }
}
