//! Manifests, indexes and configs (OCI and Docker schema 2), their builders,
//! canonical serialisation and the [`Raw`] form that keeps what was read.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{Descriptor, Digest, MediaType, Platform};

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// The bytes are not valid JSON for this kind of document.
    #[error("invalid {kind} JSON: {source}")]
    Json {
        /// Which document was being read (`manifest`, `index`, `config`).
        kind: &'static str,
        /// The parse failure, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// `schemaVersion` is not 2.
    #[error("unsupported {kind} schemaVersion {found} (expected 2)")]
    SchemaVersion {
        /// Which document.
        kind: &'static str,
        /// The version found.
        found: u64,
    },
    /// A Docker schema 1 manifest: recognised but not supported.
    #[error(
        "docker schema 1 manifests are unsupported; convert the image to schema 2 or OCI (for example with `skopeo copy --format v2s2`)"
    )]
    Schema1,
    /// The document's `mediaType` does not fit where it was read.
    #[error("unexpected media type {found} for a {kind}")]
    UnexpectedMediaType {
        /// Which document was expected.
        kind: &'static str,
        /// The media type found.
        found: MediaType,
    },
    /// The bytes do not hash to the digest they were fetched by.
    #[error("document digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes.
        actual: Digest,
    },
    /// The digest's algorithm cannot be computed, so the bytes cannot be checked.
    #[error("cannot verify document against {digest}: unsupported algorithm")]
    Unverifiable {
        /// The digest asked for.
        digest: Digest,
    },
}

/// The JSON documents of the image spec.
pub trait Document: Serialize + DeserializeOwned {
    /// A short name for errors (`manifest`, `index`, `config`).
    const KIND: &'static str;

    /// The media type to use in a descriptor of this document.
    fn media_type(&self) -> MediaType;

    /// Checks beyond the JSON shape.
    ///
    /// # Errors
    /// [`DocumentError`] naming what is wrong.
    fn validate(&self) -> Result<(), DocumentError> {
        Ok(())
    }

    /// Parses and validates a document.
    ///
    /// # Errors
    /// [`DocumentError::Json`] for malformed JSON, or a validation error.
    fn from_json(bytes: &[u8]) -> Result<Self, DocumentError> {
        let v: Self = serde_json::from_slice(bytes).map_err(|source| {
            // a schema 1 manifest fails the shape check first; say what it is
            match serde_json::from_slice::<Probe>(bytes) {
                Ok(Probe { schema_version: Some(1), .. }) => DocumentError::Schema1,
                _ => DocumentError::Json { kind: Self::KIND, source },
            }
        })?;
        v.validate()?;
        Ok(v)
    }

    /// Canonical JSON: struct fields in a fixed order, maps sorted, no
    /// insignificant white space. The same document always gives the same bytes.
    fn to_canonical_json(&self) -> Vec<u8> {
        canonical_json(self)
    }
}

/// Canonical JSON of a value whose maps are keyed by strings.
pub(crate) fn canonical_json<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    // serde_json fails only on non-string map keys or a failing custom
    // Serialize impl; kiln's documents have neither.
    #[allow(clippy::expect_used)]
    serde_json::to_vec(v).expect("kiln documents always serialise")
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn schema_version_two() -> u32 {
    2
}

fn check_schema_version(kind: &'static str, v: u32) -> Result<(), DocumentError> {
    match v {
        2 => Ok(()),
        1 => Err(DocumentError::Schema1),
        other => Err(DocumentError::SchemaVersion { kind, found: other.into() }),
    }
}

