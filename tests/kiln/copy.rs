//! `kiln::copy` between registries, OCI layouts and docker-archive files:
//! digests survive every hop that carries a manifest, and a copy within one
//! registry mounts instead of uploading.

use std::process::Command;

use kiln::oci_image::Layout;
use kiln::registry_client::Client;
use kiln::{ImageLocation, copy, image_from_dir};
use testkit::{Registry, run, tool};

fn loc(s: &str) -> ImageLocation {
    s.parse().unwrap()
}

#[tokio::test]
async fn copies_keep_digests_across_every_kind_of_location() {
    let (Some(_), Some(skopeo)) = (tool("docker-registry"), tool("skopeo")) else { return };
    let reg = Registry::start().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "hello\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let built = image_from_dir(ctx.path(), &src, &"kiln/hello:v1".parse().unwrap(), &super::opts()).unwrap();
    let digest = built.manifest.digest.clone();
    let client = Client::builder().build().unwrap();
    let host = reg.host();

    // layout -> registry
    let r =
        copy(&client, &loc(&format!("oci:{}:v1", src.display())), &loc(&format!("{host}/dev/hello:v1"))).await.unwrap();
    assert_eq!((r.digest.clone(), r.uploaded), (digest.clone(), 2));
    // registry -> registry, same registry: blobs are mounted, not uploaded
    let r = copy(&client, &loc(&format!("{host}/dev/hello:v1")), &loc(&format!("{host}/prod/hello:v1"))).await.unwrap();
    assert_eq!((r.digest.clone(), r.mounted, r.uploaded), (digest.clone(), 2, 0));
    // skopeo agrees on what the registry holds
    let inspect = run(Command::new(&skopeo)
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{host}/prod/hello:v1")))
    .unwrap();
    assert!(inspect.contains(&digest.to_string()), "{inspect}");
    // registry -> layout
    let back = dir.path().join("back");
    let r = copy(&client, &loc(&format!("{host}/prod/hello:v1")), &loc(&format!("oci:{}:pulled", back.display())))
        .await
        .unwrap();
    assert_eq!(r.digest, digest);
    let layout = Layout::open(&back).unwrap();
    layout.verify().unwrap();
    assert_eq!(layout.resolve("pulled").unwrap().digest, digest);
    // layout -> layout
    let other = dir.path().join("other");
    let r =
        copy(&client, &loc(&format!("oci:{}:pulled", back.display())), &loc(&format!("oci:{}:again", other.display())))
            .await
            .unwrap();
    assert_eq!(r.digest, digest);
    Layout::open(&other).unwrap().verify().unwrap();
    // layout -> docker-archive -> registry (a new manifest: the archive keeps no manifest)
    let tar = dir.path().join("hello.tar");
    copy(
        &client,
        &loc(&format!("oci:{}:v1", src.display())),
        &loc(&format!("docker-archive:{}:kiln/hello:v1", tar.display())),
    )
    .await
    .unwrap();
    let r =
        copy(&client, &loc(&format!("docker-archive:{}", tar.display())), &loc(&format!("{host}/fromtar/hello:v1")))
            .await
            .unwrap();
    let raw = run(Command::new(&skopeo)
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/fromtar/hello:v1")))
    .unwrap();
    assert_eq!(kiln::oci_image::Digest::sha256(raw.as_bytes()), r.digest);
    // registry -> docker-archive, read by skopeo
    let tar2 = dir.path().join("pulled.tar");
    copy(&client, &loc(&format!("{host}/prod/hello:v1")), &loc(&format!("docker-archive:{}", tar2.display())))
        .await
        .unwrap();
    let cfg = run(Command::new(&skopeo)
        .args(["inspect", "--config", "--raw"])
        .arg(format!("docker-archive:{}", tar2.display())))
    .unwrap();
    assert_eq!(kiln::oci_image::Digest::sha256(cfg.as_bytes()), built.config.digest);
}

#[tokio::test]
async fn an_ambiguous_layout_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a"), "a").unwrap();
    let layout = dir.path().join("l");
    image_from_dir(ctx.path(), &layout, &"x/a:one".parse().unwrap(), &super::opts()).unwrap();
    std::fs::write(ctx.path().join("b"), "b").unwrap();
    image_from_dir(ctx.path(), &layout, &"x/a:two".parse().unwrap(), &super::opts()).unwrap();
    let client = Client::builder().build().unwrap();
    let e = copy(
        &client,
        &loc(&format!("oci:{}", layout.display())),
        &loc(&format!("oci:{}:x", dir.path().join("o").display())),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("name the image with :TAG"), "{e}");
}
