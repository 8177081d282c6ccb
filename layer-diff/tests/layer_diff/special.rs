//! 4.5 Special files, metadata, xattrs, compression and hardening.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use layer_diff::{ApplyError, ApplyOptions, IdMap, IdRange, PackOptions};
use oci_image::{Compression, Descriptor, Digest, MediaType};

use crate::{RawTar, apply, apply_tar, describe, is_root, make_tree, pack, plain, tar_names, untar_bytes};

fn mknod(p: &Path, ft: rustix::fs::FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        ft,
        rustix::fs::Mode::from_raw_mode(0o640),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
}

#[test]
fn block_char_fifo_roundtrip() {
    use rustix::fs::FileType::{BlockDevice, CharacterDevice, Fifo};
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    mknod(&s.join("fifo"), Fifo, 0, 0);
    let devices = [
        ("block", BlockDevice, 12, 5),
        ("char", CharacterDevice, 12, 5),
        ("block-128-42", BlockDevice, 128, 42),
        ("block-255-128", BlockDevice, 255, 128),
        ("char-133-37", CharacterDevice, 133, 37),
    ];
    if is_root() {
        for (name, ft, ma, mi) in devices {
            mknod(&s.join(name), ft, ma, mi);
        }
    }
    let (blob, info) = pack(s, &PackOptions { epoch: None, ..plain() });
    let mut ar = tar::Archive::new(&blob[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if let Some((_, _, ma, mi)) = devices.iter().find(|d| d.0 == name) {
            assert_eq!(e.header().device_major().unwrap(), Some(*ma), "{name}");
            assert_eq!(e.header().device_minor().unwrap(), Some(*mi), "{name}");
        }
    }
    let out = tempfile::tempdir().unwrap();
    apply(&blob, &info, out.path());
    assert!(fs::symlink_metadata(out.path().join("fifo")).unwrap().file_type().is_fifo());
    if is_root() {
        assert_eq!(describe(s, true), describe(out.path(), true));
        for (name, ft, ma, mi) in devices {
            let m = fs::symlink_metadata(out.path().join(name)).unwrap();
            let ok = if ft == BlockDevice { m.file_type().is_block_device() } else { m.file_type().is_char_device() };
            assert!(ok, "{name}");
            assert_eq!((rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev())), (ma, mi), "{name}");
        }
    }
    // without mknod permission devices are skipped, not failed
    let t = RawTar::new().entry("dev", tar::EntryType::Char, "", b"", 0o600).build();
    let out = tempfile::tempdir().unwrap();
    let opts = ApplyOptions { mknod: false, ..ApplyOptions::default() };
    let info = layer_diff::apply_tar(&t[..], out.path(), &opts).unwrap();
    assert_eq!(info.skipped_devices, 1);
    assert!(!out.path().join("dev").exists());
}

#[test]
fn socket_in_tree_is_skipped() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), &["a"]);
    let _l = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    let (tar, _) = pack(src.path(), &plain());
    let n: Vec<String> = tar_names(&tar).into_iter().map(|e| e.0).collect();
    assert_eq!(n, ["a"]);
}

