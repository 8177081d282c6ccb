//! Manifests and indexes: fetch, check, push (with the referrers tag-schema
//! fallback for a manifest with a subject), delete; and the ping.

use bytes::Bytes;
use oci_image::{AnyManifest, Descriptor, Digest, MediaType, Raw, Reference};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{MANIFEST_ACCEPT, fallback_tag, header_digest, scope};
use crate::client::{Client, RegistryRoot};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Body, Request, check};
use oci_image::Repository;

/// What a login gave: the registry's token server may hand out an
/// identity token to keep instead of the password (docker's
/// `identitytoken`). Its `Debug` never shows the token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Login {
    identity_token: Option<String>,
}

impl Login {
    /// The identity token (an `OAuth2` refresh token), when the token
    /// server returned one: store it as [`crate::Credential::IdentityToken`].
    pub fn identity_token(&self) -> Option<&str> {
        self.identity_token.as_deref()
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.identity_token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Login").field("identity_token", &token).finish()
    }
}

impl Client {
    /// Checks that the client's credentials for `registry` are accepted,
    /// as `docker login` does: `GET /v2/` answering the registry's challenge
    /// (basic auth, or a token from its token server for the credentials,
    /// asked with `offline_token=true` so that the server may return an
    /// identity token: [`Login::identity_token`]).
    ///
    /// # Errors
    /// [`ErrorKind::Unauthorized`] for refused credentials, transport errors.
    pub async fn check_login(&self, registry: &str) -> Result<Login> {
        let root = RegistryRoot(registry.to_owned());
        let url = self.base_url(&root).await?;
        let slot = crate::transport::IdentitySlot::default();
        let req = Request { login: Some(slot.clone()), ..Request::new(Method::GET, url, Vec::new()) };
        self.send_ok(&root, &req, &format!("logging in to {registry}")).await?;
        let identity_token = slot.lock().ok().and_then(|mut s| s.take());
        Ok(Login { identity_token })
    }

    /// Checks that the registry speaks the v2 API (and that credentials work).
    ///
    /// # Errors
    /// [`ErrorKind::Unauthorized`], transport errors.
    pub async fn ping(&self, repo: &Repository) -> Result<()> {
        let url = self.base_url(repo).await?;
        let req = Request::new(Method::GET, url, vec![scope(repo, "pull")]);
        self.send_ok(repo, &req, "ping").await.map(drop)
    }

    pub(super) fn manifest_request(method: Method, url: Url, repo: &Repository) -> Request {
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
        let repo = Repository::of(r);
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
        let repo = Repository::of(r);
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
        let repo = Repository::of(r);
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
            login: None,
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
        let repo = Repository::of(r);
        let url = self.url(&repo, &format!("manifests/{}", r.manifest_reference())).await?;
        let req = Request::new(Method::DELETE, url, vec![scope(&repo, "delete"), scope(&repo, "pull,push")]);
        self.send_ok(&repo, &req, &format!("deleting manifest {r}")).await.map(drop)
    }
}
