//! End-to-end tests of the kiln package: a directory becomes an image in an
//! OCI layout that the real peers (umoci, skopeo) read and unpack, and the
//! same input always gives the same digests.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod build;
mod buildah;
mod conformance;
mod copy;
mod crash;
mod embed;
mod examples;
mod fidelity;
mod hostile;
mod outputs;
mod promote;
mod safety;
mod stops;
mod terminal;

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln::oci_image::{Layout, Reference};
use kiln::{DirImageOptions, image_from_dir};
use testkit::{run, tool};

fn context(dir: &Path) {
    fs::create_dir_all(dir.join("etc/app")).unwrap();
    fs::write(dir.join("etc/app/config.toml"), "answer = 42\n").unwrap();
    fs::write(dir.join("hello.txt"), "Hello from kiln!\n").unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("greeting")).unwrap();
}

fn opts() -> DirImageOptions {
    let mut o = DirImageOptions::default();
    o.pack.epoch = Some(1_700_000_000);
    o.platform = "linux/amd64".parse().unwrap();
    o
}

#[test]
fn same_input_same_digests_anywhere() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    context(a.path());
    // the second copy is made later, so its files have other mtimes
    std::thread::sleep(std::time::Duration::from_millis(20));
    context(b.path());
    let out = tempfile::tempdir().unwrap();
    let name: Reference = "kiln/hello:v1".parse().unwrap();
    let one = image_from_dir(a.path(), &out.path().join("one"), &name, &opts()).unwrap();
    let two = image_from_dir(b.path(), &out.path().join("two"), &name, &opts()).unwrap();
    assert_eq!(one.manifest.digest, two.manifest.digest);
    assert_eq!(one.diff_ids, two.diff_ids);
    let layout = Layout::open(out.path().join("one")).unwrap();
    layout.verify().unwrap();
    assert_eq!(layout.resolve("v1").unwrap().digest, one.manifest.digest);
    // building again into the same layout replaces the tag, keeps one entry
    image_from_dir(a.path(), &out.path().join("one"), &name, &opts()).unwrap();
    assert_eq!(layout.tags().unwrap(), ["v1"]);
}

#[test]
fn peers_read_and_unpack_the_image() {
    let (Some(umoci), Some(skopeo)) = (tool("umoci"), tool("skopeo")) else { return };
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path());
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("layout");
    let image = image_from_dir(ctx.path(), &root, &"kiln/hello:latest".parse().unwrap(), &opts()).unwrap();
    let inspect: serde_json::Value = serde_json::from_str(
        &run(Command::new(&skopeo).arg("inspect").arg(format!("oci:{}:latest", root.display()))).unwrap(),
    )
    .unwrap();
    assert_eq!(inspect["Digest"], image.manifest.digest.to_string());
    assert_eq!(inspect["Created"], "2023-11-14T22:13:20Z");
    let bundle = out.path().join("bundle");
    run(Command::new(&umoci)
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", root.display()))
        .arg(&bundle))
    .unwrap();
    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read_to_string(rootfs.join("hello.txt")).unwrap(), "Hello from kiln!\n");
    assert_eq!(fs::read_to_string(rootfs.join("etc/app/config.toml")).unwrap(), "answer = 42\n");
    assert_eq!(fs::read_link(rootfs.join("greeting")).unwrap(), Path::new("hello.txt"));
}

#[test]
fn a_missing_context_is_a_clear_error_and_writes_no_image() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("layout");
    let err =
        image_from_dir(Path::new("/nonexistent/kiln-context"), &root, &"a:b".parse().unwrap(), &opts()).unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
    assert!(msg.contains("/nonexistent/kiln-context"), "{msg}");
    assert!(Layout::open(&root).unwrap().tags().unwrap().is_empty(), "no tag for a failed build");
}
