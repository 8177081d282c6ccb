//! The protocol flows distribution 2.8.2 supports, driven against it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use oci_image::{AnyManifest, Descriptor, Digest, Layout, MediaType, Reference};
use registry_client::{BlobPush, BytesSource, Client, ErrorKind, Progress, Repository};

use super::{client, digest_of, image, index, noise, registry};

fn repo(reg: &testkit::Registry, path: &str) -> Repository {
    Repository::new(&reg.host(), path).unwrap()
}

async fn fetch(client: &Client, repo: &Repository, desc: &Descriptor) -> Vec<u8> {
    let mut out = Vec::new();
    client.fetch_blob(repo, desc, true, &mut out).await.unwrap();
    out
}

#[tokio::test]
async fn ping_and_missing_things() {
    let Some(reg) = registry() else { return };
    let c = client();
    let r = repo(&reg, "kiln/none");
    c.ping(&r).await.unwrap();
    let missing = Digest::sha256(b"never pushed");
    assert_eq!(c.head_blob(&r, &missing).await.unwrap(), None);
    let desc = Descriptor::new(MediaType::OciLayer, missing, 12);
    let e = c.fetch_blob(&r, &desc, true, &mut Vec::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.status(), Some(404));
    assert!(e.codes().iter().any(|c| c.code == "BLOB_UNKNOWN"), "{e}");
    let tag_ref: Reference = format!("{}/kiln/none:missing", reg.host()).parse().unwrap();
    assert_eq!(c.head_manifest(&tag_ref).await.unwrap(), None);
    let e = c.get_manifest(&tag_ref).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn monolithic_and_chunked_uploads_round_trip() {
    let Some(reg) = registry() else { return };
    let r = repo(&reg, "kiln/blobs");
    for (name, c) in [
        ("monolithic", client()),
        ("chunked", Client::builder().chunk_size(1024).build().unwrap()),
        ("streamed", Client::builder().streamed_uploads(true).build().unwrap()),
    ] {
        for (i, size) in [0usize, 1, 2, 1023, 1024, 1025, 3 * 1024 - 5, 200_000].into_iter().enumerate() {
            let data = noise(i as u64 + name.len() as u64 * 100, size);
            let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
            let pushed = c.push_blob(&r, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), None).await.unwrap();
            assert_eq!(
                pushed,
                if size == 0 && name != "monolithic" { BlobPush::Skipped } else { BlobPush::Uploaded },
                "{name} {size}"
            );
            assert_eq!(c.head_blob(&r, &desc.digest).await.unwrap(), Some(size as u64), "{name} {size}");
            assert_eq!(fetch(&c, &r, &desc).await, data, "{name} {size}");
            // pushing again is a HEAD and a skip
            let again = c.push_blob(&r, &desc, Arc::new(BytesSource(Bytes::from(data))), None).await.unwrap();
            assert_eq!(again, BlobPush::Skipped);
        }
    }
    // the well-known blobs: empty and {}
    let c = client();
    let empty = Descriptor::empty();
    c.push_blob(&r, &empty, Arc::new(BytesSource(Bytes::from_static(b"{}"))), None).await.unwrap();
    assert_eq!(fetch(&c, &r, &empty).await, b"{}");
    c.delete_blob(&r, &empty.digest).await.unwrap();
    assert_eq!(c.head_blob(&r, &empty.digest).await.unwrap(), None);
}

#[tokio::test]
async fn bytes_that_are_not_their_digest_are_refused_before_the_registry_commits_them() {
    let Some(reg) = registry() else { return };
    let c = client();
    let r = repo(&reg, "kiln/bad");
    let data = noise(7, 4096);
    let mut desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    let mut bad = data.clone();
    bad.extend_from_slice(b"oh no");
    desc.size = bad.len() as u64;
    let e = c.push_blob(&r, &desc, Arc::new(BytesSource(Bytes::from(bad))), None).await.unwrap_err();
    // the client checks the bytes as they stream and breaks the upload off
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    assert!(e.to_string().contains("not what its digest says"), "{e}");
    assert_eq!(c.head_blob(&r, &desc.digest).await.unwrap(), None);
}

