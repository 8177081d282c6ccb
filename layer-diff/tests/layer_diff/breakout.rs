//! 4.4 Path traversal and symlink safety on extraction.

use std::fs;

use crate::{Breakout, RawTar, apply_tar, names};

#[test]
fn invalid_filenames_do_not_escape() {
    for name in ["../victim/dotdot", "/../victim/slash-dotdot"] {
        let b = Breakout::new();
        let t = RawTar::new().file(name, "pwned").build();
        // clamped to the root: the file lands inside it
        b.apply(&t).unwrap();
        b.assert_safe();
        assert!(names(&b.root).iter().any(|n| n.starts_with("victim/")), "{name}");
    }
}

#[test]
fn invalid_hardlinks_do_not_escape() {
    let cases: Vec<Vec<u8>> = vec![
        RawTar::new().hardlink("dotdot", "../victim/hello").build(),
        RawTar::new().hardlink("slash-dotdot", "/../victim/hello").build(),
        // a hard link to a directory outside, then writing through it
        RawTar::new().hardlink("loophole-victim", "../victim").file("loophole-victim/file", "pwned").build(),
        // hard link -> symlink, hard link -> hard link through a loophole
        RawTar::new()
            .symlink("symlink", "../victim/hello")
            .hardlink("hardlink-to-symlink", "symlink")
            .file("hardlink-to-symlink", "overwrite")
            .build(),
        RawTar::new()
            .symlink("loophole", "../victim")
            .hardlink("hardlink", "loophole/hello")
            .hardlink("hardlink2", "hardlink")
            .build(),
        // replacing a loophole with a regular file must not delete the victim
        RawTar::new().symlink("loophole", "../victim").file("loophole", "plain").build(),
        RawTar::new().hardlink("loophole-victim", "../victim").file("loophole-victim", "plain").build(),
    ];
    for (i, t) in cases.iter().enumerate() {
        let b = Breakout::new();
        let _ = b.apply(t);
        b.assert_safe();
        let _ = i;
    }
}

#[test]
fn invalid_symlinks_do_not_escape() {
    let cases: Vec<Vec<u8>> = vec![
        RawTar::new().symlink("dotdot", "../victim/hello").file("dotdot", "overwrite").build(),
        RawTar::new().symlink("slash-dotdot", "/../victim").file("slash-dotdot/hello", "overwrite").build(),
        RawTar::new().symlink("loophole-victim", "../victim").file("loophole-victim/file", "new").build(),
        RawTar::new()
            .symlink("symlink", "../victim/hello")
            .symlink("symlink2", "symlink")
            .file("symlink2", "x")
            .build(),
        RawTar::new().symlink("loophole", "/victim").file("loophole/hello", "overwrite").build(),
        RawTar::new()
            .dir("dir/")
            .symlink("dir/loophole", "../../victim")
            .file("dir/loophole/newdir/newfile", "x")
            .build(),
        // chained: a link to a link that leaves the root
        RawTar::new().symlink("a", "b/../../victim").dir("b/").symlink("c", "a").file("c/hello", "overwrite").build(),
        // whiteouts through a loophole must not delete outside
        RawTar::new().symlink("loophole", "../victim").file("loophole/.wh.hello", "").build(),
        RawTar::new().symlink("loophole", "../victim").file("loophole/.wh..wh..opq", "").build(),
    ];
    for t in &cases {
        let b = Breakout::new();
        let _ = b.apply(t);
        b.assert_safe();
    }
}

#[test]
fn sanitise_scoping_clamps_to_root() {
    for name in ["/../file", "../file", "../../../../file", "./../file"] {
        let b = Breakout::new();
        fs::write(b.tmp.path().join("file"), "host").unwrap();
        b.apply(&RawTar::new().file(name, "in root").build()).unwrap();
        assert_eq!(fs::read_to_string(b.root.join("file")).unwrap(), "in root");
        assert_eq!(fs::read_to_string(b.tmp.path().join("file")).unwrap(), "host");
        fs::remove_file(b.tmp.path().join("file")).unwrap();
        b.assert_safe();
    }
}

#[test]
fn symlink_scoping_lands_in_root() {
    let long = format!("/{}", "../".repeat(30));
    for target in ["/", "/../", long.as_str(), "/./.././..", ".."] {
        let b = Breakout::new();
        b.apply(&RawTar::new().symlink("link", target).file("link/file", "x").build()).unwrap();
        assert_eq!(fs::read_to_string(b.root.join("file")).unwrap(), "x", "{target}");
        assert_eq!(fs::read_link(b.root.join("link")).unwrap().to_str(), Some(target));
        b.assert_safe();
    }
}

#[test]
fn absolute_symlinks_stored_and_resolved_chroot_style() {
    let b = Breakout::new();
    let victim = b.victim.display().to_string();
    let t = RawTar::new()
        // stored as is, even pointing at the host's victim path
        .symlink("abs", &victim)
        .file("abs/hello", "inside")
        // CVE-2018-15664 style: a directory symlink to / then writes through it
        .symlink("rootlink", "/")
        .dir("etc/")
        .file("rootlink/etc/passwd", "root-relative")
        // a file named ..gitme is a name, not a traversal
        .file("..gitme", "g")
        .file("sub/..gitme", "g2")
        .build();
    b.apply(&t).unwrap();
    b.assert_safe();
    let r = &b.root;
    assert_eq!(fs::read_link(r.join("abs")).unwrap().display().to_string(), victim);
    // the absolute link resolved with the root as /
    let inside = r.join(victim.trim_start_matches('/')).join("hello");
    assert_eq!(fs::read_to_string(inside).unwrap(), "inside");
    assert_eq!(fs::read_to_string(r.join("etc/passwd")).unwrap(), "root-relative");
    assert_eq!(fs::read_to_string(r.join("..gitme")).unwrap(), "g");
    assert_eq!(fs::read_to_string(r.join("sub/..gitme")).unwrap(), "g2");
    // a symlink loop is an error, not a hang
    let b = Breakout::new();
    let t = RawTar::new().symlink("l1", "l2").symlink("l2", "l1").file("l1/x", "x").build();
    let err = b.apply(&t).unwrap_err();
    assert!(matches!(err, layer_diff::ApplyError::SymlinkLoop { .. }), "{err}");
    b.assert_safe();
}

#[test]
fn non_dir_parent_replaced_and_missing_parents_created() {
    let b = Breakout::new();
    fs::write(b.root.join("parent"), "a file").unwrap();
    let t = RawTar::new().file("parent/child", "c").file("missing/deep/er/file", "m").build();
    b.apply(&t).unwrap();
    assert!(b.root.join("parent").is_dir());
    assert_eq!(fs::read_to_string(b.root.join("parent/child")).unwrap(), "c");
    assert_eq!(fs::read_to_string(b.root.join("missing/deep/er/file")).unwrap(), "m");
    b.assert_safe();
}

#[test]
fn dangling_and_dotdot_symlinks_extract() {
    let root = tempfile::tempdir().unwrap();
    let t = RawTar::new().symlink("dangling", "./nothing").symlink("up", "..").symlink("dir/up2", "../..").build();
    apply_tar(&t, root.path()).unwrap();
    assert_eq!(fs::read_link(root.path().join("dangling")).unwrap().to_str(), Some("./nothing"));
    assert_eq!(fs::read_link(root.path().join("up")).unwrap().to_str(), Some(".."));
    assert_eq!(fs::read_link(root.path().join("dir/up2")).unwrap().to_str(), Some("../.."));
}
