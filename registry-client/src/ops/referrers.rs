//! The referrers of a manifest: the referrers API, or the tag-schema index
//! where a registry lacks it.

use oci_image::{AnyManifest, Descriptor, Digest, ImageIndex, MediaType, Raw, Reference};
use reqwest::{Method, StatusCode};

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use oci_image::Repository;

impl Client {
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
        let repo = Repository::of(subject);
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
