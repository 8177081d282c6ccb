//! Flows distribution 2.8.2 lacks, quirks of registries in the wild and
//! hostile answers, against testkit's scripted registry.

use std::sync::Arc;

use bytes::Bytes;
use oci_image::{Descriptor, Layout, ManifestBuilder, MediaType, Raw, Reference};
use registry_client::{BlobPush, BytesSource, Client, Credential, ErrorKind, Repository, StaticCredentials};
use testkit::{Quirks, ScriptedRegistry};

use super::{client, image, noise};

fn repo(s: &ScriptedRegistry, path: &str) -> Repository {
    Repository::new(&s.host(), path).unwrap()
}

async fn put_blob(c: &Client, r: &Repository, data: &[u8]) -> Descriptor {
    let d = Descriptor::of_bytes(MediaType::OciLayer, data);
    c.push_blob(r, &d, Arc::new(BytesSource(Bytes::from(data.to_vec()))), None).await.unwrap();
    d
}

#[tokio::test]
async fn referrers_api_with_artifact_type_filter() {
    let s = ScriptedRegistry::start(Quirks::default()).unwrap();
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let subject = image(&layout, "v1", 1, &[100], "linux/amd64");
    let name: Reference = format!("{}/kiln/refs:v1", s.host()).parse().unwrap();
    c.push_from_layout(&layout, &subject, &name, None).await.unwrap();
    let r = Repository::of(&name);
    c.push_bytes(&r, &Descriptor::empty(), Bytes::from_static(b"{}")).await.unwrap();
    for (t, n) in [("application/vnd.example.sbom", 1), ("application/vnd.example.sig", 2)] {
        let art = Raw::new(
            ManifestBuilder::new(Descriptor::empty())
                .artifact_type(t.parse().unwrap())
                .layer(Descriptor::empty())
                .subject(subject.clone())
                .annotation("n", n.to_string())
                .build(),
        );
        c.put_manifest(
            &name.repository_only().with_digest(art.digest().clone()),
            art.bytes().clone(),
            &MediaType::OciManifest,
        )
        .await
        .unwrap();
    }
    let pinned = name.repository_only().with_digest(subject.digest.clone());
    assert_eq!(c.referrers(&pinned, None).await.unwrap().len(), 2);
    let sboms = c.referrers(&pinned, Some(&"application/vnd.example.sbom".parse().unwrap())).await.unwrap();
    assert_eq!(sboms.len(), 1);
    assert_eq!(sboms[0].artifact_type.as_ref().map(MediaType::as_str), Some("application/vnd.example.sbom"));
    // the API was used, not the fallback tag
    assert!(s.log().iter().any(|l| l.target.contains("/referrers/") && l.target.contains("artifactType=")));
    // the registry answered OCI-Subject, so no fallback index was written
    assert!(!s.log().iter().any(|l| l.method == "PUT" && l.target.contains("/manifests/sha256-")));
}

#[tokio::test]
async fn link_pagination_tag_delete_and_loops() {
    let s = ScriptedRegistry::start(Quirks { page_size: Some(3), ..Quirks::default() }).unwrap();
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let img = image(&layout, "v1", 2, &[10], "linux/amd64");
    let base: Reference = format!("{}/kiln/pages:v1", s.host()).parse().unwrap();
    c.push_from_layout(&layout, &img, &base, None).await.unwrap();
    let mut want = vec!["v1".to_owned()];
    for i in 0..7 {
        let tag = format!("t{i}");
        let bytes = layout.read_blob(&img).unwrap();
        c.put_manifest(&base.with_tag(tag.parse().unwrap()), bytes, &MediaType::OciManifest).await.unwrap();
        want.push(tag);
    }
    want.sort();
    let r = Repository::of(&base);
    assert_eq!(c.list_tags(&r).await.unwrap(), want, "all pages followed");
    let page = c.tags_page(&r, Some(2), None).await.unwrap();
    assert_eq!(page.tags.len(), 2);
    assert!(page.next.is_some());
    let after = c.tags_page(&r, None, Some("t3")).await.unwrap();
    assert!(after.tags.iter().all(|t| t.as_str() > "t3"));
    // tag delete, which the real registry refuses
    c.delete_manifest(&base.with_tag("t0".parse().unwrap())).await.unwrap();
    assert_eq!(c.head_manifest(&base.with_tag("t0".parse().unwrap())).await.unwrap(), None);
    // a registry whose Link loops back is caught
    s.set_quirks(Quirks { page_size: Some(3), loop_pages: true, ..Quirks::default() });
    let e = c.list_tags(&r).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains("loop"), "{e}");
}

#[tokio::test]
async fn chunk_min_length_is_honoured() {
    let s = ScriptedRegistry::start(Quirks { chunk_min: Some(4096), ..Quirks::default() }).unwrap();
    let c = Client::builder().chunk_size(1000).build().unwrap();
    let r = repo(&s, "kiln/chunks");
    let data = noise(3, 10_000);
    let d = put_blob(&c, &r, &data).await;
    assert_eq!(s.blob(&d.digest.to_string()).unwrap(), data);
    let patches = s.log().iter().filter(|l| l.method == "PATCH").count();
    assert_eq!(patches, 3, "10000 bytes in chunks of at least 4096");
}

