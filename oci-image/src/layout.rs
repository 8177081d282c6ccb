//! The OCI image layout on disk (`oci-layout`, `index.json`, `blobs/`).
//!
//! Blobs are written through a temporary file in the blob directory, checked
//! against their digest and size, and renamed into place atomically;
//! `index.json` is replaced atomically too. A failed or interrupted write
//! leaves the layout as it was. A big blob's data is synced while it is
//! written (a helper thread, every 2 MiB), so its final sync waits for the
//! tail only. A blob written for one layout can carry a second copy, made
//! in the same pass, that another layout on the same file system links in
//! ([`BlobCopy`], [`Layout::place_copy`]). A new layout is made in a temporary
//! directory beside its place and renamed there whole, so nobody ever sees
//! half a layout, and concurrent creators all end up with the same one.
//!
//! Every read-modify-write of `index.json` (tagging, untagging, gc) holds an
//! exclusive `flock` on `index.json.lock` in the layout, so concurrent kiln
//! writers never lose each other's tags. The lock coordinates kiln's writers
//! only: skopeo and umoci take no lock.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tempfile::NamedTempFile;

use crate::digest::into_verify_error;
use crate::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, AnyManifest, Descriptor, Digest, DigestWriter, Document,
    DocumentError, ImageIndex, IndexBuilder, Reference, Tag, VerifyError, VerifyingReader,
};

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const BLOBS_DIR: &str = "blobs";
const LAYOUT_VERSION: &str = "1.0.0";
const TMP_PREFIX: &str = ".tmp-";
const LOCK_FILE: &str = "index.json.lock";
/// The largest manifest, index or config that is read into memory.
pub const MAX_DOCUMENT_SIZE: u64 = 4 * 1024 * 1024;

/// Why a layout operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A file system operation failed.
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
    /// The directory has no valid `oci-layout` file.
    #[error("{path} is not an OCI image layout: {reason}")]
    NotALayout {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// `index.json` (or a manifest in the layout) is not a valid document.
    #[error("invalid document {what} in layout {path}")]
    Document {
        /// The layout.
        path: PathBuf,
        /// `index.json` or the blob's digest.
        what: String,
        /// Why.
        #[source]
        source: Box<DocumentError>,
    },
    /// A blob's content does not match its digest or size.
    #[error("blob verification failed in layout {path}")]
    Verify {
        /// The layout.
        path: PathBuf,
        /// The mismatch.
        #[source]
        source: Box<VerifyError>,
    },
    /// A blob is missing.
    #[error("blob {digest} not found in layout {path}")]
    BlobNotFound {
        /// The layout.
        path: PathBuf,
        /// The missing blob.
        digest: Digest,
    },
    /// A document is larger than [`MAX_DOCUMENT_SIZE`].
    #[error("document {digest} is {size} bytes, over the {MAX_DOCUMENT_SIZE}-byte limit")]
    DocumentTooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// No entry of `index.json` has this tag.
    #[error("tag {tag:?} not found in layout {path}")]
    TagNotFound {
        /// The layout.
        path: PathBuf,
        /// The tag asked for.
        tag: String,
    },
    /// No tag was given, and the layout does not hold exactly one image.
    #[error("layout {path} holds {count} images: name one by tag")]
    Ambiguous {
        /// The layout.
        path: PathBuf,
        /// Entries in `index.json`.
        count: usize,
    },
    /// A reference without a tag was given where a tag is needed.
    #[error("reference {reference} has no tag to name it by in the layout")]
    MissingTag {
        /// The reference.
        reference: Box<Reference>,
    },
}

/// Digest and size of a blob that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io { op, path: path.to_owned(), source }
}

/// A temporary file in `dir` that will become one of the layout's files:
/// created `0644` (less the umask), so a layout is as readable as one
/// skopeo writes (its directories are `0755` the same way), and locked
/// while it is written, so that a writer killed halfway leaves a file the
/// next writer can tell is stale ([`Layout::reclaim`]).
fn layout_temp_file(dir: &Path) -> Result<NamedTempFile, LayoutError> {
    crate::stale::locked_tempfile_in(dir, TMP_PREFIX).map_err(io_err("create temp file in", dir))
}

/// Writes `bytes` to `path` through a temporary file beside it and an atomic rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = layout_temp_file(dir)?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("sync", path))?;
    tmp.persist(path).map_err(|e| LayoutError::Io { op: "rename into", path: path.to_owned(), source: e.error })?;
    Ok(())
}