#[tokio::test]
async fn cross_repository_mount_and_fallback() {
    let Some(reg) = registry() else { return };
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let c = Client::builder().progress(move |p| seen.lock().unwrap().push(p.clone())).build().unwrap();
    let src = repo(&reg, "kiln/source");
    let dst = repo(&reg, "kiln/target");
    let data = noise(42, 10_000);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    c.push_blob(&src, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), None).await.unwrap();
    let mounted = c.push_blob(&dst, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), Some(&src)).await.unwrap();
    assert_eq!(mounted, BlobPush::Mounted);
    assert!(events.lock().unwrap().iter().any(|e| matches!(e, Progress::BlobMounted { .. })));
    assert_eq!(fetch(&c, &dst, &desc).await, data);
    // a mount of a blob the source lacks opens an upload instead (202), which we complete
    let other = noise(43, 5000);
    let odesc = Descriptor::of_bytes(MediaType::OciLayer, &other);
    let up = c.push_blob(&dst, &odesc, Arc::new(BytesSource(Bytes::from(other.clone()))), Some(&src)).await.unwrap();
    assert_eq!(up, BlobPush::Uploaded);
    assert_eq!(fetch(&c, &dst, &odesc).await, other);
}

#[tokio::test]
async fn range_reads_resume_from_an_offset() {
    let Some(reg) = registry() else { return };
    let c = client();
    let r = repo(&reg, "kiln/range");
    let data = noise(5, 2048);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    c.push_blob(&r, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), None).await.unwrap();
    // a wrong descriptor size is caught while streaming
    let mut short = desc.clone();
    short.size = 1000;
    let e = c.fetch_blob(&r, &short, true, &mut Vec::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    let mut wrong = desc.clone();
    wrong.digest = Digest::sha256(b"other");
    let e = c.fetch_blob(&r, &wrong, true, &mut Vec::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn images_and_indexes_push_and_pull_byte_identical() {
    let Some(reg) = registry() else { return };
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let src = Layout::create(dir.path().join("src")).unwrap();
    let single = image(&src, "single", 1, &[100, 70_000, 1], "linux/amd64");
    let multi = index(&src, "multi");
    let single_ref: Reference = format!("{}/kiln/app:single", reg.host()).parse().unwrap();
    let multi_ref: Reference = format!("{}/kiln/app:multi", reg.host()).parse().unwrap();
    let report = c.push_from_layout(&src, &single, &single_ref, None).await.unwrap();
    assert_eq!(report.digest.as_ref(), Some(&single.digest));
    assert_eq!(report.uploaded, 4, "config and three layers");
    let again = c.push_from_layout(&src, &single, &single_ref, None).await.unwrap();
    assert_eq!((again.uploaded, again.skipped), (0, 4), "a re-push uploads nothing");
    let report = c.push_from_layout(&src, &multi, &multi_ref, None).await.unwrap();
    assert_eq!(report.digest.as_ref(), Some(&multi.digest));

    // the registry serves exactly our bytes
    let got = c.get_manifest(&multi_ref).await.unwrap();
    assert_eq!(got.digest(), &multi.digest);
    assert!(matches!(got, AnyManifest::Index(_)));
    let head = c.head_manifest(&single_ref).await.unwrap().unwrap();
    assert_eq!((head.digest, head.size), (single.digest.clone(), single.size));

    // pull everything back into a fresh layout: identical digests, verified blobs
    let dst = Layout::create(dir.path().join("dst")).unwrap();
    let pulled = c.pull_to_layout(&multi_ref, &dst, None, None).await.unwrap();
    assert_eq!(pulled.digest, multi.digest);
    dst.verify().unwrap();
    assert_eq!(digest_of(&dst, "multi"), multi.digest);
    // one platform out of the index
    let arm = Layout::create(dir.path().join("arm")).unwrap();
    let one = c.pull_to_layout(&multi_ref, &arm, Some(&"linux/arm64".parse().unwrap()), None).await.unwrap();
    assert_eq!(one.digest, digest_of(&src, "arm"));
    arm.verify().unwrap();
    let e = c.pull_to_layout(&multi_ref, &arm, Some(&"linux/s390x".parse().unwrap()), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // tags and catalog
    let r = Repository::of(&single_ref);
    let mut tags = c.list_tags(&r).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["multi", "single"]);
    assert!(c.catalog(&reg.host()).await.unwrap().contains(&"kiln/app".to_owned()));

    // delete by digest (distribution refuses delete by tag)
    let by_digest = single_ref.repository_only().with_digest(single.digest.clone());
    c.delete_manifest(&by_digest).await.unwrap();
    assert_eq!(c.head_manifest(&by_digest).await.unwrap(), None);
    let e = c.delete_manifest(&multi_ref).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "distribution answers 400 to a tag delete: {e}");
}

#[tokio::test]
async fn referrers_fall_back_to_the_tag_schema() {
    let Some(reg) = registry() else { return };
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let subject = image(&layout, "subject", 3, &[500], "linux/amd64");
    let subject_ref: Reference = format!("{}/kiln/ref:v1", reg.host()).parse().unwrap();
    c.push_from_layout(&layout, &subject, &subject_ref, None).await.unwrap();
    let pinned = subject_ref.repository_only().with_digest(subject.digest.clone());
    assert!(c.referrers(&pinned, None).await.unwrap().is_empty(), "no referrers yet");
    // an SBOM artifact referring to the subject, listed through a fallback index
    let sbom = Bytes::from_static(b"{\"sbom\":true}");
    let blob = Descriptor::of_bytes("application/vnd.example.sbom+json".parse().unwrap(), &sbom);
    let repo = Repository::of(&subject_ref);
    c.push_bytes(&repo, &blob, sbom).await.unwrap();
    c.push_bytes(&repo, &Descriptor::empty(), Bytes::from_static(b"{}")).await.unwrap();
    let artifact_type: MediaType = "application/vnd.example.sbom".parse().unwrap();
    let artifact = oci_image::Raw::new(
        oci_image::ManifestBuilder::new(Descriptor::empty())
            .artifact_type(artifact_type.clone())
            .layer(blob)
            .subject(subject.clone())
            .build(),
    );
    // distribution has no referrers API: pushing the artifact also writes the fallback index
    let art_ref = subject_ref.repository_only().with_digest(artifact.digest().clone());
    c.put_manifest(&art_ref, artifact.bytes().clone(), &MediaType::OciManifest).await.unwrap();
    // pushing it again does not list it twice
    c.put_manifest(&art_ref, artifact.bytes().clone(), &MediaType::OciManifest).await.unwrap();
    let tag = registry_client::fallback_tag(&subject.digest).unwrap();
    assert!(c.head_manifest(&subject_ref.with_tag(tag)).await.unwrap().is_some(), "fallback index written");
    let found = c.referrers(&pinned, None).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest, *artifact.digest());
    assert_eq!(c.referrers(&pinned, Some(&artifact_type)).await.unwrap().len(), 1);
    assert!(c.referrers(&pinned, Some(&"application/other".parse().unwrap())).await.unwrap().is_empty());
}

/// Every way of uploading reports the blob's bytes as they go, to the last.
#[tokio::test]
async fn every_upload_mode_reports_its_bytes() {
    let Some(reg) = registry() else { return };
    let r = repo(&reg, "kiln/progress");
    let modes = [
        ("monolithic", Client::builder()),
        ("chunked", Client::builder().chunk_size(64 * 1024)),
        ("streamed", Client::builder().streamed_uploads(true)),
        ("single request", Client::builder().single_request_uploads(true)),
    ];
    for (i, (name, builder)) in modes.into_iter().enumerate() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let c = builder
            .progress(move |p| {
                if let registry_client::Progress::Bytes { done, total, .. } = p {
                    sink.lock().unwrap().push((*done, *total));
                }
            })
            .build()
            .unwrap();
        let data = noise(40 + i as u64, 300_000);
        let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
        c.push_blob(&r, &desc, Arc::new(BytesSource(Bytes::from(data))), None).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.last(), Some(&(300_000, 300_000)), "{name}: {seen:?}");
    }
}
