//! Copy images between registries, OCI layouts and docker-archive files,
//! moving manifests as exact bytes so digests are preserved.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_image::{ArchiveReader, Descriptor, Digest, Layout, PendingArchive, Raw, Reference, Tag};
use registry_client::Client;

/// Where an image is: a registry, an OCI layout, or a docker-archive file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageLocation {
    /// A registry reference (`docker://` prefix optional).
    Registry(Reference),
    /// `oci:DIR[:TAG]`.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`), if given.
        tag: Option<Tag>,
    },
    /// `docker-archive:FILE[:NAME:TAG]`.
    DockerArchive {
        /// The tar file.
        file: PathBuf,
        /// The image name inside (`name:tag`), if given.
        name: Option<Reference>,
    },
}

impl ImageLocation {
    /// `oci:DIR`: the OCI layout at `dir`, no tag given.
    pub fn layout(dir: impl Into<PathBuf>) -> ImageLocation {
        ImageLocation::Layout { dir: dir.into(), tag: None }
    }

    /// `docker-archive:FILE`: the tar file `file`, no name given.
    pub fn docker_archive(file: impl Into<PathBuf>) -> ImageLocation {
        ImageLocation::DockerArchive { file: file.into(), name: None }
    }
}

/// Why a location string is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// The reference part is invalid.
    #[error("invalid image location {input:?}")]
    Reference {
        /// The input.
        input: String,
        /// Why.
        #[source]
        source: oci_image::ReferenceError,
    },
    /// An empty path after `oci:` or `docker-archive:`.
    #[error("invalid image location {input:?}: missing path")]
    MissingPath {
        /// The input.
        input: String,
    },
}

