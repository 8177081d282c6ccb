//! The distribution API endpoints: manifests, blobs, uploads, tags,
//! catalog and referrers.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_image::{AnyManifest, Descriptor, Digest, Hasher, ImageIndex, MediaType, Raw, Reference};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LINK, RANGE};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::client::{Body, Client, Repo, Request, check, redact};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;

/// The largest manifest accepted (the distribution spec's 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// The most tags [`Client::list_tags`] collects before it gives up on a
/// registry that pages forever.
pub const MAX_LISTED_TAGS: usize = 1_000_000;
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, application/vnd.docker.distribution.manifest.v1+json;q=0.5";
const DIGEST_HEADER: &str = "docker-content-digest";
const READ_CHUNK: usize = 256 * 1024;

/// Where a blob to upload comes from; opened again for every attempt, so
/// nothing is ever buffered whole.
pub trait BlobSource: Send + Sync + 'static {
    /// A fresh reader positioned at the start of the blob.
    ///
    /// # Errors
    /// When the source cannot be opened.
    fn open(&self) -> io::Result<Box<dyn Read + Send>>;
}

/// Where the bytes of a fetched blob go, chunk by chunk.
pub trait BlobSink: Send {
    /// Takes the next chunk.
    ///
    /// # Errors
    /// When the sink cannot take more (the fetch stops with this error).
    fn accept(&mut self, chunk: Bytes) -> impl Future<Output = Result<()>> + Send;
}

impl BlobSink for Vec<u8> {
    fn accept(&mut self, chunk: Bytes) -> impl Future<Output = Result<()>> + Send {
        self.extend_from_slice(&chunk);
        std::future::ready(Ok(()))
    }
}

impl BlobSink for tokio::sync::mpsc::Sender<Bytes> {
    async fn accept(&mut self, chunk: Bytes) -> Result<()> {
        self.send(chunk).await.map_err(|_| Error::new(ErrorKind::Io, "the blob's reader stopped"))
    }
}

/// A blob held in memory (configs, manifests, small blobs).
#[derive(Debug, Clone)]
pub struct BytesSource(pub Bytes);

impl BlobSource for BytesSource {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.0.clone())))
    }
}

/// A blob in an OCI layout.
#[derive(Debug, Clone)]
pub struct LayoutBlob {
    /// The layout.
    pub layout: oci_image::Layout,
    /// The blob.
    pub digest: Digest,
}

impl BlobSource for LayoutBlob {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        let f = self.layout.open_blob(&self.digest).map_err(io::Error::other)?;
        Ok(Box::new(io::BufReader::with_capacity(READ_CHUNK, f)))
    }
}

/// A source whose every reader checks the bytes against the blob's digest
/// and size as they stream: a push never completes an upload of bytes that
/// are not the blob (a corrupt file in a local store), and says so instead
/// of letting the registry's `DIGEST_INVALID` (or a retry loop) speak.
struct CheckedSource {
    inner: Arc<dyn BlobSource>,
    digest: Digest,
    size: u64,
    /// What the last reader found wrong, if anything.
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl BlobSource for CheckedSource {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        let r = self.inner.open()?;
        let inner = oci_image::VerifyingReader::new(r, &self.digest, self.size).map_err(io::Error::other)?;
        Ok(Box::new(CheckedReader { inner, digest: self.digest.clone(), failed: self.failed.clone() }))
    }
}

struct CheckedReader {
    inner: oci_image::VerifyingReader<Box<dyn Read + Send>>,
    digest: Digest,
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|i| i.is::<oci_image::VerifyError>()) {
                let why = oci_image::into_verify_error(e, &self.digest).to_string();
                if let Ok(mut f) = self.failed.lock() {
                    *f = Some(why.clone());
                }
                return io::Error::new(io::ErrorKind::InvalidData, why);
            }
            e
        })
    }
}

/// What happened to a blob in a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobPush {
    /// It was already there.
    Skipped,
    /// It was mounted from another repository.
    Mounted,
    /// It was uploaded.
    Uploaded,
}

/// One page of a tag listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsPage {
    /// The tags on this page.
    pub tags: Vec<String>,
    /// The next page's URL (from the `Link` header), if any.
    pub next: Option<String>,
}

fn scope(repo: &Repo, actions: &str) -> String {
    format!("repository:{}:{actions}", repo.path)
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get(DIGEST_HEADER)?.to_str().ok()?.trim().parse().ok()
}

