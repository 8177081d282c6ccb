//! Applying layers onto a directory, safely.
//!
//! Every entry name and hard-link target is cleaned lexically (`..` stops at
//! the root) and then resolved one component at a time under the root, with
//! symlinks followed the way a `chroot` would (an absolute target starts over
//! at the root, `..` never climbs above it). Only the final component is
//! touched, and never through a symlink (`lstat`, `unlink`, `O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`). A symlink created by an earlier entry is therefore
//! resolved inside the root like any other: no entry, hard link or symlink
//! chain can read, write or delete outside it. The resolution is written here
//! because it has to create missing parents and replace non-directory parents
//! as it goes (layer semantics) and report what it created; it assumes no one
//! else changes the tree while a layer is applied.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_image::{Descriptor, Digest, DigestReader, VerifyError, VerifyingReader};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};

use crate::compress::Decompressor;
use crate::idmap::IdMap;
use crate::snapshot::keep_xattr;
use crate::writer::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Reading the layer or changing the tree failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved (inside the root, or the root for the stream).
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The blob does not match its descriptor's digest or size.
    #[error("layer blob {digest} does not verify")]
    Verify {
        /// The expected digest.
        digest: Digest,
        /// The mismatch.
        #[source]
        source: Box<VerifyError>,
    },
    /// The uncompressed layer is larger than the configured limit.
    #[error("layer is larger than the limit of {limit} uncompressed bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The descriptor's media type is not a layer.
    #[error("media type {media_type} is not a layer")]
    NotALayer {
        /// The media type.
        media_type: String,
    },
    /// A whiteout names nothing (`.wh.` alone).
    #[error("whiteout with an empty name at {path}")]
    EmptyWhiteout {
        /// The entry name.
        path: PathBuf,
    },
    /// A whiteout names `.` or `..` (`.wh..`, `.wh...`): its own directory or
    /// the parent, never an entry of the layer.
    #[error("whiteout of . or .. at {path}")]
    InvalidWhiteout {
        /// The entry name.
        path: PathBuf,
    },
    /// A hard link whose target does not exist in the root or is a directory.
    #[error("hard link {path} to {target}: target missing or a directory")]
    LinkTarget {
        /// The entry name.
        path: PathBuf,
        /// The link target.
        target: PathBuf,
    },
    /// Resolving a path met too many symlinks (a loop).
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop {
        /// The entry name.
        path: PathBuf,
    },
    /// An entry type kiln does not extract (GNU sparse files and the like).
    #[error("unsupported tar entry type {entry_type} at {path}")]
    Unsupported {
        /// The entry name.
        path: PathBuf,
        /// The tar type flag.
        entry_type: u8,
    },
}

/// How to apply layers.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Set owners from the layer (default: when running as root).
    pub chown: bool,
    /// Create block and character devices (default: when running as root);
    /// when `false` they are skipped.
    pub mknod: bool,
    /// Map the layer's (container) ids to host ids before `chown`.
    pub id_map: Option<IdMap>,
    /// Fail once the uncompressed layer exceeds this many bytes (gzip/zstd bombs).
    pub size_limit: Option<u64>,
    /// Write whiteouts in overlayfs form instead of deleting (an overlayfs
    /// upper directory): a whiteout becomes a character device 0:0, an opaque
    /// directory gets `<namespace>.overlay.opaque=y`.
    pub overlay: Option<OverlayXattrs>,
}

/// The xattr namespace of overlayfs markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverlayXattrs {
    /// `trusted.overlay.*` (needs `CAP_SYS_ADMIN`).
    Trusted,
    /// `user.overlay.*` (rootless overlayfs, the `userxattr` mount option).
    User,
}

impl OverlayXattrs {
    fn opaque(self) -> &'static str {
        match self {
            OverlayXattrs::Trusted => "trusted.overlay.opaque",
            OverlayXattrs::User => "user.overlay.opaque",
        }
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        ApplyOptions { chown: root, mknod: root, id_map: None, size_limit: None, overlay: None }
    }
}

