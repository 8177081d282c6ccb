//! Registry-side hostility, through testkit's fault proxy in front of the
//! real registry (the scripted registry only where the proxy cannot say it):
//! oversized and endless manifests, digests that do not match, bodies longer
//! or shorter than their `Content-Length`, redirects and upload `Location`s
//! on other hosts, and tag pagination that never ends. Each one gives a
//! typed error; nothing is written to the OCI layout (no tag, no manifest,
//! no partial blob) and nothing is pushed (no manifest PUT without its blobs).

use std::path::Path;
use std::time::{Duration, Instant};

use oci_image::{Descriptor, Layout, Reference};
use registry_client::{Client, Credential, ErrorKind, Repository, RetryPolicy, StaticCredentials};
use testkit::{Fault, FaultPlan, FaultProxy, Quirks, Registry, ScriptedRegistry};

use super::{client, image, index, noise};

const REPO: &str = "kiln/hostile";

fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(1),
    }
}

fn always(fault: Fault) -> FaultPlan {
    FaultPlan { seed: 8, rate: 1.0, faults: vec![fault] }
}

fn never() -> FaultPlan {
    FaultPlan { seed: 8, rate: 0.0, faults: vec![] }
}

/// A real registry holding `kiln/hostile:v1` (two layers) and
/// `kiln/hostile:multi` (a two-platform index), a quiet fault proxy in front
/// of it, and the source layout.
struct Setup {
    reg: Registry,
    proxy: FaultProxy,
    image: Descriptor,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Option<Setup> {
        testkit::tool("docker-registry")?;
        let reg = Registry::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let src = Layout::create(dir.path().join("src")).unwrap();
        let img = image(&src, "v1", 300, &[20_000, 45_000], "linux/amd64");
        let idx = index(&src, "multi");
        let c = client();
        c.push_from_layout(&src, &img, &format!("{}/{REPO}:v1", reg.host()).parse().unwrap(), None).await.unwrap();
        c.push_from_layout(&src, &idx, &format!("{}/{REPO}:multi", reg.host()).parse().unwrap(), None).await.unwrap();
        let proxy = FaultProxy::start(reg.port(), never()).unwrap();
        Some(Setup { reg, proxy, image: img, dir })
    }

    /// `kiln/hostile:<tag>` through the proxy.
    fn via_proxy(&self, tag: &str) -> Reference {
        format!("{}/{REPO}:{tag}", self.proxy.host()).parse().unwrap()
    }

    /// Aims `fault` at every request whose line contains `filter`.
    fn aim(&self, fault: Fault, filter: &str) {
        self.proxy.only(Some(filter));
        self.proxy.set_plan(always(fault));
    }

    fn calm(&self) {
        self.proxy.set_plan(never());
        self.proxy.only(None);
    }

    /// A fresh, empty layout.
    fn layout(&self, name: &str) -> Layout {
        Layout::create(self.dir.path().join(name)).unwrap()
    }
}

fn faulted(proxy: &FaultProxy, fault: Fault) -> usize {
    proxy.counts().faults.get(&format!("{fault:?}")).copied().unwrap_or(0)
}

