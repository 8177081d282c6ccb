//! Whole images: push from an OCI layout (blobs deduplicated and uploaded
//! concurrently, child manifests before their index, the named manifest
//! last and only after every blob succeeded) and pull into an OCI layout
//! (every blob streamed to disk and verified).

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use oci_image::{AnyManifest, Descriptor, Digest, Layout, LayoutError, Platform, Reference};

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::ops::{BlobPush, BytesSource, LayoutBlob};
use oci_image::Repository;

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The digest of the manifest (or index) pushed under the target name.
    pub digest: Option<Digest>,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs already present.
    pub skipped: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

fn layout_err(e: LayoutError) -> Error {
    let kind = match &e {
        LayoutError::Verify { .. } => ErrorKind::DigestMismatch,
        LayoutError::BlobNotFound { .. } | LayoutError::TagNotFound { .. } => ErrorKind::NotFound,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("OCI layout: {e}")).with_source(e)
}

/// The config and layer descriptors of every image manifest among
/// `manifests`, each digest once, in order of first appearance.
pub fn image_blobs(manifests: &[AnyManifest]) -> Vec<Descriptor> {
    let mut seen = BTreeSet::new();
    manifests
        .iter()
        .filter_map(|m| match m {
            AnyManifest::Image(raw) => Some(raw.value()),
            AnyManifest::Index(_) => None,
        })
        .flat_map(|v| std::iter::once(&v.config).chain(&v.layers))
        .filter(|d| seen.insert(d.digest.clone()))
        .cloned()
        .collect()
}

impl Client {
    /// Pushes blobs (deduplicated by the caller) concurrently, bounded by the
    /// configured concurrency, and counts what happened to them.
    async fn push_blobs(
        &self,
        repo: &Repository,
        blobs: Vec<Descriptor>,
        mount_from: Option<&Repository>,
        source_of: impl Fn(&Descriptor) -> Arc<dyn crate::ops::BlobSource>,
    ) -> Result<PushReport> {
        let results: Vec<(BlobPush, u64)> = stream::iter(blobs.into_iter().map(|d| {
            let source = source_of(&d);
            async move {
                let r = self.push_blob(repo, &d, source, mount_from).await?;
                Ok::<_, Error>((r, d.size))
            }
        }))
        .buffer_unordered(self.inner.concurrency)
        .try_collect()
        .await?;
        let mut report = PushReport::default();
        for (r, size) in results {
            match r {
                BlobPush::Uploaded => {
                    report.uploaded += 1;
                    report.bytes_uploaded += size;
                }
                BlobPush::Mounted => report.mounted += 1,
                BlobPush::Skipped => report.skipped += 1,
            }
        }
        Ok(report)
    }

    /// Pushes the image or index `desc` of `layout` to `target` (its tag,
    /// or by digest when it has none). With `mount_from`, blobs missing at
    /// the target are first mounted from that repository of the same
    /// registry. Manifest bytes are pushed unchanged, so the digest at the
    /// target equals the layout's.
    ///
    /// # Errors
    /// The first blob or manifest failure; the target name is not touched then.
    #[tracing::instrument(level = "debug", skip_all, fields(target = %target))]
    pub async fn push_from_layout(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        target: &Reference,
        mount_from: Option<&Repository>,
    ) -> Result<PushReport> {
        let repo = Repository::of(target);
        // the blobs, and the documents children first
        let mut blobs = Vec::new();
        let mut manifests = Vec::new();
        layout
            .walk(desc, |d, doc| {
                match doc {
                    Some(doc) => manifests.push((d.clone(), doc.bytes().clone())),
                    None => blobs.push(d.clone()),
                }
                Ok(())
            })
            .map_err(layout_err)?;
        let mut report = self
            .push_blobs(&repo, blobs, mount_from, |d| {
                Arc::new(LayoutBlob { layout: layout.clone(), digest: d.digest.clone() })
            })
            .await?;
        // children first, by digest; the named one last
        let last = manifests.len().saturating_sub(1);
        for (i, (d, bytes)) in manifests.into_iter().enumerate() {
            let name = if i == last { target.clone() } else { target.repository_only().with_digest(d.digest.clone()) };
            let pushed = self.put_manifest(&name, bytes, &d.media_type).await?;
            if pushed != d.digest {
                return Err(Error::digest_mismatch(&d.digest, &pushed));
            }
            if i == last {
                report.digest = Some(pushed);
            }
        }
        Ok(report)
    }

