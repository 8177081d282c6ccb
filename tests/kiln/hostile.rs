//! Hostile base images through `kiln build`: layers that try to write
//! outside the extraction root (by name, hard link, symlink, symlink chain,
//! absolute link), a truncated layer and a layer whose bytes do not match
//! its digest. Every one is refused or contained; a victim directory beside
//! the build's cache stays unchanged, and no output is written.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln::build::{Build, Output};
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

/// An OCI layout holding an image whose only layer is `blob` (uncompressed),
/// described with `digest`/`size` (which may lie) and `diff_id`.
fn image(dir: &Path, blob: &[u8], digest: Option<&Digest>, diff_id: Digest) -> String {
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
    let layer = Descriptor::new(MediaType::OciLayer, name, blob.len() as u64);
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
    format!("oci:{}:1", dir.display())
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

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut t = Vec::new();
    raw_entry(&mut t, &format!("{up}{v_rel}/pwned"), b'0', "", b"pwned");
    cases.push(("name traversal", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "escape", b'2', &v, b"");
    raw_entry(&mut t, "escape/pwned", b'0', "", b"pwned");
    cases.push(("absolute symlink parent", finish(t)));
    let mut t = Vec::new();
    raw_entry(&mut t, "a", b'2', "b", b"");
    raw_entry(&mut t, "b", b'2', &up, b"");
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

    for (i, (name, tar)) in cases.iter().enumerate() {
        let base = image(&tmp.path().join(format!("base{i}")), tar, None, Digest::sha256(tar));
        let ctx = tmp.path().join(format!("ctx{i}"));
        fs::create_dir_all(&ctx).unwrap();
        // WORKDIR needs the base's files: the layers are fetched and extracted
        fs::write(ctx.join("Dockerfile"), format!("FROM {base}\nWORKDIR /made\n")).unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let result = Build::new(&ctx, ctx.join("Dockerfile"))
            .cache_dir(tmp.path().join("cache"))
            .output(Output::Layout(out.clone()))
            .build()
            .await;
        assert_eq!(snapshot(&victim), before, "{name}: the victim changed ({result:?})");
        if name == &"truncated" {
            assert!(result.is_err(), "{name}: a truncated layer was accepted");
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
    let base = image(&tmp.path().join("lying"), &tar, Some(&claimed), Digest::sha256(&tar));
    let ctx = tmp.path().join("ctx-lying");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), format!("FROM {base}\nWORKDIR /made\n")).unwrap();
    let out = tmp.path().join("out-lying");
    let err = Build::new(&ctx, ctx.join("Dockerfile"))
        .cache_dir(tmp.path().join("cache"))
        .output(Output::Layout(out.clone()))
        .build()
        .await
        .unwrap_err();
    let text = kiln::error_chain(&err);
    assert!(text.contains(&claimed.to_string()) || text.contains("mismatch") || text.contains("verif"), "{text}");
    assert!(!out.exists());
    assert_eq!(snapshot(&victim), before);
}
