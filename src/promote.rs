//! Promotion of a built image between registries by digest, and release
//! tags: the delivery pipeline's two library calls.

use oci_image::{AnyManifest, Descriptor, Digest, Reference, Tag};
use registry_client::{Client, ErrorKind, Repository};
use serde::Serialize;

/// Why a promotion or release failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromoteError {
    /// The source is not pinned by digest.
    #[error("promote needs a digest-pinned source (NAME@sha256:...), got {source_ref}")]
    NotPinned {
        /// The source given.
        source_ref: Box<Reference>,
    },
    /// The destination has no tag to promote to.
    #[error("promote needs a destination tag, got {destination}")]
    NoTag {
        /// The destination given.
        destination: Box<Reference>,
    },
    /// The destination tag points at another image.
    #[error("{destination} already points at {existing}, not {wanted}; pass overwrite to move it")]
    TagCollision {
        /// The destination.
        destination: Box<Reference>,
        /// What it points at now.
        existing: Box<Digest>,
        /// What would be promoted.
        wanted: Box<Digest>,
    },
    /// The digest to tag is not in the repository.
    #[error("{reference} is not in the registry; push it before tagging it")]
    Missing {
        /// The digest reference.
        reference: Box<Reference>,
    },
    /// The version is not a release version.
    #[error("invalid release version")]
    Version(#[from] oci_image::ReleaseTagError),
    /// The destination stored another digest than the one promoted.
    #[error("{destination} stored {}, not {expected}", got.as_ref().map_or_else(|| "no digest".to_owned(), ToString::to_string))]
    DigestChanged {
        /// The destination.
        destination: Box<Reference>,
        /// The digest promoted.
        expected: Box<Digest>,
        /// What the registry stored, if it said.
        got: Option<Box<Digest>>,
    },
    /// A registry operation failed.
    #[error("registry")]
    Registry(#[from] registry_client::Error),
}

/// What a copy would do, blob by blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyPlan {
    /// Blobs already at the destination.
    pub skip: Vec<Descriptor>,
    /// Blobs to mount from the source repository (same registry).
    pub mount: Vec<Descriptor>,
    /// Blobs to upload.
    pub upload: Vec<Descriptor>,
    /// Bytes to upload.
    pub upload_bytes: u64,
    /// Manifests to push (exact bytes), children first.
    pub manifests: Vec<Descriptor>,
}

/// The record a pipeline logs for a promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromotionRecord {
    /// The digest-pinned source.
    pub source: String,
    /// The destination name.
    pub destination: String,
    /// The digest now at the destination (equal to the source's).
    pub digest: Digest,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Whether this was only a plan.
    pub dry_run: bool,
    /// What was (or would be) moved.
    pub plan: CopyPlan,
}

/// Options for [`promote`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PromoteOptions {
    /// Move the destination tag even when it points at another digest.
    pub overwrite: bool,
    /// Only work out the plan; write nothing.
    pub dry_run: bool,
}

/// Works out what copying `source` to `target` would do, without writing.
///
/// # Errors
/// Registry errors reading the source or checking the destination.
pub async fn plan_copy(client: &Client, source: &Reference, target: &Reference) -> Result<CopyPlan, PromoteError> {
    let tree = client.manifest_tree(source).await?;
    let (src_repo, dst_repo) = (Repository::of(source), Repository::of(target));
    let same_registry = src_repo.registry() == dst_repo.registry();
    let mut plan = CopyPlan::default();
    // foreign layers (with urls) are not copied
    for d in registry_client::image_blobs(&tree).into_iter().filter(|d| d.urls.is_none()) {
        if client.head_blob(&dst_repo, &d.digest).await?.is_some() {
            plan.skip.push(d);
        } else if same_registry && src_repo.path() != dst_repo.path() {
            plan.mount.push(d);
        } else {
            plan.upload_bytes += d.size;
            plan.upload.push(d);
        }
    }
    plan.manifests = tree.iter().rev().map(AnyManifest::descriptor).collect();
    Ok(plan)
}

/// Promotes the image `source` (pinned by digest) to `target` (a tag,
/// usually in another registry): refuses when the tag already points at a
/// different digest unless `overwrite`, moves the exact bytes (so the
/// digest is the same), and returns a record to log. With `dry_run`,
/// returns the plan and writes nothing.
///
/// # Errors
/// [`PromoteError`]: unpinned source, missing tag, collision, registry failures.
pub async fn promote(
    client: &Client,
    source: &Reference,
    target: &Reference,
    opts: PromoteOptions,
) -> Result<PromotionRecord, PromoteError> {
    let Some(digest) = source.digest().cloned() else {
        return Err(PromoteError::NotPinned { source_ref: Box::new(source.clone()) });
    };
    if target.tag().is_none() {
        return Err(PromoteError::NoTag { destination: Box::new(target.clone()) });
    }
    let target = target
        .repository_only()
        .with_tag(target.tag().cloned().ok_or_else(|| PromoteError::NoTag { destination: Box::new(target.clone()) })?);
    if let Some(existing) = client.head_manifest(&target).await?
        && existing.digest != digest
        && !opts.overwrite
    {
        return Err(PromoteError::TagCollision {
            destination: Box::new(target),
            existing: Box::new(existing.digest),
            wanted: Box::new(digest),
        });
    }
    let pinned = source.repository_only().with_digest(digest.clone());
    let plan = plan_copy(client, &pinned, &target).await?;
    if !opts.dry_run {
        let report = client.copy_between(&pinned, &target).await?;
        if report.digest.as_ref() != Some(&digest) {
            return Err(PromoteError::DigestChanged {
                destination: Box::new(target),
                expected: Box::new(digest),
                got: report.digest.map(Box::new),
            });
        }
    }
    Ok(PromotionRecord {
        source: pinned.to_string(),
        destination: target.to_string(),
        digest,
        time: crate::now_rfc3339(),
        dry_run: opts.dry_run,
        plan,
    })
}

/// Sets the release tags of `version` (`vX.Y.Z`, `vX.Y`, `vX`, `latest`;
/// only itself for a pre-release) on the image `pinned` (a digest
/// reference) in its repository. The digest is checked to be there before
/// any tag is written, and a moving tag is never moved to a lower version
/// than the highest release it already covers. Returns the tags set.
///
/// # Errors
/// [`PromoteError::Missing`] when the digest is not in the repository,
/// [`PromoteError::Version`] for a version that cannot be a tag.
pub async fn release_tags(client: &Client, pinned: &Reference, version: &str) -> Result<Vec<Tag>, PromoteError> {
    let Some(digest) = pinned.digest().cloned() else {
        return Err(PromoteError::NotPinned { source_ref: Box::new(pinned.clone()) });
    };
    let release = oci_image::Release::parse(version)?;
    let by_digest = pinned.repository_only().with_digest(digest);
    let manifest = match client.get_manifest(&by_digest).await {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(PromoteError::Missing { reference: Box::new(by_digest) });
        }
        Err(e) => return Err(e.into()),
    };
    let existing = match client.list_tags(&Repository::of(pinned)).await {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let tags = release.tags_given(&existing);
    let media_type = manifest.descriptor().media_type;
    for tag in &tags {
        client.put_manifest(&by_digest.with_tag(tag.clone()), manifest.bytes().clone(), &media_type).await?;
    }
    Ok(tags)
}
