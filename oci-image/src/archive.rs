//! docker-archive: the tarball of `docker save` / `docker load`
//! (`manifest.json`, `repositories`, config and layer files).
//!
//! The writer stores each layer uncompressed as `<diff_id hex>.tar` and the
//! config as `<config hex>.json` (the layout skopeo writes), checking every
//! layer against the config's `rootfs.diff_ids`. The reader indexes the tar
//! once and then streams any member by offset without extracting anything;
//! it reads both the classic layout and the OCI-in-tar layout of newer
//! `docker save` (symlinked members are followed inside the archive).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::digest::into_verify_error;
use crate::layout::MAX_DOCUMENT_SIZE;
use crate::{
    Compression, Descriptor, Digest, DigestWriter, DocumentError, ImageManifest, Layout, LayoutError, ManifestBuilder,
    MediaType, RawConfig, Reference, VerifyingReader,
};

/// Why reading or writing a docker-archive failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file or stream operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The archive or member involved.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A member named by `manifest.json` is not in the tar.
    #[error("docker-archive {archive}: member {member:?} not found")]
    MissingMember {
        /// The archive.
        archive: PathBuf,
        /// The member path.
        member: String,
    },
    /// `manifest.json` is missing or malformed.
    #[error("docker-archive {archive}: invalid manifest.json")]
    Manifest {
        /// The archive.
        archive: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A config in the archive is invalid.
    #[error("docker-archive: invalid config {member:?}")]
    Config {
        /// The member path.
        member: String,
        /// Why.
        #[source]
        source: DocumentError,
    },
    /// A member that must be small (manifest, config) is too large.
    #[error("docker-archive: member {member:?} is {size} bytes, over the {MAX_DOCUMENT_SIZE}-byte limit")]
    TooLarge {
        /// The member.
        member: String,
        /// Its size.
        size: u64,
    },
    /// A layer's uncompressed digest differs from the config's diff id.
    #[error("layer {index} has diff id {actual}, but the config says {expected}")]
    DiffIdMismatch {
        /// Layer position, base first.
        index: usize,
        /// The config's diff id.
        expected: Digest,
        /// The digest of the uncompressed layer.
        actual: Digest,
    },
    /// The number of layers differs from the number of diff ids.
    #[error("image has {layers} layers but its config lists {diff_ids} diff ids")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// Diff ids in the config.
        diff_ids: usize,
    },
    /// A layer is compressed in a way kiln cannot decompress here.
    #[error("layer {digest} has media type {media_type}, which cannot be decompressed for a docker-archive")]
    UnsupportedLayer {
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: MediaType,
    },
    /// The image asked for is not in the archive.
    #[error("docker-archive {archive} has no image {wanted}")]
    NoSuchImage {
        /// The archive.
        archive: PathBuf,
        /// What was asked for.
        wanted: String,
    },
    /// A blob did not verify.
    #[error("blob verification failed")]
    Verify(#[source] Box<crate::VerifyError>),
    /// The archive's file exists and was not to be replaced.
    #[error("{path} already exists (not replaced)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Writing into an OCI layout failed.
    #[error("writing into OCI layout")]
    Layout(#[source] Box<LayoutError>),
}

impl From<crate::VerifyError> for ArchiveError {
    fn from(e: crate::VerifyError) -> Self {
        ArchiveError::Verify(Box::new(e))
    }
}

impl From<LayoutError> for ArchiveError {
    fn from(e: LayoutError) -> Self {
        ArchiveError::Layout(Box::new(e))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    repo_tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    layers: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Writes a docker-archive tarball to any [`Write`].
pub struct ArchiveWriter<W: Write> {
    tar: tar::Builder<W>,
    entries: Vec<ManifestEntry>,
    repositories: BTreeMap<String, BTreeMap<String, String>>,
    written: BTreeSet<String>,
}

fn tar_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive.
    pub fn new(w: W) -> Self {
        let mut tar = tar::Builder::new(w);
        tar.mode(tar::HeaderMode::Deterministic);
        ArchiveWriter { tar, entries: Vec::new(), repositories: BTreeMap::new(), written: BTreeSet::new() }
    }

    fn io<'a>(op: &'static str, member: &'a str) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
        move |source| ArchiveError::Io { op, path: PathBuf::from(member), source }
    }

    fn append(&mut self, name: &str, size: u64, data: impl Read) -> Result<(), ArchiveError> {
        let mut h = tar_header(size);
        self.tar.append_data(&mut h, name, data).map_err(Self::io("write member", name))
    }

    /// Adds an image: its manifest and exact config bytes, with `tags`, and
    /// layers read through `open_blob` (by their manifest descriptors).
    /// Layers are verified against their digests, decompressed (gzip or
    /// none), checked against the config's diff ids and stored once per diff
    /// id. Layers go through a temporary file, so memory stays flat.
    ///
    /// # Errors
    /// [`ArchiveError`] on verification failures or I/O errors.
    pub fn add_image<F, R>(
        &mut self,
        manifest: &ImageManifest,
        config: &RawConfig,
        tags: &[Reference],
        mut open_blob: F,
    ) -> Result<(), ArchiveError>
    where
        F: FnMut(&Descriptor) -> io::Result<R>,
        R: Read,
    {
        let diff_ids = &config.value().rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ArchiveError::LayerCount { layers: manifest.layers.len(), diff_ids: diff_ids.len() });
        }
        let config_name = format!("{}.json", config.digest().encoded());
        if self.written.insert(config_name.clone()) {
            self.append(&config_name, config.size(), &config.bytes()[..])?;
        }
        let mut layer_names = Vec::new();
        for (index, (desc, expected)) in manifest.layers.iter().zip(diff_ids).enumerate() {
            let name = format!("{}.tar", expected.encoded());
            layer_names.push(name.clone());
            if self.written.contains(&name) {
                continue;
            }
            let compression = desc.media_type.layer_compression();
            let blob = open_blob(desc).map_err(Self::io("open layer", &name))?;
            let verified = VerifyingReader::new(blob, &desc.digest, desc.size)?;
            let mut plain: Box<dyn Read> = match compression {
                Some(Compression::None) => Box::new(verified),
                Some(Compression::Gzip) => Box::new(MultiGzDecoder::new(BufReader::new(verified))),
                _ => {
                    return Err(ArchiveError::UnsupportedLayer {
                        digest: desc.digest.clone(),
                        media_type: desc.media_type.clone(),
                    });
                }
            };
            let spool = tempfile::tempfile().map_err(Self::io("create temp file for", &name))?;
            let mut w = DigestWriter::new(BufWriter::new(spool));
            io::copy(&mut plain, &mut w).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData if e.get_ref().is_some_and(|i| i.is::<crate::VerifyError>()) => {
                    ArchiveError::from(into_verify_error(e, &desc.digest))
                }
                _ => ArchiveError::Io { op: "decompress layer", path: PathBuf::from(&name), source: e },
            })?;
            let (buf, actual, size) = w.finish();
            if actual != *expected {
                return Err(ArchiveError::DiffIdMismatch { index, expected: expected.clone(), actual });
            }
            let mut spool = buf.into_inner().map_err(|e| ArchiveError::Io {
                op: "flush temp file for",
                path: PathBuf::from(&name),
                source: e.into_error(),
            })?;
            spool.seek(SeekFrom::Start(0)).map_err(Self::io("rewind temp file for", &name))?;
            self.append(&name, size, BufReader::new(spool))?;
            self.written.insert(name);
        }
        let repo_tags: Vec<String> = tags.iter().filter(|t| t.tag().is_some()).map(Reference::familiar).collect();
        for t in tags {
            if let (Some(tag), Some(top)) = (t.tag(), diff_ids.last()) {
                self.repositories
                    .entry(t.familiar_name())
                    .or_default()
                    .insert(tag.to_string(), top.encoded().to_owned());
            }
        }
        self.entries.push(ManifestEntry { config: config_name, repo_tags, layers: layer_names });
        Ok(())
    }

    /// Writes `manifest.json` and `repositories` and returns the writer.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] on write failure.
    pub fn finish(mut self) -> Result<W, ArchiveError> {
        let manifest = crate::to_canonical_json(&self.entries);
        self.append("manifest.json", manifest.len() as u64, &manifest[..])?;
        if !self.repositories.is_empty() {
            let repos = crate::to_canonical_json(&self.repositories);
            self.append("repositories", repos.len() as u64, &repos[..])?;
        }
        self.tar.into_inner().map_err(Self::io("finish", "archive"))
    }
}

