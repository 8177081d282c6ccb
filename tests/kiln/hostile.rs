//! Hostile base images through `kiln build`: layers that try to write
//! outside the extraction root (by name, hard link, symlink, symlink chain,
//! absolute link, device node), a gzip bomb, a truncated layer, a tar
//! header lying about its size, a gzip blob corrupted after compression and
//! a layer whose bytes do not match its digest. Every one is refused (at
//! the step that needed the files, with no output written) or contained; a
//! victim directory beside the build's cache stays unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln::ImageLocation;
use kiln::build::{Build, BuildContext};
use kiln::oci_image::{ConfigBuilder, Descriptor, Digest, History, Layout, ManifestBuilder, MediaType, Raw};

/// One ustar header (+ body, padded) with any name, type and link: the
/// kind of entry no well-behaved tar writer produces.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, body: &[u8]) {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
        h[at..at + v.len().min(len)].copy_from_slice(&v[..v.len().min(len)]);
    };
    put(&mut h, 0, 100, name.as_bytes());
    put(&mut h, 100, 8, b"0000755\0");
    put(&mut h, 108, 8, b"0000000\0");
    put(&mut h, 116, 8, b"0000000\0");
    put(&mut h, 124, 12, format!("{:011o}\0", body.len()).as_bytes());
    put(&mut h, 136, 12, b"00000000000\0");
    h[156] = kind;
    put(&mut h, 157, 100, link.as_bytes());
    put(&mut h, 257, 8, b"ustar\x0000");
    if kind == b'3' {
        // a character device 1:3 (what /dev/null is)
        put(&mut h, 329, 8, b"0000001\0");
        put(&mut h, 337, 8, b"0000003\0");
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.resize(tar.len() + 1024, 0);
    tar
}

/// An OCI layout holding an image whose only layer is `blob` (of
/// `media_type`), described with `digest` (which may lie) and `diff_id`.
fn image(dir: &Path, blob: &[u8], media_type: MediaType, digest: Option<&Digest>, diff_id: Digest) -> BuildContext {
    let layout = Layout::create(dir).unwrap();
    let real = Digest::sha256(blob);
    // a lying descriptor still needs the file under the name it claims
    let name = digest.cloned().unwrap_or_else(|| real.clone());
    fs::write(layout.blob_path(&name), blob).unwrap();
    let config = Raw::new(
        ConfigBuilder::new(&kiln::oci_image::Platform::host())
            .layer(diff_id, History { created_by: Some("hostile".into()), ..History::default() })
            .build(),
    );
    layout.write_blob_bytes(config.bytes()).unwrap();
    let layer = Descriptor::new(media_type, name, blob.len() as u64);
    let manifest = Raw::new(ManifestBuilder::new(config.descriptor()).layer(layer).build());
    layout.write_blob_bytes(manifest.bytes()).unwrap();
    layout.set_tag(&"hostile/base:1".parse().unwrap(), manifest.descriptor()).unwrap_or_else(|_| {
        // an image whose blob lies is refused by set_tag's completeness check: write the index by hand
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"1"}}}}]}}"#,
            manifest.digest(),
            manifest.bytes().len()
        );
        fs::write(dir.join("index.json"), index).unwrap();
    });
    BuildContext::oci_layout(dir, Some("1".parse().unwrap()))
}

