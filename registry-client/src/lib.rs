//! Async OCI distribution client for kiln.
//!
//! This crate is the home of kiln's registry client (auth, blobs, uploads,
//! manifests, tags, referrers). It currently re-exports the vocabulary it will
//! speak, [`oci_image`]; the client itself lands with its own issue.

pub use oci_image;
