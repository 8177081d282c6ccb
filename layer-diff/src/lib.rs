//! Directory trees and tree diffs to reproducible OCI layers in one
//! streaming pass, and safe layer apply.
//!
//! ```
//! use layer_diff::{apply_blob, pack_dir, ApplyOptions, PackOptions};
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("hello.txt"), "hi\n")?;
//! // tar -> sha256 (diff id) -> gzip -> sha256 (digest) + size -> the Vec
//! let (blob, info) = pack_dir(dir.path(), Vec::new(), &PackOptions::default())?;
//! assert_eq!(info.size, blob.len() as u64);
//! assert_ne!(info.digest, info.diff_id);
//!
//! // and back: the blob is verified against its descriptor, then applied
//! let out = tempfile::tempdir()?;
//! let applied = apply_blob(std::io::Cursor::new(&blob), &info.descriptor(), out.path(), &ApplyOptions::default())?;
//! assert_eq!(applied.diff_id, info.diff_id);
//! assert_eq!(std::fs::read_to_string(out.path().join("hello.txt"))?, "hi\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The pieces:
//! - [`Snapshot`] walks a tree in byte order with everything a layer records;
//! - [`diff`] compares two snapshots into [`Change`]s, and [`overlay_changes`]
//!   reads an overlayfs upper directory as changes without the lower tree;
//! - [`LayerWriter`] streams entries, whiteouts and opaque markers through the
//!   hashes and the compressor ([`ParallelGzip`], zstd or none);
//! - [`apply_blob`], [`apply_blobs`], [`apply_blob_streaming`] and [`apply_tar`] extract
//!   layers inside a root, whatever the layer's names and links say.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_image::{Compression, Descriptor, Digest, MediaType};

mod apply;
mod compress;
mod diff;
mod fastdeflate;
mod hashing;
mod idmap;
mod inroot;
mod readahead;
mod snapshot;
mod writer;

pub use apply::{
    ApplyError, ApplyInfo, ApplyOptions, OverlayXattrs, apply_blob, apply_blob_streaming, apply_blobs, apply_tar,
};
pub use compress::{DEFAULT_GZIP_LEVEL, Decompressor, FAST_LEVELS, ParallelGzip, compression_engine, detect};
pub use diff::{Change, ChangeKind, changes_size, diff, overlay_changes};
pub use idmap::{IdMap, IdRange};
pub use inroot::{MAX_SYMLINKS, resolve_in_root};
pub use snapshot::{Entry, Kind, Snapshot, SnapshotError, Timestamp, keep_xattr};
pub use writer::{LayerWriter, OPAQUE_MARKER, WHITEOUT_PREFIX};

/// Why a layer could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// Reading the tree or writing the output failed.
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
    /// Walking or comparing the trees failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A name in the tree collides with the OCI whiteout convention.
    #[error("{path}: names starting with .wh. are reserved for whiteouts")]
    ReservedName {
        /// The file.
        path: PathBuf,
    },
    /// A change names a path that cannot be a layer entry (empty or `..`).
    #[error("invalid change path {path}")]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
}

/// Options for a reproducible layer.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Clamp every mtime to at most this many seconds since the epoch
    /// (`SOURCE_DATE_EPOCH`); `None` keeps the files' own times.
    pub epoch: Option<u64>,
    /// Record every file as owned by root (uid/gid 0).
    pub normalize_owner: bool,
    /// Map host ids to container ids (rootless repack) when owners are kept.
    pub id_map: Option<IdMap>,
    /// The blob's compression.
    pub compression: Compression,
    /// Compression level (gzip 0-9, default 1: 1-3 are kiln's own fast deflate, 4-9 zlib; zstd 1-22, default 3).
    pub level: Option<i32>,
    /// Compression threads; the output is the same for any count. Above
    /// one, the blob's and the tar's sha256 also run on a thread each;
    /// with one they run on the caller's thread.
    pub threads: usize,
    /// Put every entry under this directory in the tar (rebasing).
    pub prefix: Option<PathBuf>,
}

impl Default for PackOptions {
    /// mtimes clamped to `SOURCE_DATE_EPOCH` when set (else 0), owners
    /// normalised, gzip at [`DEFAULT_GZIP_LEVEL`] on every available core.
    fn default() -> Self {
        let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        PackOptions {
            epoch: Some(epoch),
            normalize_owner: true,
            id_map: None,
            compression: Compression::Gzip,
            level: None,
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            prefix: None,
        }
    }
}

/// What a finished layer is: digests computed in the same pass that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerInfo {
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// The blob's media type.
    pub media_type: MediaType,
}

impl LayerInfo {
    /// A descriptor of the blob.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type.clone(), self.digest.clone(), self.size)
    }
}

