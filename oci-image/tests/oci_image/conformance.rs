//! Every JSON example of the image spec parses into kiln's types, survives
//! a round trip without losing a field, serialises stably, and validates.

use oci_image::{Descriptor, Document, ImageConfiguration, ImageIndex, ImageManifest, ManifestBuilder, MediaType};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::schema;

const DESCRIPTOR: &str = "application/vnd.oci.descriptor.v1+json";
const LAYOUT: &str = "application/vnd.oci.layout.header.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The media type each example validates as (the upstream README's table).
fn media_type_of(file: &str) -> &'static str {
    match file {
        f if f.starts_with("config-") => CONFIG,
        f if f.starts_with("descriptor-") => DESCRIPTOR,
        "manifest-02-empty-config.json" => DESCRIPTOR,
        f if f.starts_with("manifest-") => MANIFEST,
        "image-layout-01-oci-layout.json" => LAYOUT,
        f if f.starts_with("image-index-") || f == "image-layout-02-image-index.json" => INDEX,
        other => panic!("unexpected example {other}"),
    }
}

/// Parse, serialise, parse: equal values, identical bytes twice, no field lost.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, original: &Value) -> Vec<u8> {
    let parsed: T = serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
    let bytes = oci_image::to_canonical_json(&parsed);
    let again: T = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(parsed, again, "{name}: parse(serialise(x)) != x");
    assert_eq!(bytes, oci_image::to_canonical_json(&again), "{name}: serialising twice differs");
    let as_value: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(&as_value, original, "{name}: a field was lost or changed in the round trip");
    bytes
}

fn examples() -> Vec<(String, Value)> {
    let Some(dir) = super::image_spec_dir() else { return Vec::new() };
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_example_round_trips_and_validates() {
    let examples = examples();
    if testkit::shared_dir().is_none() {
        return;
    }
    assert_eq!(examples.len(), 13, "the shared data has 13 examples");
    for (name, doc) in &examples {
        let mt = media_type_of(name);
        schema::assert_valid(mt, doc);
        let bytes = match mt {
            DESCRIPTOR => round_trip::<Descriptor>(name, doc),
            MANIFEST => round_trip::<ImageManifest>(name, doc),
            INDEX => round_trip::<ImageIndex>(name, doc),
            CONFIG => round_trip::<ImageConfiguration>(name, doc),
            LAYOUT => {
                assert_eq!(doc, &json!({"imageLayoutVersion": "1.0.0"}));
                continue;
            }
            _ => unreachable!(),
        };
        // what we write validates too
        schema::assert_valid(mt, &serde_json::from_slice(&bytes).unwrap());
    }
}

#[test]
fn documents_also_parse_through_the_validating_entry_points() {
    for (name, doc) in examples() {
        let bytes = serde_json::to_vec(&doc).unwrap();
        match media_type_of(&name) {
            MANIFEST => drop(ImageManifest::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))),
            INDEX => drop(ImageIndex::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))),
            CONFIG => drop(ImageConfiguration::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))),
            _ => {}
        }
    }
}

#[test]
fn empty_descriptor_matches_the_spec_example() {
    let Some(dir) = super::image_spec_dir() else { return };
    let example: Value =
        serde_json::from_slice(&std::fs::read(dir.join("examples/manifest-02-empty-config.json")).unwrap()).unwrap();
    let ours = serde_json::to_value(Descriptor::empty()).unwrap();
    assert_eq!(ours, example);
    assert_eq!(
        oci_image::to_canonical_json(&Descriptor::empty()),
        br#"{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="}"#
    );
}

#[test]
fn unknown_fields_survive_round_trips_at_every_level() {
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "x-top": {"b": [1, 2, {"c": null}], "a": true},
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
            "size": 7023,
            "x-desc": "kept"
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0",
            "size": 32654,
            "platform": {"architecture": "amd64", "os": "linux", "x-plat": 1}
        }]
    });
    round_trip::<ImageManifest>("manifest with extras", &doc);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [], "x-rootfs": 1},
        "config": {"Hostname": "abc", "Tty": false, "Env": ["A=b"], "Healthcheck": {"Test": ["NONE"], "X": 1}},
        "history": [{"created_by": "x", "x-hist": [1]}],
        "container_config": {"Cmd": ["sh"]},
        "docker_version": "24.0.0"
    });
    round_trip::<ImageConfiguration>("docker config with extras", &config);
}

