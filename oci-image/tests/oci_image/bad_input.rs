//! Bad input gets a typed error naming what was wrong, and nothing is
//! written half-way.

use std::fs;
use std::path::Path;

use oci_image::{
    ArchiveError, ArchiveReader, ConfigBuilder, Descriptor, Digest, DocumentError, History, ImageManifest, Layout,
    LayoutError, ManifestBuilder, MediaType, Raw, Reference, VerifyError,
};

use super::small_image;

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn malformed_references_and_digests_name_the_input() {
    let e = Reference::parse("Registry.example.com/Team/App:v1").unwrap_err();
    assert!(e.to_string().contains("Registry.example.com/Team/App:v1") && e.to_string().contains("lowercase"), "{e}");
    let e = "sha256:xyz".parse::<Digest>().unwrap_err();
    assert!(e.to_string().contains("sha256:xyz"), "{e}");
}

#[test]
fn malformed_json_reports_where() {
    let e = Raw::<ImageManifest>::from_bytes(&b"{\"schemaVersion\": 2,\n \"config\": {]"[..]).unwrap_err();
    assert!(matches!(e, DocumentError::Json { kind: "manifest", .. }), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = Raw::<ImageManifest>::from_bytes(&br#"{"schemaVersion": 1, "fsLayers": []}"#[..]).unwrap_err();
    assert!(matches!(e, DocumentError::Schema1), "{e}");
    let e = oci_image::AnyManifest::from_bytes(
        &br#"{"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}"#[..],
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("schema 1"), "{e}");
    let bytes = br#"{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
    let e = Raw::<ImageManifest>::from_bytes_verified(&bytes[..], &Digest::sha256(b"other")).unwrap_err();
    assert!(matches!(e, DocumentError::DigestMismatch { .. }), "{e}");
}

#[test]
fn corrupted_blob_is_reported_with_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let (manifest, layer) = small_image(&layout, "example.com/app:v1");
    layout.verify().unwrap();
    let path = layout.blob_path(&layer);
    let mut bytes = fs::read(&path).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let e = layout.verify().unwrap_err();
    match &e {
        LayoutError::Verify { source, .. } => match source.as_ref() {
            VerifyError::DigestMismatch { expected, .. } => assert_eq!(expected, &layer),
            other => panic!("unexpected {other}"),
        },
        other => panic!("unexpected {other}"),
    }
    // a truncated manifest blob is a size mismatch when read
    let mpath = layout.blob_path(&manifest.digest);
    let m = fs::read(&mpath).unwrap();
    fs::write(&mpath, &m[..m.len() - 3]).unwrap();
    let e = layout.read_manifest(&manifest).unwrap_err();
    assert!(e.source_chain_contains("expected"), "{e}");
}

trait ChainExt {
    fn source_chain_contains(&self, needle: &str) -> bool;
}

impl<E: std::error::Error> ChainExt for E {
    fn source_chain_contains(&self, needle: &str) -> bool {
        let mut cur: Option<&dyn std::error::Error> = Some(self);
        while let Some(e) = cur {
            if e.to_string().contains(needle) {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

#[test]
fn a_blob_that_does_not_verify_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let before = files_under(dir.path());
    let want = Digest::sha256(b"expected content");
    let e = layout.write_blob(&b"other content!!!"[..], Some((&want, 16))).unwrap_err();
    assert!(matches!(e, LayoutError::Verify { .. }), "{e}");
    let e = layout.write_blob(&b"expected content plus more"[..], Some((&want, 16))).unwrap_err();
    assert!(e.source_chain_contains("larger than"), "{e}");
    assert!(!layout.has_blob(&want));
    assert_eq!(files_under(dir.path()), before, "no temp file or blob left behind");
    let ok = layout.write_blob(&b"expected content"[..], Some((&want, 16))).unwrap();
    assert_eq!(ok.digest, want);
}

#[test]
fn tagging_an_incomplete_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let config = Raw::new(ConfigBuilder::new(&"linux/amd64".parse().unwrap()).build());
    layout.write_blob_bytes(config.bytes()).unwrap();
    let missing = Descriptor::of_bytes(MediaType::OciLayerGzip, b"never written");
    let manifest = Raw::new(ManifestBuilder::new(config.descriptor()).layer(missing.clone()).build());
    layout.write_blob_bytes(manifest.bytes()).unwrap();
    let index_before = fs::read(dir.path().join("index.json")).unwrap();
    let e = layout.set_tag(&"example.com/app:v1".parse().unwrap(), manifest.descriptor()).unwrap_err();
    assert!(matches!(&e, LayoutError::BlobNotFound { digest, .. } if *digest == missing.digest), "{e}");
    assert_eq!(fs::read(dir.path().join("index.json")).unwrap(), index_before);
    let e = layout
        .set_tag(
            &Reference::parse(
                "example.com/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            )
            .unwrap(),
            manifest.descriptor(),
        )
        .unwrap_err();
    assert!(matches!(e, LayoutError::MissingTag { .. }), "{e}");
}

#[test]
fn a_directory_that_is_not_a_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("precious.txt"), "keep").unwrap();
    let e = Layout::create(dir.path()).unwrap_err();
    assert!(matches!(e, LayoutError::NotALayout { .. }), "{e}");
    assert_eq!(files_under(dir.path()), ["precious.txt"]);
    let e = Layout::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not an OCI image layout"), "{e}");
}

#[test]
fn gc_keeps_reachable_blobs_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let (m1, _) = small_image(&layout, "example.com/app:v1");
    let stray = layout.write_blob_bytes(b"stray").unwrap();
    let removed = layout.gc().unwrap();
    assert_eq!(removed, vec![stray.digest]);
    layout.verify().unwrap();
    assert!(layout.has_blob(&m1.digest));
    assert!(layout.remove_tag("v1").unwrap());
    assert_eq!(layout.gc().unwrap().len(), 3, "manifest, config and layer go once untagged");
    assert!(layout.tags().unwrap().is_empty());
}

#[test]
fn broken_docker_archives_are_refused_without_touching_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    // a tar whose manifest.json names a missing layer
    let path = dir.path().join("bad.tar");
    let mut tar = tar::Builder::new(fs::File::create(&path).unwrap());
    let config = Raw::new(
        ConfigBuilder::new(&"linux/amd64".parse().unwrap()).layer(Digest::sha256(b"x"), History::default()).build(),
    );
    let cname = format!("{}.json", config.digest().encoded());
    for (name, data) in [
        (cname.as_str(), config.bytes().to_vec()),
        (
            "manifest.json",
            format!(r#"[{{"Config":"{cname}","RepoTags":["a:b"],"Layers":["missing.tar"]}}]"#).into_bytes(),
        ),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, name, &data[..]).unwrap();
    }
    tar.into_inner().unwrap();
    let e = ArchiveReader::open(&path).unwrap_err();
    assert!(matches!(&e, ArchiveError::MissingMember { member, .. } if member == "missing.tar"), "{e}");

    // a layer whose content does not match the config's diff id
    let path2 = dir.path().join("mismatch.tar");
    let mut tar = tar::Builder::new(fs::File::create(&path2).unwrap());
    for (name, data) in [
        (cname.as_str(), config.bytes().to_vec()),
        ("layer.tar", b"not the layer the config names".to_vec()),
        (
            "manifest.json",
            format!(r#"[{{"Config":"{cname}","RepoTags":["a:b"],"Layers":["layer.tar"]}}]"#).into_bytes(),
        ),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, name, &data[..]).unwrap();
    }
    tar.into_inner().unwrap();
    let reader = ArchiveReader::open(&path2).unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = Layout::create(out.path()).unwrap();
    let index_before = fs::read(out.path().join("index.json")).unwrap();
    let e = reader.copy_to_layout(reader.find(Some("a:b")).unwrap(), &layout, None).unwrap_err();
    assert!(matches!(e, ArchiveError::DiffIdMismatch { index: 0, .. }), "{e}");
    assert_eq!(fs::read(out.path().join("index.json")).unwrap(), index_before);
    // garbage is not a tar with a manifest
    let junk = dir.path().join("junk.tar");
    fs::write(&junk, b"definitely not a tar file").unwrap();
    assert!(ArchiveReader::open(&junk).is_err());
}

#[test]
fn a_failed_archive_write_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path().join("layout")).unwrap();
    let (desc, layer) = small_image(&layout, "example.com/app:v1");
    let oci_image::AnyManifest::Image(manifest) = layout.read_manifest(&desc).unwrap() else { panic!() };
    let config =
        Raw::<oci_image::ImageConfiguration>::from_bytes(layout.read_blob(&manifest.value().config).unwrap()).unwrap();
    // corrupt the layer: the writer must notice while streaming it
    let path = layout.blob_path(&layer);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 1;
    fs::write(&path, bytes).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let target = out.join("image.tar");
    let mut w = oci_image::PendingArchive::create(&target).unwrap();
    let e = w
        .add_image(manifest.value(), &config, &["example.com/app:v1".parse().unwrap()], |d| {
            layout.open_blob(&d.digest).map_err(std::io::Error::other)
        })
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Verify(_)), "{e}");
    drop(w);
    assert!(files_under(&out).is_empty(), "no partial archive: {:?}", files_under(&out));
}