/// What an applied layer was.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyInfo {
    /// sha256 of the uncompressed tar (the layer's diff id).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// Entries read (markers and whiteouts included).
    pub entries: u64,
    /// Device entries skipped because `mknod` was off.
    pub skipped_devices: u64,
}

/// Counts bytes and fails past a limit.
struct Limited<R> {
    inner: R,
    read: u64,
    limit: Option<u64>,
}

#[derive(Debug)]
struct OverLimit(u64);
impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "over the limit of {} bytes", self.0)
    }
}
impl std::error::Error for OverLimit {}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(limit) = self.limit
            && self.read > limit
        {
            return Err(io::Error::other(OverLimit(limit)));
        }
        Ok(n)
    }
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io { op, path: path.to_owned(), source }
}

/// Turns a stream error into the most specific [`ApplyError`].
fn stream_error(e: io::Error, root: &Path, digest: Option<&Digest>) -> ApplyError {
    if let Some(limit) = e.get_ref().and_then(|i| i.downcast_ref::<OverLimit>()) {
        return ApplyError::TooLarge { limit: limit.0 };
    }
    if let Some(d) = digest
        && e.get_ref().is_some_and(|i| i.is::<VerifyError>())
    {
        return ApplyError::Verify { digest: d.clone(), source: Box::new(oci_image::into_verify_error(e, d)) };
    }
    ApplyError::Io { op: "read layer for", path: root.to_owned(), source: e }
}

/// Lexically cleans a tar name into root-relative components (`..` stops at the root).
fn clean(name: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            p => out.push(OsStr::from_bytes(p).to_owned()),
        }
    }
    out
}

/// Applies one tar stream onto a root.
struct Applier<'a> {
    root: &'a Path,
    opts: &'a ApplyOptions,
    /// Root-relative resolved paths written by this layer, and their ancestors.
    written: HashSet<PathBuf>,
    /// Root-relative resolved directories whose times are set once the layer
    /// is done (children change them).
    dir_times: Vec<(PathBuf, Timespec)>,
    info_entries: u64,
    skipped_devices: u64,
    buf: Vec<u8>,
}

/// An entry's metadata from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn parse_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nsec: i64 = 0;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        nsec = format!("{digits:0<9}").parse().ok()?;
    }
    Some(Timespec { tv_sec: sec, tv_nsec: nsec })
}

