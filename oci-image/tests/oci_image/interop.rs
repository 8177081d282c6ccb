//! Interop with the real peers: umoci and skopeo read what kiln writes, kiln
//! reads what they write, and skopeo pushes kiln's layout to a real
//! distribution registry unchanged.

use std::fs;
use std::path::Path;
use std::process::Command;

use oci_image::{AnyManifest, ArchiveReader, Document, ImageConfiguration, Layout, PendingArchive, Raw, Reference};
use serde_json::Value;
use testkit::{Registry, RegistryOptions, run, tool};

use super::small_image;

fn skopeo_inspect(args: &[&str], target: &str) -> Value {
    let skopeo = tool("skopeo").unwrap();
    let out = run(Command::new(skopeo).arg("inspect").args(args).arg(target)).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo inspect {target}: {e}: {out}"))
}

fn have(tools: &[&str]) -> bool {
    tools.iter().all(|t| tool(t).is_some())
}

#[test]
fn umoci_and_skopeo_read_our_layout() {
    if !have(&["umoci", "skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    let layout = Layout::create(&root).unwrap();
    let (manifest, _) = small_image(&layout, "example.com/team/app:v1");
    let ls = run(Command::new(tool("umoci").unwrap()).args(["ls", "--layout"]).arg(&root)).unwrap();
    assert_eq!(ls.trim(), "v1");
    let inspect = skopeo_inspect(&[], &format!("oci:{}:v1", root.display()));
    assert_eq!(inspect["Digest"], manifest.digest.to_string());
    assert_eq!(inspect["Architecture"], "amd64");
    // umoci unpacks the layer, so the tar and config are sound
    let bundle = dir.path().join("bundle");
    run(Command::new(tool("umoci").unwrap())
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", root.display()))
        .arg(&bundle))
    .unwrap();
    assert_eq!(fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(), "hello\n");
}

/// Every path under `root` (relative) with its permission bits.
fn modes(root: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        // blobs by kind, not by name: skopeo may re-encode a document
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let rel = if rel.starts_with("blobs/sha256/") { "blobs/sha256/BLOB".to_owned() } else { rel };
        out.push((rel, m.mode() & 0o7777));
        if m.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn a_layout_is_as_readable_as_one_skopeo_writes() {
    if !have(&["skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let layout = Layout::create(&ours).unwrap();
    small_image(&layout, "example.com/team/app:v1");
    let theirs = dir.path().join("theirs");
    run(Command::new(tool("skopeo").unwrap())
        .arg("copy")
        .arg(format!("oci:{}:v1", ours.display()))
        .arg(format!("oci:{}:v1", theirs.display())))
    .unwrap();
    // the same files (blobs, index.json, oci-layout), with the same modes
    // under this process's umask (skopeo's 0644 files and 0755 directories
    // under the usual 022)
    // (kiln's index lock file aside, which skopeo does not make)
    let ours: Vec<_> = modes(&ours).into_iter().filter(|(p, _)| p != "index.json.lock").collect();
    assert_eq!(ours, modes(&theirs), "kiln's layout modes differ from skopeo's");
}

#[test]
fn we_read_what_umoci_writes() {
    if !have(&["umoci"]) {
        return;
    }
    let umoci = tool("umoci").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    let image = format!("{}:base", root.display());
    run(Command::new(&umoci).args(["init", "--layout"]).arg(&root)).unwrap();
    run(Command::new(&umoci).args(["new", "--image", &image])).unwrap();
    run(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.cmd=/bin/true",
        "--config.env=A=b",
        "--config.label=k=v",
    ]))
    .unwrap();
    let layout = Layout::open(&root).unwrap();
    assert_eq!(layout.tags().unwrap(), ["base"]);
    let desc = layout.resolve("base").unwrap();
    let AnyManifest::Image(m) = layout.read_manifest(&desc).unwrap() else { panic!("expected an image manifest") };
    let config: ImageConfiguration =
        ImageConfiguration::from_json(&layout.read_blob(&m.value().config).unwrap()).unwrap();
    let cc = config.config.unwrap();
    assert_eq!(cc.cmd.unwrap(), ["/bin/true"]);
    assert!(cc.env.unwrap().contains(&"A=b".to_owned()));
    assert_eq!(cc.labels.unwrap()["k"], "v");
    layout.verify().unwrap();
    // umoci keeps the superseded manifest and config until its own gc; ours removes them
    let removed = layout.gc().unwrap();
    assert!(!removed.is_empty(), "umoci config leaves the old manifest behind");
    layout.verify().unwrap();
    // and umoci still reads the layout after our gc
    let stat = run(Command::new(&umoci).args(["stat", "--image", &image, "--json"])).unwrap();
    assert!(stat.contains("history"), "{stat}");
}

#[test]
fn skopeo_copies_between_layouts_and_we_read_the_result() {
    if !have(&["skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    let layout = Layout::create(&ours).unwrap();
    let (manifest, _) = small_image(&layout, "example.com/app:v1");
    run(Command::new(tool("skopeo").unwrap())
        .args(["copy", "--preserve-digests"])
        .arg(format!("oci:{}:v1", ours.display()))
        .arg(format!("oci:{}:copied", theirs.display())))
    .unwrap();
    let copied = Layout::open(&theirs).unwrap();
    let desc = copied.resolve("copied").unwrap();
    assert_eq!(desc.digest, manifest.digest, "skopeo keeps the manifest bytes between layouts");
    copied.verify().unwrap();
}

#[test]
fn docker_archives_round_trip_through_skopeo() {
    if !have(&["skopeo"]) {
        return;
    }
    let skopeo = tool("skopeo").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    let layout = Layout::create(&root).unwrap();
    let (manifest_desc, _) = small_image(&layout, "example.com/app:v1");
    let AnyManifest::Image(manifest) = layout.read_manifest(&manifest_desc).unwrap() else { panic!() };
    let config = Raw::<ImageConfiguration>::from_bytes(layout.read_blob(&manifest.value().config).unwrap()).unwrap();

    // ours -> skopeo
    let archive = dir.path().join("ours.tar");
    let mut w = PendingArchive::create(&archive).unwrap();
    let name: Reference = "example.com/app:v1".parse().unwrap();
    w.add_image(manifest.value(), &config, std::slice::from_ref(&name), |d| Ok(layout.open_blob(&d.digest).unwrap()))
        .unwrap();
    w.commit(&archive).unwrap();
    let raw =
        run(Command::new(&skopeo).args(["inspect", "--raw"]).arg(format!("docker-archive:{}", archive.display())))
            .unwrap();
    let raw: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["config"]["digest"], config.digest().to_string(), "skopeo sees our config unchanged");
    let cfg = run(Command::new(&skopeo)
        .args(["inspect", "--config", "--raw"])
        .arg(format!("docker-archive:{}", archive.display())))
    .unwrap();
    assert_eq!(cfg.as_bytes(), &config.bytes()[..]);
    let via_skopeo = dir.path().join("via-skopeo");
    run(Command::new(&skopeo)
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:t", via_skopeo.display())))
    .unwrap();
    Layout::open(&via_skopeo).unwrap().verify().unwrap();

    // skopeo -> ours
    let theirs = dir.path().join("theirs.tar");
    run(Command::new(&skopeo)
        .arg("copy")
        .arg(format!("oci:{}:v1", root.display()))
        .arg(format!("docker-archive:{}:example.com/app:v1", theirs.display())))
    .unwrap();
    let reader = ArchiveReader::open(&theirs).unwrap();
    let image = reader.find(Some("example.com/app:v1")).unwrap();
    assert_eq!(image.config.digest(), config.digest());
    let back = tempfile::tempdir().unwrap();
    let back_layout = Layout::create(back.path()).unwrap();
    let desc = reader.copy_to_layout(image, &back_layout, Some(&name)).unwrap();
    back_layout.verify().unwrap();
    assert_eq!(back_layout.resolve("v1").unwrap().digest, desc.digest);
}

fn push_and_inspect(registry: &Registry, root: &Path, creds: Option<&str>) -> Value {
    let skopeo = tool("skopeo").unwrap();
    let target = format!("docker://{}/kiln/app:v1", registry.host());
    let mut copy = Command::new(&skopeo);
    copy.args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        copy.args(["--dest-creds", c]);
    }
    run(copy.arg(format!("oci:{}:v1", root.display())).arg(&target)).unwrap();
    let mut inspect = Command::new(&skopeo);
    inspect.args(["inspect", "--tls-verify=false"]);
    if let Some(c) = creds {
        inspect.args(["--creds", c]);
    }
    serde_json::from_str(&run(inspect.arg(&target)).unwrap()).unwrap()
}

#[test]
fn skopeo_pushes_our_layout_to_a_real_registry_unchanged() {
    if !have(&["skopeo", "docker-registry"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let (manifest, _) = small_image(&layout, "example.com/app:v1");
    let registry = Registry::start().unwrap();
    let pushed = push_and_inspect(&registry, dir.path(), None);
    assert_eq!(pushed["Digest"], manifest.digest.to_string(), "the registry serves the bytes we wrote");

    if !have(&["htpasswd"]) {
        return;
    }
    let secured = Registry::start_with(&RegistryOptions {
        basic_auth: Some(("kiln".into(), "pw-1".into())),
        ..RegistryOptions::default()
    })
    .unwrap();
    assert_eq!(secured.get_status("/v2/").unwrap(), 401);
    let pushed = push_and_inspect(&secured, dir.path(), Some("kiln:pw-1"));
    assert_eq!(pushed["Digest"], manifest.digest.to_string());
}
