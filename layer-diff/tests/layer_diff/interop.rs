//! Interop with the real peers (umoci, tar, gzip, zstd) and determinism.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use layer_diff::{ApplyOptions, PackOptions};
use oci_image::{
    AnyManifest, Compression, ConfigBuilder, Descriptor, History, Layout, ManifestBuilder, Platform, Raw, Reference,
};

use crate::{describe, is_root, make_tree};

/// A varied tree: nested dirs, hidden files, symlinks, hard links, modes, xattrs, long names.
fn rich_tree(root: &Path) {
    make_tree(root, &["bin/tool", "etc/conf.d/a.conf", "etc/.hidden", "usr/share/doc/readme", "empty/"]);
    fs::write(root.join("usr/share/doc/big"), vec![b'z'; 300_000]).unwrap();
    std::os::unix::fs::symlink("../etc/conf.d/a.conf", root.join("bin/conf-link")).unwrap();
    std::os::unix::fs::symlink("/usr/share/doc", root.join("doc-abs")).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("usr/tool-hard")).unwrap();
    let long = format!("{}/{}", "l".repeat(110), "f".repeat(120));
    make_tree(root, &[long.as_str()]);
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("etc/conf.d"), fs::Permissions::from_mode(0o750)).unwrap();
    xattr::set(root.join("etc/.hidden"), "user.kiln", b"yes").unwrap();
}

fn umoci() -> Option<PathBuf> {
    testkit::tool("umoci")
}

fn umoci_cmd(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--log=error");
    c
}

fn rootless(c: &mut Command) -> &mut Command {
    if !is_root() {
        c.arg("--rootless");
    }
    c
}

/// `umoci unpack --image IMAGE BUNDLE` (rootless when not root).
fn umoci_unpack(bin: &Path, image: impl AsRef<std::ffi::OsStr>, bundle: &Path) {
    testkit::run(rootless(umoci_cmd(bin).arg("unpack").arg("--image").arg(image).arg(bundle))).unwrap();
}

/// Writes an image of `layers` (descriptors already in the layout) tagged `t`.
fn write_image(layout: &Layout, layers: &[(Descriptor, oci_image::Digest)]) {
    let mut cfg = ConfigBuilder::new(&Platform::host());
    for (_, diff_id) in layers {
        cfg = cfg.layer(diff_id.clone(), History::default());
    }
    let config = Raw::new(cfg.build());
    layout.write_blob_bytes(config.bytes()).unwrap();
    let manifest =
        Raw::new(ManifestBuilder::new(config.descriptor()).layers(layers.iter().map(|l| l.0.clone())).build());
    layout.write_blob_bytes(manifest.bytes()).unwrap();
    let r: Reference = "kiln/test:t".parse().unwrap();
    layout.set_tag(&r, manifest.descriptor()).unwrap();
}

/// Applies every layer of the image tagged `t` in `layout` onto `root`, as the `unpack` example does.
fn apply_image(layout: &Layout, root: &Path) {
    let desc = layout.resolve("t").unwrap();
    let AnyManifest::Image(m) = layout.read_manifest(&desc).unwrap() else { panic!("not an image") };
    for l in &m.value().layers {
        let f = layout.open_blob(&l.digest).unwrap();
        layer_diff::apply_blob(f, l, root, &ApplyOptions::default()).unwrap();
    }
}

fn opts() -> PackOptions {
    PackOptions { epoch: None, normalize_owner: false, compression: Compression::Gzip, ..PackOptions::default() }
}

#[test]
fn umoci_unpacks_our_layers_to_the_same_tree() {
    let Some(bin) = umoci() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("v1");
    let v2 = tmp.path().join("v2");
    fs::create_dir(&v1).unwrap();
    rich_tree(&v1);
    assert!(Command::new("cp").arg("-a").arg(&v1).arg(&v2).status().unwrap().success());
    // v2: a deletion, a replaced dir, a new file, a modified file
    fs::remove_file(v2.join("etc/.hidden")).unwrap();
    fs::remove_dir_all(v2.join("usr/share/doc")).unwrap();
    make_tree(&v2, &["usr/share/doc/new", "bin/added"]);
    fs::write(v2.join("bin/tool"), "rewritten").unwrap();
    let layout = Layout::create(tmp.path().join("layout")).unwrap();
    let w = layout.blob_writer().unwrap();
    let (w, base) = layer_diff::pack_dir(&v1, w, &opts()).unwrap();
    w.finish().unwrap();
    let w = layout.blob_writer().unwrap();
    // gzip: umoci 0.4 does not read zstd layers
    let (w, top) = layer_diff::pack_diff(&v1, &v2, w, &opts()).unwrap();
    w.finish().unwrap();
    write_image(&layout, &[(base.descriptor(), base.diff_id.clone()), (top.descriptor(), top.diff_id.clone())]);
    let bundle = tmp.path().join("bundle");
    umoci_unpack(&bin, format!("{}:t", layout.root().display()), &bundle);
    assert_eq!(describe(&v2, false), describe(&bundle.join("rootfs"), false));
    // and we apply the same image to the same tree
    let ours = tmp.path().join("ours");
    fs::create_dir(&ours).unwrap();
    apply_image(&layout, &ours);
    assert_eq!(describe(&bundle.join("rootfs"), true), describe(&ours, true));
}

