//! 4.2 Diff generation (changes).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use layer_diff::{Change, ChangeKind, PackOptions, Snapshot, changes_size, diff};
use oci_image::Compression;

use crate::{make_tree, names, pack, plain};

/// A lower tree and a copy of it (times kept) to mutate as the upper.
fn pair() -> (tempfile::TempDir, tempfile::TempDir) {
    let lower = tempfile::tempdir().unwrap();
    make_tree(lower.path(), &["dir1/", "dir2/file2", "dir3/file3", "dir3/sub/deep", "file1", "file4", "sym-dir/"]);
    std::os::unix::fs::symlink("file1", lower.path().join("symlink1")).unwrap();
    std::os::unix::fs::symlink("aaa", lower.path().join("symlink2")).unwrap();
    for (p, t) in [("dir1", 100), ("dir2", 100), ("dir3", 100), ("dir3/sub", 100), ("", 100)] {
        set_mtime(&lower.path().join(p), t);
    }
    for p in ["dir2/file2", "dir3/file3", "dir3/sub/deep", "file1", "file4"] {
        set_mtime(&lower.path().join(p), 100);
    }
    let upper = tempfile::tempdir().unwrap();
    let status =
        Command::new("cp").arg("-a").arg(format!("{}/.", lower.path().display())).arg(upper.path()).status().unwrap();
    assert!(status.success());
    (lower, upper)
}

fn set_mtime(p: &Path, t: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: t, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: t, tv_nsec: 0 },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn changes(lower: &Path, upper: &Path) -> Vec<(String, ChangeKind)> {
    let lo = Snapshot::walk(lower).unwrap();
    let up = Snapshot::walk(upper).unwrap();
    diff(&lo, &up).unwrap().into_iter().map(|c| (c.path.to_string_lossy().into_owned(), c.kind)).collect()
}

fn has(list: &[(String, ChangeKind)], path: &str, kind: ChangeKind) -> bool {
    list.iter().any(|(p, k)| p == path && *k == kind)
}

#[test]
fn deleted_file_dir_or_symlink_is_delete() {
    let (lo, up) = pair();
    fs::remove_file(up.path().join("file1")).unwrap();
    fs::remove_dir_all(up.path().join("dir3")).unwrap();
    fs::remove_file(up.path().join("symlink1")).unwrap();
    let c = changes(lo.path(), up.path());
    assert_eq!(
        c,
        [
            ("dir3".to_owned(), ChangeKind::Delete),
            ("file1".to_owned(), ChangeKind::Delete),
            ("symlink1".to_owned(), ChangeKind::Delete)
        ]
    );
}

#[test]
fn rewritten_file_is_modify() {
    let (lo, up) = pair();
    fs::write(up.path().join("file1"), "other content").unwrap();
    assert_eq!(changes(lo.path(), up.path()), [("file1".to_owned(), ChangeKind::Modify)]);
    // same size, same mtime, new content: the content comparison decides
    let (lo, up) = pair();
    fs::write(up.path().join("file4"), "FILE4").unwrap();
    set_mtime(&up.path().join("file4"), 100);
    assert_eq!(changes(lo.path(), up.path()), [("file4".to_owned(), ChangeKind::Modify)]);
}

#[test]
fn file_with_new_content_and_mode_is_modify() {
    let (lo, up) = pair();
    let f = up.path().join("dir2/file2");
    fs::write(&f, "new").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o700)).unwrap();
    set_mtime(&up.path().join("dir2"), 100);
    assert_eq!(
        changes(lo.path(), up.path()),
        [("dir2".to_owned(), ChangeKind::Modify), ("dir2/file2".to_owned(), ChangeKind::Modify)]
    );
}

#[test]
fn touched_file_is_modify() {
    let (lo, up) = pair();
    set_mtime(&up.path().join("file4"), 200);
    assert_eq!(changes(lo.path(), up.path()), [("file4".to_owned(), ChangeKind::Modify)]);
}

