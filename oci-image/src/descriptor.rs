//! Content descriptors: what a manifest or index says about another blob.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{Digest, MediaType, Platform};

/// Annotation key for a tag in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation key containerd uses for the full image name in an OCI layout.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Annotation key for creation time.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// A content descriptor (`mediaType`, `digest`, `size` and optional fields).
///
/// Unknown fields are kept in [`Descriptor::extra`] so that nothing read is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: MediaType,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// The size in bytes of the referenced content.
    pub size: u64,
    /// Locations the content may also be fetched from.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_urls")]
    pub urls: Option<Vec<String>>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The content itself, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_data")]
    pub data: Option<String>,
    /// The platform of a manifest referenced from an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The type of an artifact when the descriptor references one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<MediaType>,
    /// Fields this version of kiln does not know, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Descriptor {
    /// A descriptor with only the required fields.
    pub fn new(media_type: MediaType, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type,
            digest,
            size,
            urls: None,
            annotations: None,
            data: None,
            platform: None,
            artifact_type: None,
            extra: BTreeMap::new(),
        }
    }

    /// A descriptor of `bytes` with the given media type (sha256).
    pub fn of_bytes(media_type: MediaType, bytes: &[u8]) -> Self {
        Descriptor::new(media_type, Digest::sha256(bytes), bytes.len() as u64)
    }

    /// The well-known empty descriptor: `application/vnd.oci.empty.v1+json`,
    /// content `{}`, with the content embedded as `data`.
    pub fn empty() -> Self {
        let mut d = Descriptor::of_bytes(MediaType::OciEmpty, EMPTY_JSON);
        d.data = Some(base64::engine::general_purpose::STANDARD.encode(EMPTY_JSON));
        d
    }

    /// Adds an annotation, returning the descriptor.
    #[must_use]
    pub fn with_annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    /// Sets the platform, returning the descriptor.
    #[must_use]
    pub fn with_platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The embedded `data`, decoded, when present.
    pub fn decoded_data(&self) -> Option<Vec<u8>> {
        let data = self.data.as_ref()?;
        base64::engine::general_purpose::STANDARD.decode(data).ok()
    }
}

/// The content of the empty descriptor: `{}`.
pub const EMPTY_JSON: &[u8] = b"{}";

fn de_data<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    if let Some(s) = &s {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| serde::de::Error::custom(format!("invalid descriptor data {s:?}: {e}")))?;
    }
    Ok(s)
}

fn de_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let urls: Option<Vec<String>> = Option::deserialize(d)?;
    for u in urls.iter().flatten() {
        if !valid_uri(u) {
            return Err(serde::de::Error::custom(format!("invalid descriptor url {u:?}")));
        }
    }
    Ok(urls)
}

/// An absolute URI per RFC 3986: a scheme, then only URI characters, with
/// every `%` starting a two-digit escape.
fn valid_uri(u: &str) -> bool {
    let Some((scheme, rest)) = u.split_once(':') else { return false };
    let mut sb = scheme.bytes();
    if !matches!(sb.next(), Some(b) if b.is_ascii_alphabetic())
        || !sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return false;
    }
    let bytes = rest.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let ok = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_descriptor_is_the_well_known_one() {
        let d = Descriptor::empty();
        assert_eq!(d.digest.to_string(), "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        assert_eq!(d.size, 2);
        assert_eq!(d.data.as_deref(), Some("e30="));
    }

    #[test]
    fn uri_check() {
        assert!(valid_uri("https://example.com/a%20b?x=1#f"));
        assert!(!valid_uri("not a url"));
        assert!(!valid_uri("https://example.com/%zz"));
        assert!(!valid_uri("https://example.com/a b"));
        assert!(!valid_uri("1http://x"));
    }
}
