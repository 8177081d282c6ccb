//! 4.1 Whiteouts and opaque dirs.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use layer_diff::{ApplyError, ApplyOptions, Change, ChangeKind, LayerError, OverlayXattrs, Snapshot};

use crate::{RawTar, apply_tar, is_root, make_tree, names, pack, plain, tar_names, tar_of, untar_bytes};

fn set_times(p: &Path, atime: i64, mtime: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: atime, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: mtime, tv_nsec: 0 },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn times(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.atime(), m.mtime())
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[test]
fn whiteout_names_and_aufs_metadata() {
    // our writer produces `.wh.<name>` and `<dir>/.wh..wh..opq`
    let d = tempfile::tempdir().unwrap();
    make_tree(d.path(), &["dir/", "dir/f"]);
    let snap = Snapshot::walk(d.path()).unwrap();
    let changes = vec![
        Change::opaque("dir"),
        Change::new("dir/f", ChangeKind::Add),
        Change::new("dir/gone", ChangeKind::Delete),
        Change::new("old", ChangeKind::Delete),
    ];
    let (tar, _) = layer_diff::pack_changes(&snap, &changes, Vec::new(), &plain()).unwrap();
    let got: Vec<String> = tar_names(&tar).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(got, ["dir/", "dir/.wh..wh..opq", "dir/f", "dir/.wh.gone", ".wh.old"]);
    // AUFS's hard-link directory and other .wh..wh. metadata are never extracted
    let root = tempfile::tempdir().unwrap();
    let t = RawTar::new()
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/1234.5678", "x")
        .file(".wh..wh.aufs", "")
        .file("keep", "k")
        .build();
    apply_tar(&t, root.path()).unwrap();
    assert_eq!(names(root.path()), ["keep"]);
}