/// An archive being written to a temporary file beside its final path.
pub type PendingArchive = ArchiveWriter<BufWriter<tempfile::NamedTempFile>>;

impl PendingArchive {
    /// Starts an archive that appears at `path` only when
    /// [`PendingArchive::commit`] succeeds; on error or drop nothing is left.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the temporary file cannot be made.
    pub fn create(path: &Path) -> Result<Self, ArchiveError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
        // what a writer killed halfway left here
        let _ = crate::reclaim_stale(dir, ".tmp-kiln-archive-");
        // 0644 less the umask, as `docker save -o` and skopeo create it;
        // locked while written, so that the next writer can tell it from a
        // dead writer's leftover
        let tmp = crate::stale::locked_tempfile_in(dir, ".tmp-kiln-archive-").map_err(|source| ArchiveError::Io {
            op: "create temp file in",
            path: dir.to_owned(),
            source,
        })?;
        Ok(ArchiveWriter::new(BufWriter::new(tmp)))
    }

    /// Finishes the archive and renames it to `path` atomically, replacing
    /// a file that is there.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] on write or rename failure (the temporary file is removed).
    pub fn commit(self, path: &Path) -> Result<(), ArchiveError> {
        self.commit_as(path, true)
    }

    /// Finishes the archive and links it at `path` atomically, only if no
    /// file is there (as skopeo refuses to overwrite an archive), even when
    /// one appeared while the archive was being written.
    ///
    /// # Errors
    /// [`ArchiveError::Exists`]; [`ArchiveError::Io`] on write failure (the
    /// temporary file is removed).
    pub fn commit_new(self, path: &Path) -> Result<(), ArchiveError> {
        self.commit_as(path, false)
    }

    fn commit_as(self, path: &Path, replace: bool) -> Result<(), ArchiveError> {
        let io = |op| move |source| ArchiveError::Io { op, path: path.to_owned(), source };
        let tmp = self.finish()?.into_inner().map_err(|e| io("flush")(e.into_error()))?;
        tmp.as_file().sync_all().map_err(io("sync"))?;
        if replace {
            tmp.persist(path).map_err(|e| io("rename into")(e.error))?;
        } else {
            tmp.persist_noclobber(path).map_err(|e| match e.error.kind() {
                io::ErrorKind::AlreadyExists => ArchiveError::Exists { path: path.to_owned() },
                _ => io("link into")(e.error),
            })?;
        }
        Ok(())
    }
}

