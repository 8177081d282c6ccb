//! Directory trees to reproducible OCI layers in one streaming pass:
//! tar bytes -> sha256 (diff id) -> compressor -> sha256 (digest) + size ->
//! any [`Write`].
//!
//! ```
//! use layer_diff::{pack_dir, PackOptions};
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("hello.txt"), "hi\n")?;
//! let (blob, info) = pack_dir(dir.path(), Vec::new(), &PackOptions::default())?;
//! assert_eq!(info.size, blob.len() as u64);
//! assert_ne!(info.digest, info.diff_id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This release covers whole-tree layers of regular files, directories and
//! symlinks; snapshots, diffs, hard links, xattrs, devices, whiteouts,
//! zstd and parallel gzip arrive with the layer-diff issue.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use oci_image::{Descriptor, Digest, DigestWriter, MediaType};

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
    /// A file of a type this version cannot put in a layer.
    #[error("unsupported file type at {path} (hard links, devices and fifos are not supported yet)")]
    UnsupportedFile {
        /// The file.
        path: PathBuf,
    },
    /// A name in the tree collides with the OCI whiteout convention.
    #[error("{path}: names starting with .wh. are reserved for whiteouts")]
    ReservedName {
        /// The file.
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
    /// gzip level (0-9).
    pub gzip_level: u32,
}

impl Default for PackOptions {
    /// mtimes clamped to `SOURCE_DATE_EPOCH` when set (else 0), owners normalised, gzip level 6.
    fn default() -> Self {
        let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        PackOptions { epoch: Some(epoch), normalize_owner: true, gzip_level: 6 }
    }
}

/// What a finished layer is: digests computed in the same pass that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

type Pipeline<W> = tar::Builder<DigestWriter<GzEncoder<DigestWriter<W>>>>;

/// Streams tar entries into a gzip layer, hashing both sides on the way.
pub struct LayerWriter<W: Write> {
    tar: Pipeline<W>,
    opts: PackOptions,
}

impl<W: Write> LayerWriter<W> {
    /// Starts a gzip layer written to `w`.
    pub fn new(w: W, opts: PackOptions) -> Self {
        let gz = GzEncoder::new(DigestWriter::new(w), flate2::Compression::new(opts.gzip_level.min(9)));
        let mut tar = tar::Builder::new(DigestWriter::new(gz));
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        LayerWriter { tar, opts }
    }

    fn header(&self, meta: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.permissions().mode() & 0o7777);
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        h.set_mtime(self.opts.epoch.map_or(mtime, |e| mtime.min(e)));
        let (uid, gid) =
            if self.opts.normalize_owner { (0, 0) } else { (u64::from(meta.uid()), u64::from(meta.gid())) };
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(0);
        h
    }

    /// Adds one file system entry at `name` (relative, `/`-separated) from `path`.
    ///
    /// # Errors
    /// [`LayerError`] for unreadable files, unsupported types or reserved names.
    pub fn append_path(&mut self, name: &str, path: &Path) -> Result<(), LayerError> {
        let io = |op| move |source| LayerError::Io { op, path: path.to_owned(), source };
        if name.rsplit('/').next().is_some_and(|base| base.starts_with(".wh.")) {
            return Err(LayerError::ReservedName { path: path.to_owned() });
        }
        let meta = fs::symlink_metadata(path).map_err(io("stat"))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = self.header(&meta, tar::EntryType::Directory);
            self.tar.append_data(&mut h, format!("{name}/"), io::empty()).map_err(io("write tar entry for"))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io("read link"))?;
            let mut h = self.header(&meta, tar::EntryType::Symlink);
            self.tar.append_link(&mut h, name, target).map_err(io("write tar entry for"))?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                return Err(LayerError::UnsupportedFile { path: path.to_owned() });
            }
            let mut h = self.header(&meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = fs::File::open(path).map_err(io("open"))?;
            self.tar.append_data(&mut h, name, f).map_err(io("write tar entry for"))?;
        } else {
            return Err(LayerError::UnsupportedFile { path: path.to_owned() });
        }
        Ok(())
    }

    /// Ends the tar and the gzip stream; returns the writer and the layer's digests.
    ///
    /// # Errors
    /// [`LayerError::Io`] when the final writes fail.
    pub fn finish(self) -> Result<(W, LayerInfo), LayerError> {
        let io = |op| move |source| LayerError::Io { op, path: PathBuf::from("layer"), source };
        let tar_hash = self.tar.into_inner().map_err(io("finish tar of"))?;
        let (gz, diff_id, _) = tar_hash.finish();
        let blob = gz.finish().map_err(io("finish gzip of"))?;
        let (w, digest, size) = blob.finish();
        Ok((w, LayerInfo { digest, diff_id, size, media_type: MediaType::OciLayerGzip }))
    }
}

/// Every path under `root`, sorted by byte order of the relative name.
fn walk_sorted(root: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), LayerError> {
    let dir = if rel.is_empty() { root.to_owned() } else { root.join(rel) };
    let io = |op| {
        let dir = dir.clone();
        move |source| LayerError::Io { op, path: dir, source }
    };
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io("read directory"))? {
        let entry = entry.map_err(io("read directory"))?;
        let name = entry.file_name().into_string().map_err(|_| LayerError::UnsupportedFile { path: entry.path() })?;
        names.push(name);
    }
    names.sort_unstable();
    for name in names {
        let rel_name = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let path = root.join(&rel_name);
        let is_dir = fs::symlink_metadata(&path).map_err(io("stat"))?.is_dir();
        out.push((rel_name.clone(), path));
        if is_dir {
            walk_sorted(root, &rel_name, out)?;
        }
    }
    Ok(())
}

/// Packs the whole tree under `root` as one gzip layer (entries sorted,
/// times clamped and owners normalised per `opts`), written to `w`.
///
/// # Errors
/// [`LayerError`] for unreadable or unsupported files.
pub fn pack_dir<W: Write>(root: &Path, w: W, opts: &PackOptions) -> Result<(W, LayerInfo), LayerError> {
    let mut entries = Vec::new();
    walk_sorted(root, "", &mut entries)?;
    let mut lw = LayerWriter::new(w, opts.clone());
    for (name, path) in &entries {
        lw.append_path(name, path)?;
    }
    lw.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
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