/// What [`Layout::walk`] calls on every descriptor.
type Visitor<'v> = dyn FnMut(&Descriptor, Option<&AnyManifest>) -> Result<(), LayoutError> + 'v;

impl Layout {
    /// Opens the layout at `root`, creating it when it does not exist yet
    /// (or is an empty directory, whose mode it keeps). The new layout is
    /// made whole in a temporary directory beside `root` and renamed into
    /// place; when another process creates it at the same time, both open
    /// the one that won. An existing directory that is not empty and not a
    /// layout is refused.
    ///
    /// # Errors
    /// [`LayoutError`] on I/O failure or a directory that is something else.
    pub fn create(root: impl AsRef<Path>) -> Result<Layout, LayoutError> {
        let root = root.as_ref();
        if root.join(LAYOUT_FILE).exists() {
            return Layout::open(root);
        }
        let not_a_layout = |reason: &str| LayoutError::NotALayout { path: root.to_owned(), reason: reason.to_owned() };
        let existing = match fs::metadata(root) {
            Ok(m) if m.is_dir() => {
                if fs::read_dir(root).map_err(io_err("read directory", root))?.next().is_some() {
                    // a concurrent creator may have just finished
                    return Layout::open(root)
                        .map_err(|_| not_a_layout("directory is not empty and has no oci-layout file"));
                }
                Some(m.permissions())
            }
            Ok(_) => return Err(not_a_layout("not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(LayoutError::Io { op: "inspect", path: root.to_owned(), source: e }),
        };
        let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        // what a creator killed halfway left beside it
        let _ = crate::reclaim_stale(parent, ".tmp-layout-");
        let (tmp, _held) =
            crate::locked_tempdir_in(parent, ".tmp-layout-").map_err(io_err("create temp directory in", parent))?;
        let staged = Layout { root: tmp.path().to_owned() };
        let blobs = staged.root.join(BLOBS_DIR).join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("create directory", &blobs))?;
        staged.write_index(&IndexBuilder::new().build())?;
        write_atomic(&staged.root.join(LAYOUT_FILE), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        if let Some(perms) = existing {
            fs::set_permissions(&staged.root, perms).map_err(io_err("chmod", &staged.root))?;
        }
        // replaces a missing or empty directory; fails when another creator won
        match fs::rename(tmp.path(), root) {
            Ok(()) => {
                let _ = tmp.keep();
                Ok(Layout { root: root.to_owned() })
            }
            Err(e) => {
                Layout::open(root).map_err(|_| LayoutError::Io { op: "rename into", path: root.to_owned(), source: e })
            }
        }
    }

    /// Removes the temporary blob files that writers killed halfway left in
    /// this layout (never those a live writer holds); returns them.
    ///
    /// # Errors
    /// [`LayoutError::Io`] when the blob directory cannot be listed.
    pub fn reclaim(&self) -> Result<Vec<PathBuf>, LayoutError> {
        let blobs = self.root.join(BLOBS_DIR);
        let mut dirs = vec![self.root.clone(), blobs.clone()];
        for e in fs::read_dir(&blobs).map_err(io_err("read directory", &blobs))? {
            let e = e.map_err(io_err("read directory", &blobs))?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        let mut removed = Vec::new();
        for d in dirs {
            removed.extend(crate::reclaim_stale(&d, TMP_PREFIX).map_err(io_err("reclaim temporary files in", &d))?);
        }
        Ok(removed)
    }

    /// Takes the exclusive lock on this layout's `index.json` (a `flock` on
    /// `index.json.lock` beside it), waiting for other kiln writers; held
    /// until the returned guard is dropped. [`Layout::set_tag`] and the
    /// other index updates take it themselves; take it to make several
    /// updates one. It coordinates kiln's writers only (skopeo and umoci
    /// take no lock).
    ///
    /// # Errors
    /// [`LayoutError::Io`] when the lock file cannot be opened or locked.
    pub fn lock_index(&self) -> Result<IndexLock, LayoutError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.root.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        crate::stale::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(io_err("lock", &path))?;
        Ok(IndexLock { _file: file })
    }

    /// Opens an existing layout, checking its `oci-layout` file.
    ///
    /// # Errors
    /// [`LayoutError::NotALayout`] when the marker is missing or has another version.
    pub fn open(root: impl AsRef<Path>) -> Result<Layout, LayoutError> {
        let root = root.as_ref();
        let marker = root.join(LAYOUT_FILE);
        let not = |reason: String| LayoutError::NotALayout { path: root.to_owned(), reason };
        let bytes = fs::read(&marker).map_err(|e| not(format!("cannot read {LAYOUT_FILE}: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| not(format!("{LAYOUT_FILE} is not JSON: {e}")))?;
        match v.get("imageLayoutVersion").and_then(serde_json::Value::as_str) {
            Some(LAYOUT_VERSION) => Ok(Layout { root: root.to_owned() }),
            Some(other) => Err(not(format!("unsupported imageLayoutVersion {other:?}"))),
            None => Err(not(format!("{LAYOUT_FILE} has no imageLayoutVersion"))),
        }
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob for `digest` lives (`blobs/<alg>/<encoded>`).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(BLOBS_DIR).join(digest.algorithm().as_str()).join(digest.encoded())
    }

    /// Whether the blob is present (not verified).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A writer for a new blob; the digest is known when it is finished.
    ///
    /// # Errors
    /// [`LayoutError::Io`] when the temporary file cannot be made.
    pub fn blob_writer(&self) -> Result<BlobWriter, LayoutError> {
        let tmp = self.temp_file()?;
        let file = tmp.as_file().try_clone().ok();
        let inner = DigestWriter::new(BufWriter::with_capacity(256 * 1024, tmp));
        Ok(BlobWriter { layout: self.clone(), inner: WriteBehind::new(inner, file) })
    }

    /// Writes a blob from a reader. With `expected`, the content is checked
    /// against that digest and size while it streams, and nothing is stored
    /// on a mismatch.
    ///
    /// # Errors
    /// [`LayoutError::Verify`] on a mismatch, [`LayoutError::Io`] on I/O failure.
    pub fn write_blob<R: Read>(&self, reader: R, expected: Option<(&Digest, u64)>) -> Result<BlobInfo, LayoutError> {
        let mut reader = reader;
        let Some((digest, size)) = expected else {
            let mut w = self.blob_writer()?;
            io::copy(&mut reader, &mut w).map_err(io_err("write blob into", &self.root))?;
            return w.finish();
        };
        if self.has_blob(digest) {
            return Ok(BlobInfo { digest: digest.clone(), size });
        }
        let verify_err = |source| LayoutError::Verify { path: self.root.clone(), source: Box::new(source) };
        // the verifying reader hashes; the temp file is written plainly
        let mut r = VerifyingReader::new(reader, digest, size).map_err(verify_err)?;
        let mut w = BufWriter::with_capacity(256 * 1024, self.temp_file()?);
        copy_behind(&mut r, &mut w).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => verify_err(into_verify_error(e, digest)),
            _ => LayoutError::Io { op: "write blob into", path: self.root.clone(), source: e },
        })?;
        self.persist(w, digest)?;
        Ok(BlobInfo { digest: digest.clone(), size })
    }

    fn temp_file(&self) -> Result<NamedTempFile, LayoutError> {
        layout_temp_file(&self.root.join(BLOBS_DIR))
    }

    /// Flushes, syncs and renames a finished temporary blob into place.
    fn persist(&self, w: BufWriter<NamedTempFile>, digest: &Digest) -> Result<(), LayoutError> {
        let tmp = w.into_inner().map_err(|e| LayoutError::Io {
            op: "flush blob in",
            path: self.root.clone(),
            source: e.into_error(),
        })?;
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        tmp.as_file().sync_all().map_err(io_err("sync", &path))?;
        tmp.persist(&path).map_err(|e| LayoutError::Io { op: "rename into", path: path.clone(), source: e.error })?;
        Ok(())
    }

    /// Copies the blob `desc` from this layout into `into` (unless it is
    /// there already), checking the bytes against their digest and size on
    /// the way: a reflink where the file system can share extents (the copy
    /// is then read once to check it), else a copy through a verifying
    /// reader. Never a hard link: the copy never shares an inode with this
    /// layout, so nothing done to one reaches the other.
    ///
    /// # Errors
    /// [`LayoutError::Verify`] naming this layout when its blob does not
    /// match `desc` (nothing is written to `into`);
    /// [`LayoutError::BlobNotFound`], [`LayoutError::Io`].
    pub fn copy_blob_to(&self, desc: &Descriptor, into: &Layout) -> Result<BlobInfo, LayoutError> {
        if into.has_blob(&desc.digest) {
            return Ok(BlobInfo { digest: desc.digest.clone(), size: desc.size });
        }
        let verify_err = |source| LayoutError::Verify { path: self.root.clone(), source: Box::new(source) };
        let src = self.open_blob(&desc.digest)?;
        let tmp = into.temp_file()?;
        if rustix::fs::ioctl_ficlone(tmp.as_file(), &src).is_ok() {
            let copy = tmp.reopen().map_err(io_err("reopen", tmp.path()))?;
            crate::verify(copy, &desc.digest, desc.size).map_err(verify_err)?;
            into.persist(BufWriter::new(tmp), &desc.digest)?;
            return Ok(BlobInfo { digest: desc.digest.clone(), size: desc.size });
        }
        let mut r = VerifyingReader::new(src, &desc.digest, desc.size).map_err(verify_err)?;
        let mut w = BufWriter::with_capacity(256 * 1024, tmp);
        copy_behind(&mut r, &mut w).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => verify_err(into_verify_error(e, &desc.digest)),
            _ => LayoutError::Io { op: "copy blob into", path: into.root.clone(), source: e },
        })?;
        into.persist(w, &desc.digest)?;
        Ok(BlobInfo { digest: desc.digest.clone(), size: desc.size })
    }

    /// A writer for a new blob whose digest the caller computes in the same
    /// pass as the bytes (the layer pipeline does): unlike
    /// [`Layout::blob_writer`] it does not hash again, and
    /// [`UnhashedBlobWriter::dangerous_finish`] names the blob by the
    /// digest it is given. A wrong digest stores a blob under a name that
    /// is not its own, hence the name; every copy out of a layout checks
    /// the bytes again ([`Layout::copy_blob_to`]).
    ///
    /// # Errors
    /// [`LayoutError::Io`] when the temporary file cannot be made.
    pub fn dangerous_unhashed_blob_writer(&self) -> Result<UnhashedBlobWriter, LayoutError> {
        let tmp = self.temp_file()?;
        let file = tmp.as_file().try_clone().ok();
        Ok(UnhashedBlobWriter {
            layout: self.clone(),
            inner: WriteBehind::new(BufWriter::with_capacity(256 * 1024, tmp), file),
            size: 0,
            copy: None,
        })
    }

    /// Puts `copy` in this layout as its blob by linking its file here: no
    /// byte is read or copied, and the blob shares no inode with the layout
    /// the copy was written beside. Returns `false` when the file cannot be
    /// linked here (another file system, no `/proc`), so that the caller
    /// copies the blob instead; `true` when the blob is in place (or was
    /// already). The copy can be placed once: it is consumed.
    ///
    /// # Errors
    /// [`LayoutError::Io`] when the blob directory cannot be made.
    pub fn place_copy(&self, copy: BlobCopy) -> Result<bool, LayoutError> {
        let BlobCopy { file, digest, size } = copy;
        if self.has_blob(&digest) {
            return Ok(true);
        }
        let path = self.blob_path(&digest);
        // a cheap guard: the file holds exactly the blob's size
        if file.metadata().map(|m| m.len()).ok() != Some(size) {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        // the documented way to name a file opened with O_TMPFILE
        let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
        let cwd = rustix::fs::CWD;
        match rustix::fs::linkat(cwd, fd.as_str(), cwd, &path, rustix::fs::AtFlags::SYMLINK_FOLLOW) {
            // (EEXIST: another writer put it there meanwhile)
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Writes a blob from memory (sha256).
    ///
    /// # Errors
    /// [`LayoutError::Io`] on I/O failure.
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<BlobInfo, LayoutError> {
        let digest = Digest::sha256(bytes);
        let size = bytes.len() as u64;
        if !self.has_blob(&digest) {
            write_atomic(&self.blob_path(&digest), bytes)?;
        }
        Ok(BlobInfo { digest, size })
    }

    /// Opens a blob without checking it.
    ///
    /// # Errors
    /// [`LayoutError::BlobNotFound`] when absent.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, LayoutError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LayoutError::BlobNotFound { path: self.root.clone(), digest: digest.clone() },
            _ => LayoutError::Io { op: "open", path, source: e },
        })
    }

    /// Opens a blob for streaming, checking digest and size as it is read
    /// (the reader fails at the end on a mismatch).
    ///
    /// # Errors
    /// [`LayoutError::BlobNotFound`], or unverifiable digest.
    pub fn open_blob_verified(&self, desc: &Descriptor) -> Result<VerifyingReader<File>, LayoutError> {
        let f = self.open_blob(&desc.digest)?;
        VerifyingReader::new(f, &desc.digest, desc.size)
            .map_err(|source| LayoutError::Verify { path: self.root.clone(), source: Box::new(source) })
    }

    /// Reads a small blob (a document) into memory, verified. Refuses blobs
    /// over [`MAX_DOCUMENT_SIZE`].
    ///
    /// # Errors
    /// [`LayoutError::Verify`] on corruption, [`LayoutError::DocumentTooLarge`].
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Bytes, LayoutError> {
        if desc.size > MAX_DOCUMENT_SIZE {
            return Err(LayoutError::DocumentTooLarge { digest: desc.digest.clone(), size: desc.size });
        }
        let mut r = self.open_blob_verified(desc)?;
        let mut buf = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        r.read_to_end(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => {
                LayoutError::Verify { path: self.root.clone(), source: Box::new(into_verify_error(e, &desc.digest)) }
            }
            _ => LayoutError::Io { op: "read", path: self.blob_path(&desc.digest), source: e },
        })?;
        Ok(Bytes::from(buf))
    }