#[test]
fn setuid_setgid_and_capability_kept() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    make_tree(s, &["suid", "sgid", "sticky/", "cap"]);
    fs::set_permissions(s.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(s.join("sgid"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::set_permissions(s.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    // cap_net_bind_service=ep (vfs_cap_data revision 2)
    let cap: Vec<u8> = [0x0200_0001u32, 1 << 10, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    if is_root() {
        xattr::set(s.join("cap"), "security.capability", &cap).unwrap();
    }
    let (blob, info) = pack(s, &PackOptions { normalize_owner: false, ..plain() });
    let out = tempfile::tempdir().unwrap();
    apply(&blob, &info, out.path());
    let o = out.path();
    let mode = |p: &str| fs::symlink_metadata(o.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o4755);
    assert_eq!(mode("sgid"), 0o2755);
    assert_eq!(mode("sticky"), 0o1777);
    if is_root() {
        assert_eq!(xattr::get(o.join("cap"), "security.capability").unwrap(), Some(cap));
    }
}

#[test]
fn user_xattrs_kept_on_nested_dirs_empty_dropped() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    make_tree(s, &["a/b/c/file"]);
    for p in ["a", "a/b", "a/b/c", "a/b/c/file"] {
        xattr::set(s.join(p), "user.test", format!("value of {p}").as_bytes()).unwrap();
    }
    xattr::set(s.join("a/b/c/file"), "user.empty", b"").unwrap();
    let (blob, info) = pack(s, &plain());
    let out = tempfile::tempdir().unwrap();
    apply(&blob, &info, out.path());
    for p in ["a", "a/b", "a/b/c", "a/b/c/file"] {
        assert_eq!(
            xattr::get(out.path().join(p), "user.test").unwrap(),
            Some(format!("value of {p}").into_bytes()),
            "{p}"
        );
    }
    assert_eq!(xattr::get(out.path().join("a/b/c/file"), "user.empty").unwrap(), None);
}

#[test]
fn pax_global_header_does_not_fail() {
    let root = tempfile::tempdir().unwrap();
    let t = RawTar::new()
        .entry(
            "pax_global_header",
            tar::EntryType::XGlobalHeader,
            "",
            b"52 comment=4a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8\n",
            0o666,
        )
        .file("after", "ok")
        .build();
    apply_tar(&t, root.path()).unwrap();
    assert_eq!(crate::names(root.path()), ["after"]);
}

#[test]
fn mixed_ustar_gnu_headers_base256_ids_and_prefix() {
    let mut out = Vec::new();
    // GNU header with base-256 uid/gid
    let mut h = tar::Header::new_gnu();
    h.set_path("gnufile").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(3_000_000);
    h.set_gid(3_000_001);
    h.set_size(3);
    h.set_mtime(1_000);
    assert_eq!(h.as_gnu().unwrap().uid[0] & 0x80, 0x80, "uid is base-256");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(b"gnu");
    out.extend_from_slice(&[0u8; 509]);
    // ustar header whose name is split into prefix + name
    let long = format!("{}/{}", "p".repeat(120), "n".repeat(60));
    let mut h = tar::Header::new_ustar();
    h.set_path(&long).unwrap();
    assert!(h.as_ustar().unwrap().prefix[0] != 0, "prefix used");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(5);
    h.set_mtime(1_000);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(b"ustar");
    out.extend_from_slice(&[0u8; 507]);
    out.extend_from_slice(&[0u8; 1024]);
    let root = tempfile::tempdir().unwrap();
    apply_tar(&out, root.path()).unwrap();
    assert_eq!(fs::read_to_string(root.path().join("gnufile")).unwrap(), "gnu");
    assert_eq!(fs::read_to_string(root.path().join(&long)).unwrap(), "ustar");
    if is_root() {
        let m = fs::metadata(root.path().join("gnufile")).unwrap();
        assert_eq!((m.uid(), m.gid()), (3_000_000, 3_000_001));
    }
}

#[test]
fn unicode_names_roundtrip() {
    let src = tempfile::tempdir().unwrap();
    let names = ["a=b", "with space", "日本語のファイル", "İstanbul-ığüşöç", "dir ünï/ç=d 中"];
    make_tree(src.path(), &names);
    // a long unicode path needs a PAX path record
    let long = format!("{}/{}", "ü".repeat(60), "名".repeat(40));
    make_tree(src.path(), &[long.as_str()]);
    let (blob, info) = pack(src.path(), &plain());
    let out = tempfile::tempdir().unwrap();
    apply(&blob, &info, out.path());
    assert_eq!(describe(src.path(), false), describe(out.path(), false));
}

#[test]
fn source_date_epoch_clamps_newer_keeps_older() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), &["old", "new"]);
    let set = |p: &str, t: i64| {
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: t, tv_nsec: 0 },
            last_modification: rustix::fs::Timespec { tv_sec: t, tv_nsec: 0 },
        };
        rustix::fs::utimensat(rustix::fs::CWD, src.path().join(p), &ts, rustix::fs::AtFlags::empty()).unwrap();
    };
    set("old", 500);
    set("new", 2_000_000_000);
    let opts = PackOptions { epoch: Some(1_500_000_000), ..plain() };
    let (tar, info) = pack(src.path(), &opts);
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let want = if &*e.path_bytes() == b"old" { 500 } else { 1_500_000_000 };
        assert_eq!(e.header().mtime().unwrap(), want);
        // no atime/ctime, empty uname/gname
        assert_eq!(e.header().username_bytes(), Some(&b""[..]));
        assert_eq!(e.header().groupname_bytes(), Some(&b""[..]));
    }
    // consistent results: packing again gives the same bytes
    let (tar2, info2) = pack(src.path(), &opts);
    assert_eq!((tar, info), (tar2, info2));
    // keeping the files' own times is possible too
    let (tar3, _) = pack(src.path(), &PackOptions { epoch: None, ..plain() });
    let mut ar = tar::Archive::new(&tar3[..]);
    let times: Vec<u64> = ar.entries().unwrap().map(|e| e.unwrap().header().mtime().unwrap()).collect();
    assert_eq!(times, [2_000_000_000, 500]);
}

