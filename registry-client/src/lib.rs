//! kiln's asynchronous OCI distribution client: auth (anonymous, basic,
//! bearer tokens, docker and podman credential files), manifests, blobs,
//! uploads (monolithic and chunked, cross-repository mounts), tags,
//! catalog and referrers, and whole-image push and pull against OCI
//! layouts, with retries and bounded memory.
//!
//! ```no_run
//! use registry_client::{Client, DockerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder().credentials(DockerConfig::from_env()?).build()?;
//! let manifest = client.get_manifest(&"localhost:5000/team/app:v1".parse()?).await?;
//! println!("{}", manifest.digest());
//! # Ok(())
//! # }
//! ```

mod auth;
mod client;
mod config;
mod download;
mod error;
mod ops;
mod progress;
mod tls;
mod transfer;
mod transport;

pub use auth::{Anonymous, Credential, CredentialError, CredentialProvider, StaticCredentials};
pub use client::{Client, ClientBuilder, DEFAULT_MAX_DOWNLOAD, RetryPolicy};
pub use config::{
    AuthFileError, DEFAULT_HELPER_TIMEOUT, DockerConfig, StoreError, Stored, config_key, docker_config_path,
};
pub use download::Download;
pub use error::{Error, ErrorCode, ErrorKind, Result};
pub use oci_image::Repository;
pub use ops::{
    BlobPush, BlobSink, BlobSource, BytesSource, LayoutBlob, Login, MAX_LISTED_TAGS, MAX_MANIFEST_SIZE, TagsPage,
    fallback_tag,
};
pub use progress::Progress;
pub use transfer::{PushReport, RegistryBlob, image_blobs};

pub use oci_image;