#[test]
fn umoci_unpacks_our_gzip_layer() {
    let Some(bin) = umoci() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    rich_tree(&src);
    let layout = Layout::create(tmp.path().join("layout")).unwrap();
    let w = layout.blob_writer().unwrap();
    let (w, info) = layer_diff::pack_dir(&src, w, &opts()).unwrap();
    w.finish().unwrap();
    write_image(&layout, &[(info.descriptor(), info.diff_id.clone())]);
    let bundle = tmp.path().join("bundle");
    umoci_unpack(&bin, format!("{}:t", layout.root().display()), &bundle);
    assert_eq!(describe(&src, true), describe(&bundle.join("rootfs"), true));
}

#[test]
fn we_apply_umoci_layers_to_the_tree_umoci_produces() {
    let Some(bin) = umoci() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let layout_dir = tmp.path().join("layout");
    let image = format!("{}:t", layout_dir.display());
    let bundle = tmp.path().join("bundle");
    testkit::run(umoci_cmd(&bin).arg("init").arg("--layout").arg(&layout_dir)).unwrap();
    testkit::run(umoci_cmd(&bin).arg("new").arg("--image").arg(&image)).unwrap();
    umoci_unpack(&bin, &image, &bundle);
    let rootfs = bundle.join("rootfs");
    rich_tree(&rootfs);
    testkit::run(umoci_cmd(&bin).arg("repack").arg("--image").arg(&image).arg(&bundle)).unwrap();
    // a second layer with whiteouts and changes
    fs::remove_file(rootfs.join("etc/.hidden")).unwrap();
    fs::remove_dir_all(rootfs.join("usr/share/doc")).unwrap();
    make_tree(&rootfs, &["usr/share/doc/new", "bin/added"]);
    fs::write(rootfs.join("bin/tool"), "rewritten").unwrap();
    testkit::run(umoci_cmd(&bin).arg("repack").arg("--image").arg(&image).arg(&bundle)).unwrap();
    let bundle2 = tmp.path().join("bundle2");
    umoci_unpack(&bin, &image, &bundle2);
    let layout = Layout::open(&layout_dir).unwrap();
    let ours = tmp.path().join("ours");
    fs::create_dir(&ours).unwrap();
    apply_image(&layout, &ours);
    assert_eq!(describe(&bundle2.join("rootfs"), true), describe(&ours, true));
}

#[test]
fn tar_lists_our_layers_without_warnings() {
    let Some(tar_bin) = testkit::tool("tar") else { return };
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    for (c, flag) in [(Compression::None, "-tvf"), (Compression::Gzip, "-tzvf")] {
        let (blob, _) = crate::pack(src.path(), &PackOptions { compression: c, ..opts() });
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::write(f.path(), &blob).unwrap();
        let out = Command::new(&tar_bin).arg(flag).arg(f.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "tar warned: {}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("usr/tool-hard link to bin/tool"), "{listing}");
        assert!(listing.contains(&"f".repeat(120)), "long name via PAX");
        assert_eq!(listing.lines().count(), layer_diff::Snapshot::walk(src.path()).unwrap().entries().len());
    }
}

#[test]
fn same_digest_across_copies_and_thread_counts() {
    let a = tempfile::tempdir().unwrap();
    rich_tree(a.path());
    fs::write(
        a.path().join("random"),
        (0..2_000_000u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2]).collect::<Vec<_>>(),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = tempfile::tempdir().unwrap();
    // a copy made later: every mtime differs, all are after the epoch
    assert!(
        Command::new("cp").arg("-a").arg(format!("{}/.", a.path().display())).arg(b.path()).status().unwrap().success()
    );
    assert!(Command::new("find").arg(b.path()).args(["-exec", "touch", "-h", "{}", "+"]).status().unwrap().success());
    let ma = fs::metadata(a.path().join("random")).unwrap().modified().unwrap();
    let mb = fs::metadata(b.path().join("random")).unwrap().modified().unwrap();
    assert_ne!(ma, mb);
    let epoch = PackOptions { epoch: Some(1_700_000_000), ..PackOptions::default() };
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let one = crate::pack(a.path(), &PackOptions { compression, threads: 1, ..epoch.clone() }).1;
        for threads in [2, 4] {
            let other = crate::pack(b.path(), &PackOptions { compression, threads, ..epoch.clone() }).1;
            assert_eq!(one, other, "{compression:?} with {threads} threads");
        }
    }
}