#[test]
fn uid_gid_mapping_for_rootless() {
    let host_uid = rustix::process::geteuid().as_raw();
    let host_gid = rustix::process::getegid().as_raw();
    let map = IdMap::new(vec![IdRange::new(0, 100_000, 65_536)], vec![IdRange::new(0, 200_000, 65_536)]);
    // repack: host ids map back to container ids
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), &["f"]);
    let own = IdMap::new(vec![IdRange::new(0, host_uid, 1)], vec![IdRange::new(0, host_gid, 1)]);
    let (tar, _) = pack(src.path(), &PackOptions { normalize_owner: false, id_map: Some(own), ..plain() });
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!((e.header().uid().unwrap(), e.header().gid().unwrap()), (0, 0));
    }
    assert_eq!(map.to_host_uid(5), 100_005);
    assert_eq!(map.to_container_gid(200_010), 10);
    assert_eq!(map.to_host_uid(70_000), 70_000, "unmapped ids stay");
    // unpack: container ids map to host ids
    if is_root() {
        let t = RawTar::new().file("g", "g").build();
        let out = tempfile::tempdir().unwrap();
        let opts = ApplyOptions { chown: true, id_map: Some(map), ..ApplyOptions::default() };
        layer_diff::apply_tar(&t[..], out.path(), &opts).unwrap();
        let m = fs::metadata(out.path().join("g")).unwrap();
        assert_eq!((m.uid(), m.gid()), (100_000, 200_000));
    }
}

fn cli_decode(tool: &str, blob: &[u8]) -> Option<Vec<u8>> {
    let bin = testkit::tool(tool)?;
    let mut child = Command::new(bin).arg("-dc").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = blob.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{tool} -dc failed");
    Some(out.stdout)
}

#[test]
fn compression_gzip_zstd_none_auto_and_mixed() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), &["a/b", "c"]);
    fs::write(src.path().join("big"), vec![7u8; 3 << 20]).unwrap();
    let (plain_tar, plain_info) = pack(src.path(), &plain());
    assert_eq!(plain_info.media_type, MediaType::OciLayer);
    assert_eq!(plain_info.digest, plain_info.diff_id);
    // with more than one thread, both hashes run on threads of their own
    let (threaded_tar, threaded_info) = pack(src.path(), &PackOptions { threads: 3, ..plain() });
    assert_eq!((threaded_tar, threaded_info), (plain_tar.clone(), plain_info.clone()));
    for (c, mt, tool) in
        [(Compression::Gzip, MediaType::OciLayerGzip, "gzip"), (Compression::Zstd, MediaType::OciLayerZstd, "zstd")]
    {
        for threads in [1, 3] {
            let (blob, info) = pack(src.path(), &PackOptions { compression: c, threads, ..plain() });
            assert_eq!(info.media_type, mt);
            assert_eq!(info.diff_id, plain_info.diff_id, "the diff id is the tar's");
            assert_eq!(info.digest, Digest::sha256(&blob));
            assert_eq!(info.size, blob.len() as u64);
            assert_eq!(untar_bytes(&blob), plain_tar, "auto-detected decode");
            if let Some(decoded) = cli_decode(tool, &blob) {
                assert_eq!(decoded, plain_tar, "{tool} -dc");
            }
        }
    }
    // mixed compression across the layers of one image
    let layout_dir = tempfile::tempdir().unwrap();
    let layout = oci_image::Layout::create(layout_dir.path().join("l")).unwrap();
    let trees = [["one"], ["two"], ["three"]];
    let mut layers = Vec::new();
    for (i, c) in [Compression::Gzip, Compression::Zstd, Compression::None].into_iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        make_tree(d.path(), &trees[i]);
        let w = layout.blob_writer().unwrap();
        let (w, info) = layer_diff::pack_dir(d.path(), w, &PackOptions { compression: c, ..plain() }).unwrap();
        w.finish().unwrap();
        layers.push(info.descriptor());
    }
    let out = tempfile::tempdir().unwrap();
    for desc in &layers {
        let f = layout.open_blob(&desc.digest).unwrap();
        layer_diff::apply_blob(f, desc, out.path(), &ApplyOptions::default()).unwrap();
    }
    assert_eq!(crate::names(out.path()), ["one", "three", "two"]);
}