#[test]
fn file_dir_swaps_are_modify() {
    let (lo, up) = pair();
    fs::remove_file(up.path().join("file1")).unwrap();
    fs::create_dir(up.path().join("file1")).unwrap();
    fs::remove_dir_all(up.path().join("dir3")).unwrap();
    fs::write(up.path().join("dir3"), "now a file").unwrap();
    let c = changes(lo.path(), up.path());
    assert!(has(&c, "file1", ChangeKind::Modify), "{c:?}");
    assert!(has(&c, "dir3", ChangeKind::Modify), "{c:?}");
    // the old children of dir3 are covered by the replacement
    assert!(!c.iter().any(|(p, _)| p.starts_with("dir3/")), "{c:?}");
    // and applying the layer over the lower tree gives the upper tree
    let (tar, _) = layer_diff::pack_diff(lo.path(), up.path(), Vec::new(), &plain()).unwrap();
    crate::apply_tar(&tar, lo.path()).unwrap();
    assert_eq!(crate::describe(lo.path(), false), crate::describe(up.path(), false));
}

#[test]
fn symlink_retarget_same_size_and_times_is_modify() {
    let (lo, up) = pair();
    let l = up.path().join("symlink2");
    fs::remove_file(&l).unwrap();
    std::os::unix::fs::symlink("bbb", &l).unwrap();
    set_mtime(&l, 100);
    set_mtime(&lo.path().join("symlink2"), 100);
    set_mtime(up.path(), 100);
    assert_eq!(changes(lo.path(), up.path()), [("symlink2".to_owned(), ChangeKind::Modify)]);
}

#[test]
fn touched_dir_is_modify() {
    let (lo, up) = pair();
    set_mtime(&up.path().join("dir1"), 300);
    assert_eq!(changes(lo.path(), up.path()), [("dir1".to_owned(), ChangeKind::Modify)]);
}

#[test]
fn new_file_dir_or_symlink_is_add() {
    let (lo, up) = pair();
    fs::write(up.path().join("newfile"), "n").unwrap();
    fs::create_dir(up.path().join("newdir")).unwrap();
    std::os::unix::fs::symlink("newfile", up.path().join("newlink")).unwrap();
    let c = changes(lo.path(), up.path());
    for p in ["newfile", "newdir", "newlink"] {
        assert!(has(&c, p, ChangeKind::Add), "{p}: {c:?}");
    }
}

#[test]
fn changes_under_subdir_report_parents_as_modify() {
    let (lo, up) = pair();
    fs::write(up.path().join("dir3/sub/deep"), "changed!").unwrap();
    // keep the directories' own times so only the parent rule can report them
    set_mtime(&up.path().join("dir3/sub"), 100);
    set_mtime(&up.path().join("dir3"), 100);
    let c = changes(lo.path(), up.path());
    assert_eq!(
        c,
        [
            ("dir3".to_owned(), ChangeKind::Modify),
            ("dir3/sub".to_owned(), ChangeKind::Modify),
            ("dir3/sub/deep".to_owned(), ChangeKind::Modify)
        ]
    );
}

#[test]
fn changes_size_counts_hardlinks_once_and_deletes_zero() {
    let (lo, up) = pair();
    fs::write(up.path().join("big"), vec![b'x'; 1000]).unwrap();
    fs::hard_link(up.path().join("big"), up.path().join("big2")).unwrap();
    fs::hard_link(up.path().join("big"), up.path().join("dir1/big3")).unwrap();
    let lo_s = Snapshot::walk(lo.path()).unwrap();
    let up_s = Snapshot::walk(up.path()).unwrap();
    let c = diff(&lo_s, &up_s).unwrap();
    assert_eq!(changes_size(&up_s, &c), 1000);
    let (lo, up) = pair();
    fs::remove_file(up.path().join("file1")).unwrap();
    let lo_s = Snapshot::walk(lo.path()).unwrap();
    let up_s = Snapshot::walk(up.path()).unwrap();
    let c: Vec<Change> = diff(&lo_s, &up_s).unwrap().into_iter().filter(|c| c.kind == ChangeKind::Delete).collect();
    assert_eq!(c.len(), 1);
    assert_eq!(changes_size(&up_s, &c), 0);
}

