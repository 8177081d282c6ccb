//! Fault tolerance through testkit's fault proxy in front of the real
//! registry (token auth): dropped connections mid-body, 500/503 bursts, 429
//! with Retry-After and 401s as an expired token gets them. With a fixed seed,
//! every push and pull completes byte-identical; with retries exhausted the
//! error has the right kind.

use std::time::Duration;

use oci_image::{Layout, Reference};
use registry_client::{Client, Credential, ErrorKind, Repository, RetryPolicy, StaticCredentials};
use testkit::{Fault, FaultPlan, FaultProxy, Registry, RegistryOptions, TokenAuth};

use super::image;

fn token_registry() -> Option<Registry> {
    testkit::tool("docker-registry")?;
    Some(
        Registry::start_with(&RegistryOptions {
            token_auth: Some(TokenAuth { user: "u".into(), password: "p".into(), refresh_token: None, ttl_secs: 300 }),
            ..RegistryOptions::default()
        })
        .unwrap(),
    )
}

fn client(host: &str, retry: RetryPolicy) -> Client {
    Client::builder()
        .credentials(StaticCredentials::new().with(host.to_owned(), Credential::basic("u", "p")))
        .retry(retry)
        .concurrency(8)
        .build()
        .unwrap()
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_and_pulls_survive_a_thousand_faulty_requests() {
    let Some(reg) = token_registry() else { return };
    let proxy = FaultProxy::start(
        reg.port(),
        FaultPlan {
            seed: 20_261_123,
            rate: 0.15,
            faults: vec![
                Fault::Drop,
                Fault::Drop,
                Fault::Status500,
                Fault::Status503,
                Fault::TooManyRequests,
                Fault::ExpiredToken,
            ],
        },
    )
    .unwrap();
    let host = proxy.host();
    let c = client(&host, quick_retries());
    let dir = tempfile::tempdir().unwrap();
    let src = Layout::create(dir.path().join("src")).unwrap();
    let images = 60;
    let mut pushed = Vec::new();
    for i in 0..images {
        let sizes = [1000 + i * 37, 20_000 + i * 101, 70_000 + i * 13];
        let desc = image(&src, &format!("i{i}"), 1000 + i as u64 * 10, &sizes, "linux/amd64");
        let target: Reference = format!("{host}/kiln/fault{}:v1", i % 5).parse().unwrap();
        let target = target.with_tag(format!("i{i}").parse().unwrap());
        let report = c.push_from_layout(&src, &desc, &target, None).await.unwrap_or_else(|e| panic!("push {i}: {e:?}"));
        assert_eq!(report.digest.as_ref(), Some(&desc.digest));
        pushed.push((target, desc));
    }
    let dst = Layout::create(dir.path().join("dst")).unwrap();
    for (target, desc) in &pushed {
        let got = c.pull_to_layout(target, &dst, None, None).await.unwrap_or_else(|e| panic!("pull {target}: {e:?}"));
        assert_eq!(&got.digest, &desc.digest);
    }
    // 0 corrupt, 0 lost: every blob arrived and verifies, byte for byte
    dst.verify().unwrap();
    let mut blobs = 0;
    for d in src.reachable().unwrap() {
        assert_eq!(std::fs::read(dst.blob_path(&d)).unwrap(), std::fs::read(src.blob_path(&d)).unwrap(), "{d}");
        blobs += 1;
    }
    let counts = proxy.counts();
    let permille = counts.faulted() * 1000 / counts.requests.max(1);
    println!(
        "fault proxy: {} requests, {} faulted ({}.{}%): {:?}; {images} images, {blobs} blobs, 0 corrupt, 0 lost",
        counts.requests,
        counts.faulted(),
        permille / 10,
        permille % 10,
        counts.faults,
    );
    assert!(counts.requests >= 1000, "at least 1000 requests: {counts:?}");
    assert!(counts.faulted() * 10 >= counts.requests, "at least 10% faulted: {counts:?}");
    for kind in ["Drop", "Status500", "Status503", "TooManyRequests", "ExpiredToken"] {
        assert!(counts.faults.get(kind).copied().unwrap_or(0) > 0, "{kind} was injected: {counts:?}");
    }
}

/// Every token expires as soon as it is old enough
/// ([`testkit::TOKEN_LIFETIME`] requests): each request that carries it is
/// refused from then on, and must be sent again with a token fetched anew,
/// however many requests run at once and replace the cached token
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_reused_token_expiring_is_survived() {
    let Some(reg) = token_registry() else { return };
    let proxy =
        FaultProxy::start(reg.port(), FaultPlan { seed: 9, rate: 1.0, faults: vec![Fault::ExpiredToken] }).unwrap();
    let host = proxy.host();
    let c = client(&host, quick_retries());
    let dir = tempfile::tempdir().unwrap();
    let src = Layout::create(dir.path().join("src")).unwrap();
    let dst = Layout::create(dir.path().join("dst")).unwrap();
    for i in 0..4usize {
        // many blobs, so that many requests run at once with the same cached token
        let sizes: Vec<usize> = (0..16).map(|k| 3000 + 997 * k + i).collect();
        let desc = image(&src, &format!("e{i}"), 2000 + i as u64, &sizes, "linux/amd64");
        let target: Reference = format!("{host}/kiln/expiring:e{i}").parse().unwrap();
        let report = c.push_from_layout(&src, &desc, &target, None).await.unwrap_or_else(|e| panic!("push {i}: {e:?}"));
        assert_eq!(report.digest.as_ref(), Some(&desc.digest));
        let got = c.pull_to_layout(&target, &dst, None, None).await.unwrap_or_else(|e| panic!("pull {i}: {e:?}"));
        assert_eq!(got.digest, desc.digest);
    }
    dst.verify().unwrap();
    let counts = proxy.counts();
    assert!(counts.faults.get("ExpiredToken").copied().unwrap_or(0) >= 10, "{counts:?}");
}

#[tokio::test]
async fn exhausted_retries_report_the_right_kind() {
    let Some(reg) = token_registry() else { return };
    let proxy =
        FaultProxy::start(reg.port(), FaultPlan { seed: 1, rate: 1.0, faults: vec![Fault::Status503] }).unwrap();
    let host = proxy.host();
    let few = RetryPolicy { max_attempts: 3, ..quick_retries() };
    let c = client(&host, few.clone());
    let repo = Repository::new(&host, "kiln/exhausted").unwrap();
    let d = oci_image::Digest::sha256(b"x");
    let e = c.head_blob(&repo, &d).await.unwrap_err();
    assert_eq!((e.kind(), e.status(), e.is_retryable()), (ErrorKind::Server, Some(503), true), "{e}");
    proxy.set_plan(FaultPlan { seed: 2, rate: 1.0, faults: vec![Fault::TooManyRequests] });
    let e = c.head_blob(&repo, &d).await.unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::RateLimited, Some(429)), "{e}");
    // a Retry-After longer than the cap is not waited for
    let impatient = client(&host, RetryPolicy { max_retry_after: Duration::from_millis(100), ..few });
    let started = std::time::Instant::now();
    let e = impatient.head_blob(&repo, &d).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(started.elapsed() < Duration::from_millis(900), "did not wait out Retry-After: {:?}", started.elapsed());
    proxy.set_plan(FaultPlan { seed: 3, rate: 1.0, faults: vec![Fault::Unauthorized] });
    let e = c.head_blob(&repo, &d).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
}