/// Streams `len` bytes of a source (after skipping `offset`) as a request body,
/// reading on a blocking thread through a small bounded channel.
pub(crate) fn source_body(
    source: Arc<dyn BlobSource>,
    offset: u64,
    len: u64,
    on_bytes: Option<Arc<dyn Fn(u64) + Send + Sync>>,
) -> crate::client::BodyStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let run = || -> io::Result<()> {
            let mut r = source.open()?;
            io::copy(&mut (&mut r).take(offset), &mut io::sink())?;
            let mut left = len;
            let mut sent = 0u64;
            while left > 0 {
                let want = usize::try_from(left.min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
                let mut buf = vec![0u8; want];
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob source ended early"));
                }
                buf.truncate(n);
                left -= n as u64;
                sent += n as u64;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Ok(());
                }
                if let Some(f) = &on_bytes {
                    f(sent);
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// A request body that re-opens `source` for every attempt and streams its
/// `size` bytes; `content_length` says whether the length is announced
/// (otherwise chunked transfer encoding is used).
fn stream_body(
    source: &Arc<dyn BlobSource>,
    size: u64,
    content_length: bool,
    on_bytes: Option<Arc<dyn Fn(u64) + Send + Sync>>,
) -> Body {
    let src = source.clone();
    Body::Stream {
        len: content_length.then_some(size),
        open: Arc::new(move || {
            let (src, on_bytes) = (src.clone(), on_bytes.clone());
            Box::pin(async move { Ok(source_body(src, 0, size, on_bytes)) })
        }),
    }
}

impl Client {
    /// Checks that the registry speaks the v2 API (and that credentials work).
    ///
    /// # Errors
    /// [`ErrorKind::Unauthorized`], transport errors.
    pub async fn ping(&self, repo: &Repo) -> Result<()> {
        let url = self.base_url(repo).await?;
        let req = Request::new(Method::GET, url, vec![scope(repo, "pull")]);
        self.send_ok(repo, &req, "ping").await.map(drop)
    }

    fn manifest_request(method: Method, url: Url, repo: &Repo) -> Request {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        Request::new(method, url, vec![scope(repo, "pull")]).with_headers(headers)
    }

    /// Fetches a manifest or index by tag or digest, checking its digest
    /// (against the reference's digest, or `Docker-Content-Digest`) and size.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`], [`ErrorKind::DigestMismatch`], schema 1 as
    /// [`ErrorKind::Protocol`] with a "convert" hint, oversized documents.
    pub async fn get_manifest(&self, r: &Reference) -> Result<AnyManifest> {
        let repo = Repo::of(r);
        let url = self.url(&repo, &format!("manifests/{}", r.manifest_reference())).await?;
        let req = Self::manifest_request(Method::GET, url, &repo);
        let doc = self.get_document(&repo, &req, &format!("fetching manifest {r}"), &[]).await?;
        let content_type = doc
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
        let header = header_digest(&doc.headers);
        let bytes = doc.body;
        let expected = r.digest().cloned().or(header);
        if let Some(d) = &expected {
            let actual = d.compute_like(&bytes).unwrap_or_else(|| Digest::sha256(&bytes));
            if &actual != d {
                return Err(Error::digest_mismatch(d, &actual));
            }
        }
        let mt = content_type.and_then(|c| c.parse::<MediaType>().ok());
        AnyManifest::from_bytes(bytes, mt.as_ref()).map_err(|e| {
            let kind = ErrorKind::Protocol;
            Error::new(kind, format!("invalid manifest {r}: {e}"))
        })
    }

    /// `HEAD` of a manifest: its descriptor, or `None` when absent.
    ///
    /// # Errors
    /// Transport and auth errors.
    pub async fn head_manifest(&self, r: &Reference) -> Result<Option<Descriptor>> {
        let repo = Repo::of(r);
        let url = self.url(&repo, &format!("manifests/{}", r.manifest_reference())).await?;
        let req = Self::manifest_request(Method::HEAD, url, &repo);
        let resp = self.send(&repo, &req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp, &format!("checking manifest {r}")).await?;
        let h = resp.headers();
        let mt = h
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.split(';').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(MediaType::OciManifest);
        let size = h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok()).unwrap_or(0);
        let digest = header_digest(h).or_else(|| r.digest().cloned()).ok_or_else(|| {
            Error::new(ErrorKind::Protocol, format!("HEAD of manifest {r} gave no Docker-Content-Digest"))
        })?;
        Ok(Some(Descriptor::new(mt, digest, size)))
    }

    /// Stores manifest bytes unchanged under `r`'s tag, or its digest when it has no tag.
    /// Returns the digest of the bytes. A manifest with a `subject` pushed
    /// to a registry that does not answer `OCI-Subject` (no referrers API)
    /// is also added to the subject's `sha256-<hex>` fallback index.
    ///
    /// # Errors
    /// [`ErrorKind::DigestMismatch`] when the registry reports another digest; HTTP errors.
    pub async fn put_manifest(&self, r: &Reference, bytes: Bytes, media_type: &MediaType) -> Result<Digest> {
        let repo = Repo::of(r);
        let digest = Digest::sha256(&bytes);
        let target = match (r.tag(), r.digest()) {
            (Some(t), _) => t.to_string(),
            (None, Some(d)) => d.to_string(),
            (None, None) => digest.to_string(),
        };
        let url = self.url(&repo, &format!("manifests/{target}")).await?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type.as_str())
                .map_err(|_| Error::new(ErrorKind::Invalid, "invalid media type"))?,
        );
        let req = Request {
            method: Method::PUT,
            url,
            headers,
            body: Body::Bytes(bytes.clone()),
            scopes: vec![scope(&repo, "pull,push")],
            idempotent: true,
        };
        let resp = self.send_ok(&repo, &req, &format!("pushing manifest {r}")).await?;
        if let Some(d) = header_digest(resp.headers())
            && d != digest
            && d.algorithm() == digest.algorithm()
        {
            return Err(Error::digest_mismatch(&digest, &d));
        }
        if !resp.headers().contains_key("oci-subject")
            && let Ok(m) = AnyManifest::from_bytes(bytes, Some(media_type))
        {
            self.update_referrers_fallback(r, &m).await?;
        }
        Ok(digest)
    }

    /// Adds a manifest with a `subject` to the subject's fallback index
    /// (read, modify, write), as the referrers spec asks of clients when the
    /// registry has no referrers API. Manifests without a subject are left alone.
    async fn update_referrers_fallback(&self, r: &Reference, m: &AnyManifest) -> Result<()> {
        let (subject, artifact_type, annotations) = match m {
            AnyManifest::Image(raw) => {
                let v = raw.value();
                let Some(s) = &v.subject else { return Ok(()) };
                (
                    s.digest.clone(),
                    v.artifact_type.clone().or_else(|| Some(v.config.media_type.clone())),
                    v.annotations.clone(),
                )
            }
            AnyManifest::Index(raw) => {
                let v = raw.value();
                let Some(s) = &v.subject else { return Ok(()) };
                (s.digest.clone(), v.artifact_type.clone(), v.annotations.clone())
            }
        };
        let tag_ref = r.repository_only().with_tag(fallback_tag(&subject)?);
        let mut index = match self.get_manifest(&tag_ref).await {
            Ok(AnyManifest::Index(i)) => i.into_value(),
            Ok(AnyManifest::Image(_)) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{tag_ref} holds an image, not a referrers index"),
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => oci_image::IndexBuilder::new().build(),
            Err(e) => return Err(e),
        };
        let mut entry = m.descriptor();
        if index.manifests.iter().any(|d| d.digest == entry.digest) {
            return Ok(());
        }
        entry.artifact_type = artifact_type;
        entry.annotations = annotations;
        index.manifests.push(entry);
        let raw = Raw::new(index);
        Box::pin(self.put_manifest(&tag_ref, raw.bytes().clone(), &MediaType::OciIndex)).await.map(drop)
    }

    /// Deletes a manifest (by digest; by tag where the registry allows it).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`], [`ErrorKind::Protocol`] when deletion is unsupported (400/405).
    pub async fn delete_manifest(&self, r: &Reference) -> Result<()> {
        let repo = Repo::of(r);
        let url = self.url(&repo, &format!("manifests/{}", r.manifest_reference())).await?;
        let req = Request::new(Method::DELETE, url, vec![scope(&repo, "delete"), scope(&repo, "pull,push")]);
        self.send_ok(&repo, &req, &format!("deleting manifest {r}")).await.map(drop)
    }

    /// `HEAD` of a blob: its size, or `None` when absent.
    ///
    /// # Errors
    /// Transport and auth errors.
    pub async fn head_blob(&self, repo: &Repo, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(repo, &format!("blobs/{digest}")).await?;
        let req = Request::new(Method::HEAD, url, vec![scope(repo, "pull")]);
        let resp = self.send(repo, &req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp, &format!("checking blob {digest}")).await?;
        Ok(resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok()).or(Some(0)))
    }

    /// Deletes a blob.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`], [`ErrorKind::Protocol`] when unsupported.
    pub async fn delete_blob(&self, repo: &Repo, digest: &Digest) -> Result<()> {
        let url = self.url(repo, &format!("blobs/{digest}")).await?;
        let req = Request::new(Method::DELETE, url, vec![scope(repo, "delete"), scope(repo, "pull,push")]);
        self.send_ok(repo, &req, &format!("deleting blob {digest}")).await.map(drop)
    }

    /// Streams a blob to `sink` chunk by chunk, following redirects (without
    /// the registry's credentials on other hosts), resuming with `Range`
    /// after a dropped connection, and checking digest and size as it goes
    /// when `verify` is set. Returns the number of bytes.
    ///
    /// # Errors
    /// [`ErrorKind::DigestMismatch`] (nothing past the expected size is
    /// passed on), transport errors after retries, the sink's error.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo.path, digest = %desc.digest, size = desc.size))]
    pub async fn fetch_blob(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        verify: bool,
        sink: &mut impl BlobSink,
    ) -> Result<u64> {
        let mut hasher = if verify {
            Some(Hasher::try_new(desc.digest.algorithm()).ok_or_else(|| {
                Error::new(ErrorKind::DigestMismatch, format!("cannot verify {}: unsupported algorithm", desc.digest))
            })?)
        } else {
            None
        };
        let mut done = 0u64;
        let mut resumes = 0u32;
        loop {
            let mut resp = self.blob_get(repo, &desc.digest, done).await?;
            let mut skip = 0u64;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT => {}
                StatusCode::OK => skip = done, // no range support: skip what we have
                _ => {
                    resp = check(resp, &format!("fetching blob {}", desc.digest)).await?;
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("unexpected status {} for blob", resp.status()),
                    ));
                }
            }
            let mut stream = resp.bytes_stream();
            let mut broken = None;
            while let Some(item) = stream.next().await {
                let mut chunk = match item {
                    Ok(c) => c,
                    Err(e) => {
                        broken = Some(Error::transport(format!("reading blob {}", desc.digest), &e));
                        break;
                    }
                };
                if skip > 0 {
                    let n = usize::try_from(skip.min(chunk.len() as u64)).unwrap_or(chunk.len());
                    let _ = chunk.split_to(n);
                    skip -= n as u64;
                }
                if chunk.is_empty() {
                    continue;
                }
                if done + chunk.len() as u64 > desc.size {
                    return Err(Error::new(
                        ErrorKind::DigestMismatch,
                        format!("blob {} is larger than its descriptor's {} bytes", desc.digest, desc.size),
                    ));
                }
                if let Some(h) = &mut hasher {
                    h.update(&chunk);
                }
                done += chunk.len() as u64;
                sink.accept(chunk).await?;
                self.emit(&Progress::Bytes { digest: desc.digest.clone(), done, total: desc.size });
            }
            match broken {
                None if done == desc.size => break,
                None => {
                    return Err(Error::new(
                        ErrorKind::DigestMismatch,
                        format!("blob {} ended after {done} of {} bytes", desc.digest, desc.size),
                    ));
                }
                Some(e) => {
                    resumes += 1;
                    if resumes >= self.inner.retry.max_attempts {
                        return Err(e);
                    }
                    tracing::debug!(digest = %desc.digest, done, "connection dropped; resuming with Range");
                }
            }
        }
        if let Some(h) = hasher {
            let actual = h.finish();
            if actual != desc.digest {
                return Err(Error::digest_mismatch(&desc.digest, &actual));
            }
        }
        self.emit(&Progress::BlobDownloaded { digest: desc.digest.clone(), size: desc.size });
        Ok(done)
    }

    /// GET of a blob from `offset`, following redirects by hand so that the
    /// registry's `Authorization` never goes to another host.
    async fn blob_get(&self, repo: &Repo, digest: &Digest, offset: u64) -> Result<reqwest::Response> {
        let url = self.url(repo, &format!("blobs/{digest}")).await?;
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-"))
                    .map_err(|_| Error::new(ErrorKind::Invalid, "range"))?,
            );
        }
        let req = Request {
            method: Method::GET,
            url: url.clone(),
            headers: headers.clone(),
            body: Body::Empty,
            scopes: vec![scope(repo, "pull")],
            idempotent: true,
        };
        let mut resp = self.send(repo, &req).await?;
        let origin = url.origin();
        let mut current = url;
        for _ in 0..10 {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let next = self.resolve_location(&current, resp.headers())?;
            resp = if next.origin() == origin {
                let r = Request { url: next.clone(), ..req.clone() };
                self.send(repo, &r).await?
            } else {
                // another host (a CDN): no registry credentials
                self.inner
                    .http
                    .get(next.clone())
                    .headers(headers.clone())
                    .send()
                    .await
                    .map_err(|e| Error::transport(format!("GET {}", redact(&next)), &e))?
            };
            current = next;
        }
        Err(Error::new(ErrorKind::Protocol, format!("too many redirects fetching blob {digest}")))
    }

    /// Reads a small blob (a config) into memory, verified.
    ///
    /// # Errors
    /// As [`Client::fetch_blob`]; refuses blobs over 4 MiB.
    pub async fn fetch_small_blob(&self, repo: &Repo, desc: &Descriptor) -> Result<Bytes> {
        if desc.size > MAX_MANIFEST_SIZE {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("blob {} is too large to read into memory", desc.digest),
            ));
        }
        let mut buf = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        self.fetch_blob(repo, desc, true, &mut buf).await?;
        Ok(Bytes::from(buf))
    }

    /// Uploads a blob unless present: HEAD, then a cross-repository mount
    /// from `mount_from` (same registry) when given, then an upload
    /// (monolithic, or chunked with [`crate::ClientBuilder::chunk_size`]).
    ///
    /// # Errors
    /// [`ErrorKind::DigestMismatch`] when the registry computes another
    /// digest; HTTP and transport errors after retries.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo.path, digest = %desc.digest, size = desc.size))]
    pub async fn push_blob(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        source: Arc<dyn BlobSource>,
        mount_from: Option<&Repo>,
    ) -> Result<BlobPush> {
        if self.head_blob(repo, &desc.digest).await?.is_some() {
            self.emit(&Progress::BlobSkipped { digest: desc.digest.clone() });
            return Ok(BlobPush::Skipped);
        }
        let mut location = None;
        if let Some(from) = mount_from.filter(|f| f.registry == repo.registry && f.path != repo.path) {
            match self.mount(repo, &desc.digest, from).await? {
                Mount::Done => {
                    self.emit(&Progress::BlobMounted { digest: desc.digest.clone(), from: from.path.clone() });
                    return Ok(BlobPush::Mounted);
                }
                Mount::Upload(loc) => location = loc.map(|url| Upload { url, min_chunk: None }),
            }
        }
        let failed = Arc::new(std::sync::Mutex::new(None));
        let source: Arc<dyn BlobSource> = Arc::new(CheckedSource {
            inner: source,
            digest: desc.digest.clone(),
            size: desc.size,
            failed: failed.clone(),
        });
        // the source's bytes are not the blob: no retry mends that
        let corrupt = || {
            failed.lock().ok().and_then(|f| f.clone()).map(|why| {
                Error::new(
                    ErrorKind::DigestMismatch,
                    format!("blob {} to upload is not what its digest says: {why}", desc.digest),
                )
            })
        };
        if location.is_none() && self.inner.single_request_uploads && self.inner.chunk_size.is_none() {
            match self.single_request_upload(repo, desc, &source).await.map_err(|e| corrupt().unwrap_or(e))? {
                None => {
                    self.emit(&Progress::BlobUploaded { digest: desc.digest.clone(), size: desc.size });
                    return Ok(BlobPush::Uploaded);
                }
                Some(upload) => location = Some(upload),
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let loc = match location.take() {
                Some(l) => l,
                None => self.start_upload(repo).await?,
            };
            let result = match (self.inner.chunk_size, self.inner.streamed_uploads) {
                (Some(chunk), _) => self.upload_chunked(repo, desc, &source, loc, chunk).await,
                (None, true) => self.upload_streamed(repo, desc, &source, loc).await,
                (None, false) => self.upload_monolithic(repo, desc, &source, loc).await,
            };
            if let Some(e) = corrupt() {
                return Err(e);
            }
            match result {
                Ok(()) => break,
                Err(e) if restartable(&e) && attempt < self.inner.retry.max_attempts => {
                    tracing::debug!(digest = %desc.digest, attempt, error = %e, "upload failed; restarting");
                }
                Err(e) => return Err(e),
            }
        }
        self.emit(&Progress::BlobUploaded { digest: desc.digest.clone(), size: desc.size });
        Ok(BlobPush::Uploaded)
    }

    async fn mount(&self, repo: &Repo, digest: &Digest, from: &Repo) -> Result<Mount> {
        let mut url = self.url(repo, "blobs/uploads/").await?;
        url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", &from.path);
        let req = Request::new(Method::POST, url.clone(), vec![scope(repo, "pull,push"), scope(from, "pull")])
            .with_headers(content_length_zero());
        let resp = self.send(repo, &req).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Done),
            StatusCode::ACCEPTED => Ok(Mount::Upload(Some(self.resolve_upload_location(&url, resp.headers())?))),
            // Harbor answers 401 when the token does not cover `from`; others 404: upload instead
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Ok(Mount::Upload(None)),
            _ => Err(check(resp, &format!("mounting blob {digest}")).await.err().unwrap_or_else(|| {
                Error::new(ErrorKind::Protocol, format!("unexpected answer to mounting blob {digest}"))
            })),
        }
    }

    /// `POST ?digest=` with the body. `None` when the registry stored it
    /// (201); the upload to continue with when it answered 202.
    async fn single_request_upload(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        source: &Arc<dyn BlobSource>,
    ) -> Result<Option<Upload>> {
        let mut url = self.url(repo, "blobs/uploads/").await?;
        url.query_pairs_mut().append_pair("digest", &desc.digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let req = Request {
            method: Method::POST,
            url: url.clone(),
            headers,
            body: stream_body(source, desc.size, true, Some(self.bytes_reporter(desc))),
            scopes: vec![scope(repo, "pull,push")],
            idempotent: true,
        };
        let resp = self.send_ok(repo, &req, &format!("uploading blob {}", desc.digest)).await?;
        if resp.status() == StatusCode::CREATED {
            if let Some(d) = header_digest(resp.headers())
                && d != desc.digest
            {
                return Err(Error::digest_mismatch(&desc.digest, &d));
            }
            return Ok(None);
        }
        Ok(Some(Upload { url: self.resolve_upload_location(&url, resp.headers())?, min_chunk: None }))
    }

    async fn start_upload(&self, repo: &Repo) -> Result<Upload> {
        let url = self.url(repo, "blobs/uploads/").await?;
        let req =
            Request::new(Method::POST, url.clone(), vec![scope(repo, "pull,push")]).with_headers(content_length_zero());
        let resp = self.send_ok(repo, &req, "starting a blob upload").await?;
        let min_chunk = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok());
        Ok(Upload { url: self.resolve_upload_location(&url, resp.headers())?, min_chunk })
    }

    async fn finish_upload(&self, repo: &Repo, desc: &Descriptor, mut url: Url, body: Body, len: u64) -> Result<()> {
        url.query_pairs_mut().append_pair("digest", &desc.digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        if matches!(body, Body::Empty | Body::Bytes(_)) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        let req = Request {
            method: Method::PUT,
            url,
            headers,
            body,
            scopes: vec![scope(repo, "pull,push")],
            idempotent: false,
        };
        let resp = self.send_ok(repo, &req, &format!("uploading blob {}", desc.digest)).await.map_err(|e| {
            // the registry hashed what it got and it is not the blob
            if e.codes().iter().any(|c| c.code == "DIGEST_INVALID") {
                e.with_kind(ErrorKind::DigestMismatch)
            } else {
                e
            }
        })?;
        if let Some(d) = header_digest(resp.headers())
            && d != desc.digest
        {
            return Err(Error::digest_mismatch(&desc.digest, &d));
        }
        Ok(())
    }

    async fn upload_monolithic(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        source: &Arc<dyn BlobSource>,
        upload: Upload,
    ) -> Result<()> {
        let body = stream_body(source, desc.size, true, Some(self.bytes_reporter(desc)));
        self.finish_upload(repo, desc, upload.url, body, desc.size).await
    }

    /// Reports the bytes of `desc` sent so far as [`Progress::Bytes`].
    fn bytes_reporter(&self, desc: &Descriptor) -> Arc<dyn Fn(u64) + Send + Sync> {
        let (client, digest, size) = (self.clone(), desc.digest.clone(), desc.size);
        Arc::new(move |done| client.emit(&Progress::Bytes { digest: digest.clone(), done, total: size }))
    }

    async fn upload_chunked(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        source: &Arc<dyn BlobSource>,
        upload: Upload,
        chunk: u64,
    ) -> Result<()> {
        let chunk = chunk.max(upload.min_chunk.unwrap_or(0)).max(1);
        let mut url = upload.url;
        let mut offset = 0u64;
        let mut reader = open_at(source, 0).await?;
        let mut resumes = 0;
        while offset < desc.size {
            let len = chunk.min(desc.size - offset);
            let (r, bytes) = read_exact_blocking(reader, len).await?;
            reader = r;
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            let range = format!("{offset}-{}", offset + len - 1);
            headers.insert(
                "content-range",
                HeaderValue::from_str(&range).map_err(|_| Error::new(ErrorKind::Invalid, "range"))?,
            );
            let req = Request {
                method: Method::PATCH,
                url: url.clone(),
                headers,
                body: Body::Bytes(bytes),
                scopes: vec![scope(repo, "pull,push")],
                idempotent: false,
            };
            let resp = match self.send(repo, &req).await {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::Transport && resumes < self.inner.retry.max_attempts => {
                    // the chunk broke off: ask the registry what it kept and go on from there
                    resumes += 1;
                    // a registry that dropped the session (distribution does) answers
                    // the status with 404: then the broken chunk's error stands, and
                    // the caller starts a fresh upload
                    let Ok((status_url, kept)) = self.upload_status(repo, &url).await else { return Err(e) };
                    tracing::debug!(digest = %desc.digest, kept, "chunk upload broke off; resuming from the upload's Range");
                    url = status_url;
                    offset = kept;
                    reader = open_at(source, offset).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = resp.status();
            let next = if status == StatusCode::ACCEPTED || status == StatusCode::CREATED {
                self.resolve_upload_location(&url, resp.headers())?
            } else if status == StatusCode::RANGE_NOT_SATISFIABLE {
                return Err(Error::new(ErrorKind::Protocol, "registry refused a chunk range").with_status(416));
            } else {
                return Err(check(resp, "uploading a chunk")
                    .await
                    .err()
                    .unwrap_or_else(|| Error::new(ErrorKind::Protocol, "chunk")));
            };
            // the registry must have everything we sent: an upload whose Range
            // does not advance (ECR-like chunk handling) is restarted monolithically
            let advanced = match resp_range_end(resp.headers()) {
                Some(end) => end + 1 == offset + len,
                None => status == StatusCode::ACCEPTED,
            };
            if !advanced {
                tracing::debug!("registry mishandled a chunk; falling back to a monolithic upload");
                let fresh = self.start_upload(repo).await?;
                return self.upload_monolithic(repo, desc, source, fresh).await;
            }
            url = next;
            offset += len;
            self.emit(&Progress::Bytes { digest: desc.digest.clone(), done: offset, total: desc.size });
        }
        self.finish_upload(repo, desc, url, Body::Empty, 0).await
    }

    /// The upload's status: its newest location and how many bytes it holds.
    async fn upload_status(&self, repo: &Repo, url: &Url) -> Result<(Url, u64)> {
        let req = Request::new(Method::GET, url.clone(), vec![scope(repo, "pull,push")]);
        let resp = self.send_ok(repo, &req, "checking an upload's status").await?;
        let kept = resp
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start_matches("bytes=").strip_prefix("0-").map(str::to_owned))
            .and_then(|end| end.parse::<i64>().ok())
            // `0-0` is what registries say for an empty upload too; no first chunk is 1 byte
            // long unless the blob is, so read it as nothing kept
            .map_or(0, |end| if end <= 0 { 0 } else { u64::try_from(end + 1).unwrap_or(0) });
        // no Location: the session stays where it is; one on another host is refused
        let next = if resp.headers().contains_key(reqwest::header::LOCATION) {
            self.resolve_upload_location(url, resp.headers())?
        } else {
            url.clone()
        };
        Ok((next, kept))
    }

    /// One streamed `PATCH` with the whole body (chunked transfer), then `PUT ?digest=`.
    async fn upload_streamed(
        &self,
        repo: &Repo,
        desc: &Descriptor,
        source: &Arc<dyn BlobSource>,
        upload: Upload,
    ) -> Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let req = Request {
            method: Method::PATCH,
            url: upload.url.clone(),
            headers,
            body: stream_body(source, desc.size, false, None),
            scopes: vec![scope(repo, "pull,push")],
            idempotent: false,
        };
        let resp = self.send_ok(repo, &req, &format!("streaming blob {}", desc.digest)).await?;
        let next = self.resolve_upload_location(&upload.url, resp.headers())?;
        self.finish_upload(repo, desc, next, Body::Empty, 0).await
    }

    /// One page of tags; `n` and `last` as the spec defines them.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown repository.
    pub async fn tags_page(&self, repo: &Repo, n: Option<usize>, last: Option<&str>) -> Result<TagsPage> {
        let mut url = self.url(repo, "tags/list").await?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                q.append_pair("last", l);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.tags_at(repo, url).await
    }

    async fn tags_at(&self, repo: &Repo, url: Url) -> Result<TagsPage> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let req = Request::new(Method::GET, url.clone(), vec![scope(repo, "pull")]);
        let doc = self.get_document(repo, &req, &format!("listing tags of {}", repo.path), &[]).await?;
        let next = next_link(&doc.headers).map(|l| url.join(&l).map(|u| u.to_string())).transpose().ok().flatten();
        let tags: Tags = serde_json::from_slice(&doc.body)
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("invalid tag list: {e}")))?;
        Ok(TagsPage { tags: tags.tags.unwrap_or_default(), next })
    }

    /// Every tag, following `Link` pagination. A registry that pages
    /// forever is cut off: a `Link` seen before, a page that adds no new tag,
    /// more than [`MAX_LISTED_TAGS`] tags or 10,000 pages end the listing
    /// with an error.
    ///
    /// # Errors
    /// [`ErrorKind::Protocol`] for a pagination loop or an endless listing; HTTP errors.
    pub async fn list_tags(&self, repo: &Repo) -> Result<Vec<String>> {
        let mut page = self.tags_page(repo, None, None).await?;
        let mut all = Vec::new();
        let mut seen_tags = std::collections::HashSet::new();
        let mut seen_urls = std::collections::BTreeSet::new();
        loop {
            let mut fresh = 0usize;
            for t in page.tags.drain(..) {
                if seen_tags.insert(t.clone()) {
                    all.push(t);
                    fresh += 1;
                }
            }
            if all.len() > MAX_LISTED_TAGS {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("tag listing of {} goes on past {MAX_LISTED_TAGS} tags", repo.path),
                ));
            }
            let Some(next) = page.next.take() else { break };
            if fresh == 0 {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("tag pagination of {} loops: a page with a next link brought no new tag", repo.path),
                ));
            }
            if !seen_urls.insert(next.clone()) || seen_urls.len() > 10_000 {
                return Err(Error::new(ErrorKind::Protocol, format!("tag pagination of {} loops", repo.path)));
            }
            let url = Url::parse(&next).map_err(|_| Error::new(ErrorKind::Protocol, "invalid Link URL"))?;
            let base = self.base_url(repo).await?;
            if url.origin() != base.origin() {
                return Err(Error::new(ErrorKind::Protocol, "tag pagination Link points at another host"));
            }
            page = self.tags_at(repo, url).await?;
        }
        Ok(all)
    }

    /// The repositories of a registry (`/v2/_catalog`, following `Link`;
    /// a `Link` seen before or more than [`MAX_LISTED_TAGS`] names end it
    /// with an error).
    ///
    /// # Errors
    /// HTTP errors; many registries refuse the catalog; [`ErrorKind::Protocol`]
    /// for a pagination loop.
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Vec<String>,
        }
        let repo = Repo { registry: registry.to_owned(), path: String::new() };
        let mut url =
            self.base_url(&repo).await?.join("_catalog").map_err(|_| Error::new(ErrorKind::Invalid, "catalog URL"))?;
        let mut all = Vec::new();
        let mut seen_urls = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            if !seen_urls.insert(url.to_string()) || all.len() > MAX_LISTED_TAGS {
                break;
            }
            let req = Request::new(Method::GET, url.clone(), vec!["registry:catalog:*".to_owned()]);
            let doc = self.get_document(&repo, &req, "listing the catalog", &[]).await?;
            let next = next_link(&doc.headers);
            let mut c: Catalog = serde_json::from_slice(&doc.body)
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("invalid catalog: {e}")))?;
            all.append(&mut c.repositories);
            match next {
                Some(n) => url = url.join(&n).map_err(|_| Error::new(ErrorKind::Protocol, "invalid Link URL"))?,
                None => return Ok(all),
            }
        }
        Err(Error::new(ErrorKind::Protocol, "catalog pagination loops"))
    }

    /// The referrers of `subject` (a digest reference), filtered by
    /// artifact type: the referrers API, or the `sha256-<hex>` tag-schema
    /// index when the registry lacks it.
    ///
    /// # Errors
    /// [`ErrorKind::Invalid`] without a digest; HTTP errors.
    pub async fn referrers(&self, subject: &Reference, artifact_type: Option<&MediaType>) -> Result<Vec<Descriptor>> {
        let digest = subject
            .digest()
            .ok_or_else(|| Error::new(ErrorKind::Invalid, format!("referrers need a digest: {subject}")))?;
        let repo = Repo::of(subject);
        let mut url = self.url(&repo, &format!("referrers/{digest}")).await?;
        if let Some(t) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", t.as_str());
        }
        let req = Self::manifest_request(Method::GET, url, &repo);
        let unsupported = [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED];
        let doc = self.get_document(&repo, &req, &format!("listing referrers of {digest}"), &unsupported).await?;
        let (list, filtered) = if unsupported.contains(&doc.status) {
            let tag = fallback_tag(digest)?;
            match self.get_manifest(&subject.with_tag(tag)).await {
                Ok(AnyManifest::Index(i)) => (i.into_value().manifests, false),
                Ok(AnyManifest::Image(_)) => {
                    return Err(Error::new(ErrorKind::Protocol, "referrers fallback tag holds an image, not an index"));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => (Vec::new(), false),
                Err(e) => return Err(e),
            }
        } else {
            let filtered = doc
                .headers
                .get("oci-filters-applied")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|f| f.trim() == "artifactType"));
            let index = Raw::<ImageIndex>::from_bytes(doc.body)
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("invalid referrers index: {e}")))?;
            (index.into_value().manifests, filtered)
        };
        Ok(match artifact_type {
            Some(t) if !filtered => list.into_iter().filter(|d| d.artifact_type.as_ref() == Some(t)).collect(),
            _ => list,
        })
    }
}

