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
    let text = kiln::error_chain(&e);
    assert!(text.contains("holds 2 images") && text.contains("name one by tag"), "{text}");
    // inspect takes no entry at random either
    let e = kiln::inspect(&client, &loc(&format!("oci:{}", layout.display()))).await.unwrap_err();
    let text = kiln::error_chain(&e);
    assert!(text.contains("holds 2 images") && text.contains("name one by tag"), "{text}");
    // with a tag, both know which
    assert!(kiln::inspect(&client, &loc(&format!("oci:{}:two", layout.display()))).await.is_ok());
}

#[tokio::test]
async fn inspect_reports_layers_history_and_platforms() {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a.txt"), "a").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let built = image_from_dir(ctx.path(), &dir.path().join("l"), &"x/a:v1".parse().unwrap(), &super::opts()).unwrap();
    let client = Client::builder().build().unwrap();
    let info = kiln::inspect(&client, &loc(&format!("oci:{}:v1", dir.path().join("l").display()))).await.unwrap();
    assert_eq!(info.digest, built.manifest.digest);
    assert_eq!(info.layers, built.layers);
    assert_eq!(info.history.len(), 1);
    assert_eq!((info.history[0].size, info.history[0].empty_layer), (built.layers[0].size, false));
    assert_eq!(info.history[0].layer.as_ref(), Some(&built.layers[0].digest));
    assert!(info.to_text().contains(&built.config.digest.to_string()));
    assert!(info.history_text(false).contains("kiln: COPY . /"));
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["digest"], built.manifest.digest.to_string());
    let missing = kiln::inspect(&client, &loc("docker-archive:/nonexistent.tar")).await.unwrap_err();
    assert!(matches!(missing, kiln::InspectError::Archive { .. }), "{missing:?}");
    // a docker-archive is inspected as docker load would see it
    let tar = dir.path().join("a.tar");
    copy(
        &client,
        &loc(&format!("oci:{}:v1", dir.path().join("l").display())),
        &loc(&format!("docker-archive:{}", tar.display())),
    )
    .await
    .unwrap();
    let from_archive = kiln::inspect(&client, &loc(&format!("docker-archive:{}", tar.display()))).await.unwrap();
    assert_eq!(from_archive.config_digest.as_ref(), Some(&built.config.digest));
    // (its layers are plain tars: other sizes and digests, the same steps)
    let steps =
        |i: &kiln::Inspection| i.history.iter().map(|h| (h.created.clone(), h.created_by.clone())).collect::<Vec<_>>();
    assert_eq!(steps(&from_archive), steps(&info));
    assert_eq!(from_archive.layers.len(), built.layers.len());
}

#[test]
fn history_rows_skip_empty_layers() {
    use kiln::oci_image::{ConfigBuilder, Descriptor, History, MediaType};
    let layer = Descriptor::of_bytes(MediaType::OciLayerGzip, b"x");
    let c = ConfigBuilder::new(&"linux/amd64".parse().unwrap())
        .empty_layer(History { created_by: Some("ENV A=b".into()), ..History::default() })
        .layer(layer.digest.clone(), History { created_by: Some("COPY".into()), ..History::default() })
        .empty_layer(History { created_by: Some("CMD".into()), ..History::default() })
        .build();
    let rows = kiln::history_rows(&c, std::slice::from_ref(&layer));
    let sizes: Vec<(u64, bool)> = rows.iter().map(|r| (r.size, r.empty_layer)).collect();
    assert_eq!(sizes, [(0, true), (1, false), (0, true)]);
}