    /// Pushes raw manifest or blob bytes that are already in memory.
    ///
    /// # Errors
    /// As [`Client::push_blob`].
    pub async fn push_bytes(&self, repo: &Repository, desc: &Descriptor, bytes: Bytes) -> Result<BlobPush> {
        self.push_blob(repo, desc, Arc::new(BytesSource(bytes)), None).await
    }

    /// Pulls `source` into `layout` and names it with `name`'s tag (or
    /// adds it untagged). With `platform`, an index is resolved to that
    /// platform's manifest; without, the whole index comes along. Returns
    /// the descriptor written to the layout's index.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`], [`ErrorKind::DigestMismatch`]; the layout's
    /// index is not updated, and no manifest is stored, unless every blob
    /// arrived intact. Blobs are verified before they get their names, so a
    /// failed pull leaves no partial blob (only whole, verified ones that
    /// [`Layout::gc`] removes).
    #[tracing::instrument(level = "debug", skip_all, fields(source = %source))]
    pub async fn pull_to_layout(
        &self,
        source: &Reference,
        layout: &Layout,
        platform: Option<&Platform>,
        name: Option<&Reference>,
    ) -> Result<Descriptor> {
        let repo = Repository::of(source);
        let mut top = self.get_manifest(source).await?;
        if let (Some(p), AnyManifest::Index(index)) = (platform, &top) {
            let child =
                index.value().manifest_for(p).cloned().ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, format!("{source} has no manifest for platform {p}"))
                })?;
            top = self.get_manifest(&source.repository_only().with_digest(child.digest.clone())).await?;
        }
        let (desc, docs) = self.pull_manifest_tree(source, top).await?;
        // blobs first: fetch what the layout lacks, each verified before it
        // appears under its name (a failed one leaves no partial file)
        let mut blobs = image_blobs(&docs);
        blobs.retain(|d| !layout.has_blob(&d.digest));
        stream::iter(blobs.into_iter().map(|d| {
            let client = self.clone();
            let repo = repo.clone();
            let layout = layout.clone();
            async move { client.pull_blob_into(&repo, &d, &layout).await }
        }))
        .buffer_unordered(self.inner.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
        // then the manifests, so a failed pull leaves no manifest whose blobs are missing
        for m in &docs {
            let size = m.bytes().len() as u64;
            layout.write_blob(&m.bytes()[..], Some((m.digest(), size))).map_err(layout_err)?;
        }
        let tagged = name.or(source.tag().is_some().then_some(source));
        match tagged.filter(|n| n.tag().is_some()) {
            Some(n) => layout.set_tag(n, desc.clone()).map_err(layout_err)?,
            None => layout.add_manifest(desc.clone()).map_err(layout_err)?,
        }
        Ok(desc)
    }

    /// A manifest and, for an index, every child manifest (recursively,
    /// each verified against its digest), parents before their children.
    ///
    /// # Errors
    /// As [`Client::get_manifest`].
    pub async fn manifest_tree(&self, r: &Reference) -> Result<Vec<AnyManifest>> {
        let top = self.get_manifest(r).await?;
        Ok(self.pull_manifest_tree(r, top).await?.1)
    }

    /// Fetches a manifest and, for an index, every child manifest
    /// (recursively); returns the top descriptor and all document bytes.
    async fn pull_manifest_tree(&self, source: &Reference, top: AnyManifest) -> Result<(Descriptor, Vec<AnyManifest>)> {
        let desc = top.descriptor();
        let mut docs = Vec::new();
        let mut queue = vec![top];
        while let Some(m) = queue.pop() {
            if let AnyManifest::Index(i) = &m {
                for child in &i.value().manifests {
                    if child.media_type.is_manifest() || child.media_type.is_index() {
                        let r = source.repository_only().with_digest(child.digest.clone());
                        queue.push(self.get_manifest(&r).await?);
                    }
                }
            }
            docs.push(m);
        }
        Ok((desc, docs))
    }

    /// Streams one blob into a layout through a bounded channel to a
    /// blocking writer; the layout verifies digest and size before the
    /// blob appears under its name.
    ///
    /// # Errors
    /// As [`Client::fetch_blob`]; [`ErrorKind::DigestMismatch`] when the
    /// bytes do not match `desc` (nothing is left in the layout then).
    pub async fn fetch_blob_to_layout(&self, repo: &Repository, desc: &Descriptor, layout: &Layout) -> Result<()> {
        self.pull_blob_into(repo, desc, layout).await
    }

    async fn pull_blob_into(&self, repo: &Repository, desc: &Descriptor, layout: &Layout) -> Result<()> {
        let (mut tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let layout = layout.clone();
        let expected = desc.digest.clone();
        let size = desc.size;
        let writer = tokio::task::spawn_blocking(move || {
            layout.write_blob(ChannelReader { rx, current: Bytes::new() }, Some((&expected, size)))
        });
        let fetched = self.fetch_blob(repo, desc, false, &mut tx).await;
        drop(tx);
        let written = writer.await.map_err(|e| Error::new(ErrorKind::Io, format!("layout writer task: {e}")))?;
        fetched?;
        written.map_err(layout_err)?;
        Ok(())
    }
}