    /// Reads and parses the manifest or index a descriptor points at.
    ///
    /// # Errors
    /// [`LayoutError`] on a missing, corrupted or invalid blob.
    pub fn read_manifest(&self, desc: &Descriptor) -> Result<AnyManifest, LayoutError> {
        let bytes = self.read_blob(desc)?;
        AnyManifest::from_bytes(bytes, Some(&desc.media_type)).map_err(|source| LayoutError::Document {
            path: self.root.clone(),
            what: desc.digest.to_string(),
            source: Box::new(source),
        })
    }

    /// Reads `index.json`.
    ///
    /// # Errors
    /// [`LayoutError`] when it is missing or invalid.
    pub fn index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.root.join(INDEX_FILE);
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        ImageIndex::from_json(&bytes).map_err(|source| LayoutError::Document {
            path: self.root.clone(),
            what: INDEX_FILE.to_owned(),
            source: Box::new(source),
        })
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), LayoutError> {
        write_atomic(&self.root.join(INDEX_FILE), &index.to_canonical_json())
    }

    /// Checks that the descriptor's blob and, for manifests and indexes,
    /// everything they reference are present and intact, so an index entry
    /// never points at an incomplete image.
    fn check_complete(&self, desc: &Descriptor) -> Result<(), LayoutError> {
        self.walk(desc, |d, _| {
            if !self.has_blob(&d.digest) {
                return Err(LayoutError::BlobNotFound { path: self.root.clone(), digest: d.digest.clone() });
            }
            Ok(())
        })
    }

    /// Visits `desc` and everything it references, each digest once, depth
    /// first, children before the manifest or index naming them (the order
    /// a push needs: what a document names is there before it). `visit`
    /// gets each descriptor with, for a manifest or an index, its document.
    /// Foreign layers (with `urls`) that are not in the layout are left out.
    ///
    /// # Errors
    /// [`LayoutError::BlobNotFound`] or an invalid document on the way, or
    /// the first error of `visit`.
    pub fn walk(
        &self,
        desc: &Descriptor,
        mut visit: impl FnMut(&Descriptor, Option<&AnyManifest>) -> Result<(), LayoutError>,
    ) -> Result<(), LayoutError> {
        self.walk_from(desc, &mut BTreeSet::new(), &mut visit)
    }

    /// [`Layout::walk`], skipping the digests in `seen` (and adding to it).
    fn walk_from(
        &self,
        desc: &Descriptor,
        seen: &mut BTreeSet<Digest>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), LayoutError> {
        if !seen.insert(desc.digest.clone()) {
            return Ok(());
        }
        let m = &desc.media_type;
        if !(m.is_manifest() || m.is_index()) {
            return visit(desc, None);
        }
        let doc = self.read_manifest(desc)?;
        match &doc {
            AnyManifest::Image(raw) => {
                let v = raw.value();
                for d in std::iter::once(&v.config).chain(&v.layers) {
                    // layers with urls (foreign layers) may live elsewhere
                    if d.urls.is_some() && !self.has_blob(&d.digest) {
                        continue;
                    }
                    self.walk_from(d, seen, visit)?;
                }
            }
            AnyManifest::Index(raw) => {
                for d in &raw.value().manifests {
                    self.walk_from(d, seen, visit)?;
                }
            }
        }
        visit(desc, Some(&doc))
    }

    /// Names `desc` in `index.json` by `reference`'s tag (the
    /// `org.opencontainers.image.ref.name` annotation, as skopeo and umoci
    /// do, so `oci:DIR:TAG` finds it) with the full name in
    /// `io.containerd.image.name`. An entry with the same tag is replaced.
    /// The image must be complete in the layout.
    ///
    /// # Errors
    /// [`LayoutError::MissingTag`], [`LayoutError::BlobNotFound`] for an incomplete image.
    pub fn set_tag(&self, reference: &Reference, desc: Descriptor) -> Result<(), LayoutError> {
        let tag = reference.tag().ok_or_else(|| LayoutError::MissingTag { reference: Box::new(reference.clone()) })?;
        self.set_ref_name(tag, Some(reference), desc)
    }

    /// Names `desc` by `tag` alone (optionally with a full name).
    ///
    /// # Errors
    /// [`LayoutError::BlobNotFound`] for an incomplete image, I/O failures.
    pub fn set_ref_name(&self, tag: &Tag, full_name: Option<&Reference>, desc: Descriptor) -> Result<(), LayoutError> {
        self.check_complete(&desc)?;
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        index.manifests.retain(|d| d.annotation(ANNOTATION_REF_NAME) != Some(tag.as_str()));
        let mut d = desc.with_annotation(ANNOTATION_REF_NAME, tag.as_str());
        if let Some(name) = full_name {
            d = d.with_annotation(ANNOTATION_CONTAINERD_NAME, name.to_string());
        }
        index.manifests.push(d);
        self.write_index(&index)
    }

    /// Adds an untagged entry to `index.json` (unless the digest is already there).
    ///
    /// # Errors
    /// [`LayoutError::BlobNotFound`] for an incomplete image, I/O failures.
    pub fn add_manifest(&self, desc: Descriptor) -> Result<(), LayoutError> {
        self.check_complete(&desc)?;
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        if !index.manifests.iter().any(|d| d.digest == desc.digest) {
            index.manifests.push(desc);
            self.write_index(&index)?;
        }
        Ok(())
    }

    /// The descriptor tagged `tag`.
    ///
    /// # Errors
    /// [`LayoutError::TagNotFound`].
    pub fn resolve(&self, tag: &str) -> Result<Descriptor, LayoutError> {
        self.index()?
            .manifests
            .into_iter()
            .find(|d| d.annotation(ANNOTATION_REF_NAME) == Some(tag))
            .ok_or_else(|| LayoutError::TagNotFound { path: self.root.clone(), tag: tag.to_owned() })
    }

    /// The image a location such as `oci:DIR[:TAG]` names: the entry tagged
    /// `tag`, or without a tag the layout's only entry (as skopeo reads
    /// `oci:DIR`).
    ///
    /// # Errors
    /// [`LayoutError::TagNotFound`], [`LayoutError::Ambiguous`] without a
    /// tag when the layout holds no image or several.
    pub fn image(&self, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
        if let Some(t) = tag {
            return self.resolve(t);
        }
        let mut entries = self.index()?.manifests;
        match entries.len() {
            1 => Ok(entries.remove(0)),
            count => Err(LayoutError::Ambiguous { path: self.root.clone(), count }),
        }
    }

    /// The tags in `index.json`, in index order.
    ///
    /// # Errors
    /// [`LayoutError`] when `index.json` cannot be read.
    pub fn tags(&self) -> Result<Vec<String>, LayoutError> {
        Ok(self
            .index()?
            .manifests
            .iter()
            .filter_map(|d| d.annotation(ANNOTATION_REF_NAME).map(str::to_owned))
            .collect())
    }

    /// Removes the entry tagged `tag`; returns whether there was one. Blobs
    /// stay until [`Layout::gc`].
    ///
    /// # Errors
    /// [`LayoutError`] on I/O failure.
    pub fn remove_tag(&self, tag: &str) -> Result<bool, LayoutError> {
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| d.annotation(ANNOTATION_REF_NAME) != Some(tag));
        let removed = index.manifests.len() != before;
        if removed {
            self.write_index(&index)?;
        }
        Ok(removed)
    }

    /// Every blob reachable from `index.json`.
    ///
    /// # Errors
    /// [`LayoutError`] when a referenced document is missing or invalid.
    pub fn reachable(&self) -> Result<BTreeSet<Digest>, LayoutError> {
        let mut seen = BTreeSet::new();
        for d in &self.index()?.manifests {
            self.walk_from(d, &mut seen, &mut |_, _| Ok(()))?;
        }
        Ok(seen)
    }

    /// Reads every reachable blob and checks its digest and size.
    ///
    /// # Errors
    /// The first [`LayoutError::Verify`] or missing blob found.
    pub fn verify(&self) -> Result<(), LayoutError> {
        let mut seen = BTreeSet::new();
        for d in &self.index()?.manifests {
            self.walk_from(d, &mut seen, &mut |d, _| {
                let r = self.open_blob(&d.digest)?;
                crate::verify(r, &d.digest, d.size)
                    .map_err(|source| LayoutError::Verify { path: self.root.clone(), source: Box::new(source) })
            })?;
        }
        Ok(())
    }

    /// Deletes blobs not reachable from `index.json` and the temporary
    /// files of dead writers (never a live writer's); returns the digests
    /// removed.
    ///
    /// # Errors
    /// [`LayoutError`] when the graph cannot be read (then nothing is deleted).
    pub fn gc(&self) -> Result<Vec<Digest>, LayoutError> {
        let _lock = self.lock_index()?;
        let keep = self.reachable()?;
        let mut removed = Vec::new();
        let blobs = self.root.join(BLOBS_DIR);
        self.reclaim()?;
        for alg_entry in fs::read_dir(&blobs).map_err(io_err("read directory", &blobs))? {
            let alg_entry = alg_entry.map_err(io_err("read directory", &blobs))?;
            let alg_path = alg_entry.path();
            let name = alg_entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) || !alg_path.is_dir() {
                continue;
            }
            for blob in fs::read_dir(&alg_path).map_err(io_err("read directory", &alg_path))? {
                let blob = blob.map_err(io_err("read directory", &alg_path))?;
                let file = blob.file_name().to_string_lossy().into_owned();
                let path = blob.path();
                let digest = format!("{name}:{file}").parse::<Digest>().ok();
                if !file.starts_with(TMP_PREFIX) && digest.as_ref().is_some_and(|d| !keep.contains(d)) {
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    removed.extend(digest);
                }
            }
        }
        Ok(removed)
    }
}

