//! Applies the layers of an image in an OCI layout onto a directory.
//!
//! ```text
//! cargo run --release --example unpack -- oci:LAYOUT[:TAG] DIR
//! ```

use std::path::PathBuf;

use layer_diff::ApplyOptions;
use oci_image::{AnyManifest, Layout, Platform};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(image), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: unpack oci:LAYOUT[:TAG] DIR".into());
    };
    let spec = image.strip_prefix("oci:").ok_or("the image must be oci:LAYOUT[:TAG]")?;
    let (layout_dir, tag) = match spec.rsplit_once(':') {
        Some((l, t)) if !t.contains('/') => (l, t),
        _ => (spec, "latest"),
    };
    let layout = Layout::open(layout_dir)?;
    let mut desc = layout.resolve(tag)?;
    let manifest = loop {
        match layout.read_manifest(&desc)? {
            AnyManifest::Image(m) => break m,
            AnyManifest::Index(i) => {
                desc = i.value().manifest_for(&Platform::host()).ok_or("no manifest for this platform")?.clone();
            }
        }
    };
    let root = PathBuf::from(dir);
    std::fs::create_dir_all(&root)?;
    let opts = ApplyOptions::default();
    let layers = &manifest.value().layers;
    let blobs = layers
        .iter()
        .map(|layer| Ok((layout.open_blob(&layer.digest)?, layer)))
        .collect::<Result<Vec<_>, oci_image::LayoutError>>()?;
    // each blob is checked while the one below it is applied
    let applied = layer_diff::apply_blobs(blobs, &root, &opts)?;
    for (layer, info) in layers.iter().zip(applied) {
        println!("{} diff_id {}", layer.digest, info.diff_id);
    }
    Ok(())
}