/// An image manifest (OCI or Docker schema 2), or an artifact manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    #[serde(default = "schema_version_two")]
    pub schema_version: u32,
    /// `application/vnd.oci.image.manifest.v1+json` or the Docker schema 2 type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<MediaType>,
    /// The artifact's type, for artifact manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<MediaType>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (signatures, SBOMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Fields this version of kiln does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Document for ImageManifest {
    const KIND: &'static str = "manifest";

    fn media_type(&self) -> MediaType {
        self.media_type.clone().unwrap_or(MediaType::OciManifest)
    }

    fn validate(&self) -> Result<(), DocumentError> {
        check_schema_version(Self::KIND, self.schema_version)?;
        match &self.media_type {
            Some(m) if m.is_schema1() => Err(DocumentError::Schema1),
            Some(m) if !m.is_manifest() => {
                Err(DocumentError::UnexpectedMediaType { kind: Self::KIND, found: m.clone() })
            }
            _ => Ok(()),
        }
    }
}

/// Builds an [`ImageManifest`]; nothing can fail.
///
/// ```
/// use oci_image::{Descriptor, Document, ImageManifest, ManifestBuilder, MediaType};
/// let config = Descriptor::of_bytes(MediaType::OciConfig, b"{}");
/// let m: ImageManifest = ManifestBuilder::new(config).annotation("a", "b").build();
/// assert_eq!(m.media_type(), MediaType::OciManifest);
/// ```
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    m: ImageManifest,
}

impl ManifestBuilder {
    /// Starts an OCI image manifest with its config descriptor.
    pub fn new(config: Descriptor) -> Self {
        ManifestBuilder {
            m: ImageManifest {
                schema_version: 2,
                media_type: Some(MediaType::OciManifest),
                artifact_type: None,
                config,
                layers: Vec::new(),
                subject: None,
                annotations: None,
                extra: BTreeMap::new(),
            },
        }
    }

    /// Makes it a Docker schema 2 manifest (the media type only; descriptors are the caller's).
    #[must_use]
    pub fn docker(mut self) -> Self {
        self.m.media_type = Some(MediaType::DockerManifest);
        self
    }

    /// Appends a layer.
    #[must_use]
    pub fn layer(mut self, layer: Descriptor) -> Self {
        self.m.layers.push(layer);
        self
    }

    /// Appends layers.
    #[must_use]
    pub fn layers(mut self, layers: impl IntoIterator<Item = Descriptor>) -> Self {
        self.m.layers.extend(layers);
        self
    }

    /// Sets the subject.
    #[must_use]
    pub fn subject(mut self, subject: Descriptor) -> Self {
        self.m.subject = Some(subject);
        self
    }

    /// Sets the artifact type.
    #[must_use]
    pub fn artifact_type(mut self, t: MediaType) -> Self {
        self.m.artifact_type = Some(t);
        self
    }

    /// Adds an annotation.
    #[must_use]
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.m.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    /// The manifest.
    pub fn build(self) -> ImageManifest {
        self.m
    }
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    #[serde(default = "schema_version_two")]
    pub schema_version: u32,
    /// `application/vnd.oci.image.index.v1+json` or the Docker manifest list type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<MediaType>,
    /// The artifact's type, for artifact indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<MediaType>,
    /// The manifests, each with its platform where it has one.
    #[serde(default, deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Fields this version of kiln does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Document for ImageIndex {
    const KIND: &'static str = "index";

    fn media_type(&self) -> MediaType {
        self.media_type.clone().unwrap_or(MediaType::OciIndex)
    }

    fn validate(&self) -> Result<(), DocumentError> {
        check_schema_version(Self::KIND, self.schema_version)?;
        match &self.media_type {
            Some(m) if !m.is_index() => Err(DocumentError::UnexpectedMediaType { kind: Self::KIND, found: m.clone() }),
            _ => Ok(()),
        }
    }
}

impl ImageIndex {
    /// The manifest for `platform`, chosen the way Docker chooses.
    pub fn manifest_for(&self, platform: &Platform) -> Option<&Descriptor> {
        platform.best_match(self.manifests.iter(), |d| d.platform.as_ref())
    }
}

/// Builds an [`ImageIndex`]; nothing can fail.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    i: ImageIndex,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder::new()
    }
}