impl Applier<'_> {
    fn mark_written(&mut self, rel: &Path) {
        for a in rel.ancestors() {
            if !self.written.insert(a.to_owned()) {
                break;
            }
        }
    }

    /// Resolves `parts` as a directory inside the root (chroot-style), creating
    /// missing directories and replacing non-directories when `create`.
    /// Returns the resolved root-relative path, or `None` when it does not exist.
    fn resolve_dir(&mut self, parts: &[OsString], name: &Path, create: bool) -> Result<Option<PathBuf>, ApplyError> {
        let root = self.root;
        let made = crate::inroot::walk(root, parts.iter().cloned(), |host, rel, what| {
            if !create {
                return Ok(false);
            }
            if what == crate::inroot::Other::NotDir {
                fs::remove_file(host).map_err(io_at("replace non-directory parent", rel))?;
            }
            self.mkdir(host, rel)?;
            Ok(true)
        });
        made.map_err(|e| match e {
            crate::inroot::WalkError::TooManyLinks => ApplyError::SymlinkLoop { path: name.to_owned() },
            crate::inroot::WalkError::Io(op, path, source) => ApplyError::Io { op, path, source },
            crate::inroot::WalkError::Other(e) => e,
        })
    }

    fn mkdir(&mut self, host: &Path, rel: &Path) -> Result<(), ApplyError> {
        fs::create_dir(host).map_err(io_at("create directory", rel))?;
        self.mark_written(rel);
        Ok(())
    }

    /// Removes whatever is at `host` without following it.
    fn remove(host: &Path, rel: &Path) -> Result<(), ApplyError> {
        match fs::symlink_metadata(host) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(host).map_err(io_at("remove", rel)),
            Ok(_) => fs::remove_file(host).map_err(io_at("remove", rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at("stat", rel)(e)),
        }
    }

    fn times_of(host: &Path) -> Option<(Timespec, Timespec)> {
        let st = rustix::fs::lstat(host).ok()?;
        Some((
            Timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec.cast_signed() },
            Timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec.cast_signed() },
        ))
    }

    fn restore_times(host: &Path, times: Option<(Timespec, Timespec)>) {
        if let Some((atime, mtime)) = times {
            let ts = Timestamps { last_access: atime, last_modification: mtime };
            // best effort: the directory may be gone again by now
            let _ = rustix::fs::utimensat(CWD, host, &ts, AtFlags::SYMLINK_NOFOLLOW);
        }
    }

    fn whiteout(&mut self, parent: &[OsString], target: &OsStr, name: &Path) -> Result<(), ApplyError> {
        // an overlayfs upper directory needs the whiteout even where the parent is missing
        let create = self.opts.overlay.is_some();
        let Some(dir) = self.resolve_dir(parent, name, create)? else { return Ok(()) };
        let dir_host = self.root.join(&dir);
        let times = Self::times_of(&dir_host);
        let rel = dir.join(target);
        let host = self.root.join(&rel);
        Self::remove(&host, &rel)?;
        if self.opts.overlay.is_some() {
            rustix::fs::mknodat(CWD, &host, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
                .map_err(|e| io_at("create overlay whiteout", &rel)(e.into()))?;
            self.mark_written(&rel);
        }
        Self::restore_times(&dir_host, times);
        Ok(())
    }

    fn opaque(&mut self, parent: &[OsString], name: &Path) -> Result<(), ApplyError> {
        let Some(dir) = self.resolve_dir(parent, name, false)? else { return Ok(()) };
        let dir_host = self.root.join(&dir);
        let times = Self::times_of(&dir_host);
        self.clear_lower(&dir)?;
        if let Some(ns) = self.opts.overlay {
            xattr::set(&dir_host, ns.opaque(), b"y").map_err(io_at("mark opaque", &dir))?;
        }
        Self::restore_times(&dir_host, times);
        Ok(())
    }

    /// Removes everything under `dir` that this layer did not write.
    fn clear_lower(&self, dir: &Path) -> Result<(), ApplyError> {
        let host = self.root.join(dir);
        let mut names = Vec::new();
        for e in fs::read_dir(&host).map_err(io_at("read directory", dir))? {
            names.push(e.map_err(io_at("read directory", dir))?.file_name());
        }
        for n in names {
            let rel = dir.join(&n);
            let child = self.root.join(&rel);
            if self.written.contains(&rel) {
                let is_dir = fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir());
                if is_dir {
                    self.clear_lower(&rel)?;
                }
            } else {
                Self::remove(&child, &rel)?;
            }
        }
        Ok(())
    }

    fn apply_meta(&mut self, host: &Path, rel: &Path, meta: &Meta, kind: tar::EntryType) -> Result<(), ApplyError> {
        let symlink = kind == tar::EntryType::Symlink;
        if self.opts.chown {
            let (uid, gid) = match &self.opts.id_map {
                Some(m) => (m.to_host_uid(meta.uid), m.to_host_gid(meta.gid)),
                None => (meta.uid, meta.gid),
            };
            rustix::fs::chownat(
                CWD,
                host,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_at("chown", rel)(e.into()))?;
        }
        for (k, v) in &meta.xattrs {
            // user.* xattrs are not allowed on symlinks
            if keep_xattr(k) && !(symlink && k.starts_with("user.")) {
                xattr::set(host, k, v).map_err(io_at("set xattr on", rel))?;
            }
        }
        if !symlink {
            // after chown, which clears setuid/setgid
            fs::set_permissions(host, fs::Permissions::from_mode(meta.mode & 0o7777)).map_err(io_at("chmod", rel))?;
        }
        if kind == tar::EntryType::Directory {
            self.dir_times.push((rel.to_owned(), meta.mtime));
        } else {
            let ts = Timestamps { last_access: meta.mtime, last_modification: meta.mtime };
            rustix::fs::utimensat(CWD, host, &ts, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_at("set times of", rel)(e.into()))?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ApplyError> {
        self.info_entries += 1;
        let kind = entry.header().entry_type();
        let raw_name = entry.path_bytes().into_owned();
        let name = PathBuf::from(OsStr::from_bytes(&raw_name));
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName) {
            return Ok(());
        }
        let mut parts = clean(&raw_name);
        let Some(base) = parts.pop() else {
            // the root itself ("./"): only its metadata
            if kind == tar::EntryType::Directory {
                let meta = Self::meta(&mut entry, &name)?;
                let root = self.root.to_owned();
                self.apply_meta(&root, Path::new(""), &meta, kind)?;
            }
            return Ok(());
        };
        if parts.iter().any(|p| p.as_bytes().starts_with(b".wh..wh.")) {
            // inside AUFS metadata (.wh..wh.plnk/...): never extracted
            return Ok(());
        }
        let base_bytes = base.as_bytes();
        if let Some(rest) = base_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if base_bytes == OPAQUE_MARKER.as_bytes() {
                return self.opaque(&parts, &name);
            }
            if rest.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // other .wh..wh. names are AUFS metadata (.wh..wh.plnk, ...): never extracted
                return Ok(());
            }
            if rest.is_empty() {
                return Err(ApplyError::EmptyWhiteout { path: name });
            }
            if rest == b"." || rest == b".." {
                // would remove the whiteout's own directory or its parent (outside the root at the top)
                return Err(ApplyError::InvalidWhiteout { path: name });
            }
            return self.whiteout(&parts, OsStr::from_bytes(rest), &name);
        }
        let meta = Self::meta(&mut entry, &name)?;
        // refused or skipped entries leave no trace, not even their parent directories
        match kind {
            tar::EntryType::Directory
            | tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Symlink
            | tar::EntryType::Link
            | tar::EntryType::Fifo => {}
            tar::EntryType::Char | tar::EntryType::Block => {
                if !self.opts.mknod {
                    self.skipped_devices += 1;
                    return Ok(());
                }
            }
            other => return Err(ApplyError::Unsupported { path: name, entry_type: other.as_byte() }),
        }
        let Some(dir) = self.resolve_dir(&parts, &name, true)? else { return Ok(()) };
        let rel = dir.join(&base);
        let host = self.root.join(&rel);
        let existing = fs::symlink_metadata(&host).ok();
        match kind {
            tar::EntryType::Directory => {
                if !existing.as_ref().is_some_and(fs::Metadata::is_dir) {
                    Self::remove(&host, &rel)?;
                    fs::create_dir(&host).map_err(io_at("create directory", &rel))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => self.write_file(&mut entry, &host, &rel)?,
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| PathBuf::from(OsStr::from_bytes(&t))).unwrap_or_default();
                Self::remove(&host, &rel)?;
                std::os::unix::fs::symlink(&target, &host).map_err(io_at("create symlink", &rel))?;
            }
            tar::EntryType::Link => {
                // a hard link's header metadata is never applied: it is the target's inode
                self.hard_link(&entry, &name, &host, &rel)?;
                self.mark_written(&rel);
                return Ok(());
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let ft = match kind {
                    tar::EntryType::Fifo => FileType::Fifo,
                    tar::EntryType::Char => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                Self::remove(&host, &rel)?;
                rustix::fs::mknodat(CWD, &host, ft, Mode::from_raw_mode(0o600), rustix::fs::makedev(major, minor))
                    .map_err(|e| io_at("create device", &rel)(e.into()))?;
            }
            other => return Err(ApplyError::Unsupported { path: name, entry_type: other.as_byte() }),
        }
        self.mark_written(&rel);
        self.apply_meta(&host, &rel, &meta, kind)
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        host: &Path,
        rel: &Path,
    ) -> Result<(), ApplyError> {
        Self::remove(host, rel)?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
            .open(host)
            .map_err(io_at("create", rel))?;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream_error(e, rel, None)),
            };
            f.write_all(self.buf.get(..n).unwrap_or_default()).map_err(io_at("write", rel))?;
        }
        Ok(())
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        name: &Path,
        host: &Path,
        rel: &Path,
    ) -> Result<(), ApplyError> {
        let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        let target_name = PathBuf::from(OsStr::from_bytes(&target));
        let mut tparts = clean(&target);
        let link_err = || ApplyError::LinkTarget { path: name.to_owned(), target: target_name.clone() };
        let tbase = tparts.pop().ok_or_else(link_err)?;
        let tdir = self.resolve_dir(&tparts, name, false)?.ok_or_else(link_err)?;
        let src = self.root.join(tdir.join(&tbase));
        match fs::symlink_metadata(&src) {
            Ok(m) if !m.is_dir() => {}
            _ => return Err(link_err()),
        }
        if src != *host {
            Self::remove(host, rel)?;
            // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink
            fs::hard_link(&src, host).map_err(io_at("create hard link", rel))?;
        }
        Ok(())
    }

    fn meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &Path) -> Result<Meta, ApplyError> {
        let h = entry.header();
        let bad = |e| io_at("read header of", name)(e);
        // an empty numeric field reads as 0, as GNU tar does
        let mut meta = Meta {
            mode: h.mode().unwrap_or(0o644),
            uid: h.uid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            gid: h.gid().ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            mtime: Timespec { tv_sec: h.mtime().ok().and_then(|v| i64::try_from(v).ok()).unwrap_or(0), tv_nsec: 0 },
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(bad)? {
            for ext in pax {
                let ext = ext.map_err(bad)?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let num = || std::str::from_utf8(value).ok().and_then(|s| s.parse::<u32>().ok());
                if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                    meta.xattrs.push((x.to_owned(), value.to_vec()));
                } else if key == "uid" {
                    meta.uid = num().unwrap_or(meta.uid);
                } else if key == "gid" {
                    meta.gid = num().unwrap_or(meta.gid);
                } else if key == "mtime" {
                    meta.mtime = parse_time(value).unwrap_or(meta.mtime);
                }
            }
        }
        Ok(meta)
    }

    /// Sets the deferred directory times. A later entry may have replaced a
    /// parent of such a directory with a symlink, so each path is walked again
    /// from the root one component at a time without following symlinks, and
    /// a directory that is no longer reachable that way is left alone.
    fn finish_dirs(&mut self) -> Result<(), ApplyError> {
        use rustix::fs::OFlags;
        let walk = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = rustix::fs::open(self.root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io_at("open", self.root)(e.into()))?;
        for (rel, mtime) in self.dir_times.drain(..).rev() {
            let ts = Timestamps { last_access: mtime, last_modification: mtime };
            let mut parts: Vec<&OsStr> = rel.iter().collect();
            let Some(last) = parts.pop() else {
                rustix::fs::utimensat(&root, ".", &ts, AtFlags::empty())
                    .map_err(|e| io_at("set times of", self.root)(e.into()))?;
                continue;
            };
            let mut dir: Option<OwnedFd> = None;
            let mut reachable = true;
            for p in parts {
                let at = dir.as_ref().map_or(root.as_fd(), AsFd::as_fd);
                match rustix::fs::openat(at, p, walk, Mode::empty()) {
                    Ok(fd) => dir = Some(fd),
                    // gone, or no longer a directory (a symlink now): not ours to touch
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                        reachable = false;
                        break;
                    }
                    Err(e) => return Err(io_at("open", &rel)(e.into())),
                }
            }
            if !reachable {
                continue;
            }
            let at = dir.as_ref().map_or(root.as_fd(), AsFd::as_fd);
            match rustix::fs::utimensat(at, last, &ts, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(io_at("set times of", &rel)(e.into())),
            }
        }
        Ok(())
    }
}