/// One image listed in a docker-archive's `manifest.json`.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// The tags (`nginx:latest`), possibly none.
    pub repo_tags: Vec<String>,
    /// The config, exact bytes.
    pub config: RawConfig,
    /// The layer members, base first.
    pub layers: Vec<String>,
}

/// Reads a docker-archive file without extracting it.
#[derive(Debug)]
pub struct ArchiveReader {
    path: PathBuf,
    members: BTreeMap<String, (u64, u64)>,
    images: Vec<ArchiveImage>,
}

fn normalise(member: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in member.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl ArchiveReader {
    /// Indexes the archive at `path` and reads its manifest and configs.
    ///
    /// # Errors
    /// [`ArchiveError`] for unreadable tars, missing members, invalid documents.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ArchiveError> {
        let path = path.as_ref().to_owned();
        let io = |op| {
            let path = path.clone();
            move |source| ArchiveError::Io { op, path, source }
        };
        let file = File::open(&path).map_err(io("open"))?;
        let mut members = BTreeMap::new();
        let mut links = BTreeMap::new();
        let mut archive = tar::Archive::new(BufReader::new(file));
        for entry in archive.entries().map_err(io("read tar"))? {
            let entry = entry.map_err(io("read tar entry in"))?;
            let name = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
            let kind = entry.header().entry_type();
            if kind.is_file() {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            } else if (kind.is_symlink() || kind.is_hard_link())
                && let Some(target) = entry.link_name_bytes()
            {
                {
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let resolved = if kind.is_symlink() {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        normalise(&format!("{dir}/{target}"))
                    } else {
                        normalise(&target)
                    };
                    links.insert(name, resolved);
                }
            }
        }
        for (name, target) in links {
            if let Some(&m) = members.get(&target) {
                members.insert(name, m);
            }
        }
        let mut reader = ArchiveReader { path, members, images: Vec::new() };
        let manifest = reader.read_small("manifest.json")?;
        let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest)
            .map_err(|source| ArchiveError::Manifest { archive: reader.path.clone(), source })?;
        for e in entries {
            let bytes = reader.read_small(&e.config)?;
            let config = RawConfig::from_bytes(bytes)
                .map_err(|source| ArchiveError::Config { member: e.config.clone(), source })?;
            let layers: Vec<String> = e.layers.iter().map(|l| normalise(l)).collect();
            for l in &layers {
                reader.member(l)?;
            }
            if layers.len() != config.value().rootfs.diff_ids.len() {
                return Err(ArchiveError::LayerCount {
                    layers: layers.len(),
                    diff_ids: config.value().rootfs.diff_ids.len(),
                });
            }
            reader.images.push(ArchiveImage { repo_tags: e.repo_tags, config, layers });
        }
        Ok(reader)
    }

    fn member(&self, name: &str) -> Result<(u64, u64), ArchiveError> {
        self.members
            .get(&normalise(name))
            .copied()
            .ok_or_else(|| ArchiveError::MissingMember { archive: self.path.clone(), member: name.to_owned() })
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, ArchiveError> {
        let (_, size) = self.member(name)?;
        if size > MAX_DOCUMENT_SIZE {
            return Err(ArchiveError::TooLarge { member: name.to_owned(), size });
        }
        let mut buf = Vec::new();
        self.open_member(name)?.read_to_end(&mut buf).map_err(|source| ArchiveError::Io {
            op: "read member",
            path: PathBuf::from(name),
            source,
        })?;
        Ok(buf)
    }

    /// Streams a member of the tar.
    ///
    /// # Errors
    /// [`ArchiveError::MissingMember`] or I/O failures.
    pub fn open_member(&self, name: &str) -> Result<io::Take<BufReader<File>>, ArchiveError> {
        let (offset, size) = self.member(name)?;
        let io = |op| move |source| ArchiveError::Io { op, path: self.path.clone(), source };
        let mut f = File::open(&self.path).map_err(io("open"))?;
        f.seek(SeekFrom::Start(offset)).map_err(io("seek in"))?;
        Ok(BufReader::new(f).take(size))
    }

    /// The images in `manifest.json` order.
    pub fn images(&self) -> &[ArchiveImage] {
        &self.images
    }

    /// The image tagged `tag` (`nginx:latest` or any spelling that
    /// normalises to the same reference), or the only image when `tag` is `None`.
    ///
    /// # Errors
    /// [`ArchiveError::NoSuchImage`].
    pub fn find(&self, tag: Option<&str>) -> Result<&ArchiveImage, ArchiveError> {
        let no = |wanted: &str| ArchiveError::NoSuchImage { archive: self.path.clone(), wanted: wanted.to_owned() };
        match tag {
            None => match self.images.as_slice() {
                [only] => Ok(only),
                _ => Err(no("(the only image; the archive holds several, name one)")),
            },
            Some(t) => {
                let want = Reference::parse(t).ok();
                self.images
                    .iter()
                    .find(|i| {
                        i.repo_tags.iter().any(|rt| rt == t || (want.is_some() && Reference::parse(rt).ok() == want))
                    })
                    .ok_or_else(|| no(t))
            }
        }
    }

    /// Copies an image into an OCI layout: config bytes unchanged, each layer
    /// stored as found (media type from its magic bytes: tar, gzip or zstd),
    /// uncompressed layers checked against the diff ids. Returns the new
    /// manifest's descriptor, tagged with `tag` when given.
    ///
    /// # Errors
    /// [`ArchiveError`] on mismatches and I/O failures; the layout's
    /// `index.json` is untouched then.
    pub fn copy_to_layout(
        &self,
        image: &ArchiveImage,
        layout: &Layout,
        tag: Option<&Reference>,
    ) -> Result<Descriptor, ArchiveError> {
        let mut layers = Vec::new();
        for (index, (member, diff_id)) in image.layers.iter().zip(&image.config.value().rootfs.diff_ids).enumerate() {
            let io = |op| move |source| ArchiveError::Io { op, path: PathBuf::from(member), source };
            let mut r = self.open_member(member)?;
            let mut magic = [0u8; 4];
            let n = read_up_to(&mut r, &mut magic).map_err(io("read"))?;
            let media_type = match crate::Compression::detect(magic.get(..n).unwrap_or_default()) {
                crate::Compression::Gzip => MediaType::OciLayerGzip,
                crate::Compression::Zstd => MediaType::OciLayerZstd,
                _ => MediaType::OciLayer,
            };
            let r = magic.get(..n).unwrap_or_default().chain(r);
            let info = layout.write_blob(r, None)?;
            if media_type == MediaType::OciLayer && info.digest != *diff_id {
                return Err(ArchiveError::DiffIdMismatch { index, expected: diff_id.clone(), actual: info.digest });
            }
            layers.push(Descriptor::new(media_type, info.digest, info.size));
        }
        layout.write_blob_bytes(image.config.bytes())?;
        let mut config_desc = image.config.descriptor();
        config_desc.media_type = MediaType::OciConfig;
        let manifest = crate::Raw::new(ManifestBuilder::new(config_desc).layers(layers).build());
        layout.write_blob_bytes(manifest.bytes())?;
        let desc = manifest.descriptor();
        match tag {
            Some(t) => layout.set_tag(t, desc.clone())?,
            None => layout.add_manifest(desc.clone())?,
        }
        Ok(desc)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
