//! The image-spec schema test cases (`../shared/guides/image-spec-cases.md`),
//! each written as a test: kiln's parsers accept what upstream accepts and
//! reject what upstream rejects; the schema agrees where it is the judge.

use oci_image::{Descriptor, Document, ImageConfiguration, ImageIndex, ImageManifest, Layout, LayoutError};
use serde_json::{Value, json};

use super::schema;

const D: &str = "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f";
const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn desc(mt: &str, digest: &str) -> Value {
    json!({"mediaType": mt, "digest": digest, "size": 7682})
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v.as_object_mut().unwrap().insert(key.to_owned(), val);
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

fn descriptor_ok(v: &Value) -> bool {
    serde_json::from_value::<Descriptor>(v.clone()).is_ok()
}

/// Checks kiln's verdict, and the schema's where it is the judge.
fn check(kind: &str, name: &str, doc: &Value, expect: bool, ours: bool, schema_judges: bool) {
    assert_eq!(ours, expect, "{kind} case {name:?}: kiln {} {doc}", if ours { "accepts" } else { "rejects" });
    let mt = match kind {
        "descriptor" => "application/vnd.oci.descriptor.v1+json",
        "manifest" => "application/vnd.oci.image.manifest.v1+json",
        "index" => "application/vnd.oci.image.index.v1+json",
        _ => "application/vnd.oci.image.config.v1+json",
    };
    if (expect || schema_judges)
        && let Some(valid) = schema::is_valid(mt, doc)
    {
        assert_eq!(valid, expect, "{kind} case {name:?}: the schema disagrees on {doc}");
    }
}

#[test]
fn descriptor_cases() {
    let base = desc("application/vnd.oci.image.manifest.v1+json", D);
    let long = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    let too_long_type = format!("{}/b", "a".repeat(128));
    let too_long_sub = format!("a/{}", "b".repeat(128));
    let data = "eyJzY2hlbWFWZXJzaW9uIjoyLCJtZWRpYVR5cGUiOiJ4In0=";
    let data_unpadded = "eyJzY2hlbWFWZXJzaW9uIjoyLCJtZWRpYVR5cGUiOiJ4In0";
    let passes: Vec<(&str, Value, bool)> = vec![
        ("valid descriptor", base.clone(), true),
        (
            "zero-length blob",
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": EMPTY, "size": 0}),
            true,
        ),
        ("127-char type and subtype", desc(&long, D), true),
        ("valid urls", with(base.clone(), "urls", json!(["https://example.com/blob"])), true),
        ("artifactType", with(base.clone(), "artifactType", json!("application/vnd.example+type")), true),
        (
            "valid data",
            with(
                json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D, "size": 34}),
                "data",
                json!(data),
            ),
            true,
        ),
        ("sha256+b64", desc("application/x", "sha256+b64:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"), true),
        ("sha256+foo-bar", desc("application/x", "sha256+foo-bar:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7"), true),
        ("sha256.foo-bar", desc("application/x", "sha256.foo-bar:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7"), true),
        (
            "multihash+base58",
            desc("application/x", "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"),
            true,
        ),
        ("sha256+b64u", desc("application/x", "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"), true),
        (
            "sha256+b64u.unknownlength",
            desc("application/x", "sha256+b64u.unknownlength:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm5=="),
            true,
        ),
        ("mediaType missing", without(base.clone(), "mediaType"), false),
        ("no subtype", desc("application", D), false),
        ("type starts non-alphanumeric", desc(".foo/bar", D), false),
        ("subtype starts non-alphanumeric", desc("foo/.bar", D), false),
        ("128-char type", desc(&too_long_type, D), false),
        ("128-char subtype", desc(&too_long_sub, D), false),
        ("size missing", without(base.clone(), "size"), false),
        ("size a string", with(base.clone(), "size", json!("7682")), false),
        ("size negative", with(base.clone(), "size", json!(-1)), false),
        ("digest missing", without(base.clone(), "digest"), false),
        (
            "digest without algorithm",
            desc("application/x", ":5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"),
            false,
        ),
        ("digest without encoded part", desc("application/x", "sha256"), false),
        ("uppercase algorithm", desc("application/x", &D.replace("sha256", "SHA256")), false),
        ("invalid url characters", with(base.clone(), "urls", json!(["https://example.com/^blob"])), false),
        ("artifactType bad subtype", with(base.clone(), "artifactType", json!("foo/.bar")), false),
        ("repeated separators", desc("application/x", "sha256+foo+-b:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7"), false),
    ];
    for (name, doc, expect) in &passes {
        check("descriptor", name, doc, *expect, descriptor_ok(doc), true);
    }
    // rejected by Go's digest/base64 checks, which the schema does not make
    let upper_hex = desc("application/x", &D.to_uppercase().replace("SHA256", "sha256"));
    check("descriptor", "uppercase sha256 hex", &upper_hex, false, descriptor_ok(&upper_hex), false);
    let unpadded = with(base.clone(), "data", json!(data_unpadded));
    check("descriptor", "data without padding", &unpadded, false, descriptor_ok(&unpadded), false);
}

