//! The distribution API endpoints, one module per kind, as
//! go-containerregistry's `remote` has them: manifests, blob fetches, blob
//! uploads, listings, referrers; what they share is here. The send and
//! retry loop is in [`crate::transport`].

mod fetch;
mod listing;
mod manifests;
mod referrers;
mod upload;

pub use manifests::Login;
pub use referrers::fallback_tag;

use std::io::{self, Read};

use bytes::Bytes;
use futures_util::StreamExt;
use oci_image::Digest;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LINK};

use crate::client::{Client, Endpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Request, check};
use oci_image::Repository;

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

fn scope(repo: &Repository, actions: &str) -> String {
    format!("repository:{}:{actions}", repo.path())
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get(DIGEST_HEADER)?.to_str().ok()?.trim().parse().ok()
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
    async fn get_document(
        &self,
        repo: &dyn Endpoint,
        req: &Request,
        what: &str,
        pass: &[StatusCode],
    ) -> Result<Document> {
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

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

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
}