#[test]
fn hardlink_order_does_not_matter() {
    let make = |first: &str, second: &str| {
        let d = tempfile::tempdir().unwrap();
        make_tree(d.path(), &["d/"]);
        fs::write(d.path().join(first), "shared").unwrap();
        fs::hard_link(d.path().join(first), d.path().join(second)).unwrap();
        d
    };
    let a = make("a", "d/b");
    let b = make("d/b", "a");
    let opts = plain();
    let (ta, ia) = pack(a.path(), &opts);
    let (_, ib) = pack(b.path(), &opts);
    assert_eq!(ia.diff_id, ib.diff_id);
    let n = crate::tar_names(&ta);
    assert_eq!(n[0], ("a".to_owned(), tar::EntryType::Regular, None));
    assert_eq!(n[2], ("d/b".to_owned(), tar::EntryType::Link, Some("a".to_owned())));
}

#[test]
fn repack_with_no_changes_adds_no_layer() {
    let (lo, up) = pair();
    assert!(changes(lo.path(), up.path()).is_empty());
    // the same tree against itself
    assert!(changes(lo.path(), lo.path()).is_empty());
    // an image's layers stay as many: the caller adds a layer only for a non-empty diff
    let layers = usize::from(!changes(lo.path(), up.path()).is_empty());
    assert_eq!(layers, 0);
    let _ = names;
}

/// Many same-size, same-mtime files in two trees (so every one needs a
/// content comparison, shared between two threads): exactly the rewritten
/// ones are changes, in path order, each after its parents.
#[test]
fn content_comparisons_find_exactly_the_rewritten_files() {
    let lo = tempfile::tempdir().unwrap();
    for d in 0..7 {
        fs::create_dir(lo.path().join(format!("d{d}"))).unwrap();
        for f in 0..40 {
            let p = lo.path().join(format!("d{d}/f{f:02}"));
            fs::write(&p, format!("{d}-{f:02}-").repeat(100 + f)).unwrap();
            set_mtime(&p, 100);
        }
        set_mtime(&lo.path().join(format!("d{d}")), 100);
    }
    set_mtime(lo.path(), 100);
    let up = tempfile::tempdir().unwrap();
    let status =
        Command::new("cp").arg("-a").arg(format!("{}/.", lo.path().display())).arg(up.path()).status().unwrap();
    assert!(status.success());
    // same size, same mtime, other bytes: only the contents tell
    let rewritten = ["d0/f00", "d2/f17", "d2/f18", "d6/f39"];
    for p in rewritten {
        let full = up.path().join(p);
        let mut bytes = fs::read(&full).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&full, bytes).unwrap();
        set_mtime(&full, 100);
    }
    let c = changes(lo.path(), up.path());
    let want: Vec<(String, ChangeKind)> = ["d0", "d0/f00", "d2", "d2/f17", "d2/f18", "d6", "d6/f39"]
        .iter()
        .map(|p| ((*p).to_owned(), ChangeKind::Modify))
        .collect();
    assert_eq!(c, want);
    // and the layer streamed by pack_diff holds the same entries in the same order
    let (tar, _) = layer_diff::pack_diff(lo.path(), up.path(), Vec::new(), &plain()).unwrap();
    let in_tar: Vec<String> = crate::tar_names(&tar).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(in_tar, ["d0/", "d0/f00", "d2/", "d2/f17", "d2/f18", "d6/", "d6/f39"]);
}

/// A file that vanishes between the walk and the content comparison is an
/// error naming it, not a silent "unchanged".
#[test]
fn unreadable_file_during_comparison_is_an_error() {
    let (lo, up) = pair();
    let lo_s = Snapshot::walk(lo.path()).unwrap();
    let up_s = Snapshot::walk(up.path()).unwrap();
    fs::remove_file(up.path().join("file4")).unwrap();
    let err = diff(&lo_s, &up_s).unwrap_err();
    assert!(err.to_string().contains("file4"), "{err}");
}

