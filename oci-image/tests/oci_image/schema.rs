//! The image-spec JSON schemas, loaded from the shared data, with `$ref`s
//! resolved to the local files.

use std::path::PathBuf;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

struct LocalSchemas(PathBuf);

impl Retrieve for LocalSchemas {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let s = uri.as_str();
        let s = s.split('#').next().unwrap_or(s);
        let name = s.rsplit('/').next().unwrap_or(s);
        let name = if std::path::Path::new(name).extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            name.to_owned()
        } else {
            format!("{name}.json")
        };
        let bytes = std::fs::read(self.0.join(&name)).map_err(|e| format!("schema {name} for {s}: {e}"))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// Which schema validates which media type (the upstream table).
pub fn schema_file(media_type: &str) -> &'static str {
    match media_type {
        "application/vnd.oci.descriptor.v1+json" => "content-descriptor.json",
        "application/vnd.oci.layout.header.v1+json" => "image-layout-schema.json",
        "application/vnd.oci.image.manifest.v1+json" => "image-manifest-schema.json",
        "application/vnd.oci.image.index.v1+json" => "image-index-schema.json",
        "application/vnd.oci.image.config.v1+json" => "config-schema.json",
        other => panic!("no schema for {other}"),
    }
}

/// A validator for a media type, or `None` when the shared data is absent.
pub fn validator(media_type: &str) -> Option<Validator> {
    let dir = super::image_spec_dir()?.join("schema");
    let schema: Value = serde_json::from_slice(&std::fs::read(dir.join(schema_file(media_type))).unwrap()).unwrap();
    Some(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .with_retriever(LocalSchemas(dir))
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema for {media_type} does not load: {e}")),
    )
}

/// Asserts that `doc` validates as `media_type`.
pub fn assert_valid(media_type: &str, doc: &Value) {
    let Some(v) = validator(media_type) else { return };
    let errors: Vec<String> = v.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{media_type} schema rejects {doc}: {errors:?}");
}

/// Whether `doc` validates as `media_type` (`None` without shared data).
pub fn is_valid(media_type: &str, doc: &Value) -> Option<bool> {
    validator(media_type).map(|v| v.is_valid(doc))
}
