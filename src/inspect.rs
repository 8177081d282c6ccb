//! Inspecting an image in a registry or an OCI layout: manifest, config,
//! history (like `docker image history`), platforms, referrers.

use oci_image::{AnyManifest, Descriptor, Digest, ImageConfiguration, Layout, Raw, Reference};
use registry_client::{Client, Repository};
use serde::Serialize;

use crate::ImageLocation;

/// Why an image could not be inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// Reading from the registry failed.
    #[error("inspecting {location}")]
    Registry {
        /// The location.
        location: String,
        /// The registry's error.
        #[source]
        source: registry_client::Error,
    },
    /// Reading the OCI layout failed.
    #[error("inspecting {location}")]
    Layout {
        /// The location.
        location: String,
        /// The layout's error.
        #[source]
        source: Box<oci_image::LayoutError>,
    },
    /// Reading the docker-archive failed.
    #[error("inspecting {location}")]
    Archive {
        /// The location.
        location: String,
        /// The archive's error.
        #[source]
        source: Box<oci_image::ArchiveError>,
    },
    /// The image's config is not a valid image configuration.
    #[error("{location}: invalid image config {digest}")]
    Config {
        /// The location.
        location: String,
        /// The config's digest.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<oci_image::DocumentError>,
    },
    /// A temporary directory for a docker-archive could not be made.
    #[error("creating a temporary directory")]
    Temp(#[source] std::io::Error),
}

/// One row of an image's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryRow {
    /// When the step ran.
    pub created: Option<String>,
    /// The command that made it.
    pub created_by: String,
    /// The compressed size of its layer (0 for an empty layer).
    pub size: u64,
    /// True when the step made no layer.
    pub empty_layer: bool,
    /// The layer's digest, when it made one.
    pub layer: Option<Digest>,
}

/// What an image is.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Where it was read.
    pub name: String,
    /// The digest of the manifest or index.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// For an index: each manifest with its platform.
    pub manifests: Vec<Descriptor>,
    /// For an image: its layers.
    pub layers: Vec<Descriptor>,
    /// For an image: its config.
    pub config: Option<ImageConfiguration>,
    /// For an image: the config's digest.
    pub config_digest: Option<Digest>,
    /// For an image: the history, one row per step, newest last.
    pub history: Vec<HistoryRow>,
    /// Artifacts that refer to it (registry sources only).
    pub referrers: Vec<Descriptor>,
}

/// A layout's image: its manifest (or index) and config, no referrers.
fn read_from_layout(
    layout: &Layout,
    desc: &Descriptor,
) -> Result<(AnyManifest, Option<bytes::Bytes>, Vec<Descriptor>), oci_image::LayoutError> {
    let m = layout.read_manifest(desc)?;
    let config = match &m {
        AnyManifest::Image(raw) => Some(layout.read_blob(&raw.value().config)?),
        AnyManifest::Index(_) => None,
    };
    Ok((m, config, Vec::new()))
}

/// Builds the history rows: non-empty steps take the layers in order.
pub fn history_rows(config: &ImageConfiguration, layers: &[Descriptor]) -> Vec<HistoryRow> {
    let mut next = layers.iter();
    config
        .history
        .iter()
        .flatten()
        .map(|h| {
            let empty = h.empty_layer.unwrap_or(false);
            let layer = if empty { None } else { next.next() };
            HistoryRow {
                created: h.created.clone(),
                created_by: h.created_by.clone().unwrap_or_default(),
                size: layer.map_or(0, |l| l.size),
                empty_layer: empty,
                layer: layer.map(|l| l.digest.clone()),
            }
        })
        .collect()
}