#[test]
fn blob_digest_or_size_mismatch_rejected() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), &["a", "b"]);
    let (blob, info) = pack(src.path(), &PackOptions { compression: Compression::Gzip, ..plain() });
    let good = info.descriptor();
    let mut tampered = blob.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    let wrong_digest = Descriptor::new(good.media_type.clone(), Digest::sha256(b"other"), good.size);
    let wrong_size = Descriptor::new(good.media_type.clone(), good.digest.clone(), good.size - 1);
    let cases: [(&[u8], &Descriptor); 3] = [(&tampered, &good), (&blob, &wrong_digest), (&blob, &wrong_size)];
    for (bytes, desc) in cases {
        let out = tempfile::tempdir().unwrap();
        let err = layer_diff::apply_blob(Cursor::new(bytes), desc, out.path(), &ApplyOptions::default()).unwrap_err();
        assert!(matches!(err, ApplyError::Verify { .. }), "{err}");
        assert!(crate::names(out.path()).is_empty(), "nothing applied");
        let out = tempfile::tempdir().unwrap();
        let err = layer_diff::apply_blob_streaming(bytes, desc, out.path(), &ApplyOptions::default()).unwrap_err();
        assert!(matches!(err, ApplyError::Verify { .. } | ApplyError::Io { .. }), "{err}");
    }
    // the right blob streams fine
    let out = tempfile::tempdir().unwrap();
    layer_diff::apply_blob_streaming(&blob[..], &good, out.path(), &ApplyOptions::default()).unwrap();
    assert_eq!(crate::names(out.path()), ["a", "b"]);
    // a non-layer media type is refused
    let cfg = Descriptor::new(MediaType::OciConfig, good.digest.clone(), good.size);
    let err = layer_diff::apply_blob(Cursor::new(&blob), &cfg, out.path(), &ApplyOptions::default()).unwrap_err();
    assert!(matches!(err, ApplyError::NotALayer { .. }), "{err}");
}

