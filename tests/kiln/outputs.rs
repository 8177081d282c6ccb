//! What a build or copy writes: outputs are files of their own, checked
//! against their digests on the way out of the cache (a tampered cache
//! blob is made again, never shipped), several writers share one layout
//! without losing tags, first builds race on a new cache, and an existing
//! docker-archive is replaced only when asked.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use kiln::build::{BuildError, Progress};
use kiln::oci_image::{Digest, Layout};
use kiln::{CopyOptions, ImageLocation};
use testkit::{Registry, run, tool, tree_manifest};

use crate::build::{WithBase, base_layout, build, client, write};

fn context(dir: &Path, text: &str) -> PathBuf {
    let ctx = dir.join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\nCOPY b.txt /b/\n");
    write(&ctx.join("a.txt"), text);
    write(&ctx.join("b.txt"), &"b".repeat(100_000));
    ctx
}

/// Every blob file of a layout, with its inode.
fn blob_inodes(layout: &Path) -> BTreeSet<(u64, u64)> {
    fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let m = e.unwrap().metadata().unwrap();
            (m.dev(), m.ino())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_never_share_an_inode_with_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(tmp.path(), "a\n");
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let built = build(&ctx, &cache).output(ImageLocation::layout(out.clone())).build().await.unwrap();
    let ours = blob_inodes(&out);
    assert_eq!(ours.len(), 2 + built.layers.len());
    assert!(ours.is_disjoint(&blob_inodes(&cache.join("oci"))), "an output blob is a cache blob");
    for e in fs::read_dir(out.join("blobs/sha256")).unwrap() {
        assert_eq!(e.unwrap().metadata().unwrap().nlink(), 1);
    }
}

