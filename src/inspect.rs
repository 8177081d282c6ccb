//! Inspecting an image in a registry or an OCI layout: manifest, config,
//! history (like `docker image history`), platforms, referrers.

use oci_image::{AnyManifest, Descriptor, Digest, ImageConfiguration, Layout, Raw, Reference};
use registry_client::{Client, Repo};
use serde::Serialize;

use crate::{CopyError, ImageLocation};

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

fn layout_err(e: oci_image::LayoutError) -> CopyError {
    CopyError::from(e)
}

/// Reads an image for inspection (registry or `oci:DIR[:TAG]`).
///
/// # Errors
/// [`CopyError`] for unreadable locations.
pub async fn inspect(client: &Client, location: &ImageLocation) -> Result<Inspection, CopyError> {
    let (manifest, config_bytes, referrers) = match location {
        ImageLocation::Registry(r) => {
            let m = client.get_manifest(r).await?;
            let config = match &m {
                AnyManifest::Image(raw) => Some(client.fetch_small_blob(&Repo::of(r), &raw.value().config).await?),
                AnyManifest::Index(_) => None,
            };
            let pinned: Reference = r.repository_only().with_digest(m.digest().clone());
            let referrers = client.referrers(&pinned, None).await.unwrap_or_default();
            (m, config, referrers)
        }
        ImageLocation::Layout { dir, tag } => {
            let layout = Layout::open(dir).map_err(layout_err)?;
            let desc = layout.image(tag.as_ref().map(oci_image::Tag::as_str)).map_err(layout_err)?;
            let m = layout.read_manifest(&desc).map_err(layout_err)?;
            let config = match &m {
                AnyManifest::Image(raw) => Some(layout.read_blob(&raw.value().config).map_err(layout_err)?),
                AnyManifest::Index(_) => None,
            };
            (m, config, Vec::new())
        }
        ImageLocation::DockerArchive { .. } => {
            return Err(CopyError::Unsupported {
                from: location.to_string(),
                to: "inspect".into(),
                why: "inspect a docker-archive by copying it to an OCI layout first",
            });
        }
    };
    let config = config_bytes
        .map(|b| Raw::<ImageConfiguration>::from_bytes(b).map(Raw::into_value))
        .transpose()
        .map_err(|e| registry_client::Error::not_found(format!("invalid config: {e}")))?;
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
