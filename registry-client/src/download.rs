//! Plain HTTP(S) downloads with the client's transport: for a build's
//! `ADD https://...`, which names a file, not a registry API.

use oci_image::{Digest, Hasher};
use reqwest::header::LAST_MODIFIED;
use std::time::SystemTime;
use url::Url;

use crate::client::{Client, redact};
use crate::error::{Error, ErrorKind, Result};
use crate::ops::BlobSink;
use crate::transport::check;

/// What [`Client::download`] fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Download {
    /// The URL the bytes came from, after redirects.
    pub url: String,
    /// Bytes received.
    pub size: u64,
    /// sha256 of the bytes.
    pub digest: Digest,
    /// The server's `Last-Modified`, if it sent one.
    pub last_modified: Option<SystemTime>,
}

impl Client {
    /// Downloads `url` into `sink` with this client's TLS roots, proxy and
    /// plain-HTTP rules (HTTP only for loopback and insecure hosts),
    /// following up to 10 redirects. No registry credentials are ever sent.
    ///
    /// At most [`ClientBuilder::max_download_size`](crate::ClientBuilder::max_download_size)
    /// bytes are accepted ([`Client::download_limited`] sets another
    /// limit), and a server that sends nothing for the client's idle
    /// timeout is given up on.
    ///
    /// # Errors
    /// [`ErrorKind::Invalid`] for a URL that is not http(s) or plain HTTP
    /// to a host not allowed; the status error of a failed request;
    /// transport errors (a stall among them); [`ErrorKind::Protocol`] for a
    /// body over the limit (the sink then holds a part, for the caller to
    /// discard); the sink's error.
    pub async fn download(&self, url: &str, sink: &mut impl BlobSink) -> Result<Download> {
        self.download_limited(url, sink, self.inner.max_download).await
    }

    /// [`Client::download`] accepting at most `max` bytes.
    ///
    /// # Errors
    /// As [`Client::download`].
    pub async fn download_limited(&self, url: &str, sink: &mut impl BlobSink, max: u64) -> Result<Download> {
        let mut current = Url::parse(url)
            .map_err(|_| Error::new(ErrorKind::Invalid, format!("invalid URL {:?}", redact_str(url))))?;
        match current.scheme() {
            "https" => {}
            "http" if current.host_str().is_some_and(|h| self.allows_http_url(&current, h)) => {}
            "http" => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("refusing plain HTTP to {}: not loopback or an insecure host", redact(&current)),
                ));
            }
            other => return Err(Error::new(ErrorKind::Invalid, format!("cannot download a {other}: URL"))),
        }
        for _ in 0..=10 {
            let what = format!("GET {}", redact(&current));
            let mut resp =
                self.inner.http.get(current.clone()).send().await.map_err(|e| Error::transport(what.clone(), &e))?;
            if resp.status().is_redirection() {
                current = self.resolve_location(&current, resp.headers())?;
                continue;
            }
            resp = check(resp, &what).await?;
            let last_modified = resp
                .headers()
                .get(LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::transport::httpdate_parse);
            let too_big = || Error::new(ErrorKind::Protocol, format!("{what}: the file is over the {max}-byte limit"));
            if resp.content_length().is_some_and(|n| n > max) {
                return Err(too_big());
            }
            let mut hasher = Hasher::sha256();
            let mut size = 0u64;
            while let Some(chunk) = resp.chunk().await.map_err(|e| Error::transport(what.clone(), &e))? {
                size += chunk.len() as u64;
                if size > max {
                    return Err(too_big());
                }
                hasher.update(&chunk);
                sink.accept(chunk).await?;
            }
            return Ok(Download { url: redact(&current), size, digest: hasher.finish(), last_modified });
        }
        Err(Error::new(ErrorKind::Protocol, format!("too many redirects from {}", redact_str(url))))
    }
}

fn redact_str(url: &str) -> String {
    Url::parse(url).map_or_else(|_| "<unparsable URL>".to_owned(), |u| redact(&u))
}
