//! Progress events, delivered to the callback given to
//! [`crate::ClientBuilder::progress`].

use std::sync::Arc;
use std::time::Duration;

use oci_image::Digest;

/// Something that happened during a transfer. Serializes as a JSON object
/// named by `event` (`bytes`, `blob_uploaded`, ...), delays in seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Progress {
    /// Bytes of a blob moved so far.
    Bytes {
        /// The blob.
        digest: Digest,
        /// Bytes moved.
        done: u64,
        /// The blob's size.
        total: u64,
    },
    /// The blob was already at the destination.
    BlobSkipped {
        /// The blob.
        digest: Digest,
    },
    /// The blob was mounted from another repository of the same registry.
    BlobMounted {
        /// The blob.
        digest: Digest,
        /// The repository it came from.
        from: String,
    },
    /// The blob was uploaded.
    BlobUploaded {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// The blob was downloaded and verified.
    BlobDownloaded {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A request is waiting before a retry.
    RetryWaiting {
        /// The URL (without query or credentials).
        url: String,
        /// The attempt that failed.
        attempt: u32,
        /// How long the wait is.
        #[serde(serialize_with = "as_seconds")]
        delay: Duration,
    },
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;