/// Every gzip reader a layer meets reads what each level writes, kiln's
/// own fast deflate (levels 1-3) above all: Go's (through umoci), GNU
/// gzip, pigz and zcat (each checking the CRC and length), and flate2's
/// single-member `GzDecoder`; all to the tar whose digest is the diff id.
/// [`rich_tree`] in `dir/src`, with a file of more than three gzip
/// pipeline blocks of text and noise, so that blocks refer back across
/// their cuts.
fn multi_block_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    rich_tree(&src);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut big = Vec::new();
    while big.len() < 2_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            big.extend_from_slice(&x.to_le_bytes());
        } else {
            big.extend_from_slice(format!("line {} of the layer\n", x % 1000).as_bytes());
        }
    }
    fs::write(src.join("usr/share/doc/mixed"), &big).unwrap();
    src
}

/// An image in a new layout `dir/layout{level}` whose one layer is `src`
/// packed as gzip at `level` on two threads.
fn gzip_image(dir: &Path, src: &Path, level: i32) -> (Layout, layer_diff::LayerInfo) {
    let layout = Layout::create(dir.join(format!("layout{level}"))).unwrap();
    let w = layout.blob_writer().unwrap();
    let o = PackOptions { level: Some(level), threads: 2, ..opts() };
    let (w, info) = layer_diff::pack_dir(src, w, &o).unwrap();
    w.finish().unwrap();
    write_image(&layout, &[(info.descriptor(), info.diff_id.clone())]);
    (layout, info)
}

#[test]
fn every_gzip_reader_reads_every_level() {
    use std::io::Read as _;
    let Some(bin) = umoci() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = multi_block_tree(tmp.path());
    let readers: Vec<(String, Vec<&str>)> = [("gzip", vec!["-dc"]), ("pigz", vec!["-dc"]), ("zcat", vec![])]
        .into_iter()
        .filter_map(|(tool, args)| testkit::tool(tool).map(|t| (t.display().to_string(), args)))
        .collect();
    assert!(!readers.is_empty() || !testkit::in_ci(), "gzip is on every Debian machine");
    for level in [1, 2, 3, 6] {
        let (layout, info) = gzip_image(tmp.path(), &src, level);
        let blob = layout.blob_path(&info.digest);
        let diff_id = info.diff_id.to_string();
        let sha = |bytes: &[u8]| oci_image::Digest::sha256(bytes).to_string();
        for (tool, args) in &readers {
            let out = Command::new(tool).args(args).arg(&blob).output().unwrap();
            assert!(out.status.success(), "{tool} at level {level}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(sha(&out.stdout), diff_id, "{tool} at level {level}");
        }
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(fs::File::open(&blob).unwrap()).read_to_end(&mut tar).unwrap();
        assert_eq!(sha(&tar), diff_id, "flate2's single-member reader at level {level}");
        let bundle = tmp.path().join(format!("bundle{level}"));
        umoci_unpack(&bin, format!("{}:t", layout.root().display()), &bundle);
        assert_eq!(describe(&src, true), describe(&bundle.join("rootfs"), true), "umoci at level {level}");
    }
}

/// containerd reads what each level writes: `ctr images import` into a
/// private daemon's `native` snapshotter inflates the layer with Go's gzip
/// reader, checks the tar's digest against the config's diff id, and
/// leaves the tree in a plain directory, which must be the source tree.
#[test]
fn containerd_unpacks_every_level() {
    let Some(ctrd) = testkit::Containerd::start().unwrap() else { return };
    let Some(tar) = testkit::tool("tar") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = multi_block_tree(tmp.path());
    let snapshots = || -> std::collections::BTreeSet<PathBuf> {
        fs::read_dir(ctrd.native_snapshots()).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
    };
    for level in [1, 2, 3, 6] {
        let (layout, _) = gzip_image(tmp.path(), &src, level);
        let archive = tmp.path().join(format!("image{level}.tar"));
        testkit::run(Command::new(&tar).arg("-C").arg(layout.root()).arg("-cf").arg(&archive).arg(".")).unwrap();
        let before = snapshots();
        // a namespace per level: the same diff id would otherwise reuse the
        // first level's snapshot instead of unpacking again
        let out = ctrd
            .ctr()
            .args(["--namespace", &format!("kiln-{level}"), "images", "import", "--snapshotter", "native"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "containerd at level {level}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let new: Vec<PathBuf> = snapshots().difference(&before).cloned().collect();
        let [snapshot] = new.as_slice() else { panic!("one new snapshot at level {level}: {new:?}") };
        assert_eq!(describe(&src, true), describe(snapshot, true), "containerd at level {level}");
    }
}
