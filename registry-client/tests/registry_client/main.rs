//! Integration tests of registry-client against the real CNCF distribution
//! registry (Debian `docker-registry`, started by testkit), and interop
//! with skopeo.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod auth;
mod faults;
mod flows;
mod hostile;
mod interop;
mod leaks;
mod scripted;

use oci_image::{
    ConfigBuilder, Descriptor, Digest, History, IndexBuilder, Layout, ManifestBuilder, MediaType, Platform, Raw,
};
use registry_client::Client;
use testkit::Registry;

/// A registry, or `None` outside CI when the binary is missing.
fn registry() -> Option<Registry> {
    testkit::tool("docker-registry")?;
    Some(Registry::start().unwrap())
}

fn client() -> Client {
    Client::builder().build().unwrap()
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// An image with `layers` layers of the given sizes in a layout, tagged `tag`.
fn image(layout: &Layout, tag: &str, seed: u64, sizes: &[usize], platform: &str) -> Descriptor {
    let mut config = ConfigBuilder::new(&platform.parse::<Platform>().unwrap());
    let mut layers = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let data = noise(seed + i as u64, *size);
        let info = layout.write_blob_bytes(&data).unwrap();
        config =
            config.layer(info.digest.clone(), History { created_by: Some(format!("layer {i}")), ..History::default() });
        layers.push(Descriptor::new(MediaType::OciLayer, info.digest, info.size));
    }
    let config = Raw::new(config.created("2024-01-01T00:00:00Z").build());
    layout.write_blob_bytes(config.bytes()).unwrap();
    let manifest = Raw::new(ManifestBuilder::new(config.descriptor()).layers(layers).build());
    layout.write_blob_bytes(manifest.bytes()).unwrap();
    layout.set_tag(&format!("example.com/app:{tag}").parse().unwrap(), manifest.descriptor()).unwrap();
    manifest.descriptor()
}

/// A two-platform index of two images.
fn index(layout: &Layout, tag: &str) -> Descriptor {
    let amd = image(layout, "amd", 10, &[3000, 5000], "linux/amd64");
    let arm = image(layout, "arm", 20, &[4000], "linux/arm64/v8");
    let idx = Raw::new(
        IndexBuilder::new()
            .manifest(amd.with_platform("linux/amd64".parse().unwrap()))
            .manifest(arm.with_platform("linux/arm64/v8".parse().unwrap()))
            .build(),
    );
    layout.write_blob_bytes(idx.bytes()).unwrap();
    layout.set_tag(&format!("example.com/app:{tag}").parse().unwrap(), idx.descriptor()).unwrap();
    idx.descriptor()
}

fn digest_of(layout: &Layout, tag: &str) -> Digest {
    layout.resolve(tag).unwrap().digest
}