#[test]
fn builder_output_validates_against_the_schemas() {
    use oci_image::{ConfigBuilder, ContainerConfig, Healthcheck, History, IndexBuilder, Platform, Raw};
    let layer = Descriptor::of_bytes(MediaType::OciLayerGzip, b"layer");
    let cc = ContainerConfig {
        user: Some("1000:1000".into()),
        exposed_ports: Some(["80/tcp".to_owned()].into()),
        env: Some(vec!["PATH=/usr/bin".into()]),
        entrypoint: Some(vec!["/bin/app".into()]),
        cmd: Some(vec!["--serve".into()]),
        volumes: Some(["/data".to_owned()].into()),
        working_dir: Some("/srv".into()),
        labels: Some([("a".to_owned(), "b".to_owned())].into()),
        stop_signal: Some("SIGTERM".into()),
        healthcheck: Some(Healthcheck { test: Some(vec!["NONE".into()]), ..Healthcheck::default() }),
        ..ContainerConfig::default()
    };
    let config = Raw::new(
        ConfigBuilder::new(&"linux/arm64/v8".parse().unwrap())
            .created("2024-01-02T03:04:05Z")
            .author("kiln")
            .config(cc)
            .layer(oci_image::Digest::sha256(b"tar"), History { created_by: Some("COPY".into()), ..History::default() })
            .empty_layer(History { created_by: Some("ENV".into()), ..History::default() })
            .build(),
    );
    schema::assert_valid(CONFIG, &serde_json::from_slice(config.bytes()).unwrap());
    let manifest = Raw::new(
        ManifestBuilder::new(config.descriptor())
            .layer(layer.clone())
            .subject(Descriptor::of_bytes(MediaType::OciManifest, b"{}"))
            .annotation("org.opencontainers.image.created", "2024-01-02T03:04:05Z")
            .build(),
    );
    schema::assert_valid(MANIFEST, &serde_json::from_slice(manifest.bytes()).unwrap());
    let artifact = Raw::new(
        ManifestBuilder::new(Descriptor::empty())
            .artifact_type("application/vnd.example.sbom".parse().unwrap())
            .layer(layer)
            .build(),
    );
    schema::assert_valid(MANIFEST, &serde_json::from_slice(artifact.bytes()).unwrap());
    let index = Raw::new(
        IndexBuilder::new()
            .manifest(manifest.descriptor().with_platform(Platform::new("linux", "arm64").with_variant("v8")))
            .manifest(artifact.descriptor())
            .annotation("k", "v")
            .build(),
    );
    schema::assert_valid(INDEX, &serde_json::from_slice(index.bytes()).unwrap());
    schema::assert_valid(DESCRIPTOR, &serde_json::to_value(index.descriptor()).unwrap());
    // the digest of builder output is the sha256 of its bytes
    for raw in [manifest.bytes(), artifact.bytes(), index.bytes(), config.bytes()] {
        assert!(!raw.contains(&b'\n'), "canonical JSON has no insignificant white space");
    }
    assert_eq!(*manifest.digest(), oci_image::Digest::sha256(manifest.bytes()));
}

#[test]
fn oci_spec_conversions_keep_the_known_fields() {
    for (name, doc) in examples() {
        if media_type_of(&name) != MANIFEST {
            continue;
        }
        let ours: ImageManifest = serde_json::from_value(doc).unwrap();
        let theirs = oci_image::oci_spec::image::ImageManifest::try_from(&ours).unwrap();
        let back = ImageManifest::try_from(&theirs).unwrap();
        assert_eq!(back.config, ours.config, "{name}");
        assert_eq!(back.layers, ours.layers, "{name}");
    }
}