#[test]
fn sequential_apply_whiteouts() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let base = [
        ".baz",
        "bar/",
        "bar/bax",
        "bar/bay/",
        "baz",
        "foo/",
        "foo/.abc",
        "foo/.bcd/",
        "foo/.bcd/a",
        "foo/cde/",
        "foo/cde/def",
        "foo/cde/efg",
        "foo/fgh",
        "foobar",
    ];
    apply_tar(&tar_of(&base), r).unwrap();
    assert_eq!(names(r), sorted(&base));

    apply_tar(&tar_of(&[".bay", ".wh.baz", "foo/", "foo/.bce", "foo/.wh..wh..opq", "foo/cde/", "foo/cde/efg"]), r)
        .unwrap();
    assert_eq!(
        names(r),
        sorted(&[
            ".bay",
            ".baz",
            "bar/",
            "bar/bax",
            "bar/bay/",
            "foo/",
            "foo/.bce",
            "foo/cde/",
            "foo/cde/efg",
            "foobar"
        ])
    );

    apply_tar(&tar_of(&[".bay", ".wh..baz", ".wh.foobar", "foo/", "foo/.abc", "foo/.wh.cde", "bar/"]), r).unwrap();
    assert_eq!(names(r), sorted(&[".bay", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.abc", "foo/.bce"]));

    apply_tar(&tar_of(&[".abc", ".wh..wh..opq", "foobar"]), r).unwrap();
    assert_eq!(names(r), sorted(&[".abc", "foobar"]));
}

#[test]
fn unpack_entry_whiteout() {
    for parent in ["", "some/nested/dir"] {
        for (target, is_dir) in [("file", false), (".hidden", false), ("dir", true), (".hiddendir", true)] {
            let root = tempfile::tempdir().unwrap();
            let pdir = root.path().join(parent);
            fs::create_dir_all(&pdir).unwrap();
            let t = pdir.join(target);
            if is_dir {
                fs::create_dir(&t).unwrap();
                fs::write(t.join("content"), "c").unwrap();
                fs::create_dir(t.join("sub")).unwrap();
            } else {
                fs::write(&t, "x").unwrap();
            }
            fs::write(pdir.join("other"), "o").unwrap();
            set_times(&pdir, 1_111, 2_222);
            let name = if parent.is_empty() { format!(".wh.{target}") } else { format!("{parent}/.wh.{target}") };
            apply_tar(&RawTar::new().file(&name, "").build(), root.path()).unwrap();
            assert!(fs::symlink_metadata(&t).is_err(), "{name} did not remove {target}");
            assert!(pdir.join("other").exists());
            assert_eq!(times(&pdir), (1_111, 2_222), "parent times of {name}");
        }
    }
    for bad in [".wh.", "sub/.wh."] {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("sub")).unwrap();
        let err = apply_tar(&RawTar::new().file(bad, "").build(), root.path()).unwrap_err();
        assert!(matches!(err, ApplyError::EmptyWhiteout { .. }), "{bad}: {err}");
    }
}

#[test]
fn unpack_opaque_whiteout() {
    let lower = |r: &Path| {
        make_tree(r, &["dir/a", "dir/.hidden", "dir/deep/er/file", "dir/sub/", "outside"]);
        std::os::unix::fs::symlink("..", r.join("dir/dotdot")).unwrap();
        std::os::unix::fs::symlink("./nothing", r.join("dir/dangling")).unwrap();
    };
    // no upper: everything under dir goes, dir itself and its metadata stay
    let root = tempfile::tempdir().unwrap();
    lower(root.path());
    fs::set_permissions(root.path().join("dir"), fs::Permissions::from_mode(0o711)).unwrap();
    set_times(&root.path().join("dir"), 3_333, 4_444);
    apply_tar(&RawTar::new().file("dir/.wh..wh..opq", "").build(), root.path()).unwrap();
    // (times first: listing the directory updates its atime)
    assert_eq!(times(&root.path().join("dir")), (3_333, 4_444));
    assert_eq!(names(root.path()), ["dir/", "outside"]);
    assert_eq!(fs::metadata(root.path().join("dir")).unwrap().permissions().mode() & 0o7777, 0o711);

    // with upper entries in the same layer, before and after the marker
    let root = tempfile::tempdir().unwrap();
    lower(root.path());
    let t = RawTar::new()
        .file("dir/.before", "b")
        .file("dir/.wh..wh..opq", "")
        .dir("dir/deep/")
        .file("dir/deep/new", "n")
        .symlink("dir/dotdot", "..")
        .build();
    apply_tar(&t, root.path()).unwrap();
    assert_eq!(names(root.path()), ["dir/", "dir/.before", "dir/deep/", "dir/deep/new", "dir/dotdot", "outside"]);

    // an opaque root
    let root = tempfile::tempdir().unwrap();
    lower(root.path());
    apply_tar(&RawTar::new().file(".wh..wh..opq", "").file("top", "t").build(), root.path()).unwrap();
    assert_eq!(names(root.path()), ["top"]);
}

#[test]
fn repack_rejects_whiteout_names() {
    for make in [
        |p: &Path| fs::write(p.join(".wh.file"), "x").unwrap(),
        |p: &Path| fs::create_dir_all(p.join("sub/.wh.dir")).unwrap(),
        |p: &Path| fs::write(p.join(".wh..wh..opq"), "").unwrap(),
    ] {
        let d = tempfile::tempdir().unwrap();
        make_tree(d.path(), &["ok"]);
        make(d.path());
        let err = layer_diff::pack_dir(d.path(), Vec::new(), &plain()).unwrap_err();
        assert!(matches!(err, LayerError::ReservedName { .. }), "{err}");
        // and in a diff layer
        let lower = tempfile::tempdir().unwrap();
        let err = layer_diff::pack_diff(lower.path(), d.path(), Vec::new(), &plain()).unwrap_err();
        assert!(matches!(err, LayerError::ReservedName { .. }), "{err}");
    }
}

#[test]
fn insert_opaque_and_whiteout() {
    let base = |r: &Path| make_tree(r, &["etc/foo/a", "etc/foo/b", "etc/passwd", "etc/dir/x"]);
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), &["c"]);
    let snap = Snapshot::walk(src.path()).unwrap();
    let insert = |opaque: bool| {
        let mut changes = vec![Change::new("c", ChangeKind::Add)];
        if opaque {
            changes.insert(0, Change::opaque(""));
        }
        let opts = layer_diff::PackOptions { prefix: Some("etc/foo".into()), ..plain() };
        layer_diff::pack_changes(&snap, &changes, Vec::new(), &opts).unwrap().0
    };
    // --opaque: the old contents are not merged
    let root = tempfile::tempdir().unwrap();
    base(root.path());
    apply_tar(&insert(true), root.path()).unwrap();
    assert_eq!(names(&root.path().join("etc/foo")), ["c"]);
    // without it they are
    let root = tempfile::tempdir().unwrap();
    base(root.path());
    apply_tar(&insert(false), root.path()).unwrap();
    assert_eq!(names(&root.path().join("etc/foo")), ["a", "b", "c"]);
    // --opaque on a file does nothing
    let file_src = tempfile::tempdir().unwrap();
    make_tree(file_src.path(), &["passwd"]);
    let fsnap = Snapshot::walk(file_src.path()).unwrap();
    let mut c = Change::opaque("passwd");
    c.kind = ChangeKind::Add;
    let opts = layer_diff::PackOptions { prefix: Some("etc".into()), ..plain() };
    let (tar, _) = layer_diff::pack_changes(&fsnap, &[c], Vec::new(), &opts).unwrap();
    let got: Vec<String> = tar_names(&tar).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(got, ["etc/passwd"]);
    // --whiteout removes a file or a directory in a new layer
    let root = tempfile::tempdir().unwrap();
    base(root.path());
    let empty = tempfile::tempdir().unwrap();
    let esnap = Snapshot::walk(empty.path()).unwrap();
    let changes = [Change::new("etc/passwd", ChangeKind::Delete), Change::new("etc/dir", ChangeKind::Delete)];
    let (tar, _) = layer_diff::pack_changes(&esnap, &changes, Vec::new(), &plain()).unwrap();
    apply_tar(&tar, root.path()).unwrap();
    assert_eq!(names(&root.path().join("etc")), ["foo/", "foo/a", "foo/b"]);
}