impl FromStr for ImageLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let reference_err = |source| LocationError::Reference { input: s.to_owned(), source };
        if let Some(rest) = s.strip_prefix("oci:") {
            // the tag is after the last ':' unless that part looks like a path
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => {
                    (d, Some(t.parse::<Tag>().map_err(reference_err)?))
                }
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(LocationError::MissingPath { input: s.to_owned() });
            }
            return Ok(ImageLocation::Layout { dir: PathBuf::from(dir), tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, name) = match rest.split_once(':') {
                Some((f, n)) => (f, Some(Reference::parse(n).map_err(reference_err)?)),
                None => (rest, None),
            };
            if file.is_empty() {
                return Err(LocationError::MissingPath { input: s.to_owned() });
            }
            return Ok(ImageLocation::DockerArchive { file: PathBuf::from(file), name });
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        Ok(ImageLocation::Registry(Reference::parse(r).map_err(reference_err)?))
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageLocation::Registry(r) => write!(f, "docker://{r}"),
            ImageLocation::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageLocation::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageLocation::DockerArchive { file, name: Some(n) } => {
                write!(f, "docker-archive:{}:{}", file.display(), n.familiar())
            }
            ImageLocation::DockerArchive { file, name: None } => write!(f, "docker-archive:{}", file.display()),
        }
    }
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// A registry operation failed.
    #[error("registry")]
    Registry(#[from] registry_client::Error),
    /// An OCI layout operation failed.
    #[error("OCI layout")]
    Layout(#[from] Box<oci_image::LayoutError>),
    /// A docker-archive operation failed.
    #[error("docker-archive")]
    Archive(#[from] Box<oci_image::ArchiveError>),
    /// The destination cannot take this source as is.
    #[error("cannot copy {from} to {to}: {why}")]
    Unsupported {
        /// The source.
        from: String,
        /// The destination.
        to: String,
        /// Why.
        why: &'static str,
    },
    /// The source index has no manifest for a platform asked for.
    #[error("{source_ref} has no manifest for platform {platform}")]
    NoPlatform {
        /// The source.
        source_ref: String,
        /// The platform.
        platform: Box<oci_image::Platform>,
    },
    /// The destination registry did not say which digest it stored.
    #[error("{destination}: the registry named no digest for the copied manifest")]
    NoDigest {
        /// The destination.
        destination: String,
    },
    /// A temporary directory could not be made.
    #[error("creating a temporary directory")]
    Temp(#[source] std::io::Error),
}

impl From<oci_image::LayoutError> for CopyError {
    fn from(e: oci_image::LayoutError) -> Self {
        CopyError::Layout(Box::new(e))
    }
}

impl From<oci_image::ArchiveError> for CopyError {
    fn from(e: oci_image::ArchiveError) -> Self {
        CopyError::Archive(Box::new(e))
    }
}

/// Options for [`copy_with`].
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Copy only these platforms of an index: one gives that platform's
    /// manifest, several a new index of them (a new digest). Empty: the
    /// whole index, unchanged.
    pub platforms: Vec<oci_image::Platform>,
    /// Also copy the artifacts that refer to the copied manifests
    /// (signatures, SBOMs), through the referrers API or its fallback.
    pub referrers: bool,
    /// Replace a docker-archive destination that exists (refused otherwise,
    /// as skopeo refuses).
    pub overwrite: bool,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// The digest of the manifest (or index) at the destination.
    pub digest: Digest,
    /// True when several platforms were selected and a new index was
    /// written: its digest differs from the source's.
    pub new_index: bool,
    /// Referrers copied along.
    pub referrers: usize,
    /// Blobs uploaded to a registry destination.
    pub uploaded: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs already present.
    pub skipped: usize,
}

/// The full name to record beside `tag` in a layout, when the source has one.
fn source_name(src: &ImageLocation, tag: &Tag) -> Option<Reference> {
    match src {
        ImageLocation::Registry(r) => Some(r.with_tag(tag.clone())),
        ImageLocation::DockerArchive { name: Some(n), .. } => Some(n.with_tag(tag.clone())),
        _ => None,
    }
}

/// Copies the image `desc` of `from` into the layout at `dir` and names it
/// by each of `names` (a tag, with the full name beside it when given; no
/// names: an untagged index entry): every blob it references copied
/// (reflinked where the file system can, never hard-linked) and checked
/// against its digest on the way, what a document names before it. A new
/// layout is filled in a temporary directory beside `dir` and renamed into
/// place, so it appears whole; when another writer makes `dir` first, the
/// image goes into theirs. Tags are set under the layout's index lock.
/// Returns false, having written no tag and renamed nothing into place,
/// when `stop` says so first. A blob with one of `copies` (written beside
/// it in the pass that made it) is linked in from that copy instead.
/// Build outputs and copies between layouts both come this way.
pub(crate) fn write_layout(
    from: &Layout,
    desc: &Descriptor,
    dir: &std::path::Path,
    names: &[(Tag, Option<Reference>)],
    stop: &dyn Fn() -> bool,
    mut copies: std::collections::HashMap<oci_image::Digest, oci_image::BlobCopy>,
) -> Result<bool, CopyError> {
    let mut fill = |out: &Layout| -> Result<bool, CopyError> {
        let mut stopped = false;
        from.walk(desc, |d, _| {
            stopped = stopped || stop();
            if stopped {
                return Ok(());
            }
            // a copy written with the blob is linked in; else a checked copy out of `from`
            if let Some(copy) = copies.remove(&d.digest)
                && copy.size() == d.size
                && out.place_copy(copy)?
            {
                return Ok(());
            }
            from.copy_blob_to(d, out).map(drop)
        })?;
        if stopped || stop() {
            return Ok(false);
        }
        if names.is_empty() {
            out.add_manifest(desc.clone())?;
        }
        for (tag, full) in names {
            out.set_ref_name(tag, full.as_ref(), desc.clone())?;
        }
        Ok(true)
    };
    let exists = std::fs::symlink_metadata(dir).is_ok();
    if exists && !std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        // an existing layout (or something that is not one: refused); what
        // writers killed halfway left in it goes first
        let out = Layout::create(dir)?;
        out.reclaim()?;
        return fill(&out);
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| std::path::Path::new("."));
    std::fs::create_dir_all(parent).map_err(CopyError::Temp)?;
    // staging directories of writers killed halfway; ours is locked while
    // it is filled, so that nobody takes it for one of those
    oci_image::reclaim_stale(parent, ".kiln-out-").map_err(CopyError::Temp)?;
    let (tmp, _held) = oci_image::locked_tempdir_in(parent, ".kiln-out-").map_err(CopyError::Temp)?;
    let staged = tmp.path().join("layout");
    if !fill(&Layout::create(&staged)?)? {
        return Ok(false);
    }
    match std::fs::rename(&staged, dir) {
        Ok(()) => Ok(true),
        // another writer made it meanwhile: add the image to theirs
        Err(e) => match Layout::open(dir) {
            Ok(theirs) => fill(&theirs),
            Err(_) => Err(CopyError::Temp(e)),
        },
    }
}

/// Refuses a docker-archive output `file` that exists, unless `overwrite`:
/// checked before the work, so that nothing runs or downloads for an output
/// that cannot be written (the final rename refuses it again).
pub(crate) fn archive_writable(file: &std::path::Path, overwrite: bool) -> Result<(), oci_image::ArchiveError> {
    if !overwrite && std::fs::symlink_metadata(file).is_ok() {
        return Err(oci_image::ArchiveError::Exists { path: file.to_owned() });
    }
    Ok(())
}

/// Writes the single-platform image `desc` of `layout` as a docker-archive
/// file, every blob checked against its digest as it is copied; an existing
/// file is replaced only when `overwrite`. The file appears whole or not at all.
pub(crate) fn write_archive(
    layout: &Layout,
    desc: &Descriptor,
    file: &std::path::Path,
    name: Option<&Reference>,
    overwrite: bool,
) -> Result<Digest, CopyError> {
    write_archive_unless(layout, desc, file, name, overwrite, &|| false)
        .and_then(|d| d.ok_or(CopyError::Temp(std::io::Error::from(std::io::ErrorKind::Interrupted))))
}

/// [`write_archive`], abandoned (nothing written) when `stop` says so
/// before the file is put in place: `None` then.
pub(crate) fn write_archive_unless(
    layout: &Layout,
    desc: &Descriptor,
    file: &std::path::Path,
    name: Option<&Reference>,
    overwrite: bool,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Digest>, CopyError> {
    archive_writable(file, overwrite)?;
    let oci_image::AnyManifest::Image(manifest) = layout.read_manifest(desc)? else {
        return Err(CopyError::Unsupported {
            from: format!("oci:{}", layout.root().display()),
            to: format!("docker-archive:{}", file.display()),
            why: "a docker-archive holds single-platform images; pick one platform",
        });
    };
    let config = Raw::<oci_image::ImageConfiguration>::from_bytes(layout.read_blob(&manifest.value().config)?)
        .map_err(|e| oci_image::LayoutError::Document {
            path: layout.root().to_owned(),
            what: "config".into(),
            source: Box::new(e),
        })?;
    let tags: Vec<Reference> = name.into_iter().cloned().collect();
    let mut w = PendingArchive::create(file)?;
    w.add_image(manifest.value(), &config, &tags, |d| layout.open_blob(&d.digest).map_err(std::io::Error::other))?;
    if stop() {
        return Ok(None);
    }
    if overwrite {
        w.commit(file)?;
    } else {
        w.commit_new(file)?;
    }
    Ok(Some(manifest.digest().clone()))
}

fn report(digest: Digest, uploaded: usize, mounted: usize, skipped: usize) -> CopyReport {
    CopyReport { digest, new_index: false, referrers: 0, uploaded, mounted, skipped }
}

/// Copies with options: platform selection and referrers (registry to
/// registry; one platform also for registry to OCI layout).
///
/// # Errors
/// [`CopyError`]; [`CopyError::Unsupported`] for option and location
/// combinations not handled.
pub async fn copy_with(
    client: &Client,
    src: &ImageLocation,
    dst: &ImageLocation,
    opts: &CopyOptions,
) -> Result<CopyReport, CopyError> {
    use ImageLocation as L;
    let unsupported = |why| CopyError::Unsupported { from: src.to_string(), to: dst.to_string(), why };
    match (src, dst, opts.platforms.as_slice()) {
        (_, _, []) if !opts.referrers => copy_plain(client, src, dst, opts.overwrite).await,
        (L::Registry(s), L::Layout { dir, tag }, [platform]) if !opts.referrers => {
            let layout = Layout::create(dir)?;
            let name = tag.as_ref().map(|t| s.with_tag(t.clone()));
            let desc = client.pull_to_layout(s, &layout, Some(platform), name.as_ref()).await?;
            Ok(report(desc.digest, 0, 0, 0))
        }
        (L::Registry(s), L::Registry(d), platforms) => {
            let mut out = select_and_copy(client, s, d, platforms).await?;
            if opts.referrers {
                let copied: Vec<Digest> = client
                    .manifest_tree(&d.repository_only().with_digest(out.digest.clone()))
                    .await?
                    .iter()
                    .map(|m| m.digest().clone())
                    .collect();
                for subject in copied {
                    for r in client.referrers(&s.repository_only().with_digest(subject), None).await? {
                        client
                            .copy_between(
                                &s.repository_only().with_digest(r.digest.clone()),
                                &d.repository_only().with_digest(r.digest),
                            )
                            .await?;
                        out.referrers += 1;
                    }
                }
            }
            Ok(out)
        }
        _ => Err(unsupported(
            "platform selection and referrers need a registry source (and a registry destination for referrers or several platforms)",
        )),
    }
}

/// Registry to registry with an optional platform selection.
async fn select_and_copy(
    client: &Client,
    s: &Reference,
    d: &Reference,
    platforms: &[oci_image::Platform],
) -> Result<CopyReport, CopyError> {
    let top = client.get_manifest(s).await?;
    let index = if let oci_image::AnyManifest::Index(index) = &top
        && !platforms.is_empty()
    {
        index.clone()
    } else {
        // a single manifest, or no selection: copied as it is
        let r = client.copy_between(s, d).await?;
        return Ok(report(top.digest().clone(), r.uploaded, r.mounted, r.skipped));
    };
    let mut chosen = Vec::new();
    for p in platforms {
        let child = index
            .value()
            .manifest_for(p)
            .cloned()
            .ok_or_else(|| CopyError::NoPlatform { source_ref: s.to_string(), platform: Box::new(p.clone()) })?;
        if !chosen.iter().any(|c: &Descriptor| c.digest == child.digest) {
            chosen.push(child);
        }
    }
    let mut total = report(Digest::sha256(b""), 0, 0, 0);
    if let [only] = chosen.as_slice() {
        let r = client.copy_between(&s.repository_only().with_digest(only.digest.clone()), d).await?;
        return Ok(report(only.digest.clone(), r.uploaded, r.mounted, r.skipped));
    }
    for c in &chosen {
        let r = client
            .copy_between(
                &s.repository_only().with_digest(c.digest.clone()),
                &d.repository_only().with_digest(c.digest.clone()),
            )
            .await?;
        total.uploaded += r.uploaded;
        total.mounted += r.mounted;
        total.skipped += r.skipped;
    }
    let mut builder = oci_image::IndexBuilder::new();
    if index.value().media_type.as_ref().is_some_and(oci_image::MediaType::is_docker) {
        builder = builder.docker();
    }
    for c in chosen {
        builder = builder.manifest(c);
    }
    let new = Raw::new(builder.build());
    let digest = client.put_manifest(d, new.bytes().clone(), &new.descriptor().media_type).await?;
    total.digest = digest;
    total.new_index = true;
    Ok(total)
}

/// Copies the image at `src` to `dst`. Manifests keep their bytes, so the
/// destination digest equals the source digest (a docker-archive source,
/// which holds no manifest, gets a new OCI manifest). Registry to registry
/// streams blobs without touching the disk and mounts within one registry.
/// Blobs read from a layout are checked against their digests as they are
/// copied; a docker-archive destination that exists is refused
/// ([`copy_with`] and [`CopyOptions::overwrite`] replace it).
///
/// # Errors
/// [`CopyError`] naming the side that failed.
pub async fn copy(client: &Client, src: &ImageLocation, dst: &ImageLocation) -> Result<CopyReport, CopyError> {
    copy_plain(client, src, dst, false).await
}

async fn copy_plain(
    client: &Client,
    src: &ImageLocation,
    dst: &ImageLocation,
    overwrite: bool,
) -> Result<CopyReport, CopyError> {
    use ImageLocation as L;
    match (src, dst) {
        // registry to registry streams blobs through, mounting within a registry
        (L::Registry(s), L::Registry(d)) => {
            let r = client.copy_between(s, d).await?;
            let digest = r.digest.ok_or_else(|| CopyError::NoDigest { destination: d.to_string() })?;
            return Ok(report(digest, r.uploaded, r.mounted, r.skipped));
        }
        // a registry's image is pulled straight into a layout destination
        (L::Registry(s), L::Layout { dir, tag }) => {
            let layout = Layout::create(dir)?;
            let name = tag.as_ref().map(|t| s.with_tag(t.clone()));
            let desc = client.pull_to_layout(s, &layout, None, name.as_ref()).await?;
            return Ok(report(desc.digest, 0, 0, 0));
        }
        (L::DockerArchive { .. }, L::DockerArchive { .. }) => {
            return Err(CopyError::Unsupported {
                from: src.to_string(),
                to: dst.to_string(),
                why: "docker-archive to docker-archive: copy through an OCI layout",
            });
        }
        (_, L::DockerArchive { file, .. }) => archive_writable(file, overwrite)?,
        _ => {}
    }
    // everything else: the source as an image in a layout, then written out
    let staged = Staged::from_source(client, src).await?;
    let desc = &staged.desc;
    match dst {
        L::Registry(d) => {
            let r = client.push_from_layout(&staged.layout, desc, d, None).await?;
            Ok(report(desc.digest.clone(), r.uploaded, r.mounted, r.skipped))
        }
        L::Layout { dir, tag } => {
            let names: Vec<_> =
                tag.as_ref().or(staged.tag.as_ref()).map(|t| (t.clone(), source_name(src, t))).into_iter().collect();
            write_layout(&staged.layout, desc, dir, &names, &|| false, std::collections::HashMap::new())?;
            Ok(report(desc.digest.clone(), 0, 0, 0))
        }
        L::DockerArchive { file, name } => {
            let name = name.as_ref().or(staged.name.as_ref());
            let digest = write_archive(&staged.layout, desc, file, name, overwrite)?;
            Ok(report(digest, 0, 0, 0))
        }
    }
}

/// A copy's source as an image in an OCI layout: a layout's own, or a
/// private temporary one that holds a docker-archive's or a registry's image.
struct Staged {
    layout: Layout,
    desc: Descriptor,
    /// The tag the source named (`oci:DIR:TAG`).
    tag: Option<Tag>,
    /// The name the source gives the image (a reference, an archive's name).
    name: Option<Reference>,
    _tmp: Option<tempfile::TempDir>,
}

impl Staged {
    async fn from_source(client: &Client, src: &ImageLocation) -> Result<Staged, CopyError> {
        match src {
            ImageLocation::Layout { dir, tag } => {
                let layout = Layout::open(dir)?;
                let desc = layout.image(tag.as_ref().map(Tag::as_str))?;
                Ok(Staged { layout, desc, tag: tag.clone(), name: None, _tmp: None })
            }
            ImageLocation::DockerArchive { file, name } => {
                let reader = ArchiveReader::open(file)?;
                let wanted = name.as_ref().map(Reference::familiar);
                let image = reader.find(wanted.as_deref())?;
                let tmp = crate::private_tempdir().map_err(CopyError::Temp)?;
                let layout = Layout::create(tmp.path().join("layout"))?;
                let desc = reader.copy_to_layout(image, &layout, None)?;
                Ok(Staged { layout, desc, tag: None, name: name.clone(), _tmp: Some(tmp) })
            }
            ImageLocation::Registry(r) => {
                // the image of this host's platform: a layout destination
                // takes the registry's whole image without staging
                let tmp = crate::private_tempdir().map_err(CopyError::Temp)?;
                let layout = Layout::create(tmp.path().join("layout"))?;
                let desc = client.pull_to_layout(r, &layout, Some(&oci_image::Platform::host()), None).await?;
                Ok(Staged { layout, desc, tag: None, name: Some(r.clone()), _tmp: Some(tmp) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l: ImageLocation = "oci:/tmp/x:v1".parse().unwrap();
        assert_eq!(l, ImageLocation::Layout { dir: "/tmp/x".into(), tag: Some("v1".parse().unwrap()) });
        let l: ImageLocation = "oci:relative/dir".parse().unwrap();
        assert_eq!(l, ImageLocation::Layout { dir: "relative/dir".into(), tag: None });
        let l: ImageLocation = "docker://localhost:5000/a:b".parse().unwrap();
        assert_eq!(l, ImageLocation::Registry("localhost:5000/a:b".parse().unwrap()));
        let l: ImageLocation = "docker-archive:/tmp/a.tar:app:v2".parse().unwrap();
        assert_eq!(
            l,
            ImageLocation::DockerArchive { file: "/tmp/a.tar".into(), name: Some("app:v2".parse().unwrap()) }
        );
        assert!("oci:".parse::<ImageLocation>().is_err());
        assert!("oci:/x:-bad".parse::<ImageLocation>().is_err());
        assert!("Bad/Ref".parse::<ImageLocation>().is_err());
    }
}
