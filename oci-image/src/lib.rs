//! The vocabulary of OCI and Docker images: digests, references, media
//! types, descriptors, manifests, indexes, configs, the OCI image layout and
//! docker-archive tarballs. Synchronous, no network.
//!
//! ```
//! use oci_image::{ConfigBuilder, Descriptor, Document, Layout, ManifestBuilder, MediaType, Raw, Reference};
//!
//! let dir = tempfile::tempdir()?;
//! let layout = Layout::create(dir.path())?;
//! let layer = layout.write_blob_bytes(b"not really a tar")?;
//! let config = Raw::new(ConfigBuilder::new(&"linux/amd64".parse()?).layer(layer.digest.clone(), Default::default()).build());
//! layout.write_blob_bytes(config.bytes())?;
//! let manifest = Raw::new(
//!     ManifestBuilder::new(config.descriptor())
//!         .layer(Descriptor::new(MediaType::OciLayer, layer.digest, layer.size))
//!         .build(),
//! );
//! layout.write_blob_bytes(manifest.bytes())?;
//! let name: Reference = "example.com/app:v1".parse()?;
//! layout.set_tag(&name, manifest.descriptor())?;
//! assert_eq!(layout.resolve("v1")?.digest, *manifest.digest());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod archive;
mod descriptor;
mod digest;
mod document;
mod layout;
mod media_type;
mod platform;
mod reference;
mod release;
mod stale;

pub use archive::{ArchiveError, ArchiveImage, ArchiveReader, ArchiveWriter, PendingArchive};
pub use descriptor::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_CREATED, ANNOTATION_REF_NAME, Descriptor, EMPTY_JSON};
pub use digest::{
    Algorithm, Digest, DigestError, DigestReader, DigestWriter, Hasher, VerifyError, VerifyingReader,
    into_verify_error, verify,
};
pub use document::{
    AnyManifest, ConfigBuilder, ContainerConfig, Document, DocumentError, Healthcheck, History, ImageConfiguration,
    ImageIndex, ImageManifest, IndexBuilder, ManifestBuilder, Raw, RawConfig, RawIndex, RawManifest, RootFs,
    to_canonical_json,
};
pub use layout::{
    BlobCopy, BlobInfo, BlobWriter, IndexLock, Layout, LayoutError, MAX_DOCUMENT_SIZE, UnhashedBlobWriter,
};
pub use media_type::{Compression, MediaType, MediaTypeError};
pub use platform::{Platform, PlatformError};
pub use reference::{DOCKER_HUB, NAME_MAX, Reference, ReferenceError, Repository, Tag};
pub use release::{Release, ReleaseTagError, release_tags};
pub use stale::{locked_tempdir_in, reclaim_stale, reclaim_stale_with};

/// oci-spec, re-exported for interop conversions and runtime bundles.
pub use oci_spec;