impl IndexBuilder {
    /// Starts an empty OCI index.
    pub fn new() -> Self {
        IndexBuilder {
            i: ImageIndex {
                schema_version: 2,
                media_type: Some(MediaType::OciIndex),
                artifact_type: None,
                manifests: Vec::new(),
                subject: None,
                annotations: None,
                extra: BTreeMap::new(),
            },
        }
    }

    /// Makes it a Docker manifest list.
    #[must_use]
    pub fn docker(mut self) -> Self {
        self.i.media_type = Some(MediaType::DockerManifestList);
        self
    }

    /// Appends a manifest descriptor.
    #[must_use]
    pub fn manifest(mut self, d: Descriptor) -> Self {
        self.i.manifests.push(d);
        self
    }

    /// Sets the subject.
    #[must_use]
    pub fn subject(mut self, subject: Descriptor) -> Self {
        self.i.subject = Some(subject);
        self
    }

    /// Sets the artifact type.
    #[must_use]
    pub fn artifact_type(mut self, t: MediaType) -> Self {
        self.i.artifact_type = Some(t);
        self
    }

    /// Adds an annotation.
    #[must_use]
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.i.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    /// The index.
    pub fn build(self) -> ImageIndex {
        self.i
    }
}

/// Docker's health check settings (`HEALTHCHECK`), durations in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Time before a check is considered hung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Start-up grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    /// Time between checks during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    /// Failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Fields this version of kiln does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The execution parameters of an image (`config` in the image config).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE`: `port/proto` keys.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "set_of_empty_objects")]
    pub exposed_ports: Option<BTreeSet<String>>,
    /// `ENV`: `KEY=value` entries.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_env")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`; `null` reads as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`; `null` reads as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`: paths.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "set_of_empty_objects")]
    pub volumes: Option<BTreeSet<String>>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Docker: the command is already escaped for Windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// Docker: `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Docker: `ONBUILD` triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// Docker: `SHELL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Fields this version of kiln does not know (Docker's `Hostname`, `Tty`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn de_env<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let env: Option<Vec<String>> = Option::deserialize(d)?;
    for e in env.iter().flatten() {
        if !matches!(e.find('='), Some(i) if i > 0) {
            return Err(serde::de::Error::custom(format!("invalid Env entry {e:?}: expected KEY=value")));
        }
    }
    Ok(env)
}

mod set_of_empty_objects {
    use std::collections::BTreeSet;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(v: &Option<BTreeSet<String>>, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(set) = v else { return s.serialize_none() };
        let mut m = s.serialize_map(Some(set.len()))?;
        for k in set {
            m.serialize_entry(k, &serde_json::Map::new())?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeSet<String>>, D::Error> {
        let m: Option<std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>> =
            Option::deserialize(d)?;
        Ok(m.map(|m| m.into_keys().collect()))
    }
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The digests of the uncompressed layers, base first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
    /// Fields this version of kiln does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One entry of an image's history.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct History {
    /// When the step ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The command that made the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
    /// Fields this version of kiln does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// An image configuration (OCI config or Docker container image JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfiguration {
    /// When the image was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// OS version.
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Execution parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layers' diff ids.
    pub rootfs: RootFs,
    /// One entry per build step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
    /// Fields this version of kiln does not know (Docker's `container_config`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Document for ImageConfiguration {
    const KIND: &'static str = "config";

    fn media_type(&self) -> MediaType {
        MediaType::OciConfig
    }
}

impl ImageConfiguration {
    /// The platform this config describes.
    pub fn platform(&self) -> Platform {
        let mut p = Platform::new(self.os.clone(), self.architecture.clone());
        p.variant.clone_from(&self.variant);
        p.os_version.clone_from(&self.os_version);
        p.os_features.clone_from(&self.os_features);
        p
    }
}

/// Builds an [`ImageConfiguration`]; nothing can fail.
///
/// ```
/// use oci_image::{ConfigBuilder, Digest, History, Platform};
/// let config = ConfigBuilder::new(&"linux/amd64".parse()?)
///     .layer(Digest::sha256(b"layer"), History { created_by: Some("COPY . /".into()), ..History::default() })
///     .build();
/// assert_eq!(config.rootfs.diff_ids.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    c: ImageConfiguration,
}

impl ConfigBuilder {
    /// Starts a config for a platform, with no layers.
    pub fn new(platform: &Platform) -> Self {
        ConfigBuilder {
            c: ImageConfiguration {
                created: None,
                author: None,
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                os_version: platform.os_version.clone(),
                os_features: platform.os_features.clone(),
                variant: platform.variant.clone(),
                config: None,
                rootfs: RootFs { kind: "layers".to_owned(), diff_ids: Vec::new(), extra: BTreeMap::new() },
                history: None,
                extra: BTreeMap::new(),
            },
        }
    }