/// Packs the whole tree under `root` as one layer (entries sorted, times
/// clamped and owners normalised per `opts`), written to `w`.
///
/// # Errors
/// [`LayerError`] for unreadable files, names reserved for whiteouts, or a failing writer.
///
/// The walk runs on its own thread and hands entries over as it reads
/// them, so the first files are compressed while the rest of the tree is
/// still being walked.
pub fn pack_dir<W: Write>(root: &Path, w: W, opts: &PackOptions) -> Result<(W, LayerInfo), LayerError> {
    /// Entries handed from the walk to the writer at a time.
    const BATCH: usize = 64;
    let mut lw = LayerWriter::new(w, opts)?;
    std::thread::scope(|s| {
        // unbounded, as the whole snapshot was before: the walk never waits
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Entry>>();
        let (files_tx, files_rx) = std::sync::mpsc::channel::<(PathBuf, u64)>();
        lw.read_ahead_stream(files_rx);
        let walker = s.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let mut reads = writer::ContentReads::default();
            let walked = snapshot::walk_each(root, &mut |e| {
                if reads.reads(&e) {
                    // a closed read-ahead only means no more hints
                    let _ = files_tx.send((root.join(&e.path), e.size));
                }
                batch.push(e);
                batch.len() < BATCH || tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).is_ok()
            });
            if walked.as_ref().is_ok_and(|&all| all) && !batch.is_empty() {
                let _ = tx.send(batch);
            }
            walked
        });
        let written = rx.iter().flatten().try_for_each(|e| lw.append(root, &e));
        // a failed write drops the receiver, which stops the walk at its next batch
        drop(rx);
        let walked = walker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written?;
        walked?;
        Ok::<_, LayerError>(())
    })?;
    lw.finish()
}

/// Packs `changes` as one layer: entries from `upper` for additions and
/// modifications, whiteouts for deletions, opaque markers for opaque
/// directories.
///
/// # Errors
/// [`LayerError`] for unreadable files, reserved names, a change missing
/// from `upper`, or a failing writer.
pub fn pack_changes<W: Write>(
    upper: &Snapshot,
    changes: &[Change],
    w: W,
    opts: &PackOptions,
) -> Result<(W, LayerInfo), LayerError> {
    let mut lw = LayerWriter::new(w, opts)?;
    let written = changes.iter().filter(|c| c.kind != ChangeKind::Delete).filter_map(|c| upper.get(&c.path));
    lw.read_ahead(written.map(|e| (upper.root().join(&e.path), e)));
    lw.append_changes(upper, changes)?;
    lw.finish()
}

/// Packs the difference between the trees `lower` and `upper` as one layer.
///
/// # Errors
/// As [`pack_changes`].
///
/// The two trees are walked at the same time, and the comparison runs on
/// its own thread, handing changes over as it finds them, so reading files
/// to compare their contents overlaps with writing the layer.
pub fn pack_diff<W: Write>(lower: &Path, upper: &Path, w: W, opts: &PackOptions) -> Result<(W, LayerInfo), LayerError> {
    let (lo, up) = std::thread::scope(|s| {
        let lo = s.spawn(|| Snapshot::walk(lower));
        let up = Snapshot::walk(upper);
        (lo.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), up)
    });
    let (lo, up) = (lo?, up?);
    let mut lw = LayerWriter::new(w, opts)?;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Change>(256);
        // the files the writer will read, listed as the comparison finds them
        let (files_tx, files_rx) = std::sync::mpsc::channel::<(PathBuf, u64)>();
        lw.read_ahead_stream(files_rx);
        let upper = &up;
        let differ = s.spawn(move || {
            let mut reads = writer::ContentReads::default();
            diff::diff_each(&lo, upper, move |c: Change| {
                if c.kind != ChangeKind::Delete
                    && let Some(e) = upper.get(&c.path)
                    && reads.reads(e)
                {
                    // a closed read-ahead only means no more hints
                    let _ = files_tx.send((upper.root().join(&c.path), e.size));
                }
                tx.send(c)
            })
        });
        let written = rx.iter().try_for_each(|c| lw.append_changes(&up, std::slice::from_ref(&c)));
        // a failed write drops the receiver, which stops the comparison at its next change
        drop(rx);
        let compared = differ.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written?;
        match compared {
            Ok(()) | Err(diff::EachError::Stopped(_)) => Ok(()),
            Err(diff::EachError::Diff(e)) => Err(LayerError::Snapshot(e)),
        }
    })?;
    lw.finish()
}

/// Packs an overlayfs upper directory as one layer (see [`overlay_changes`]).
///
/// # Errors
/// As [`pack_changes`].
pub fn pack_overlay<W: Write>(upper: &Path, w: W, opts: &PackOptions) -> Result<(W, LayerInfo), LayerError> {
    let (snap, changes) = overlay_changes(upper)?;
    pack_changes(&snap, &changes, w, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("b/c")).unwrap();
        fs::write(d.path().join("b/c/f.txt"), "data").unwrap();
        fs::write(d.path().join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("a.txt", d.path().join("link")).unwrap();
        d
    }

    #[test]
    fn digests_match_the_bytes_and_are_reproducible() {
        let t = tree();
        let (blob, info) =
            pack_dir(t.path(), Vec::new(), &PackOptions { epoch: Some(0), ..PackOptions::default() }).unwrap();
        assert_eq!(info.digest, Digest::sha256(&blob));
        assert_eq!(info.size, blob.len() as u64);
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut tar_bytes).unwrap();
        assert_eq!(info.diff_id, Digest::sha256(&tar_bytes));
        // the same tree elsewhere with other times gives the same digests
        let t2 = tree();
        let (_, info2) =
            pack_dir(t2.path(), Vec::new(), &PackOptions { epoch: Some(0), ..PackOptions::default() }).unwrap();
        assert_eq!(info, info2);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names, ["a.txt", "b/", "b/c/", "b/c/f.txt", "link"]);
    }

    #[test]
    fn reserved_whiteout_names_are_refused() {
        let t = tree();
        fs::write(t.path().join(".wh.a"), "").unwrap();
        let err = pack_dir(t.path(), Vec::new(), &PackOptions::default()).unwrap_err();
        assert!(matches!(err, LayerError::ReservedName { .. }), "{err}");
    }
}
