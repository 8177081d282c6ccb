//! Blobs into a registry: present already, mounted from another repository,
//! or uploaded (single request, monolithic, chunked or streamed), resuming
//! and restarting as the registry allows.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use oci_image::{Descriptor, Digest};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{BlobPush, BlobSource, READ_CHUNK, header_digest, scope};
use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::transport::{Body, Request, check};
use oci_image::Repository;

impl Client {
    /// Uploads a blob unless present: HEAD, then a cross-repository mount
    /// from `mount_from` (same registry) when given, then an upload
    /// (monolithic, or chunked with [`crate::ClientBuilder::chunk_size`]).
    ///
    /// # Errors
    /// [`ErrorKind::DigestMismatch`] when the registry computes another
    /// digest; HTTP and transport errors after retries.
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo.path(), digest = %desc.digest, size = desc.size))]
    pub async fn push_blob(
        &self,
        repo: &Repository,
        desc: &Descriptor,
        source: Arc<dyn BlobSource>,
        mount_from: Option<&Repository>,
    ) -> Result<BlobPush> {
        if self.head_blob(repo, &desc.digest).await?.is_some() {
            self.emit(&Progress::BlobSkipped { digest: desc.digest.clone() });
            return Ok(BlobPush::Skipped);
        }
        let mut location = None;
        if let Some(from) = mount_from.filter(|f| f.registry() == repo.registry() && f.path() != repo.path()) {
            match self.mount(repo, &desc.digest, from).await? {
                Mount::Done => {
                    self.emit(&Progress::BlobMounted { digest: desc.digest.clone(), from: from.path().to_owned() });
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

    async fn mount(&self, repo: &Repository, digest: &Digest, from: &Repository) -> Result<Mount> {
        let mut url = self.url(repo, "blobs/uploads/").await?;
        url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", from.path());
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
        repo: &Repository,
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
            body: stream_body(source, desc.size, true, self.bytes_reporter(desc)),
            scopes: vec![scope(repo, "pull,push")],
            idempotent: true,
            login: None,
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

    async fn start_upload(&self, repo: &Repository) -> Result<Upload> {
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

    async fn finish_upload(
        &self,
        repo: &Repository,
        desc: &Descriptor,
        mut url: Url,
        body: Body,
        len: u64,
    ) -> Result<()> {
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
            login: None,
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
        repo: &Repository,
        desc: &Descriptor,
        source: &Arc<dyn BlobSource>,
        upload: Upload,
    ) -> Result<()> {
        let body = stream_body(source, desc.size, true, self.bytes_reporter(desc));
        self.finish_upload(repo, desc, upload.url, body, desc.size).await
    }

    /// Reports the bytes of `desc` sent so far as [`Progress::Bytes`].
    fn bytes_reporter(&self, desc: &Descriptor) -> Arc<dyn Fn(u64) + Send + Sync> {
        let (client, digest, size) = (self.clone(), desc.digest.clone(), desc.size);
        Arc::new(move |done| client.emit(&Progress::Bytes { digest: digest.clone(), done, total: size }))
    }

    async fn upload_chunked(
        &self,
        repo: &Repository,
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
                login: None,
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
    async fn upload_status(&self, repo: &Repository, url: &Url) -> Result<(Url, u64)> {
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
        repo: &Repository,
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
            body: stream_body(source, desc.size, false, self.bytes_reporter(desc)),
            scopes: vec![scope(repo, "pull,push")],
            idempotent: false,
            login: None,
        };
        let resp = self.send_ok(repo, &req, &format!("streaming blob {}", desc.digest)).await?;
        let next = self.resolve_upload_location(&upload.url, resp.headers())?;
        self.finish_upload(repo, desc, next, Body::Empty, 0).await
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

/// Streams `len` bytes of a source (after skipping `offset`) as a request body,
/// reading on a blocking thread through a small bounded channel.
pub(crate) fn source_body(
    source: Arc<dyn BlobSource>,
    offset: u64,
    len: u64,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> crate::transport::BodyStream {
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
                on_bytes(sent);
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
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
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
    fn upload_ranges() {
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_static("0-1023"));
        assert_eq!(resp_range_end(&h), Some(1023));
        h.insert(RANGE, HeaderValue::from_static("bytes=0-9"));
        assert_eq!(resp_range_end(&h), Some(9));
    }
}
