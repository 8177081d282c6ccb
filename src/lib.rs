//! kiln: build and ship OCI / Docker container images without a daemon.
//!
//! The porcelain over kiln's crates: [`oci_image`] (the vocabulary),
//! [`layer_diff`] (trees to layers), [`registry_client`] (the distribution
//! client). [`build`] builds a Dockerfile without a daemon (`RUN` through
//! runc) into an OCI layout, a docker-archive or a registry; [`copy`] moves
//! images between registries, OCI layouts and docker-archive files;
//! [`promote`] and [`release_tags`] ship the same digest onwards;
//! [`image_from_dir`] packs a directory as a one-layer image.
//!
//! ```
//! let context = tempfile::tempdir()?;
//! std::fs::write(context.path().join("hello.txt"), "hello\n")?;
//! let out = tempfile::tempdir()?;
//! let image = kiln::image_from_dir(context.path(), &out.path().join("layout"), &"kiln/hello:latest".parse()?, &kiln::DirImageOptions::default())?;
//! assert_eq!(image.layers.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

pub mod build;
mod copy;
mod inspect;
mod promote;

pub use copy::{CopyError, CopyOptions, CopyReport, ImageLocation, LocationError, copy, copy_with};
pub use dockerfile_parse;
pub use inspect::{HistoryRow, InspectError, Inspection, history_rows, human_size, inspect};
pub use layer_diff;
pub use oci_image;
pub use promote::{CopyPlan, PromoteError, PromoteOptions, PromotionRecord, plan_copy, promote, release_tags};
pub use registry_client;

use oci_image::{
    ConfigBuilder, ContainerConfig, Descriptor, Digest, History, Layout, LayoutError, ManifestBuilder, Platform, Raw,
    Reference,
};

/// A temporary directory in the system's temporary directory that only
/// this user can enter (`0700`): images staged there may come from private
/// registries.
pub(crate) fn private_tempdir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new().permissions(std::fs::Permissions::from_mode(0o700)).tempdir()
}

/// Why an image could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Packing the directory failed.
    #[error("packing {dir}")]
    Pack {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: layer_diff::LayerError,
    },
    /// Writing the OCI layout failed.
    #[error("writing OCI layout {dir}")]
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<LayoutError>,
    },
}

/// Options for [`image_from_dir`].
#[derive(Debug, Clone)]
pub struct DirImageOptions {
    /// The image's platform (default: the host's).
    pub platform: Platform,
    /// Layer options: epoch clamping, owner normalisation, gzip level.
    pub pack: layer_diff::PackOptions,
    /// Execution parameters for the config (`Cmd`, `Env`, ...).
    pub config: ContainerConfig,
}

impl Default for DirImageOptions {
    fn default() -> Self {
        DirImageOptions {
            platform: Platform::host(),
            pack: layer_diff::PackOptions::default(),
            config: ContainerConfig::default(),
        }
    }
}

/// The image written by [`image_from_dir`].
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest's descriptor (its digest is the image digest).
    pub manifest: Descriptor,
    /// The config's descriptor.
    pub config: Descriptor,
    /// The layers' descriptors.
    pub layers: Vec<Descriptor>,
    /// The layers' diff ids.
    pub diff_ids: Vec<Digest>,
}

/// Packs the files under `dir` as one layer, with a config and an OCI
/// manifest, into the OCI layout at `layout_dir` (created when missing),
/// tagged with `name`'s tag. The layer streams straight into the layout; the
/// result is reproducible (sorted entries, clamped times, root ownership).
///
/// # Errors
/// [`ImageError`] naming the directory or layout that failed; the layout's
/// index is only updated once every blob is in place.
pub fn image_from_dir(
    dir: &Path,
    layout_dir: &Path,
    name: &Reference,
    opts: &DirImageOptions,
) -> Result<BuiltImage, ImageError> {
    let layout_err = |source| ImageError::Layout { dir: layout_dir.to_owned(), source: Box::new(source) };
    let layout = Layout::create(layout_dir).map_err(layout_err)?;
    // the layer pipeline hashes the blob as it writes it: no second pass
    let blob = layout.dangerous_unhashed_blob_writer().map_err(layout_err)?;
    let (blob, info) = layer_diff::pack_dir(dir, blob, &opts.pack)
        .map_err(|source| ImageError::Pack { dir: dir.to_owned(), source })?;
    blob.dangerous_finish(&info.digest).map_err(layout_err)?;
    let created = opts.pack.epoch.map(rfc3339_utc);
    // no path in the history: the same files anywhere give the same image
    let mut history = History { created_by: Some("kiln: COPY . /".to_owned()), ..History::default() };
    history.created.clone_from(&created);
    let mut config =
        ConfigBuilder::new(&opts.platform).config(opts.config.clone()).layer(info.diff_id.clone(), history);
    if let Some(c) = created {
        config = config.created(c);
    }
    let config = Raw::new(config.build());
    layout.write_blob_bytes(config.bytes()).map_err(layout_err)?;
    let layer = info.descriptor();
    let manifest = Raw::new(ManifestBuilder::new(config.descriptor()).layer(layer.clone()).build());
    layout.write_blob_bytes(manifest.bytes()).map_err(layout_err)?;
    layout.set_tag(name, manifest.descriptor()).map_err(layout_err)?;
    Ok(BuiltImage {
        manifest: manifest.descriptor(),
        config: config.descriptor(),
        layers: vec![layer],
        diff_ids: vec![info.diff_id],
    })
}

/// An error and its sources, one per line (`error: ...`, `  caused by: ...`),
/// for command-line tools.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    use std::fmt::Write as _;
    let mut s = format!("error: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(s, "\n  caused by: {cause}");
        source = cause.source();
    }
    s
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Now, as RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    rfc3339_utc(unix_now().try_into().unwrap_or(0))
}

/// Seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`); a
/// time past the end of the year 9999 saturates at `9999-12-30T22:00:00Z`,
/// the last second [`jiff`] represents.
pub fn rfc3339_utc(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX).min(jiff::Timestamp::MAX.as_second());
    jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::MAX).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(u64::MAX), "9999-12-30T22:00:00Z");
    }
}

/// README.md's Rust examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