/// Chunks of the tar stream handed from the reading thread to the applying one.
const CHUNK: usize = 256 * 1024;

/// The applying end of the pipe between the two threads of [`apply_stream`].
struct Chunks {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    /// Where a chunk read through goes back to, to be filled again.
    spent: std::sync::mpsc::Sender<Vec<u8>>,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    // the reading side may be gone: then the chunk is dropped
                    let _ = self.spent.send(std::mem::replace(&mut self.cur, chunk));
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // the reading side is done: end of stream
                Err(_) => return Ok(0),
            }
        }
        let rest = self.cur.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf.get_mut(..n).unwrap_or_default().copy_from_slice(rest.get(..n).unwrap_or_default());
        self.pos += n;
        Ok(n)
    }
}

/// Applies the tar stream `reader` yields. Two threads share the work: the
/// caller's reads the stream (decompression and the blob's verification)
/// and hands it over in chunks, a scoped helper hashes them for the diff
/// id, parses the tar and writes the tree, so decompressing and writing
/// files overlap (hashing on the helper's side keeps the two threads'
/// shares of the work close).
fn apply_stream<R: Read>(
    reader: R,
    root: &Path,
    opts: &ApplyOptions,
    digest: Option<&Digest>,
) -> Result<ApplyInfo, ApplyError> {
    let mut limited = Limited { inner: reader, read: 0, limit: opts.size_limit };
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    // chunks come back once read through: at most the few in flight are
    // ever made, and none is zeroed again
    let (spent, reuse) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let applier = s.spawn(|| apply_entries(Chunks { rx, cur: Vec::new(), pos: 0, spent }, root, opts, digest));
        loop {
            let mut chunk = reuse.try_recv().unwrap_or_default();
            chunk.resize(CHUNK, 0);
            let read = match crate::snapshot::read_full(&mut limited, &mut chunk) {
                Ok(n) => n,
                Err(e) => {
                    // the applier reports it where the tar reader meets it
                    let _ = tx.send(Err(e));
                    break;
                }
            };
            chunk.truncate(read);
            // a closed pipe: the applier stopped on an error it reports itself
            if read == 0 || tx.send(Ok(chunk)).is_err() {
                break;
            }
        }
        drop(tx);
        applier.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Hashes the tar from `chunks`, parses it and applies its entries.
fn apply_entries(
    chunks: Chunks,
    root: &Path,
    opts: &ApplyOptions,
    digest: Option<&Digest>,
) -> Result<ApplyInfo, ApplyError> {
    let mut archive = tar::Archive::new(DigestReader::new(chunks));
    let mut ap = Applier {
        root,
        opts,
        written: HashSet::new(),
        dir_times: Vec::new(),
        info_entries: 0,
        skipped_devices: 0,
        buf: vec![0u8; 128 * 1024],
    };
    {
        let entries = archive.entries().map_err(|e| stream_error(e, root, digest))?;
        for entry in entries {
            let entry = entry.map_err(|e| stream_error(e, root, digest))?;
            if let Err(e) = ap.entry(entry) {
                // a verification or limit failure surfaces through the entry's data
                return Err(match e {
                    ApplyError::Io { source, .. }
                        if source.get_ref().is_some_and(|i| i.is::<OverLimit>() || i.is::<VerifyError>()) =>
                    {
                        stream_error(source, root, digest)
                    }
                    other => other,
                });
            }
        }
    }
    ap.finish_dirs()?;
    // read to the end so the trailing bytes are hashed and the blob is verified
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_error(e, root, digest))?;
    let (_, diff_id, tar_size) = rest.finish();
    Ok(ApplyInfo { diff_id, tar_size, entries: ap.info_entries, skipped_devices: ap.skipped_devices })
}

