//! Integration tests of oci-image: conformance over the shared OCI data,
//! the image-spec validation cases, property tests, interop with umoci and
//! skopeo, and bad input.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod bad_input;
mod cases;
mod concurrent;
mod conformance;
mod interop;
mod props;
mod schema;

use std::path::PathBuf;

use oci_image::{ConfigBuilder, Descriptor, Digest, History, Layout, ManifestBuilder, MediaType, Raw};

/// The shared OCI image-spec data, or `None` outside CI when it is absent.
fn image_spec_dir() -> Option<PathBuf> {
    testkit::shared_dir().map(|d| d.join("conformance/oci/image-spec"))
}

/// A one-layer image in a fresh layout; returns the manifest descriptor and layer digest.
fn small_image(layout: &Layout, tag: &str) -> (Descriptor, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(6);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "hello.txt", &b"hello\n"[..]).unwrap();
    let layer = tar.into_inner().unwrap();
    let info = layout.write_blob_bytes(&layer).unwrap();
    let config = Raw::new(
        ConfigBuilder::new(&"linux/amd64".parse().unwrap())
            .layer(info.digest.clone(), History { created_by: Some("test".into()), ..History::default() })
            .build(),
    );
    layout.write_blob_bytes(config.bytes()).unwrap();
    let manifest = Raw::new(
        ManifestBuilder::new(config.descriptor())
            .layer(Descriptor::new(MediaType::OciLayer, info.digest.clone(), info.size))
            .build(),
    );
    layout.write_blob_bytes(manifest.bytes()).unwrap();
    layout.set_tag(&tag.parse().unwrap(), manifest.descriptor()).unwrap();
    (manifest.descriptor(), info.digest)
}
