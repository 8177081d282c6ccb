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
    /// The step's comment.
    pub comment: Option<String>,
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
                comment: h.comment.clone(),
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

    /// The history as `docker image history` prints it, newest first:
    /// IMAGE (the image id on the newest row, `<missing>` below it, as for
    /// a pulled image), CREATED (how long before `now`, in seconds since
    /// 1970), CREATED BY (cut to 45 characters unless `no_trunc`), SIZE
    /// (the layer's compressed size, docker's units) and COMMENT.
    pub fn history_table(&self, now: i64, no_trunc: bool) -> String {
        let id = self.config_digest.as_ref().map_or_else(
            || "<missing>".to_owned(),
            |d| if no_trunc { d.to_string() } else { d.encoded().chars().take(12).collect() },
        );
        let mut rows =
            vec![["IMAGE".to_owned(), "CREATED".into(), "CREATED BY".into(), "SIZE".into(), "COMMENT".into()]];
        for (i, h) in self.history.iter().rev().enumerate() {
            let created = h.created.as_deref().and_then(|c| c.parse::<jiff::Timestamp>().ok()).map_or_else(
                || "N/A".to_owned(),
                |t| format!("{} ago", human_duration(now.saturating_sub(t.as_second()))),
            );
            let by = h.created_by.replace('\t', " ");
            let by =
                if no_trunc || by.chars().count() <= 45 { by } else { by.chars().take(44).chain(['…']).collect() };
            let image = if i == 0 { id.clone() } else { "<missing>".to_owned() };
            rows.push([image, created, by, human_size(h.size), h.comment.clone().unwrap_or_default()]);
        }
        table(&rows)
    }

    /// The history as a table like `docker image history`, newest first,
    /// dated now (see [`Inspection::history_table`]).
    pub fn history_text(&self, no_trunc: bool) -> String {
        self.history_table(crate::unix_now(), no_trunc)
    }
}

/// Columns as docker's tab writer sets them: each as wide as its widest
/// cell plus three spaces, at least ten; the last one as it is.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let width = |c: usize| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0);
    let widths: Vec<usize> = (0..N).map(|c| (width(c) + 3).max(10)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == N {
                line.push_str(cell);
            } else {
                let pad = widths.get(c).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A size as docker prints it: decimal units, four significant digits
/// (`0B`, `512B`, `7.8kB`, `1.062MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    #[allow(clippy::cast_precision_loss)] // a display value
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit + 1 < UNITS.len() {
        size /= 1000.0;
        unit += 1;
    }
    // Go's %.4g: four significant digits, trailing zeros dropped
    let digits = if size >= 100.0 {
        1
    } else if size >= 10.0 {
        2
    } else {
        3
    };
    let text = format!("{size:.digits$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text };
    format!("{text}{}", UNITS.get(unit).copied().unwrap_or("B"))
}

/// How long `secs` is, as docker says it (`Less than a second`,
/// `About an hour`, `3 days`, `2 years`).
fn human_duration(secs: i64) -> String {
    let hours = (secs + 1800) / 3600;
    match secs {
        s if s < 1 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".to_owned(),
        s if s / 60 < 60 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        s => format!("{} years", s / 3600 / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_as_docker_prints_them() {
        let sizes = [(0, "0B"), (512, "512B"), (7800, "7.8kB"), (1_061_845, "1.062MB"), (77_800_000, "77.8MB")];
        for (bytes, text) in sizes {
            assert_eq!(human_size(bytes), text);
        }
        let ages = [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (90, "About a minute"),
            (3599, "59 minutes"),
            (3600, "About an hour"),
            (5400, "2 hours"),
            (3 * 86_400, "3 days"),
            (20 * 86_400, "2 weeks"),
            (90 * 86_400, "3 months"),
            (800 * 86_400, "2 years"),
        ];
        for (secs, text) in ages {
            assert_eq!(human_duration(secs), text, "{secs}");
        }
    }

    #[test]
    fn history_reads_like_dockers() {
        let row = |by: &str, size: u64, comment: Option<&str>| HistoryRow {
            created: Some("2023-11-14T22:13:20Z".into()),
            created_by: by.into(),
            size,
            empty_layer: size == 0,
            layer: None,
            comment: comment.map(Into::into),
        };
        let info = Inspection {
            name: "x".into(),
            digest: Digest::sha256(b"m"),
            media_type: String::new(),
            manifests: Vec::new(),
            layers: Vec::new(),
            config: None,
            config_digest: Some(Digest::sha256(b"c")),
            history: vec![
                row("COPY . / # buildkit", 1_061_845, Some("buildkit.dockerfile.v0")),
                row("CMD [\"/bin/sh\", \"-c\", \"a very long command line that goes on and on\"]", 0, None),
            ],
            referrers: Vec::new(),
        };
        let now = 1_700_000_000 + 3 * 86_400;
        let id: String = Digest::sha256(b"c").encoded().chars().take(12).collect();
        let want = format!(
            "IMAGE          CREATED      CREATED BY                                      SIZE      COMMENT\n\
             {id}   3 days ago   CMD [\"/bin/sh\", \"-c\", \"a very long command l…   0B\n\
             <missing>      3 days ago   COPY . / # buildkit                             1.062MB   buildkit.dockerfile.v0\n"
        );
        assert_eq!(info.history_table(now, false), want);
        let full = info.history_table(now, true);
        assert!(full.contains("on and on\"]") && full.contains(&Digest::sha256(b"c").to_string()), "{full}");
    }
}