/// Every file under a layout's `blobs/`, once the writers of abandoned
/// transfers (blocking threads) have let go of their temporary files.
fn blob_files(root: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut files = Vec::new();
        let mut stack = vec![root.join("blobs")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let partial = files.iter().any(|f| f.contains(".tmp-"));
        if !partial || Instant::now() > deadline {
            files.sort();
            return files;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The layout has no tag, no manifest and no blob at all.
fn assert_untouched(layout: &Layout, what: &str) {
    assert!(layout.index().unwrap().manifests.is_empty(), "{what}: the layout's index was updated");
    assert!(layout.tags().unwrap().is_empty(), "{what}: a tag was written");
    assert_eq!(blob_files(layout.root()), Vec::<String>::new(), "{what}: blobs were written");
}

/// Nothing of the image reached `repo` on the real registry: no tag list,
/// no manifest, none of the blobs.
async fn assert_nothing_pushed(reg: &Registry, repo: &str, image: &Descriptor, src: &Layout, what: &str) {
    let c = client();
    let r = Repository::new(&reg.host(), repo).unwrap();
    match c.list_tags(&r).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Ok(tags) if tags.is_empty() => {}
        other => panic!("{what}: tags were pushed: {other:?}"),
    }
    let by_digest: Reference = format!("{}/{repo}@{}", reg.host(), image.digest).parse().unwrap();
    assert_eq!(c.head_manifest(&by_digest).await.unwrap(), None, "{what}: the manifest was pushed");
    let m = src.read_manifest(image).unwrap();
    for d in registry_client::image_blobs(std::slice::from_ref(&m)) {
        assert_eq!(c.head_blob(&r, &d.digest).await.unwrap(), None, "{what}: blob {} was pushed", d.digest);
    }
}

fn src_layout(s: &Setup) -> Layout {
    Layout::open(s.dir.path().join("src")).unwrap()
}

#[tokio::test]
async fn oversized_and_endless_manifests_are_refused_and_nothing_is_written() {
    let Some(s) = Setup::start().await else { return };
    let c = Client::builder().retry(quick()).build().unwrap();
    let src = src_layout(&s);
    for (i, fault) in [Fault::OversizedBody, Fault::EndlessBody].into_iter().enumerate() {
        s.aim(fault, &format!("GET /v2/{REPO}/manifests/"));
        let out = s.layout(&format!("out-{fault:?}"));
        let started = Instant::now();
        let e = c.pull_to_layout(&s.via_proxy("v1"), &out, None, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{fault:?}: {e}");
        assert!(e.to_string().contains("larger than 4194304 bytes"), "{fault:?}: {e}");
        assert!(started.elapsed() < Duration::from_secs(20), "{fault:?}: the body was not cut off");
        assert_untouched(&out, &format!("{fault:?} pull"));

        let target: Reference = format!("{}/kiln/copy{i}:v1", s.reg.host()).parse().unwrap();
        let e = c.copy_between(&s.via_proxy("v1"), &target).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{fault:?}: {e}");
        assert_nothing_pushed(&s.reg, target.path(), &s.image, &src, &format!("{fault:?} copy")).await;
        assert!(faulted(&s.proxy, fault) >= 2, "{fault:?} was injected: {:?}", s.proxy.counts());
    }
    // the same registry, calm again, serves the image: the refusals were the faults'
    s.calm();
    let out = s.layout("calm");
    let got = c.pull_to_layout(&s.via_proxy("v1"), &out, None, None).await.unwrap();
    assert_eq!(got.digest, s.image.digest);
    out.verify().unwrap();
}

#[tokio::test]
async fn manifests_whose_digest_does_not_match_are_refused() {
    let Some(s) = Setup::start().await else { return };
    let c = Client::builder().retry(quick()).build().unwrap();
    let src = src_layout(&s);
    s.aim(Fault::CorruptBody, &format!("GET /v2/{REPO}/manifests/"));
    // by tag (checked against Docker-Content-Digest) and by digest (against the reference)
    let pinned = s.via_proxy("v1").repository_only().with_digest(s.image.digest.clone());
    for source in [s.via_proxy("v1"), pinned] {
        let out = s.layout(&format!("out-{}", source.manifest_reference().replace(':', "-")));
        let e = c.pull_to_layout(&source, &out, None, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{source}: {e}");
        assert!(e.to_string().contains(&s.image.digest.to_string()), "the error names the digest: {e}");
        assert_untouched(&out, &format!("pull {source}"));
        let target: Reference = format!("{}/kiln/copied:v1", s.reg.host()).parse().unwrap();
        let e = c.copy_between(&source, &target).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{source}: {e}");
        assert_nothing_pushed(&s.reg, "kiln/copied", &s.image, &src, &format!("copy {source}")).await;
    }
    // an index whose child manifest (fetched by digest) does not match: the
    // index is not stored either, and nothing is tagged
    s.aim(Fault::CorruptBody, &format!("GET /v2/{REPO}/manifests/sha256:"));
    let out = s.layout("out-index");
    let e = c.pull_to_layout(&s.via_proxy("multi"), &out, None, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    assert_untouched(&out, "index with a corrupt child");
    assert!(faulted(&s.proxy, Fault::CorruptBody) >= 5, "{:?}", s.proxy.counts());
}

#[tokio::test]
async fn bodies_longer_or_shorter_than_content_length_are_refused() {
    let Some(s) = Setup::start().await else { return };
    let c = Client::builder().retry(quick()).build().unwrap();
    let src = src_layout(&s);
    let cases = [
        // the registry announces half the body: what arrives is cut short
        (Fault::LongBody, "manifests/", ErrorKind::DigestMismatch),
        (Fault::LongBody, "blobs/", ErrorKind::DigestMismatch),
        // the body stops before its Content-Length: the connection broke,
        // the client resumes (Range) and gives up when it keeps breaking
        (Fault::ShortBody, "manifests/", ErrorKind::Transport),
        (Fault::ShortBody, "blobs/", ErrorKind::Transport),
    ];
    for (i, (fault, path, kind)) in cases.into_iter().enumerate() {
        let what = format!("{fault:?} on {path}");
        s.aim(fault, &format!("GET /v2/{REPO}/{path}"));
        let before = faulted(&s.proxy, fault);
        let out = s.layout(&format!("out-{i}"));
        let e = c.pull_to_layout(&s.via_proxy("v1"), &out, None, None).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert_untouched(&out, &what);
        let target: Reference = format!("{}/kiln/copy{i}:v1", s.reg.host()).parse().unwrap();
        let e = c.copy_between(&s.via_proxy("v1"), &target).await.unwrap_err();
        // a copy fails with the source's own error, not an opaque upload failure
        assert_eq!(e.kind(), kind, "copy, {what}: {e}");
        assert_nothing_pushed(&s.reg, target.path(), &s.image, &src, &format!("copy, {what}")).await;
        assert!(faulted(&s.proxy, fault) > before, "{what} was injected");
    }
}

#[tokio::test]
async fn redirects_to_other_hosts_never_carry_the_token() {
    let Some(_) = testkit::tool("docker-registry") else { return };
    let reg = Registry::start_with(&testkit::RegistryOptions {
        token_auth: Some(testkit::TokenAuth {
            user: "u".into(),
            password: "redirect-pw".into(),
            refresh_token: None,
            ttl_secs: 300,
        }),
        ..testkit::RegistryOptions::default()
    })
    .unwrap();
    let proxy = FaultProxy::start(reg.port(), never()).unwrap();
    let creds = StaticCredentials::new()
        .with(reg.host(), Credential::basic("u", "redirect-pw"))
        .with(proxy.host(), Credential::basic("u", "redirect-pw"));
    let c = Client::builder().credentials(creds).retry(quick()).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = Layout::create(dir.path().join("src")).unwrap();
    let img = image(&src, "v1", 400, &[30_000, 5_000], "linux/amd64");
    c.push_from_layout(&src, &img, &format!("{}/{REPO}:v1", reg.host()).parse().unwrap(), None).await.unwrap();
    // the other host: a blob store (anonymous) that holds the same blobs and logs Authorization
    let cdn = ScriptedRegistry::start(Quirks::default()).unwrap();
    client().push_from_layout(&src, &img, &format!("{}/{REPO}:v1", cdn.host()).parse().unwrap(), None).await.unwrap();
    let cdn_gets =
        || cdn.log().into_iter().filter(|l| l.method == "GET" && l.target.contains("/blobs/")).collect::<Vec<_>>();
    assert!(cdn_gets().is_empty());
    proxy.set_other_host(cdn.base_url());
    proxy.only(Some(&format!("GET /v2/{REPO}/blobs/")));
    proxy.set_plan(always(Fault::Redirect));
    let source: Reference = format!("{}/{REPO}:v1", proxy.host()).parse().unwrap();

    let out = Layout::create(dir.path().join("out")).unwrap();
    let got = c.pull_to_layout(&source, &out, None, None).await.unwrap();
    assert_eq!(got.digest, img.digest);
    out.verify().unwrap();
    let gets = cdn_gets();
    assert_eq!(gets.len(), 3, "config and two layers came from the other host: {gets:?}");
    assert!(gets.iter().all(|l| !l.authorized), "Authorization was forwarded to another host: {gets:?}");
    // a copy streams the redirected blobs into the destination, still without the token on the other host
    let target: Reference = format!("{}/kiln/redirected:v1", reg.host()).parse().unwrap();
    let report = c.copy_between(&source, &target).await.unwrap();
    assert_eq!(report.digest.as_ref(), Some(&img.digest));
    let gets = cdn_gets();
    assert_eq!(gets.len(), 6, "{gets:?}");
    assert!(gets.iter().all(|l| !l.authorized), "Authorization was forwarded to another host: {gets:?}");
    assert!(faulted(&proxy, Fault::Redirect) >= 6, "{:?}", proxy.counts());

    // the other host serves bytes that do not match: refused, nothing kept
    let lying_cdn =
        FaultProxy::start(cdn.host().rsplit(':').next().unwrap().parse().unwrap(), always(Fault::CorruptBody)).unwrap();
    proxy.set_other_host(format!("http://{}", lying_cdn.host()));
    let out = Layout::create(dir.path().join("lied-to")).unwrap();
    let e = c.pull_to_layout(&source, &out, None, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    assert_untouched(&out, "redirect to a host serving other bytes");
    let target: Reference = format!("{}/kiln/lied-to:v1", reg.host()).parse().unwrap();
    let e = c.copy_between(&source, &target).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    let direct = c.head_manifest(&target).await.unwrap();
    assert_eq!(direct, None, "the copy's manifest was pushed without its blobs");

    // manifests are never fetched from another host: a redirect is a typed
    // error, and the other host is not contacted
    // (blob requests of the aborted copy above may still reach it: count manifest requests)
    let manifest_requests = || cdn.log().iter().filter(|l| l.target.contains("/manifests/")).count();
    let cdn_requests = manifest_requests();
    proxy.set_other_host(cdn.base_url());
    proxy.only(Some(&format!("GET /v2/{REPO}/manifests/")));
    let out = Layout::create(dir.path().join("manifest-redirect")).unwrap();
    let e = c.pull_to_layout(&source, &out, None, None).await.unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Protocol, Some(307)), "{e}");
    assert_eq!(manifest_requests(), cdn_requests, "the other host was contacted for a manifest");
    assert_untouched(&out, "manifest redirect");
    proxy.only(Some(&format!("GET /v2/{REPO}/blobs/")));

    // a redirect to plain HTTP on a host that is not loopback is refused before any connection
    proxy.set_other_host("http://blobs.invalid:80");
    let out = Layout::create(dir.path().join("downgraded")).unwrap();
    let e = c.pull_to_layout(&source, &out, None, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.to_string().contains("plain-HTTP"), "{e}");
    assert_untouched(&out, "redirect to plain HTTP");
}

#[tokio::test]
async fn upload_locations_on_other_hosts_are_refused_and_no_manifest_is_pushed() {
    let Some(s) = Setup::start().await else { return };
    let src = src_layout(&s);
    // the other host would accept the upload: it must never see a request
    let elsewhere = ScriptedRegistry::start(Quirks::default()).unwrap();
    s.proxy.set_other_host(elsewhere.base_url());
    let monolithic = Client::builder().retry(quick()).build().unwrap();
    let chunked = Client::builder().retry(quick()).chunk_size(8192).build().unwrap();
    let streamed = Client::builder().retry(quick()).streamed_uploads(true).build().unwrap();
    let cases = [
        // the session is opened on another host
        ("pushed-post", "POST /v2/kiln/pushed-post/blobs/uploads/", &monolithic),
        // the session moves to another host after the first chunk
        ("pushed-patch", "PATCH /v2/kiln/pushed-patch/blobs/uploads/", &chunked),
        ("pushed-stream", "PATCH /v2/kiln/pushed-stream/blobs/uploads/", &streamed),
    ];
    for (repo, filter, c) in cases {
        s.aim(Fault::ForeignLocation, filter);
        let target: Reference = format!("{}/kiln/{repo}:v1", s.proxy.host()).parse().unwrap();
        let e = c.push_from_layout(&src, &s.image, &target, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{repo}: {e}");
        assert!(e.to_string().contains("another host"), "{repo}: {e}");
        assert_eq!(elsewhere.log(), vec![], "{repo}: the other host was contacted");
        assert_nothing_pushed(&s.reg, &format!("kiln/{repo}"), &s.image, &src, repo).await;
    }
    // a copy whose destination moves its upload sessions away pushes nothing either
    s.aim(Fault::ForeignLocation, "POST /v2/kiln/copied/blobs/uploads/");
    let source: Reference = format!("{}/{REPO}:v1", s.reg.host()).parse().unwrap();
    let target: Reference = format!("{}/kiln/copied:v1", s.proxy.host()).parse().unwrap();
    let e = monolithic.copy_between(&source, &target).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert_eq!(elsewhere.log(), vec![], "the other host was contacted");
    assert_nothing_pushed(&s.reg, "kiln/copied", &s.image, &src, "copy").await;
    assert!(faulted(&s.proxy, Fault::ForeignLocation) >= 4, "{:?}", s.proxy.counts());
    // failed blob uploads: the manifest is never PUT either
    s.aim(Fault::Status500, "PUT /v2/kiln/failing/blobs/uploads/");
    let target: Reference = format!("{}/kiln/failing:v1", s.proxy.host()).parse().unwrap();
    let e = monolithic.push_from_layout(&src, &s.image, &target, None).await.unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Server, Some(500)), "{e}");
    assert_nothing_pushed(&s.reg, "kiln/failing", &s.image, &src, "failing blob uploads").await;
}

#[tokio::test]
async fn endless_tag_pagination_is_cut_off() {
    let Some(s) = Setup::start().await else { return };
    let c = Client::builder().retry(quick()).build().unwrap();
    let repo = Repository::new(&s.proxy.host(), REPO).unwrap();
    let mut want = c.list_tags(&repo).await.unwrap();
    want.sort();
    assert_eq!(want, vec!["multi".to_owned(), "v1".to_owned()]);
    // every page links to a new URL, and the real registry answers the same tags again
    s.aim(Fault::EndlessLink, &format!("GET /v2/{REPO}/tags/list"));
    let before = s.proxy.counts().requests;
    let e = c.list_tags(&repo).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("loops"), "{e}");
    assert!(s.proxy.counts().requests - before <= 3, "cut off at once: {:?}", s.proxy.counts());

    // a registry that invents new tags on every page forever: stopped at the cap
    let endless = ScriptedRegistry::start(Quirks { endless_tags: true, ..Quirks::default() }).unwrap();
    let r = Repository::new(&endless.host(), "kiln/endless").unwrap();
    let e = c.list_tags(&r).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains(&registry_client::MAX_LISTED_TAGS.to_string()), "{e}");
    let pages = endless.log().iter().filter(|l| l.target.contains("/tags/list")).count();
    assert!(pages <= registry_client::MAX_LISTED_TAGS / 50_000 + 2, "{pages} pages");
}

#[tokio::test]
async fn hostile_blob_source_sizes_never_reach_the_registry() {
    // a blob whose bytes do not match its descriptor (the source lies): the
    // client checks the bytes as they stream, breaks the upload off and says
    // it is a digest mismatch; the registry never stores it
    let Some(_) = testkit::tool("docker-registry") else { return };
    let reg = Registry::start().unwrap();
    let c = Client::builder().retry(quick()).build().unwrap();
    let r = Repository::new(&reg.host(), "kiln/lies").unwrap();
    let data = noise(77, 10_000);
    let mut desc = Descriptor::of_bytes(oci_image::MediaType::OciLayer, &data);
    let other = noise(78, 10_000);
    let e = c
        .push_blob(&r, &desc, std::sync::Arc::new(registry_client::BytesSource(bytes::Bytes::from(other))), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    assert_eq!(c.head_blob(&r, &desc.digest).await.unwrap(), None);
    // a source shorter than its descriptor breaks the upload off too
    desc.size = 20_000;
    let e = c
        .push_blob(&r, &desc, std::sync::Arc::new(registry_client::BytesSource(bytes::Bytes::from(data))), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e:?}");
    assert!(e.to_string().contains("20000"), "{e}");
    assert_eq!(c.head_blob(&r, &desc.digest).await.unwrap(), None);
}

#[tokio::test]
async fn a_local_blob_that_is_not_its_digest_is_never_uploaded_in_any_mode() {
    let Some(s) = Setup::start().await else { return };
    let src = src_layout(&s);
    let corrupt = s.layout("corrupt");
    let m = src.read_manifest(&s.image).unwrap();
    for d in registry_client::image_blobs(std::slice::from_ref(&m)) {
        src.copy_blob_to(&d, &corrupt).unwrap();
    }
    corrupt.write_blob_bytes(m.bytes()).unwrap();
    let oci_image::AnyManifest::Image(image) = &m else { panic!("an image") };
    let bad = image.value().layers[1].clone();
    let path = corrupt.blob_path(&bad.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
    let modes = [
        ("monolithic", Client::builder().build().unwrap()),
        ("chunked", Client::builder().chunk_size(8 * 1024).build().unwrap()),
        ("streamed", Client::builder().streamed_uploads(true).build().unwrap()),
        ("single request", Client::builder().single_request_uploads(true).build().unwrap()),
    ];
    for (n, (mode, c)) in modes.into_iter().enumerate() {
        let repo = format!("kiln/corrupt-{n}");
        let target: Reference = format!("{}/{repo}:v1", s.reg.host()).parse().unwrap();
        let e = c.push_from_layout(&corrupt, &s.image, &target, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{mode}: {e}");
        // kiln says its own blob is bad, rather than leaving it to the registry
        assert!(e.to_string().contains("not what its digest says"), "{mode}: {e}");
        assert!(e.to_string().contains(&bad.digest.to_string()), "{mode}: {e}");
        let r = Repository::new(&s.reg.host(), &repo).unwrap();
        assert_eq!(c.head_blob(&r, &bad.digest).await.unwrap(), None, "{mode}: the bad blob was stored");
        let by_digest: Reference = format!("{}/{repo}@{}", s.reg.host(), s.image.digest).parse().unwrap();
        assert_eq!(c.head_manifest(&by_digest).await.unwrap(), None, "{mode}: the manifest was pushed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_registry_ends_in_a_clear_error_within_the_idle_timeout() {
    let Some(s) = Setup::start().await else { return };
    let idle = Duration::from_secs(1);
    let c = Client::builder().retry(quick()).idle_timeout(idle).build().unwrap();
    // quick() tries 3 times, each ending after `idle` without progress
    let bound = idle * 3 + Duration::from_secs(4);

    // an answer that never comes
    s.aim(Fault::StallResponse, "GET /v2/kiln/hostile/manifests/v1");
    let started = Instant::now();
    let e = c.get_manifest(&s.via_proxy("v1")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(started.elapsed() < bound, "a stalled answer took {:?}", started.elapsed());

    // a body that stops halfway
    s.aim(Fault::StallBody, "GET /v2/kiln/hostile/blobs/");
    let layout = s.layout("stalled-pull");
    let started = Instant::now();
    let e = c.pull_to_layout(&s.via_proxy("v1"), &layout, None, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(started.elapsed() < bound * 2, "a stalled body took {:?}", started.elapsed());
    assert_untouched(&layout, "stalled body");

    // a registry that stops taking an upload: 32 MiB, more than the
    // sockets buffer, so the client's writes stall
    s.aim(Fault::StallRequestBody, "PUT /v2/kiln/stalled-push/blobs/uploads/");
    let src = s.layout("big");
    let big = image(&src, "v1", 301, &[32 << 20], "linux/amd64");
    let target: Reference = format!("{}/kiln/stalled-push:v1", s.proxy.host()).parse().unwrap();
    let started = Instant::now();
    let e = c.push_from_layout(&src, &big, &target, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("no progress"), "{e}");
    assert!(started.elapsed() < bound, "a stalled upload took {:?}", started.elapsed());
    s.calm();
    let by_digest: Reference = format!("{}/kiln/stalled-push@{}", s.reg.host(), big.digest).parse().unwrap();
    assert_eq!(client().head_manifest(&by_digest).await.unwrap(), None);
    // and bytes that keep moving are no stall, however long they take
    let slow = Client::builder().idle_timeout(idle).build().unwrap();
    slow.push_from_layout(&src, &big, &target, None).await.unwrap();
}