#[tokio::test]
async fn chunked_uploads_survive_dropped_connections() {
    // distribution drops an upload session whose PATCH broke off, so the client starts over
    let Some(_) = testkit::tool("docker-registry") else { return };
    let reg = Registry::start().unwrap();
    // every drop costs a whole new session here, so the rate is low and the attempts many
    let proxy = FaultProxy::start(reg.port(), FaultPlan { seed: 7, rate: 0.05, faults: vec![Fault::Drop] }).unwrap();
    let retry = RetryPolicy { max_attempts: 20, ..quick_retries() };
    let c = Client::builder().chunk_size(8192).retry(retry).build().unwrap();
    let repo = Repository::new(&proxy.host(), "kiln/chunks").unwrap();
    let direct = Client::builder().build().unwrap();
    for i in 0..10usize {
        let data = super::noise(500 + i as u64, 50_000 + i * 1000);
        let desc = oci_image::Descriptor::of_bytes(oci_image::MediaType::OciLayer, &data);
        c.push_blob(
            &repo,
            &desc,
            std::sync::Arc::new(registry_client::BytesSource(bytes::Bytes::from(data.clone()))),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("blob {i}: {e:?}"));
        let mut out = Vec::new();
        direct.fetch_blob(&Repository::new(&reg.host(), "kiln/chunks").unwrap(), &desc, true, &mut out).await.unwrap();
        assert_eq!(out, data, "blob {i}");
    }
    assert!(proxy.counts().faults.get("Drop").copied().unwrap_or(0) >= 2, "{:?}", proxy.counts());
}

#[tokio::test]
async fn chunked_uploads_resume_from_the_upload_range() {
    // a registry that keeps the session: the client asks for its Range and goes on
    let scripted = testkit::ScriptedRegistry::start(testkit::Quirks::default()).unwrap();
    let port: u16 = scripted.host().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(port, FaultPlan { seed: 11, rate: 0.25, faults: vec![Fault::Drop] }).unwrap();
    let c = Client::builder().chunk_size(8192).retry(quick_retries()).build().unwrap();
    let repo = Repository::new(&proxy.host(), "kiln/resume").unwrap();
    let blobs = 8u64;
    for i in 0..blobs {
        let data = super::noise(700 + i, 60_000);
        let desc = oci_image::Descriptor::of_bytes(oci_image::MediaType::OciLayer, &data);
        c.push_blob(
            &repo,
            &desc,
            std::sync::Arc::new(registry_client::BytesSource(bytes::Bytes::from(data.clone()))),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("blob {i}: {e:?}"));
        assert_eq!(scripted.blob(&desc.digest.to_string()).unwrap(), data, "blob {i}");
    }
    let log = scripted.log();
    let status_checks = log.iter().filter(|l| l.method == "GET" && l.target.contains("/blobs/uploads/")).count();
    let sessions = log.iter().filter(|l| l.method == "POST").count();
    assert!(status_checks >= 1, "the upload status was asked for after a drop");
    let seq: Vec<String> =
        log.iter().map(|l| format!("{} {}", l.method, l.target.split('?').next().unwrap_or_default())).collect();
    assert_eq!(sessions as u64, blobs, "every upload resumed in its own session, none started over: {seq:#?}");
}
