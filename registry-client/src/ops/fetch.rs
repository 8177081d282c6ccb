//! Blobs out of a registry: `HEAD`, delete, and fetches that resume and
//! verify as they stream.

use bytes::Bytes;
use futures_util::StreamExt;
use oci_image::{Descriptor, Digest, Hasher};
use reqwest::header::{CONTENT_LENGTH, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};

use super::{BlobSink, MAX_MANIFEST_SIZE, scope};
use crate::client::{Client, redact};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::transport::{Body, Request, check};
use oci_image::Repository;

impl Client {
    /// `HEAD` of a blob: its size, or `None` when absent.
    ///
    /// # Errors
    /// Transport and auth errors.
    pub async fn head_blob(&self, repo: &Repository, digest: &Digest) -> Result<Option<u64>> {
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
    pub async fn delete_blob(&self, repo: &Repository, digest: &Digest) -> Result<()> {
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
    #[tracing::instrument(level = "debug", skip_all, fields(repo = %repo.path(), digest = %desc.digest, size = desc.size))]
    pub async fn fetch_blob(
        &self,
        repo: &Repository,
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
    async fn blob_get(&self, repo: &Repository, digest: &Digest, offset: u64) -> Result<reqwest::Response> {
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
            login: None,
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
    pub async fn fetch_small_blob(&self, repo: &Repository, desc: &Descriptor) -> Result<Bytes> {
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
}