/// The tag-schema fallback tag for a subject digest: `<alg>-<encoded>`
/// (`sha256-<hex>`), cut to the 128 characters a tag may have.
///
/// # Errors
/// [`ErrorKind::Invalid`] for a digest whose characters cannot form a tag.
pub fn fallback_tag(digest: &Digest) -> Result<oci_image::Tag> {
    let s: String = format!("{}-{}", digest.algorithm(), digest.encoded()).chars().take(128).collect();
    s.parse().map_err(|_| Error::new(ErrorKind::Invalid, format!("digest {digest} has no fallback tag")))
}

enum Mount {
    Done,
    Upload(Option<Url>),
}

struct Upload {
    url: Url,
    min_chunk: Option<u64>,
}

/// Whether an upload that failed this way is worth starting over: transport
/// and server failures, and a session the registry dropped after one
/// (`BLOB_UPLOAD_UNKNOWN`; distribution answers `BLOB_UPLOAD_INVALID` once a
/// PATCH broke off; a 416 after a partial chunk).
fn restartable(e: &Error) -> bool {
    e.is_retryable()
        || e.status() == Some(416)
        || (e.kind() == ErrorKind::NotFound
            && e.codes().iter().any(|c| c.code == "BLOB_UPLOAD_UNKNOWN" || c.code == "BLOB_UPLOAD_INVALID"))
}