/// The lock on a layout's `index.json` ([`Layout::lock_index`]); released
/// when dropped.
#[derive(Debug)]
pub struct IndexLock {
    _file: File,
}

/// Writes one blob into a layout without hashing it; see
/// [`Layout::dangerous_unhashed_blob_writer`]. Dropping it without
/// finishing discards the temporary file.
pub struct UnhashedBlobWriter {
    layout: Layout,
    inner: WriteBehind<BufWriter<NamedTempFile>>,
    size: u64,
    /// The second copy of every byte ([`UnhashedBlobWriter::copy_into`]),
    /// dropped at its first failed write.
    copy: Option<WriteBehind<BufWriter<File>>>,
}

impl Write for UnhashedBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.size += n as u64;
        if let Some(copy) = &mut self.copy
            && copy.write_all(buf.get(..n).unwrap_or_default()).is_err()
        {
            // no copy then: the blob is copied out of the layout as usual
            self.copy = None;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A second copy of a blob, written in the same pass as the blob
/// ([`UnhashedBlobWriter::copy_into`]) into a file that has no name: an
/// output layout takes it as its blob by linking it
/// ([`Layout::place_copy`]), instead of reading the blob back out of the
/// first layout, checking it and writing it again. Having no name, it
/// cannot be opened or replaced by anyone else before it is placed; it is
/// synced to disk before it is handed out. Dropping it frees it.
#[derive(Debug)]
pub struct BlobCopy {
    file: File,
    digest: Digest,
    size: u64,
}

impl BlobCopy {
    /// The blob's digest (as the writer was finished with).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A writer into a big file that starts writing the file's data to disk
/// while it is still being written: after every [`WriteBehind::EVERY`]
/// bytes, a helper thread syncs what the file holds so far, so that the
/// final sync waits for the last part only and the disk works while the
/// writer computes the rest. A file smaller than that never starts the
/// thread.
struct WriteBehind<W> {
    inner: W,
    /// Bytes since the last kick.
    since: u64,
    /// The file (another descriptor of it), until the thread takes it.
    file: Option<File>,
    /// The kick and the thread, once started.
    thread: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)>,
}

impl<W: Write> Write for WriteBehind<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.wrote(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> WriteBehind<W> {
    /// 2 MiB: the build of the bench's 99 MB layer (written twice) takes
    /// 5% less time than with 16 MiB, the last sync's wait shorter and the
    /// disk kept busier (BENCHMARKS.md, session 12).
    const EVERY: u64 = 2 * 1024 * 1024;

    /// `inner` writes into `file` (a descriptor of its own: none, no syncing).
    fn new(inner: W, file: Option<File>) -> WriteBehind<W> {
        WriteBehind { inner, since: 0, file, thread: None }
    }

    fn wrote(&mut self, n: usize) {
        self.since += n as u64;
        if self.since < Self::EVERY {
            return;
        }
        self.since = 0;
        if self.thread.is_none()
            && let Some(file) = self.file.take()
        {
            let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new().name("blob-sync".into()).spawn(move || {
                while kicked.recv().is_ok() {
                    // best effort: the final sync reports what fails
                    let _ = file.sync_data();
                }
            });
            self.thread = spawned.ok().map(|t| (kick, t));
        }
        if let Some((kick, _)) = &self.thread {
            // a kick already waiting covers this one too
            let _ = kick.try_send(());
        }
    }

    /// The writer, once the thread's sync in progress, if any, is done.
    fn into_inner(self) -> W {
        if let Some((kick, thread)) = self.thread {
            drop(kick);
            let _ = thread.join();
        }
        self.inner
    }
}

/// `io::copy` into a blob's temporary file, synced behind the writing.
fn copy_behind<R: Read>(r: &mut R, w: &mut BufWriter<NamedTempFile>) -> io::Result<u64> {
    let file = w.get_ref().as_file().try_clone().ok();
    let mut behind = WriteBehind::new(w, file);
    let copied = io::copy(r, &mut behind);
    behind.into_inner();
    copied
}

/// A file without a name in `dir` (`O_TMPFILE`), mode `0644` less the
/// umask: it can be linked into a directory of the same file system later.
fn unnamed_file_in(dir: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::from_raw_mode(0o644))?;
    Ok(File::from(fd))
}

impl UnhashedBlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Stores the blob under `digest`, which the caller computed over
    /// exactly the bytes written (not checked here).
    ///
    /// # Errors
    /// [`LayoutError::Io`] when flushing or renaming fails.
    pub fn dangerous_finish(self, digest: &Digest) -> Result<BlobInfo, LayoutError> {
        let mut writer = self;
        writer.copy = None;
        writer.dangerous_finish_with_copy(digest).map(|(info, _)| info)
    }

    /// Also writes every byte, from now on, into a file without a name in
    /// `dir`, which [`UnhashedBlobWriter::dangerous_finish_with_copy`]
    /// hands back as a [`BlobCopy`]: for a layout on `dir`'s file system
    /// that is to hold the blob too. Returns `false` (and keeps no copy)
    /// when bytes were written already or `dir`'s file system cannot make
    /// such a file; a copy whose write fails is dropped silently, the blob
    /// itself is unaffected.
    pub fn copy_into(&mut self, dir: &Path) -> bool {
        if self.size > 0 || self.copy.is_some() {
            return false;
        }
        self.copy = unnamed_file_in(dir).ok().map(|f| {
            let file = f.try_clone().ok();
            WriteBehind::new(BufWriter::with_capacity(256 * 1024, f), file)
        });
        self.copy.is_some()
    }

    /// [`UnhashedBlobWriter::dangerous_finish`], and the copy of the blob
    /// [`UnhashedBlobWriter::copy_into`] asked for, when it holds every
    /// byte: both are synced to disk side by side.
    ///
    /// # Errors
    /// [`LayoutError::Io`] when flushing or renaming the blob fails (a
    /// failing copy is only left out).
    pub fn dangerous_finish_with_copy(self, digest: &Digest) -> Result<(BlobInfo, Option<BlobCopy>), LayoutError> {
        let UnhashedBlobWriter { layout, inner, size, copy } = self;
        let (stored, copy) = std::thread::scope(|s| {
            let copy = copy.map(|c| {
                s.spawn(move || -> io::Result<File> {
                    let file = c.into_inner().into_inner().map_err(io::IntoInnerError::into_error)?;
                    file.sync_all()?;
                    Ok(file)
                })
            });
            let stored = layout.persist(inner.into_inner(), digest);
            (stored, copy.and_then(|h| h.join().ok()).and_then(Result::ok))
        });
        stored?;
        let copy = copy.map(|file| BlobCopy { file, digest: digest.clone(), size });
        Ok((BlobInfo { digest: digest.clone(), size }, copy))
    }
}

/// Writes one blob into a layout; see [`Layout::blob_writer`]. Dropping it
/// without [`BlobWriter::finish`] discards the temporary file.
pub struct BlobWriter {
    layout: Layout,
    inner: WriteBehind<DigestWriter<BufWriter<NamedTempFile>>>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.inner.inner.size()
    }

    /// Stores the blob under its digest.
    ///
    /// # Errors
    /// [`LayoutError::Io`] when flushing or renaming fails.
    pub fn finish(self) -> Result<BlobInfo, LayoutError> {
        let (buf, digest, size) = self.inner.into_inner().finish();
        self.layout.persist(buf, &digest)?;
        Ok(BlobInfo { digest, size })
    }
}