    /// Sets the creation time (RFC 3339).
    #[must_use]
    pub fn created(mut self, created: impl Into<String>) -> Self {
        self.c.created = Some(created.into());
        self
    }

    /// Sets the author.
    #[must_use]
    pub fn author(mut self, author: impl Into<String>) -> Self {
        self.c.author = Some(author.into());
        self
    }

    /// Sets the execution parameters.
    #[must_use]
    pub fn config(mut self, config: ContainerConfig) -> Self {
        self.c.config = Some(config);
        self
    }

    /// Appends a layer and the history entry that made it.
    #[must_use]
    pub fn layer(mut self, diff_id: Digest, history: History) -> Self {
        self.c.rootfs.diff_ids.push(diff_id);
        self.c.history.get_or_insert_with(Vec::new).push(History { empty_layer: None, ..history });
        self
    }

    /// Appends a history entry for a step that made no layer.
    #[must_use]
    pub fn empty_layer(mut self, history: History) -> Self {
        self.c.history.get_or_insert_with(Vec::new).push(History { empty_layer: Some(true), ..history });
        self
    }

    /// The config.
    pub fn build(self) -> ImageConfiguration {
        self.c
    }
}

/// A document together with the exact bytes it was read from (or serialised
/// to) and their digest. What was read is never re-serialised: pushing or
/// storing a `Raw` writes the same bytes, so the digest is preserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw<T> {
    bytes: Bytes,
    digest: Digest,
    value: T,
}

/// A manifest with its bytes.
pub type RawManifest = Raw<ImageManifest>;
/// An index with its bytes.
pub type RawIndex = Raw<ImageIndex>;
/// A config with its bytes.
pub type RawConfig = Raw<ImageConfiguration>;

impl<T: Document> Raw<T> {
    /// Serialises `value` canonically and digests the bytes (sha256).
    pub fn new(value: T) -> Self {
        let bytes = Bytes::from(value.to_canonical_json());
        Raw { digest: Digest::sha256(&bytes), bytes, value }
    }

    /// Parses bytes and digests them (sha256).
    ///
    /// # Errors
    /// [`DocumentError`] for malformed or invalid documents.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Self, DocumentError> {
        let bytes = bytes.into();
        let value = T::from_json(&bytes)?;
        Ok(Raw { digest: Digest::sha256(&bytes), bytes, value })
    }

    /// Parses bytes fetched by `digest`, checking that they hash to it.
    ///
    /// # Errors
    /// [`DocumentError::DigestMismatch`] when they do not, or a parse error.
    pub fn from_bytes_verified(bytes: impl Into<Bytes>, digest: &Digest) -> Result<Self, DocumentError> {
        let bytes = bytes.into();
        let actual =
            digest.compute_like(&bytes).ok_or_else(|| DocumentError::Unverifiable { digest: digest.clone() })?;
        if &actual != digest {
            return Err(DocumentError::DigestMismatch { expected: digest.clone(), actual });
        }
        let value = T::from_json(&bytes)?;
        Ok(Raw { bytes, digest: actual, value })
    }

    /// The exact bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The digest of the bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The size of the bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The parsed document.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The parsed document, by value.
    pub fn into_value(self) -> T {
        self.value
    }

    /// A descriptor of these bytes with the document's media type.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.value.media_type(), self.digest.clone(), self.size())
    }
}