/// Applies an uncompressed tar layer onto `root` (which must exist).
///
/// # Errors
/// [`ApplyError`] naming the entry that failed; the tree holds the entries
/// applied before it.
pub fn apply_tar<R: Read>(tar: R, root: &Path, opts: &ApplyOptions) -> Result<ApplyInfo, ApplyError> {
    apply_stream(tar, root, opts, None)
}

fn compression_of(desc: &Descriptor) -> Result<oci_image::Compression, ApplyError> {
    desc.media_type
        .layer_compression()
        .ok_or_else(|| ApplyError::NotALayer { media_type: desc.media_type.as_str().to_owned() })
}

/// Applies a layer blob described by `desc` onto `root`. The blob is first
/// read through once to check its digest and size, so a mismatch changes
/// nothing; then it is rewound, decompressed (per the media type) and applied.
///
/// # Errors
/// [`ApplyError::Verify`] for a blob that does not match `desc`,
/// [`ApplyError::NotALayer`] for a non-layer media type, and the errors of [`apply_tar`].
pub fn apply_blob<R: Read + Seek>(
    blob: R,
    desc: &Descriptor,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyInfo, ApplyError> {
    let (blob, compression) = verified(blob, desc, root)?;
    apply_verified(blob, compression, desc, root, opts)
}

/// Applies layer blobs onto `root` in order, as [`apply_blob`] does each,
/// but checks the next blob's digest on another thread while the one
/// before it is applied: nothing of a blob is written before it verifies,
/// and the layers before a failing one stay applied. Returns what each
/// layer applied.
///
/// # Errors
/// The first error of [`apply_blob`] for any of the blobs.
pub fn apply_blobs<'d, R, I>(blobs: I, root: &Path, opts: &ApplyOptions) -> Result<Vec<ApplyInfo>, ApplyError>
where
    R: Read + Seek + Send,
    I: IntoIterator<Item = (R, &'d Descriptor)>,
{
    let mut blobs = blobs.into_iter();
    let mut applied = Vec::new();
    std::thread::scope(|scope| {
        let check = |(blob, desc): (R, &'d Descriptor)| {
            scope.spawn(move || verified(blob, desc, root).map(|checked| (checked, desc)))
        };
        let mut next = blobs.next().map(check);
        while let Some(checking) = next.take() {
            let ((blob, compression), desc) = checking.join().map_err(|_| ApplyError::Io {
                op: "check a layer blob for",
                path: root.to_owned(),
                source: io::Error::other("the checking thread panicked"),
            })??;
            next = blobs.next().map(check);
            applied.push(apply_verified(blob, compression, desc, root, opts)?);
        }
        Ok(applied)
    })
}

/// `blob` read through once to check it against `desc`, then rewound
/// (`root`: where it is for), and its compression.
fn verified<R: Read + Seek>(
    mut blob: R,
    desc: &Descriptor,
    root: &Path,
) -> Result<(R, oci_image::Compression), ApplyError> {
    let compression = compression_of(desc)?;
    oci_image::verify(&mut blob, &desc.digest, desc.size)
        .map_err(|source| ApplyError::Verify { digest: desc.digest.clone(), source: Box::new(source) })?;
    blob.seek(SeekFrom::Start(0)).map_err(io_at("rewind blob for", root))?;
    Ok((blob, compression))
}

/// Applies `blob`, already [`verified`] against `desc`.
fn apply_verified<R: Read>(
    blob: R,
    compression: oci_image::Compression,
    desc: &Descriptor,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyInfo, ApplyError> {
    let reader = Decompressor::new(blob.take(desc.size), Some(compression)).map_err(io_at("decompress", root))?;
    apply_stream(reader, root, opts, None)
}

/// Applies a layer blob while verifying it, for blobs that can be read only
/// once (a network stream). A digest or size mismatch is reported when the
/// end of the blob is reached, after the entries before it were applied:
/// apply into a fresh directory when that matters.
///
/// # Errors
/// As [`apply_blob`].
pub fn apply_blob_streaming<R: Read>(
    blob: R,
    desc: &Descriptor,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyInfo, ApplyError> {
    let compression = compression_of(desc)?;
    let verifying = VerifyingReader::new(blob, &desc.digest, desc.size)
        .map_err(|source| ApplyError::Verify { digest: desc.digest.clone(), source: Box::new(source) })?;
    let reader =
        Decompressor::new(verifying, Some(compression)).map_err(|e| stream_error(e, root, Some(&desc.digest)))?;
    apply_stream(reader, root, opts, Some(&desc.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_clamps_at_root() {
        assert_eq!(clean(b"/../file"), [OsString::from("file")]);
        assert_eq!(clean(b"../victim/x"), [OsString::from("victim"), OsString::from("x")]);
        assert_eq!(clean(b"./a/./b/"), [OsString::from("a"), OsString::from("b")]);
        assert_eq!(clean(b"..gitme"), [OsString::from("..gitme")]);
        assert!(clean(b"./").is_empty());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_time(b"12.5"), Some(Timespec { tv_sec: 12, tv_nsec: 500_000_000 }));
        assert_eq!(parse_time(b"7"), Some(Timespec { tv_sec: 7, tv_nsec: 0 }));
        assert_eq!(parse_time(b"x"), None);
    }
}