#[test]
fn overlayfs_forms_convert_both_ways() {
    let upper = tempfile::tempdir().unwrap();
    let u = upper.path();
    make_tree(u, &["opq/new", "uopq/", "plain/keep", "xw"]);
    fs::set_permissions(u.join("opq"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(u.join("uopq"), fs::Permissions::from_mode(0o750)).unwrap();
    xattr::set(u.join("uopq"), "user.overlay.opaque", b"y").unwrap();
    let root = is_root();
    if root {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            u.join("plain/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
        xattr::set(u.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
        xattr::set(u.join("xw"), "trusted.overlay.whiteout", b"").unwrap();
    } else {
        xattr::set(u.join("opq"), "user.overlay.opaque", b"y").unwrap();
        xattr::set(u.join("xw"), "user.overlay.whiteout", b"").unwrap();
    }
    let (tar, info) = layer_diff::pack_overlay(u, Vec::new(), &plain()).unwrap();
    let got: Vec<String> = tar_names(&tar).into_iter().map(|(n, _, _)| n).collect();
    let mut want = vec![
        "opq/",
        "opq/.wh..wh..opq",
        "opq/new",
        "plain/",
        "plain/.wh.gone",
        "plain/keep",
        "uopq/",
        "uopq/.wh..wh..opq",
        ".wh.xw",
    ];
    if !root {
        want.retain(|n| *n != "plain/.wh.gone");
    }
    assert_eq!(got, want);
    // modes survive, overlay xattrs do not go into the layer
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if name == "opq/" {
            assert_eq!(e.header().mode().unwrap(), 0o700);
        }
        if name == "uopq/" {
            assert_eq!(e.header().mode().unwrap(), 0o750);
        }
        if let Some(pax) = e.pax_extensions().unwrap() {
            for r in pax {
                assert!(!r.unwrap().key().unwrap().contains("overlay"), "{name}");
            }
        }
    }
    // back to overlay form: whiteouts as char 0:0, opaque as xattr, modes kept
    let ns = if root { OverlayXattrs::Trusted } else { OverlayXattrs::User };
    let out = tempfile::tempdir().unwrap();
    let opts = ApplyOptions { overlay: Some(ns), ..ApplyOptions::default() };
    layer_diff::apply_blob(std::io::Cursor::new(&tar), &info.descriptor(), out.path(), &opts).unwrap();
    let o = out.path();
    let attr = if root { "trusted.overlay.opaque" } else { "user.overlay.opaque" };
    for (dir, mode) in [("opq", 0o700), ("uopq", 0o750)] {
        assert_eq!(xattr::get(o.join(dir), attr).unwrap().as_deref(), Some(&b"y"[..]), "{dir}");
        assert_eq!(fs::metadata(o.join(dir)).unwrap().permissions().mode() & 0o7777, mode, "{dir}");
    }
    let wh = fs::symlink_metadata(o.join("xw")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    // and the overlay form packs to the same layer again (modulo the opaque namespace)
    let (tar2, _) = layer_diff::pack_overlay(o, Vec::new(), &plain()).unwrap();
    let got2: Vec<String> = tar_names(&tar2).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(got2, want);
    // nested whiteouts with missing parents create the parents in overlay form
    let out = tempfile::tempdir().unwrap();
    let t = RawTar::new().file("a/b/.wh.c", "").build();
    layer_diff::apply_tar(&t[..], out.path(), &opts).unwrap();
    let c = fs::symlink_metadata(out.path().join("a/b/c")).unwrap();
    assert!(c.file_type().is_char_device());
    let _ = untar_bytes;
}

#[test]
fn overlay_and_selinux_xattrs_filtered() {
    let d = tempfile::tempdir().unwrap();
    make_tree(d.path(), &["f"]);
    let f = d.path().join("f");
    xattr::set(&f, "user.keep", b"1").unwrap();
    xattr::set(&f, "user.overlay.origin", b"x").unwrap();
    if is_root() {
        xattr::set(&f, "trusted.overlay.redirect", b"x").unwrap();
    }
    let (tar, _) = pack(d.path(), &plain());
    let mut ar = tar::Archive::new(&tar[..]);
    let mut keys = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if let Some(pax) = e.pax_extensions().unwrap() {
            keys.extend(pax.map(|r| r.unwrap().key().unwrap().to_owned()));
        }
    }
    assert_eq!(keys, ["SCHILY.xattr.user.keep"]);
    // a layer's security.selinux or system.nfs4_acl is never written to the tree
    let root = tempfile::tempdir().unwrap();
    let t = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.security.selinux", b"system_u:object_r:etc_t:s0"),
            ("SCHILY.xattr.system.nfs4_acl", b"\x00\x00"),
            ("SCHILY.xattr.user.ok", b"v"),
        ])
        .file("g", "g")
        .build();
    apply_tar(&t, root.path()).unwrap();
    let g = root.path().join("g");
    assert_eq!(xattr::get(&g, "user.ok").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(xattr::get(&g, "security.selinux").unwrap(), None);
    assert!(!layer_diff::keep_xattr("system.nfs4_acl"));
}