/// Flips one byte in the middle of a file.
fn flip(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_cache_blob_is_made_again_and_never_shipped() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(base) = base_layout(tmp.path()) else { return };
    let Some(skopeo) = tool("skopeo") else { return };
    let registry = Registry::start().unwrap();
    let ctx = tmp.path().join("ctx");
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\nCOPY a.txt /\nRUN echo ran > /ran\n"));
    write(&ctx.join("a.txt"), &"kiln ".repeat(10_000));
    let cache = tmp.path().join("cache");
    let first_out = tmp.path().join("first");
    let first =
        build(&ctx, &cache).with_base(&base).output(ImageLocation::layout(first_out.clone())).build().await.unwrap();
    let first_files = tree_manifest(&first_out).unwrap();
    // a bit flips in the COPY's layer and in the base's layer, both in the cache
    let store = Layout::open(cache.join("oci")).unwrap();
    let tampered: Vec<Digest> = vec![first.layers[0].digest.clone(), first.layers[1].digest.clone()];
    for d in &tampered {
        flip(&store.blob_path(d));
    }
    let reported = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reported);
    let second_out = tmp.path().join("second");
    let archive = tmp.path().join("second.tar");
    let target = format!("{}/kiln/tampered:v1", registry.host());
    let second = build(&ctx, &cache)
        .with_base(&base)
        .tag(target.parse().unwrap())
        .output(ImageLocation::layout(second_out.clone()))
        .output(ImageLocation::docker_archive(archive.clone()))
        .push(true)
        .progress(move |p| {
            if let Progress::Corrupt { digest } = p {
                seen.lock().unwrap().push((*digest).clone());
            }
        })
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    // the same image, intact everywhere it went
    assert_eq!(second.manifest.digest, first.manifest.digest);
    let mut reported = reported.lock().unwrap().clone();
    reported.sort();
    let mut expected = tampered.clone();
    expected.sort();
    assert_eq!(reported, expected, "the dropped blobs are reported");
    Layout::open(&second_out).unwrap().verify().unwrap();
    for d in &first.layers[..2] {
        let f = fs::File::open(store.blob_path(&d.digest)).unwrap();
        kiln::oci_image::verify(f, &d.digest, d.size)
            .unwrap_or_else(|e| panic!("the cache still holds a bad blob: {e}"));
    }
    let pulled = tmp.path().join("pulled");
    run(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{target}"))
        .arg(format!("oci:{}:v1", pulled.display())))
    .unwrap();
    Layout::open(&pulled).unwrap().verify().unwrap();
    let from_archive = tmp.path().join("from-archive");
    run(Command::new(&skopeo)
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:v1", from_archive.display())))
    .unwrap();
    Layout::open(&from_archive).unwrap().verify().unwrap();
    // the earlier output never shared the cache's files
    assert_eq!(tree_manifest(&first_out).unwrap(), first_files, "an earlier output changed");
    Layout::open(&first_out).unwrap().verify().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_builds_and_eight_copies_into_one_layout_keep_every_tag() {
    let (Some(umoci), Some(skopeo)) = (tool("umoci"), tool("skopeo")) else { return };
    let tmp = tempfile::tempdir().unwrap();
    // a source image for the copies
    let src_ctx = context(&tmp.path().join("src"), "copied\n");
    let src = tmp.path().join("src-layout");
    build(&src_ctx, &tmp.path().join("src-cache")).output(ImageLocation::layout(src.clone())).build().await.unwrap();
    // everyone writes into one layout that does not exist yet
    let shared = tmp.path().join("shared");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let dir = tmp.path().join(format!("b{i}"));
        let ctx = context(&dir, &format!("build {i}\n"));
        let cache = tmp.path().join("cache");
        let out = shared.clone();
        tasks.spawn(async move {
            build(&ctx, &cache)
                .tag(format!("kiln/shared:build-{i}").parse().unwrap())
                .output(ImageLocation::layout(out))
                .build()
                .await
                .map(|b| (format!("build-{i}"), b.manifest.digest))
                .map_err(|e| kiln::error_chain(&e))
        });
    }
    for i in 0..8 {
        let (from, to) = (src.clone(), shared.clone());
        tasks.spawn(async move {
            let src: ImageLocation = format!("oci:{}:latest", from.display()).parse().unwrap();
            let dst: ImageLocation = format!("oci:{}:copy-{i}", to.display()).parse().unwrap();
            kiln::copy(&client(), &src, &dst)
                .await
                .map(|r| (format!("copy-{i}"), r.digest))
                .map_err(|e| kiln::error_chain(&e))
        });
    }
    let mut written = Vec::new();
    while let Some(r) = tasks.join_next().await {
        written.push(r.unwrap().unwrap_or_else(|e| panic!("{e}")));
    }
    let layout = Layout::open(&shared).unwrap();
    let mut tags = layout.tags().unwrap();
    tags.sort();
    let mut expected: Vec<String> = written.iter().map(|(t, _)| t.clone()).collect();
    expected.sort();
    assert_eq!(tags, expected, "tags were lost");
    layout.verify().unwrap();
    let listed = run(Command::new(&umoci).args(["ls", "--layout"]).arg(&shared)).unwrap();
    for (tag, digest) in &written {
        assert!(listed.lines().any(|l| l == tag), "umoci does not list {tag}");
        let inspect = run(Command::new(&skopeo).arg("inspect").arg(format!("oci:{}:{tag}", shared.display()))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(v["Digest"], digest.to_string(), "{tag}");
    }
    let staging: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kiln-out-") || n.starts_with(".tmp"))
        .collect();
    assert!(staging.is_empty(), "left behind: {staging:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_first_builds_racing_on_a_new_cache_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(tmp.path(), "race\n");
    let sequential = build(&ctx, &tmp.path().join("alone")).build().await.unwrap().manifest.digest;
    for round in 0..3 {
        let cache = tmp.path().join(format!("new/cache-{round}"));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (ctx, cache) = (ctx.clone(), cache.clone());
            tasks.spawn(async move { build(&ctx, &cache).build().await.map_err(|e| kiln::error_chain(&e)) });
        }
        while let Some(r) = tasks.join_next().await {
            let built = r.unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(built.manifest.digest, sequential);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_docker_archive_is_replaced_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(tmp.path(), "archive\n");
    let cache = tmp.path().join("cache");
    let archive = tmp.path().join("image.tar");
    fs::write(&archive, "precious\n").unwrap();
    let err = build(&ctx, &cache).output(ImageLocation::docker_archive(archive.clone())).build().await.unwrap_err();
    assert!(matches!(err, BuildError::Output { .. }), "{err:?}");
    assert!(kiln::error_chain(&err).contains("already exists"), "{}", kiln::error_chain(&err));
    assert_eq!(fs::read_to_string(&archive).unwrap(), "precious\n");
    let built = build(&ctx, &cache)
        .output(ImageLocation::docker_archive(archive.clone()))
        .overwrite(true)
        .build()
        .await
        .unwrap();
    assert!(fs::metadata(&archive).unwrap().len() > 1024);
    // copy: refused unless asked, and the file is left as it was
    let layout = tmp.path().join("layout");
    build(&ctx, &cache).output(ImageLocation::layout(layout.clone())).build().await.unwrap();
    let other = tmp.path().join("other.tar");
    fs::write(&other, "precious\n").unwrap();
    let src: ImageLocation = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let dst: ImageLocation = format!("docker-archive:{}", other.display()).parse().unwrap();
    let err = kiln::copy(&client(), &src, &dst).await.unwrap_err();
    assert!(kiln::error_chain(&err).contains("already exists"), "{}", kiln::error_chain(&err));
    assert_eq!(fs::read_to_string(&other).unwrap(), "precious\n");
    let opts = CopyOptions { overwrite: true, ..CopyOptions::default() };
    let r = kiln::copy_with(&client(), &src, &dst, &opts).await.unwrap();
    assert_eq!(r.digest, built.manifest.digest);
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Outputs are copy locations: a layout's own tag, an archive's own name
/// and a registry reference of their own, beside the build's tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_take_the_location_syntax_of_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(skopeo) = tool("skopeo") else { return };
    let registry = Registry::start().unwrap();
    let ctx = context(tmp.path(), "a");
    let (layout, archive) = (tmp.path().join("out"), tmp.path().join("out.tar"));
    let elsewhere = format!("{}/kiln/elsewhere:v9", registry.host());
    let built = build(&ctx, &tmp.path().join("cache"))
        .tag("kiln/app:v1".parse().unwrap())
        .output(format!("oci:{}:custom", layout.display()).parse().unwrap())
        .output(format!("docker-archive:{}:kiln/named:v2", archive.display()).parse().unwrap())
        .output(elsewhere.parse().unwrap())
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    // the layout's own tag, not the build's
    assert_eq!(Layout::open(&layout).unwrap().tags().unwrap(), ["custom"]);
    assert_eq!(Layout::open(&layout).unwrap().resolve("custom").unwrap().digest, built.manifest.digest);
    // the archive's own name
    let manifest = run(Command::new("tar").arg("-xOf").arg(&archive).arg("manifest.json")).unwrap();
    assert!(manifest.contains("kiln/named:v2") && !manifest.contains("kiln/app:v1"), "{manifest}");
    // the registry reference, pushed, and said to be
    assert_eq!(built.pushed, [elsewhere.parse::<kiln::oci_image::Reference>().unwrap()]);
    let pushed = run(Command::new(&skopeo)
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{elsewhere}")))
    .unwrap();
    assert_eq!(Digest::sha256(pushed.as_bytes()), built.manifest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_the_build_made_reaches_its_layout_output_from_its_own_copy() {
    // each layer is written twice in one pass, into the cache and beside
    // the output, which links the second: the cache's file changed after
    // its step finished is not what the output gets, nor read by it
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(tmp.path(), "own copy\n");
    // one step: a later step would read the changed blob back (and refuse it)
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt b.txt /\n");
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let store = cache.join("oci");
    let changed = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changed);
    let built = build(&ctx, &cache)
        .output(ImageLocation::layout(out.clone()))
        .progress(move |p| {
            if let Progress::StepFinished { layer: Some(l), cached: false, .. } = p {
                flip(&Layout::open(&store).unwrap().blob_path(&l.digest));
                seen.lock().unwrap().push(l.digest.clone());
            }
        })
        .build()
        .await
        .unwrap_or_else(|e| panic!("{}", kiln::error_chain(&e)));
    let changed = changed.lock().unwrap().clone();
    assert_eq!(changed, built.layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>());
    let layout = Layout::open(&out).unwrap();
    layout.verify().unwrap();
    for d in &changed {
        assert!(layout.has_blob(d));
    }
    assert!(blob_inodes(&out).is_disjoint(&blob_inodes(&cache.join("oci"))), "an output blob is a cache blob");
    // nothing of the copies is left beside the output
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "{left:?}");
}