/// `apply_blobs` applies what `apply_blob` applies layer by layer, with the
/// same results, and never writes a byte of a blob that does not verify:
/// the layers before it stay applied, none after it is touched.
#[test]
fn apply_blobs_checks_ahead_and_stops_at_a_bad_blob() {
    let mut layers = Vec::new();
    for (i, c) in [Compression::Gzip, Compression::Zstd, Compression::None].into_iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        make_tree(d.path(), &[["one", "two", "three"][i]]);
        if i == 2 {
            // the top layer rewrites the bottom one's file
            fs::write(d.path().join("one"), b"top").unwrap();
        }
        layers.push(pack(d.path(), &PackOptions { compression: c, ..plain() }));
    }
    let one_by_one = tempfile::tempdir().unwrap();
    let infos: Vec<_> = layers
        .iter()
        .map(|(blob, info)| {
            let desc = info.descriptor();
            layer_diff::apply_blob(Cursor::new(blob), &desc, one_by_one.path(), &ApplyOptions::default()).unwrap()
        })
        .collect();
    let descs: Vec<Descriptor> = layers.iter().map(|(_, info)| info.descriptor()).collect();
    let at_once = tempfile::tempdir().unwrap();
    let blobs = layers.iter().zip(&descs).map(|((blob, _), desc)| (Cursor::new(blob), desc));
    let applied = layer_diff::apply_blobs(blobs, at_once.path(), &ApplyOptions::default()).unwrap();
    assert_eq!(applied, infos);
    assert_eq!(crate::names(at_once.path()), ["one", "three", "two"]);
    assert_eq!(fs::read(at_once.path().join("one")).unwrap(), b"top", "the layers applied in order");
    assert_eq!(crate::names(at_once.path()), crate::names(one_by_one.path()));
    // a bad blob in the middle, then at the bottom
    for bad in [1, 0] {
        let mut bytes: Vec<Vec<u8>> = layers.iter().map(|(b, _)| b.clone()).collect();
        let mid = bytes[bad].len() / 2;
        bytes[bad][mid] ^= 1;
        let out = tempfile::tempdir().unwrap();
        let blobs = bytes.iter().zip(&descs).map(|(b, desc)| (Cursor::new(b), desc));
        let err = layer_diff::apply_blobs(blobs, out.path(), &ApplyOptions::default()).unwrap_err();
        assert!(matches!(&err, ApplyError::Verify { digest, .. } if *digest == descs[bad].digest), "{err}");
        let expected: &[&str] = if bad == 1 { &["one"] } else { &[] };
        assert_eq!(crate::names(out.path()), expected, "layer {bad} bad");
    }
    // a non-layer media type is refused before anything is applied
    let cfg = Descriptor::new(MediaType::OciConfig, descs[1].digest.clone(), descs[1].size);
    let out = tempfile::tempdir().unwrap();
    let blobs = [(Cursor::new(&layers[0].0), &descs[0]), (Cursor::new(&layers[1].0), &cfg)];
    let err = layer_diff::apply_blobs(blobs, out.path(), &ApplyOptions::default()).unwrap_err();
    assert!(matches!(err, ApplyError::NotALayer { .. }), "{err}");
    assert_eq!(crate::names(out.path()), ["one"]);
}

#[test]
fn decompression_bomb_bounded_by_limit() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("zeros"), vec![0u8; 8 << 20]).unwrap();
    for c in [Compression::Gzip, Compression::Zstd] {
        let (blob, info) = pack(src.path(), &PackOptions { compression: c, ..plain() });
        assert!(blob.len() < 1 << 20);
        let out = tempfile::tempdir().unwrap();
        let opts = ApplyOptions { size_limit: Some(1 << 20), ..ApplyOptions::default() };
        let err = layer_diff::apply_blob(Cursor::new(&blob), &info.descriptor(), out.path(), &opts).unwrap_err();
        assert!(matches!(err, ApplyError::TooLarge { limit } if limit == 1 << 20), "{err}");
    }
}

/// A file that shrinks or grows between the walk and the write still gives
/// a well-formed tar: each entry has exactly the size the walk measured
/// (the missing tail zero-filled, the extra bytes left out), and the
/// entries after it are intact. The shrinking file spans several of the
/// writer's 256 KiB read chunks.
#[test]
fn files_changed_after_the_walk_keep_the_tar_well_formed() {
    let d = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..700_000u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
    fs::write(d.path().join("grows"), b"abc").unwrap();
    fs::write(d.path().join("shrinks"), &big).unwrap();
    fs::write(d.path().join("z"), b"after").unwrap();
    let snap = layer_diff::Snapshot::walk(d.path()).unwrap();
    fs::write(d.path().join("grows"), b"abcdefgh").unwrap();
    fs::write(d.path().join("shrinks"), big.get(..300_000).unwrap()).unwrap();
    for threads in [1, 2] {
        let mut w = layer_diff::LayerWriter::new(Vec::new(), &PackOptions { threads, ..plain() }).unwrap();
        for e in snap.entries() {
            w.append(d.path(), e).unwrap();
        }
        let (tar, info) = w.finish().unwrap();
        assert_eq!(info.diff_id, Digest::sha256(&tar));
        let mut ar = tar::Archive::new(&tar[..]);
        let mut got = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut content).unwrap();
            got.push((name, content));
        }
        let mut shrunk = big.get(..300_000).unwrap().to_vec();
        shrunk.resize(big.len(), 0);
        let want = vec![
            ("grows".to_owned(), b"abc".to_vec()),
            ("shrinks".to_owned(), shrunk),
            ("z".to_owned(), b"after".to_vec()),
        ];
        assert_eq!(got, want, "threads {threads}");
    }
}
