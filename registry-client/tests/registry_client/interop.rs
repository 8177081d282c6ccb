//! Interop with skopeo both ways: what we push, skopeo reads identically;
//! what skopeo pushes, we pull byte-identical.

use std::process::Command;

use oci_image::{Layout, Reference};
use testkit::{run, tool};

use super::{client, digest_of, image, index, registry};

#[tokio::test]
async fn skopeo_reads_what_we_push() {
    let (Some(reg), Some(skopeo)) = (registry(), tool("skopeo")) else { return };
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path().join("src")).unwrap();
    let multi = index(&layout, "multi");
    let target: Reference = format!("{}/kiln/interop:multi", reg.host()).parse().unwrap();
    c.push_from_layout(&layout, &multi, &target, None).await.unwrap();
    let raw =
        run(Command::new(&skopeo).args(["inspect", "--tls-verify=false", "--raw"]).arg(format!("docker://{target}")))
            .unwrap();
    assert_eq!(raw.as_bytes(), &layout.read_blob(&multi).unwrap()[..], "skopeo sees our exact index bytes");
    let out = dir.path().join("copied");
    run(Command::new(&skopeo)
        .args(["copy", "--all", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{target}"))
        .arg(format!("oci:{}:multi", out.display())))
    .unwrap();
    let copied = Layout::open(&out).unwrap();
    assert_eq!(digest_of(&copied, "multi"), multi.digest);
    copied.verify().unwrap();
}

#[tokio::test]
async fn we_pull_what_skopeo_pushes() {
    let (Some(reg), Some(skopeo)) = (registry(), tool("skopeo")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path().join("src")).unwrap();
    let single = image(&layout, "v1", 77, &[10_000, 20_000], "linux/amd64");
    let target = format!("{}/kiln/fromskopeo:v1", reg.host());
    run(Command::new(&skopeo)
        .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", dir.path().join("src").display()))
        .arg(format!("docker://{target}")))
    .unwrap();
    let c = client();
    let dst = Layout::create(dir.path().join("dst")).unwrap();
    let r: Reference = target.parse().unwrap();
    let pulled = c.pull_to_layout(&r, &dst, None, None).await.unwrap();
    assert_eq!(pulled.digest, single.digest);
    dst.verify().unwrap();
    for d in layout.reachable().unwrap() {
        assert_eq!(std::fs::read(dst.blob_path(&d)).unwrap(), std::fs::read(layout.blob_path(&d)).unwrap(), "{d}");
    }
}