/// A writer that fails once it has taken its budget of bytes.
struct Fails(usize);

impl std::io::Write for Fails {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 < buf.len() {
            return Err(std::io::Error::other("disk full"));
        }
        self.0 -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A layer writer that fails stops `pack_diff` and `pack_dir` with the
/// write error (the comparing or walking thread stops too; nothing hangs).
#[test]
fn failing_writer_stops_a_streamed_diff_or_walk() {
    let lo = tempfile::tempdir().unwrap();
    let up = tempfile::tempdir().unwrap();
    for i in 0..300 {
        fs::write(up.path().join(format!("f{i:03}")), vec![b'x'; 4096]).unwrap();
    }
    for result in [
        layer_diff::pack_diff(lo.path(), up.path(), Fails(64 * 1024), &plain()),
        layer_diff::pack_dir(up.path(), Fails(64 * 1024), &plain()),
    ] {
        let Err(err) = result else {
            panic!("a failing writer must fail the layer");
        };
        assert!(matches!(err, layer_diff::LayerError::Io { .. }), "{err:?}");
        assert!(format!("{err:?}").contains("disk full"), "{err:?}");
    }
}

/// `pack_dir` writes entries while the walk goes on: the layer is the same
/// as one written from a finished snapshot, for any compression and thread
/// count (several batches of entries, hard links, symlinks, nested dirs).
#[test]
fn whole_tree_streamed_from_the_walk_matches_the_snapshot() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..150 {
        let p = d.path().join(format!("d{}/s{}/f{i:03}", i % 7, i % 3));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![u8::try_from(i).unwrap(); i * 97]).unwrap();
    }
    fs::hard_link(d.path().join("d0/s0/f000"), d.path().join("d6/link")).unwrap();
    fs::hard_link(d.path().join("d0/s0/f000"), d.path().join("a-link")).unwrap();
    std::os::unix::fs::symlink("d1", d.path().join("sym")).unwrap();
    for (compression, threads) in [(Compression::None, 1), (Compression::Gzip, 2), (Compression::Zstd, 3)] {
        let opts = PackOptions { compression, threads, ..plain() };
        let snap = Snapshot::walk(d.path()).unwrap();
        let mut lw = layer_diff::LayerWriter::new(Vec::new(), &opts).unwrap();
        for e in snap.entries() {
            lw.append(d.path(), e).unwrap();
        }
        let (want, want_info) = lw.finish().unwrap();
        let (got, info) = pack(d.path(), &opts);
        assert_eq!(info, want_info, "{compression:?} on {threads} threads");
        assert!(got == want, "{compression:?} on {threads} threads: same bytes");
    }
    let (tar, _) = pack(d.path(), &plain());
    let links: Vec<_> = crate::tar_names(&tar).into_iter().filter(|(_, t, _)| *t == tar::EntryType::Link).collect();
    assert_eq!(links.len(), 2, "{links:?}");
}

/// A walk that fails part way through a tree fails the layer with the
/// walk's error, naming the directory (here: a path longer than the kernel
/// takes, below entries already written).
#[test]
fn walk_error_after_entries_were_written_fails_the_layer() {
    use rustix::fs::{Mode, OFlags};
    let d = tempfile::tempdir().unwrap();
    for i in 0..200 {
        fs::write(d.path().join(format!("a{i:03}")), "x").unwrap();
    }
    // z/nnn.../nnn... 20 levels deep: over PATH_MAX from the root, made one level at a time
    let name = "n".repeat(250);
    fs::create_dir(d.path().join("z")).unwrap();
    let mut dir = rustix::fs::open(d.path().join("z"), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for _ in 0..20 {
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, name.as_str(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    }
    for (compression, threads) in [(Compression::None, 1), (Compression::Zstd, 2)] {
        let err =
            layer_diff::pack_dir(d.path(), Vec::new(), &PackOptions { compression, threads, ..plain() }).unwrap_err();
        assert!(matches!(err, layer_diff::LayerError::Snapshot(_)), "{err:?}");
        assert!(err.to_string().contains("nnnnnnnn"), "{err}");
    }
}