/// Reads an image for inspection: a registry's, an OCI layout's
/// (`oci:DIR[:TAG]`) or a docker-archive's (`docker-archive:FILE[:NAME]`,
/// as `docker load` would see it: its manifest is made anew, so its digest
/// is the one kiln's copy of it to a layout or a registry gets).
///
/// # Errors
/// [`InspectError`] naming the location that could not be read.
pub async fn inspect(client: &Client, location: &ImageLocation) -> Result<Inspection, InspectError> {
    let at = || location.to_string();
    let layout_err = |e: oci_image::LayoutError| InspectError::Layout { location: at(), source: Box::new(e) };
    // an archive holds no manifest: it is read through a layout of its own
    let tmp;
    let (manifest, config_bytes, referrers) = match location {
        ImageLocation::Registry(r) => {
            let registry_err = |e| InspectError::Registry { location: at(), source: e };
            let m = client.get_manifest(r).await.map_err(registry_err)?;
            let config = match &m {
                AnyManifest::Image(raw) => {
                    Some(client.fetch_small_blob(&Repository::of(r), &raw.value().config).await.map_err(registry_err)?)
                }
                AnyManifest::Index(_) => None,
            };
            let pinned: Reference = r.repository_only().with_digest(m.digest().clone());
            let referrers = client.referrers(&pinned, None).await.unwrap_or_default();
            (m, config, referrers)
        }
        ImageLocation::Layout { dir, tag } => {
            let layout = Layout::open(dir).map_err(layout_err)?;
            let desc = layout.image(tag.as_ref().map(oci_image::Tag::as_str)).map_err(layout_err)?;
            read_from_layout(&layout, &desc).map_err(layout_err)?
        }
        ImageLocation::DockerArchive { file, name } => {
            let archive_err = |e| InspectError::Archive { location: at(), source: Box::new(e) };
            let reader = oci_image::ArchiveReader::open(file).map_err(archive_err)?;
            let wanted = name.as_ref().map(Reference::familiar);
            let image = reader.find(wanted.as_deref()).map_err(archive_err)?;
            tmp = crate::private_tempdir().map_err(InspectError::Temp)?;
            let layout = Layout::create(tmp.path().join("layout")).map_err(layout_err)?;
            let desc = reader.copy_to_layout(image, &layout, None).map_err(archive_err)?;
            read_from_layout(&layout, &desc).map_err(layout_err)?
        }
    };
    let config = match (&manifest, config_bytes) {
        (AnyManifest::Image(m), Some(b)) => {
            Some(Raw::<ImageConfiguration>::from_bytes(b).map(Raw::into_value).map_err(|e| InspectError::Config {
                location: at(),
                digest: m.value().config.digest.clone(),
                source: Box::new(e),
            })?)
        }
        _ => None,
    };
    let mut out = Inspection {
        name: location.to_string(),
        digest: manifest.digest().clone(),
        media_type: manifest.descriptor().media_type.to_string(),
        manifests: Vec::new(),
        layers: Vec::new(),
        config_digest: None,
        history: Vec::new(),
        config: None,
        referrers,
    };
    match &manifest {
        AnyManifest::Index(i) => out.manifests.clone_from(&i.value().manifests),
        AnyManifest::Image(m) => {
            out.layers.clone_from(&m.value().layers);
            out.config_digest = Some(m.value().config.digest.clone());
            if let Some(c) = &config {
                out.history = history_rows(c, &out.layers);
            }
        }
    }
    out.config = config;
    Ok(out)
}

impl Inspection {
    /// A text summary.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "name:       {}", self.name);
        let _ = writeln!(s, "digest:     {}", self.digest);
        let _ = writeln!(s, "media type: {}", self.media_type);
        for m in &self.manifests {
            let p = m.platform.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
            let _ = writeln!(s, "platform:   {p:<16} {}", m.digest);
        }
        if let Some(c) = &self.config {
            let _ = writeln!(s, "platform:   {}", c.platform());
            let _ = writeln!(s, "created:    {}", c.created.as_deref().unwrap_or("-"));
        }
        if let Some(d) = &self.config_digest {
            let _ = writeln!(s, "config:     {d}");
        }
        for l in &self.layers {
            let _ = writeln!(s, "layer:      {} {:>12} {}", l.digest, l.size, l.media_type);
        }
        for r in &self.referrers {
            let t = r.artifact_type.as_ref().map_or("-", oci_image::MediaType::as_str);
            let _ = writeln!(s, "referrer:   {} {t}", r.digest);
        }
        s
    }

    /// The history as a table like `docker image history` (newest first).
    pub fn history_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!("{:<22} {:<60} {:>12}  {}\n", "CREATED", "CREATED BY", "SIZE", "COMMENT");
        for h in self.history.iter().rev() {
            let by: String = h.created_by.chars().take(60).collect();
            let comment = if h.empty_layer { "empty layer" } else { "" };
            let _ = writeln!(s, "{:<22} {by:<60} {:>12}  {comment}", h.created.as_deref().unwrap_or("-"), h.size);
        }
        s
    }
}