/// `tar` compressed by the real `gzip`.
fn gzip(tar: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .args(["-c", "-n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = tar.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        let m = fs::symlink_metadata(&e).unwrap();
        let content = if m.is_file() { fs::read_to_string(&e).unwrap_or_default() } else { String::new() };
        out.insert(e.display().to_string(), format!("{:o} {} {} {content}", m.mode(), m.nlink(), m.ino()));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The hostile layers: name, blob, media type, diff id. `up` climbs to `/`
/// from any extraction root, `v` is the victim's absolute path and `v_rel`
/// the same without its leading `/`.
fn corpus(up: &str, v: &str, v_rel: &str) -> Vec<(&'static str, Vec<u8>, MediaType, Digest)> {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut t = Vec::new();
    raw_entry(&mut t, &format!("{up}{v_rel}/pwned"), b'0', "", b"pwned");
    cases.push(("name traversal", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "escape", b'2', v, b"");
    raw_entry(&mut t, "escape/pwned", b'0', "", b"pwned");
    cases.push(("absolute symlink parent", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "a", b'2', "b", b"");
    raw_entry(&mut t, "b", b'2', up, b"");
    raw_entry(&mut t, &format!("a/{v_rel}/hello"), b'0', "", b"overwritten");
    cases.push(("symlink chain", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "hl", b'1', &format!("{up}{v_rel}/hello"), b"");
    raw_entry(&mut t, "hl", b'0', "", b"through the link");
    cases.push(("hard link out", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "dir", b'5', "", b"");
    raw_entry(&mut t, "dir/link", b'2', &format!("{v}/sub"), b"");
    raw_entry(&mut t, "dir/link/deep", b'0', "", b"overwritten");
    cases.push(("symlink to a victim directory", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "big", b'0', "", &[b'x'; 4096]);
    let truncated = t[..1000].to_vec();
    cases.push(("truncated", truncated));
    let mut t = Vec::new();
    raw_entry(&mut t, "dev/null-like", b'3', "", b"");
    raw_entry(&mut t, &format!("{up}{v_rel}/device"), b'3', "", b"");
    cases.push(("device nodes", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "liar", b'0', "", &[b'y'; 100]);
    // the header says 100 bytes; make it claim 1 MiB with the checksum fixed up
    t[124..136].copy_from_slice(format!("{:011o}\0", 1 << 20).as_bytes());
    t[148..156].copy_from_slice(b"        ");
    let sum: u32 = t[..512].iter().map(|&b| u32::from(b)).sum();
    t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    cases.push(("header lying about its size", finish(t)));

    let mut all: Vec<(&str, Vec<u8>, MediaType, Digest)> =
        cases.into_iter().map(|(n, t)| (n, t.clone(), MediaType::OciLayer, Digest::sha256(&t))).collect();
    // a gzip bomb (64 MiB of zeros in a small blob): contained, inside the cache
    let mut t = Vec::new();
    raw_entry(&mut t, "zeros", b'0', "", &vec![0u8; 64 << 20]);
    let tar = finish(t);
    all.push(("gzip bomb", gzip(&tar), MediaType::OciLayerGzip, Digest::sha256(&tar)));
    // a gzip blob corrupted after compression (its digest is of the corrupted bytes)
    let mut t = Vec::new();
    raw_entry(&mut t, &format!("{up}{v_rel}/pwned"), b'0', "", &vec![b'z'; 20_000]);
    let tar = finish(t);
    let mut corrupted = gzip(&tar);
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0xff;
    all.push(("corrupted gzip", corrupted, MediaType::OciLayerGzip, Digest::sha256(&tar)));

    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_base_layers_are_refused_or_contained() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir_all(victim.join("sub")).unwrap();
    fs::write(victim.join("hello"), "hello").unwrap();
    fs::write(victim.join("sub/deep"), "deep").unwrap();
    let before = snapshot(&victim);
    // enough `..` to reach `/` from any extraction root, then the victim's absolute path
    let up = "../".repeat(40);
    let v = victim.display().to_string();
    let v_rel = v.trim_start_matches('/');

    for (i, (name, blob, media_type, diff_id)) in corpus(&up, &v, v_rel).into_iter().enumerate() {
        let base = image(&tmp.path().join(format!("base{i}")), &blob, media_type, None, diff_id);
        let ctx = tmp.path().join(format!("ctx{i}"));
        fs::create_dir_all(&ctx).unwrap();
        // WORKDIR needs the base's files: the layers are fetched and extracted
        fs::write(ctx.join("Dockerfile"), "FROM hostile\nWORKDIR /made\n").unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let result = Build::new(&ctx)
            .build_context("hostile", base)
            .cache_dir(tmp.path().join("cache"))
            .output(ImageLocation::layout(out.clone()))
            .build()
            .await;
        assert_eq!(snapshot(&victim), before, "{name}: the victim changed ({result:?})");
        if ["truncated", "header lying about its size", "corrupted gzip"].contains(&name) {
            assert!(result.is_err(), "{name}: a broken layer was accepted");
        }
        match &result {
            // refused while extracting the base, at the step that needed its files
            Err(kiln::build::BuildError::At { line: 2, source, .. }) => {
                assert!(matches!(**source, kiln::build::BuildError::Apply(_)), "{name}: {source:?}");
                assert!(!out.exists(), "{name}: output written for a failed build");
            }
            Err(e) => panic!("{name}: failed for another reason: {}", kiln::error_chain(e)),
            // contained: whatever the layer made is inside the image
            Ok(_) => eprintln!("{name}: contained"),
        }
    }

    // a layer whose bytes are not what its digest says
    let tar = {
        let mut t = Vec::new();
        raw_entry(&mut t, "f", b'0', "", b"real");
        finish(t)
    };
    let claimed = Digest::sha256(b"something else");
    let base = image(&tmp.path().join("lying"), &tar, MediaType::OciLayer, Some(&claimed), Digest::sha256(&tar));
    let ctx = tmp.path().join("ctx-lying");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM hostile\nWORKDIR /made\n").unwrap();
    let out = tmp.path().join("out-lying");
    let err = Build::new(&ctx)
        .build_context("hostile", base)
        .cache_dir(tmp.path().join("cache"))
        .output(ImageLocation::layout(out.clone()))
        .build()
        .await
        .unwrap_err();
    let text = kiln::error_chain(&err);
    assert!(text.contains(&claimed.to_string()) || text.contains("mismatch") || text.contains("verif"), "{text}");
    assert!(!out.exists());
    assert_eq!(snapshot(&victim), before);
}

/// A base image whose config carries `ONBUILD` triggers that the `ONBUILD`
/// instruction refuses (a nested `ONBUILD`, `FROM`, `MAINTAINER`): the build
/// refuses them too, instead of running or recording them.
#[tokio::test]
async fn base_image_triggers_the_instruction_refuses_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM hostile\nENV A=1\n").unwrap();
    for (i, trigger) in ["MAINTAINER mallory", "ONBUILD RUN echo nested", "FROM scratch"].into_iter().enumerate() {
        let dir = tmp.path().join(format!("triggers{i}"));
        let layout = Layout::create(&dir).unwrap();
        let cfg = kiln::oci_image::ContainerConfig { on_build: Some(vec![trigger.to_owned()]), ..Default::default() };
        let config = Raw::new(ConfigBuilder::new(&kiln::oci_image::Platform::host()).config(cfg).build());
        layout.write_blob_bytes(config.bytes()).unwrap();
        let manifest = Raw::new(ManifestBuilder::new(config.descriptor()).build());
        layout.write_blob_bytes(manifest.bytes()).unwrap();
        layout.set_tag(&"hostile/base:1".parse().unwrap(), manifest.descriptor()).unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let err = Build::new(&ctx)
            .build_context("hostile", BuildContext::oci_layout(&dir, Some("1".parse().unwrap())))
            .cache_dir(tmp.path().join("cache"))
            .output(ImageLocation::layout(out.clone()))
            .build()
            .await
            .map(|b| b.image.author)
            .expect_err(trigger);
        let text = kiln::error_chain(&err);
        assert!(text.contains("invalid ONBUILD trigger") && text.contains(trigger), "{trigger}: {text}");
        assert!(!out.exists(), "{trigger}: an output was written");
    }
}