#[tokio::test]
async fn single_request_monolithic_upload() {
    let s = ScriptedRegistry::start(Quirks { single_post: true, ..Quirks::default() }).unwrap();
    let c = Client::builder().single_request_uploads(true).build().unwrap();
    let r = repo(&s, "kiln/single");
    let data = noise(4, 5000);
    let d = put_blob(&c, &r, &data).await;
    assert_eq!(s.blob(&d.digest.to_string()).unwrap(), data);
    let log = s.log();
    assert!(log.iter().any(|l| l.method == "POST" && l.target.contains("digest=")));
    assert!(!log.iter().any(|l| l.method == "PUT"), "one request, no PUT: {log:?}");
    // a registry without it answers 202: the body follows by PUT
    let s2 = ScriptedRegistry::start(Quirks::default()).unwrap();
    let r2 = repo(&s2, "kiln/single");
    put_blob(&c, &r2, &data).await;
    assert_eq!(s2.blob(&d.digest.to_string()).unwrap(), data);
}

#[tokio::test]
async fn ecr_like_chunk_handling_falls_back_to_a_monolithic_upload() {
    let s = ScriptedRegistry::start(Quirks { ecr_chunks: true, ..Quirks::default() }).unwrap();
    let c = Client::builder().chunk_size(1024).build().unwrap();
    let r = repo(&s, "kiln/ecr");
    let data = noise(5, 5000);
    let d = put_blob(&c, &r, &data).await;
    assert_eq!(s.blob(&d.digest.to_string()).unwrap(), data, "nothing lost to the dropped chunks");
}

#[tokio::test]
async fn harbor_like_401_on_mount_falls_back_to_upload() {
    let s = ScriptedRegistry::start(Quirks { mount_unauthorized: true, ..Quirks::default() }).unwrap();
    let c = client();
    let (src, dst) = (repo(&s, "kiln/a"), repo(&s, "kiln/b"));
    let data = noise(6, 3000);
    let d = put_blob(&c, &src, &data).await;
    let r = c.push_blob(&dst, &d, Arc::new(BytesSource(Bytes::from(data))), Some(&src)).await.unwrap();
    assert_eq!(r, BlobPush::Uploaded);
}

#[tokio::test]
async fn redirects_to_other_hosts_never_carry_credentials() {
    let cdn = ScriptedRegistry::start(Quirks::default()).unwrap();
    let s = ScriptedRegistry::start(Quirks {
        basic_auth: Some(("u".into(), "p".into())),
        redirect_blobs_to: Some(cdn.base_url()),
        ..Quirks::default()
    })
    .unwrap();
    let c = Client::builder()
        .credentials(StaticCredentials::new().with(s.host(), Credential::basic("u", "p")))
        .build()
        .unwrap();
    let r = repo(&s, "kiln/redirect");
    let data = noise(8, 7000);
    let d = put_blob(&c, &r, &data).await;
    put_blob(&client(), &repo(&cdn, "kiln/redirect"), &data).await;
    let mut out = Vec::new();
    c.fetch_blob(&r, &d, true, &mut out).await.unwrap();
    assert_eq!(out, data);
    let cdn_gets: Vec<_> =
        cdn.log().into_iter().filter(|l| l.method == "GET" && l.target.contains("redirected=1")).collect();
    assert_eq!(cdn_gets.len(), 1);
    assert!(!cdn_gets[0].authorized, "Authorization was forwarded to another host");
    assert!(s.log().iter().any(|l| l.method == "GET" && l.target.contains("/blobs/") && l.authorized));
}

#[tokio::test]
async fn hostile_manifests_are_refused_and_nothing_is_written() {
    let s = ScriptedRegistry::start(Quirks::default()).unwrap();
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path().join("src")).unwrap();
    let img = image(&layout, "v1", 9, &[100], "linux/amd64");
    let name: Reference = format!("{}/kiln/hostile:v1", s.host()).parse().unwrap();
    c.push_from_layout(&layout, &img, &name, None).await.unwrap();
    let out = Layout::create(dir.path().join("out")).unwrap();
    let index_before = std::fs::read(dir.path().join("out/index.json")).unwrap();

    s.set_quirks(Quirks { oversized_manifest: true, ..Quirks::default() });
    let e = c.get_manifest(&name).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains("larger than"), "{e}");

    s.set_quirks(Quirks { wrong_manifest_digest: true, ..Quirks::default() });
    let e = c.pull_to_layout(&name, &out, None, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    assert_eq!(std::fs::read(dir.path().join("out/index.json")).unwrap(), index_before);
    assert!(out.gc().unwrap().is_empty(), "no blob was stored");

    // an upload Location on another (non-loopback, plain HTTP) host is refused before any byte goes there
    s.set_quirks(Quirks { foreign_location: Some("http://registry.invalid:5000".into()), ..Quirks::default() });
    let data = noise(10, 100);
    let d = Descriptor::of_bytes(MediaType::OciLayer, &data);
    let e =
        c.push_blob(&repo(&s, "kiln/hostile"), &d, Arc::new(BytesSource(Bytes::from(data))), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
}