fn manifest(layers: &Value) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", D),
        "layers": layers,
    })
}

fn manifest_ok(v: &Value) -> bool {
    ImageManifest::from_json(&serde_json::to_vec(v).unwrap()).is_ok()
}

#[test]
fn manifest_cases() {
    let layer = desc("application/vnd.oci.image.layer.v1.tar+gzip", D);
    let full = with(manifest(&json!([layer.clone()])), "annotations", json!({"key1": "value1"}));
    let alg = |d: &str| manifest(&json!([desc("application/vnd.oci.image.layer.v1.tar+gzip", d)]));
    let cases: Vec<(&str, Value, bool)> = vec![
        ("full manifest with annotations", full.clone(), true),
        ("required fields only", manifest(&json!([layer.clone()])), true),
        ("sha256+b64 digest", alg("sha256+b64:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"), true),
        ("sha256+foo-bar digest", alg("sha256+foo-bar:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7"), true),
        ("sha256.foo-bar digest", alg("sha256.foo-bar:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7"), true),
        ("multihash+base58 digest", alg("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"), true),
        ("subject", with(full.clone(), "subject", desc("application/vnd.oci.image.manifest.v1+json", D)), true),
        (
            "artifact with its own config",
            with(
                with(manifest(&json!([layer.clone()])), "config", desc("application/vnd.example.config+json", D)),
                "artifactType",
                json!("application/vnd.example+type"),
            ),
            true,
        ),
        (
            "artifact with the empty config",
            with(
                with(manifest(&json!([layer.clone()])), "config", serde_json::to_value(Descriptor::empty()).unwrap()),
                "artifactType",
                json!("application/vnd.example+type"),
            ),
            true,
        ),
        ("config mediaType invalid", with(manifest(&json!([layer.clone()])), "config", desc("invalid", D)), false),
        (
            "config size a string",
            with(
                manifest(&json!([layer.clone()])),
                "config",
                with(desc("application/vnd.oci.image.config.v1+json", D), "size", json!("1")),
            ),
            false,
        ),
        ("layer size a string", manifest(&json!([with(layer.clone(), "size", json!("1"))])), false),
        ("subject not a descriptor", with(full.clone(), "subject", json!({"foo": "bar"})), false),
        ("repeated separators", alg("sha256+foo+-b:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7"), false),
    ];
    for (name, doc, expect) in &cases {
        check("manifest", name, doc, *expect, manifest_ok(doc), true);
    }
    // The tension: the schema requires at least one layer, but the
    // distribution conformance suite pushes a manifest with none, so kiln
    // reads it (a registry client must) while the schema refuses it.
    let no_layers = manifest(&json!([]));
    assert!(manifest_ok(&no_layers), "kiln reads a manifest without layers");
    if let Some(valid) = schema::is_valid("application/vnd.oci.image.manifest.v1+json", &no_layers) {
        assert!(!valid, "the schema's minItems: 1 rejects it");
    }
}

fn index(manifests: &Value) -> Value {
    json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
}

fn index_ok(v: &Value) -> bool {
    ImageIndex::from_json(&serde_json::to_vec(v).unwrap()).is_ok()
}

#[test]
fn index_cases() {
    let m = desc("application/vnd.oci.image.manifest.v1+json", D);
    let with_platform = with(
        m.clone(),
        "platform",
        json!({"architecture": "arm", "os": "linux", "variant": "v7", "features": ["sse4"]}),
    );
    let cases: Vec<(&str, Value, bool)> = vec![
        ("optional fields", with(index(&json!([with_platform.clone()])), "annotations", json!({"a": "b"})), true),
        ("required fields only", index(&json!([m.clone()])), true),
        ("custom child media type", index(&json!([desc("application/vnd.example.manifest+json", D)])), true),
        ("artifactType", with(index(&json!([m.clone()])), "artifactType", json!("application/vnd.example+type")), true),
        ("subject", with(index(&json!([m.clone()])), "subject", m.clone()), true),
        ("invalid mediaType", with(index(&json!([m.clone()])), "mediaType", json!("invalid")), false),
        ("manifest size a string", index(&json!([with(m.clone(), "size", json!("1"))])), false),
        ("manifest digest missing", index(&json!([without(m.clone(), "digest")])), false),
        ("platform without architecture", index(&json!([with(m.clone(), "platform", json!({"os": "linux"}))])), false),
        ("child media type invalid", index(&json!([desc("invalid", D)])), false),
        ("child media type empty", index(&json!([desc("", D)])), false),
        ("invalid subject", with(index(&json!([m.clone()])), "subject", json!({"mediaType": "x"})), false),
    ];
    for (name, doc, expect) in &cases {
        check("index", name, doc, *expect, index_ok(doc), true);
    }
}