fn content_length_zero() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
    h
}

/// The end of `Range: 0-<end>` in an upload response.
fn resp_range_end(h: &HeaderMap) -> Option<u64> {
    let v = h.get(RANGE)?.to_str().ok()?;
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    v.split_once('-')?.1.trim().parse().ok()
}

/// `<url>; rel="next"` from a `Link` header.
fn next_link(h: &HeaderMap) -> Option<String> {
    for v in h.get_all(LINK) {
        let s = v.to_str().ok()?;
        for part in s.split(',') {
            let (url, params) = part.split_once(';')?;
            if params.replace(' ', "").contains("rel=\"next\"") || params.replace(' ', "").contains("rel=next") {
                return Some(url.trim().trim_start_matches('<').trim_end_matches('>').to_owned());
            }
        }
    }
    None
}

/// A small document read whole: status, headers and body.
struct Document {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Client {
    /// GETs a small document (manifest, tag list, catalog, referrers) and
    /// reads its body, capped at [`MAX_MANIFEST_SIZE`]; when the body breaks
    /// off, the whole GET is sent again (it is idempotent). Statuses in
    /// `pass` are returned as they are; other failures become errors.
    async fn get_document(&self, repo: &Repo, req: &Request, what: &str, pass: &[StatusCode]) -> Result<Document> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self.send(repo, req).await?;
            let status = resp.status();
            if pass.contains(&status) {
                return Ok(Document { status, headers: resp.headers().clone(), body: Bytes::new() });
            }
            let resp = check(resp, what).await?;
            let headers = resp.headers().clone();
            if resp.content_length().is_some_and(|l| l > MAX_MANIFEST_SIZE) {
                return Err(Error::new(ErrorKind::Protocol, format!("{what}: larger than {MAX_MANIFEST_SIZE} bytes")));
            }
            match read_capped(resp, MAX_MANIFEST_SIZE, what).await {
                Ok(body) => return Ok(Document { status, headers, body }),
                Err(e) if e.kind() == ErrorKind::Transport && attempt < self.inner.retry.max_attempts => {
                    tracing::debug!(what, attempt, "document body broke off; fetching again");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn read_capped(resp: reqwest::Response, cap: u64, what: &str) -> Result<Bytes> {
    let status = resp.status().as_u16();
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(c) = stream.next().await {
        let c = c.map_err(|e| Error::transport(format!("reading {what}"), &e))?;
        if (buf.len() + c.len()) as u64 > cap {
            return Err(
                Error::new(ErrorKind::Protocol, format!("{what} is larger than {cap} bytes")).with_status(status)
            );
        }
        buf.extend_from_slice(&c);
    }
    Ok(Bytes::from(buf))
}

/// Opens a source on a blocking thread, positioned `offset` bytes in.
async fn open_at(source: &Arc<dyn BlobSource>, offset: u64) -> Result<Box<dyn Read + Send>> {
    let src = source.clone();
    tokio::task::spawn_blocking(move || {
        let mut r = src.open()?;
        let skipped = io::copy(&mut (&mut r).take(offset), &mut io::sink())?;
        if skipped < offset {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob source is shorter than the upload"));
        }
        Ok(r)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Io, format!("blob source task: {e}")))?
    .map_err(|e| Error::io("opening blob source", e))
}

async fn read_exact_blocking(mut r: Box<dyn Read + Send>, len: u64) -> Result<(Box<dyn Read + Send>, Bytes)> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        r.read_exact(&mut buf)?;
        Ok::<_, io::Error>((r, Bytes::from(buf)))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Io, format!("blob source task: {e}")))?
    .map_err(|e| Error::io("reading blob source", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let mut h = HeaderMap::new();
        h.insert(LINK, HeaderValue::from_static("</v2/a/tags/list?last=b&n=2>; rel=\"next\""));
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?last=b&n=2"));
        assert_eq!(next_link(&HeaderMap::new()), None);
    }

    #[test]
    fn fallback_tags() {
        let d = Digest::sha256(b"x");
        assert_eq!(fallback_tag(&d).unwrap().as_str(), format!("sha256-{}", d.encoded()));
    }

    #[test]
    fn upload_ranges() {
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_static("0-1023"));
        assert_eq!(resp_range_end(&h), Some(1023));
        h.insert(RANGE, HeaderValue::from_static("bytes=0-9"));
        assert_eq!(resp_range_end(&h), Some(9));
    }
}
