//! Media types of OCI and Docker documents and layers.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid media type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaTypeError {
    /// Not of the form `type/subtype` with RFC 6838 restricted names (1 to 127
    /// characters each, starting with a letter or digit).
    #[error(
        "invalid media type {input:?}: expected type/subtype of RFC 6838 names (1-127 chars, starting alphanumeric)"
    )]
    Invalid {
        /// The rejected input.
        input: String,
    },
}

macro_rules! media_types {
    ($( $(#[$doc:meta])* $variant:ident => $s:literal ),* $(,)?) => {
        /// A media type: the well-known OCI and Docker types, or any other valid one.
        ///
        /// ```
        /// use oci_image::MediaType;
        /// let m: MediaType = "application/vnd.oci.image.manifest.v1+json".parse()?;
        /// assert_eq!(m, MediaType::OciManifest);
        /// let other: MediaType = "application/vnd.example+type".parse()?;
        /// assert_eq!(other.as_str(), "application/vnd.example+type");
        /// # Ok::<(), oci_image::MediaTypeError>(())
        /// ```
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum MediaType {
            $( $(#[$doc])* $variant, )*
            /// Any other valid media type (the spec requires accepting unknown types).
            Other(String),
        }

        impl MediaType {
            /// The media type string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( MediaType::$variant => $s, )*
                    MediaType::Other(s) => s,
                }
            }

            fn known(s: &str) -> Option<MediaType> {
                match s {
                    $( $s => Some(MediaType::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

media_types! {
    /// `application/vnd.oci.image.manifest.v1+json`
    OciManifest => "application/vnd.oci.image.manifest.v1+json",
    /// `application/vnd.oci.image.index.v1+json`
    OciIndex => "application/vnd.oci.image.index.v1+json",
    /// `application/vnd.oci.image.config.v1+json`
    OciConfig => "application/vnd.oci.image.config.v1+json",
    /// `application/vnd.oci.image.layer.v1.tar`
    OciLayer => "application/vnd.oci.image.layer.v1.tar",
    /// `application/vnd.oci.image.layer.v1.tar+gzip`
    OciLayerGzip => "application/vnd.oci.image.layer.v1.tar+gzip",
    /// `application/vnd.oci.image.layer.v1.tar+zstd`
    OciLayerZstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    /// `application/vnd.oci.image.layer.nondistributable.v1.tar` (deprecated)
    OciLayerNondistributable => "application/vnd.oci.image.layer.nondistributable.v1.tar",
    /// `application/vnd.oci.image.layer.nondistributable.v1.tar+gzip` (deprecated)
    OciLayerNondistributableGzip => "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    /// `application/vnd.oci.image.layer.nondistributable.v1.tar+zstd` (deprecated)
    OciLayerNondistributableZstd => "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    /// `application/vnd.oci.empty.v1+json`
    OciEmpty => "application/vnd.oci.empty.v1+json",
    /// `application/vnd.oci.layout.header.v1+json`
    OciLayoutHeader => "application/vnd.oci.layout.header.v1+json",
    /// `application/vnd.oci.descriptor.v1+json`
    OciDescriptor => "application/vnd.oci.descriptor.v1+json",
    /// `application/vnd.docker.distribution.manifest.v2+json`
    DockerManifest => "application/vnd.docker.distribution.manifest.v2+json",
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    DockerManifestList => "application/vnd.docker.distribution.manifest.list.v2+json",
    /// `application/vnd.docker.container.image.v1+json`
    DockerConfig => "application/vnd.docker.container.image.v1+json",
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`
    DockerLayerGzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
    /// `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`
    DockerLayerForeignGzip => "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    /// `application/vnd.docker.distribution.manifest.v1+json` (schema 1, recognised only)
    DockerManifestSchema1 => "application/vnd.docker.distribution.manifest.v1+json",
    /// `application/vnd.docker.distribution.manifest.v1+prettyjws` (signed schema 1, recognised only)
    DockerManifestSchema1Signed => "application/vnd.docker.distribution.manifest.v1+prettyjws",
}

/// Compression of a layer blob, derived from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl std::fmt::Display for Compression {
    /// `none`, `gzip`, `zstd`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// The compression a blob's first bytes announce (gzip's `1f 8b`,
    /// zstd's `28 b5 2f fd`); anything else is taken as plain.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

impl MediaType {
    /// Is this an image manifest (OCI or Docker schema 2)?
    pub fn is_manifest(&self) -> bool {
        matches!(self, MediaType::OciManifest | MediaType::DockerManifest)
    }

    /// Is this an index (OCI index or Docker manifest list)?
    pub fn is_index(&self) -> bool {
        matches!(self, MediaType::OciIndex | MediaType::DockerManifestList)
    }

    /// Is this an image config (OCI or Docker)?
    pub fn is_config(&self) -> bool {
        matches!(self, MediaType::OciConfig | MediaType::DockerConfig)
    }

    /// Is this a Docker schema 1 manifest, which kiln recognises but does not handle?
    pub fn is_schema1(&self) -> bool {
        matches!(self, MediaType::DockerManifestSchema1 | MediaType::DockerManifestSchema1Signed)
    }

    /// The compression of a layer media type; `None` for anything that is not a known layer.
    pub fn layer_compression(&self) -> Option<Compression> {
        match self {
            MediaType::OciLayer | MediaType::OciLayerNondistributable => Some(Compression::None),
            MediaType::OciLayerGzip
            | MediaType::OciLayerNondistributableGzip
            | MediaType::DockerLayerGzip
            | MediaType::DockerLayerForeignGzip => Some(Compression::Gzip),
            MediaType::OciLayerZstd | MediaType::OciLayerNondistributableZstd => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Is this a known layer type?
    pub fn is_layer(&self) -> bool {
        self.layer_compression().is_some()
    }

    /// Is this a Docker (as opposed to OCI) type?
    pub fn is_docker(&self) -> bool {
        self.as_str().starts_with("application/vnd.docker.")
    }
}

fn valid_restricted_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && s.len() <= 127
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
}

impl FromStr for MediaType {
    type Err = MediaTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(known) = MediaType::known(s) {
            return Ok(known);
        }
        match s.split_once('/') {
            Some((t, sub)) if valid_restricted_name(t) && valid_restricted_name(sub) => {
                Ok(MediaType::Other(s.to_owned()))
            }
            _ => Err(MediaTypeError::Invalid { input: s.to_owned() }),
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MediaType({})", self.as_str())
    }
}

impl serde::Serialize for MediaType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for MediaType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_other() {
        for m in [MediaType::OciManifest, MediaType::DockerManifestList, MediaType::OciLayerZstd] {
            assert_eq!(m.as_str().parse::<MediaType>().unwrap(), m);
        }
        let long = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        assert!(long.parse::<MediaType>().is_ok());
        for bad in ["invalid", "application/", "/json", ".a/b", "a/.b", "foo/.bar", ""] {
            assert!(bad.parse::<MediaType>().is_err(), "{bad}");
        }
        let too_long = format!("{}/b", "a".repeat(128));
        assert!(too_long.parse::<MediaType>().is_err());
        assert_eq!(MediaType::DockerLayerGzip.layer_compression(), Some(Compression::Gzip));
        assert!(MediaType::DockerManifestSchema1Signed.is_schema1());
    }
}
