//! 4.3 Hard links.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use layer_diff::PackOptions;

use crate::{RawTar, apply, apply_tar, make_tree, pack, plain, tar_names};

#[test]
fn tar_hardlinks_point_at_first_path_even_rebased() {
    let d = tempfile::tempdir().unwrap();
    make_tree(d.path(), &["a/", "z/"]);
    fs::write(d.path().join("a/first"), "data").unwrap();
    for l in ["a/second", "b-third", "z/fourth"] {
        fs::hard_link(d.path().join("a/first"), d.path().join(l)).unwrap();
    }
    for (prefix, want_first) in [(None, "a/first"), (Some("rebased/dir"), "rebased/dir/a/first")] {
        let opts = PackOptions { prefix: prefix.map(Into::into), ..plain() };
        let (tar, _) = pack(d.path(), &opts);
        let entries = tar_names(&tar);
        let regular: Vec<_> = entries.iter().filter(|e| e.1 == tar::EntryType::Regular).collect();
        assert_eq!(regular.len(), 1);
        assert_eq!(regular[0].0, want_first);
        let links: Vec<_> = entries.iter().filter(|e| e.1 == tar::EntryType::Link).collect();
        assert_eq!(links.len(), 3);
        for l in links {
            // never a link to a link: always the first (regular) path
            assert_eq!(l.2.as_deref(), Some(want_first), "{l:?}");
        }
    }
}

#[test]
fn hardlinks_roundtrip_share_inode_and_nlink() {
    let d = tempfile::tempdir().unwrap();
    make_tree(d.path(), &["x/", "y/"]);
    fs::write(d.path().join("x/file"), "content").unwrap();
    fs::hard_link(d.path().join("x/file"), d.path().join("y/file-link")).unwrap();
    fs::hard_link(d.path().join("x/file"), d.path().join("file-link2")).unwrap();
    std::os::unix::fs::symlink("../../../x", d.path().join("x/sym")).unwrap();
    fs::hard_link(d.path().join("x/sym"), d.path().join("y/sym-link")).unwrap();
    for compression in [oci_image::Compression::Gzip, oci_image::Compression::Zstd] {
        let (blob, info) = pack(d.path(), &PackOptions { compression, ..plain() });
        let out = tempfile::tempdir().unwrap();
        apply(&blob, &info, out.path());
        let o = out.path();
        let a = fs::metadata(o.join("x/file")).unwrap();
        for l in ["y/file-link", "file-link2"] {
            let m = fs::metadata(o.join(l)).unwrap();
            assert_eq!((m.ino(), m.nlink()), (a.ino(), 3), "{l}");
        }
        // a hard link to a symlink links the symlink itself
        let s1 = fs::symlink_metadata(o.join("x/sym")).unwrap();
        let s2 = fs::symlink_metadata(o.join("y/sym-link")).unwrap();
        assert!(s2.file_type().is_symlink());
        assert_eq!((s1.ino(), s1.nlink()), (s2.ino(), 2));
        assert_eq!(fs::read_link(o.join("y/sym-link")).unwrap().to_str(), Some("../../../x"));
    }
}

#[test]
fn unpack_hardlink_absolute_metadata_and_symlink() {
    let root = tempfile::tempdir().unwrap();
    let t = RawTar::new()
        .entry("regfile", tar::EntryType::Regular, "", b"regular", 0o644)
        // an absolute link name resolves inside the rootfs
        .entry("abs-link", tar::EntryType::Link, "/regfile", b"", 0o777)
        .symlink("sym", "../../../x")
        .hardlink("sym-hard", "sym")
        .build();
    apply_tar(&t, root.path()).unwrap();
    let r = root.path();
    let f = fs::metadata(r.join("regfile")).unwrap();
    let l = fs::metadata(r.join("abs-link")).unwrap();
    assert_eq!(f.ino(), l.ino());
    // the hard link's own mode (0777), mtime and owner are not applied
    assert_eq!(l.permissions().mode() & 0o7777, 0o644);
    assert_eq!(l.mtime(), 1_000);
    let s = fs::symlink_metadata(r.join("sym-hard")).unwrap();
    assert!(s.file_type().is_symlink());
    assert_eq!(s.ino(), fs::symlink_metadata(r.join("sym")).unwrap().ino());
    assert_eq!(fs::read_link(r.join("sym-hard")).unwrap().to_str(), Some("../../../x"));
}