/// A blob read from a registry while it is uploaded elsewhere: the fetch
/// runs on the async runtime and feeds a bounded channel that the upload
/// reads from, so nothing touches the disk and memory stays bounded.
pub struct RegistryBlob {
    client: Client,
    repo: Repository,
    desc: Descriptor,
    runtime: tokio::runtime::Handle,
}

impl RegistryBlob {
    /// A source for `desc` in `repo`, fetched through `client` on the current runtime.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(client: Client, repo: Repository, desc: Descriptor) -> Self {
        RegistryBlob { client, repo, desc, runtime: tokio::runtime::Handle::current() }
    }
}

impl crate::ops::BlobSource for RegistryBlob {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        let (mut tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let (client, repo, desc) = (self.client.clone(), self.repo.clone(), self.desc.clone());
        let (err_tx, err_rx) = mpsc::sync_channel::<Error>(1);
        self.runtime.spawn(async move {
            let r = client.fetch_blob(&repo, &desc, true, &mut tx).await;
            if let Err(e) = r {
                let _ = err_tx.send(e);
            }
        });
        Ok(Box::new(ErrorAwareReader { inner: ChannelReader { rx, current: Bytes::new() }, errors: err_rx }))
    }
}

/// A channel reader that turns a failed fetch into a read error instead of a short read.
struct ErrorAwareReader {
    inner: ChannelReader,
    errors: mpsc::Receiver<Error>,
}

impl Read for ErrorAwareReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0
            && let Ok(e) = self.errors.try_recv()
        {
            return Err(io::Error::other(e));
        }
        Ok(n)
    }
}

impl Client {
    /// Copies an image or index between registries without touching the
    /// disk: manifests move as exact bytes (same digests), blobs are
    /// skipped when present, mounted when both sides are on one registry,
    /// or streamed from the source into the upload. Returns the digest at
    /// the destination.
    ///
    /// # Errors
    /// The first failure; the destination name is pushed last, only after
    /// every blob and child manifest is in place.
    #[tracing::instrument(level = "debug", skip_all, fields(source = %source, target = %target))]
    pub async fn copy_between(&self, source: &Reference, target: &Reference) -> Result<PushReport> {
        let src_repo = Repository::of(source);
        let dst_repo = Repository::of(target);
        let top = self.get_manifest(source).await?;
        let top_desc = top.descriptor();
        let (_, manifests) = self.pull_manifest_tree(source, top).await?;
        let mut blobs = image_blobs(&manifests);
        // foreign layers (with urls) stay where they are
        blobs.retain(|d| d.urls.is_none());
        // within one registry, blobs are mounted from the source repository
        let mount = (src_repo.registry() == dst_repo.registry()).then_some(&src_repo);
        let mut report = self
            .push_blobs(&dst_repo, blobs, mount, |d| {
                Arc::new(RegistryBlob::new(self.clone(), src_repo.clone(), d.clone()))
            })
            .await?;
        // children (pulled depth first, top first) go before their parents
        for m in manifests.iter().rev() {
            let d = m.descriptor();
            let name = if d.digest == top_desc.digest {
                target.clone()
            } else {
                target.repository_only().with_digest(d.digest.clone())
            };
            let pushed = self.put_manifest(&name, m.bytes().clone(), &d.media_type).await?;
            if pushed != d.digest {
                return Err(Error::digest_mismatch(&d.digest, &pushed));
            }
        }
        report.digest = Some(top_desc.digest);
        Ok(report)
    }
}

/// A `Read` over chunks arriving on a channel; used on blocking threads only.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        if let Some(dst) = buf.get_mut(..n) {
            dst.copy_from_slice(&chunk);
        }
        Ok(n)
    }
}