/// The fields that tell a manifest from an index.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Value>,
}

/// A manifest of either kind, read from bytes whose type is decided by the
/// `Content-Type` (when known), the `mediaType` field, or the shape.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // held one at a time; boxing would only add an allocation
pub enum AnyManifest {
    /// An image (or artifact) manifest.
    Image(RawManifest),
    /// An index or manifest list.
    Index(RawIndex),
}

impl AnyManifest {
    /// Parses a manifest or index.
    ///
    /// # Errors
    /// [`DocumentError`]; Docker schema 1 gives [`DocumentError::Schema1`].
    pub fn from_bytes(bytes: impl Into<Bytes>, content_type: Option<&MediaType>) -> Result<Self, DocumentError> {
        let bytes = bytes.into();
        let probe: Probe =
            serde_json::from_slice(&bytes).map_err(|source| DocumentError::Json { kind: "manifest", source })?;
        if probe.schema_version == Some(1) {
            return Err(DocumentError::Schema1);
        }
        let declared = match (content_type, &probe.media_type) {
            (Some(c), _) if c.is_manifest() || c.is_index() || c.is_schema1() => Some(c.clone()),
            (_, Some(m)) => m.parse().ok(),
            _ => None,
        };
        match declared {
            Some(m) if m.is_schema1() => Err(DocumentError::Schema1),
            Some(m) if m.is_index() => Ok(AnyManifest::Index(Raw::from_bytes(bytes)?)),
            Some(m) if m.is_manifest() => Ok(AnyManifest::Image(Raw::from_bytes(bytes)?)),
            _ if probe.manifests.is_some() => Ok(AnyManifest::Index(Raw::from_bytes(bytes)?)),
            _ => Ok(AnyManifest::Image(Raw::from_bytes(bytes)?)),
        }
    }

    /// The exact bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            AnyManifest::Image(m) => m.bytes(),
            AnyManifest::Index(i) => i.bytes(),
        }
    }

    /// The digest of the bytes.
    pub fn digest(&self) -> &Digest {
        match self {
            AnyManifest::Image(m) => m.digest(),
            AnyManifest::Index(i) => i.digest(),
        }
    }

    /// A descriptor of the bytes.
    pub fn descriptor(&self) -> Descriptor {
        match self {
            AnyManifest::Image(m) => m.descriptor(),
            AnyManifest::Index(i) => i.descriptor(),
        }
    }
}

fn convert<A: Serialize, B: DeserializeOwned>(a: &A, kind: &'static str) -> Result<B, DocumentError> {
    serde_json::to_value(a).and_then(serde_json::from_value).map_err(|source| DocumentError::Json { kind, source })
}

macro_rules! oci_spec_conversions {
    ($ours:ty, $theirs:ty) => {
        impl TryFrom<&$ours> for $theirs {
            type Error = DocumentError;
            /// Converts for interop with `oci-spec` (which drops unknown fields).
            fn try_from(v: &$ours) -> Result<Self, Self::Error> {
                convert(v, <$ours as Document>::KIND)
            }
        }
        impl TryFrom<&$theirs> for $ours {
            type Error = DocumentError;
            /// Converts from `oci-spec`'s type.
            fn try_from(v: &$theirs) -> Result<Self, Self::Error> {
                convert(v, <$ours as Document>::KIND)
            }
        }
    };
}

oci_spec_conversions!(ImageManifest, oci_spec::image::ImageManifest);
oci_spec_conversions!(ImageIndex, oci_spec::image::ImageIndex);
oci_spec_conversions!(ImageConfiguration, oci_spec::image::ImageConfiguration);

/// Serialises a value canonically (see [`Document::to_canonical_json`]).
pub fn to_canonical_json<T: Serialize>(v: &T) -> Vec<u8> {
    canonical_json(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_is_named() {
        let e = ImageManifest::from_json(br#"{"schemaVersion": 1, "fsLayers": []}"#).unwrap_err();
        assert!(matches!(e, DocumentError::Schema1), "{e}");
    }
}