fn config_ok(v: &Value) -> bool {
    ImageConfiguration::from_json(&serde_json::to_vec(v).unwrap()).is_ok()
}

#[test]
fn config_cases() {
    let minimal = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D]}});
    let full = json!({
        "created": "2015-10-31T22:22:56.015925234Z",
        "author": "Alyssa P. Hacker <alyspdev@example.com>",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "1:1",
            "ExposedPorts": {"8080/tcp": {}},
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FOO=docker_is_a_really"],
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["--foreground", "--config", "/etc/my-app.d/default.cfg"],
            "Volumes": {"/var/job-result-data": {}, "/var/log/my-app-logs": {}},
            "WorkingDir": "/home/alice",
            "Labels": {"com.example.project.git.url": "https://example.com/project.git"},
            "StopSignal": "SIGKILL"
        },
        "rootfs": {"diff_ids": [D, EMPTY], "type": "layers"},
        "history": [
            {"created": "2015-10-31T22:22:54.690851953Z", "created_by": "/bin/sh -c #(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281fe3f282c65fb853ee171c5 in /"},
            {"created": "2015-10-31T22:22:55.613815829Z", "created_by": "/bin/sh -c #(nop) CMD [\"sh\"]", "empty_layer": true}
        ]
    });
    let set_config = |k: &str, v: Value| {
        let mut c = full.clone();
        c["config"][k] = v;
        c
    };
    let cases: Vec<(&str, Value, bool)> = vec![
        ("full config", full.clone(), true),
        ("required fields only", minimal.clone(), true),
        ("os numeric", with(minimal.clone(), "os", json!(123)), false),
        ("variant numeric", with(minimal.clone(), "variant", json!(123)), false),
        ("User numeric", set_config("User", json!(1)), false),
        ("history a string", with(full.clone(), "history", json!("not a list")), false),
        ("Env entry numeric", set_config("Env", json!([7])), false),
        ("Volumes an array", set_config("Volumes", json!(["/var/job-result-data"])), false),
    ];
    for (name, doc, expect) in &cases {
        check("config", name, doc, *expect, config_ok(doc), true);
    }
    // an Env entry without '=' is caught by an extra check, not the schema
    let no_eq = set_config("Env", json!(["NOEQUALS"]));
    check("config", "Env entry without =", &no_eq, false, config_ok(&no_eq), false);
    // invalid JSON
    assert!(ImageConfiguration::from_json(b"{\"architecture\": ").is_err());
}

#[test]
fn layout_cases() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    Layout::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion": "2.0"}"#).unwrap();
    let err = Layout::open(dir.path()).unwrap_err();
    assert!(matches!(err, LayoutError::NotALayout { .. }), "{err}");
    assert!(err.to_string().contains("2.0"), "{err}");
}

/// Docker Hub documents, converted by swapping media types, validate; and
/// `Entrypoint`/`Cmd` may be `null`.
#[test]
fn backwards_compatibility_with_docker_documents() {
    let list = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528, "digest": D,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528, "digest": EMPTY,
             "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}
        ]
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1457, "digest": D},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2_796_860, "digest": EMPTY}]
    });
    let config = json!({
        "architecture": "amd64",
        "config": {"Hostname": "", "Env": ["PATH=/bin"], "Cmd": null, "Entrypoint": null, "Image": "sha256:abc"},
        "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD [\"sh\"]"]},
        "created": "2016-03-03T22:35:09.757355244Z",
        "docker_version": "1.9.1",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [D]}
    });
    assert!(index_ok(&list));
    assert!(manifest_ok(&manifest));
    let parsed = ImageConfiguration::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
    let cc = parsed.config.as_ref().unwrap();
    assert_eq!((cc.cmd.as_ref(), cc.entrypoint.as_ref()), (None, None), "null reads as absent");
    let swap = |v: &Value| {
        let s = serde_json::to_string(v)
            .unwrap()
            .replace(
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.index.v1+json",
            )
            .replace(
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
            )
            .replace("application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.oci.image.layer.v1.tar+gzip")
            .replace("application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json");
        serde_json::from_str::<Value>(&s).unwrap()
    };
    schema::assert_valid("application/vnd.oci.image.index.v1+json", &swap(&list));
    schema::assert_valid("application/vnd.oci.image.manifest.v1+json", &swap(&manifest));
    // the fedora:23 config with null Entrypoint/Cmd validates once nulls are kept
    schema::assert_valid("application/vnd.oci.image.config.v1+json", &swap(&config));
}
