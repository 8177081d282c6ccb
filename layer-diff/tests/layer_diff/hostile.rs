//! Issue 8: a corpus of hostile layers, generated here, applied through every
//! entry point (`apply_tar`, `apply_blob`, `apply_blob_streaming`). Each one
//! is refused (an error of the expected kind) or contained (applied inside
//! the root), and everything outside the root -- a victim directory beside it
//! with files, a nested directory, a private directory and a symlink -- stays
//! byte-for-byte and inode-for-inode unchanged (a tree walk before and after
//! compares type, mode, owner, size, mtime, ctime, inode, link count, content
//! and link target).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use layer_diff::{ApplyError, ApplyInfo, ApplyOptions};
use oci_image::{Descriptor, Digest, MediaType};

use crate::{RawTar, is_root};

/// `tmp/root` (where layers go) beside `tmp/victim` and `tmp/sibling`.
struct Arena {
    tmp: tempfile::TempDir,
    root: PathBuf,
    victim: PathBuf,
    before: BTreeMap<String, String>,
}

impl Arena {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let victim = tmp.path().join("victim");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(victim.join("sub")).unwrap();
        fs::write(victim.join("hello"), "hello").unwrap();
        fs::write(victim.join("sub/deep"), "deep").unwrap();
        fs::create_dir(victim.join("private")).unwrap();
        fs::write(victim.join("private/secret"), "secret").unwrap();
        fs::set_permissions(victim.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("hello", victim.join("link")).unwrap();
        fs::write(tmp.path().join("sibling"), "sibling").unwrap();
        let mut a = Arena { tmp, root, victim, before: BTreeMap::new() };
        a.before = a.outside();
        a
    }

    /// Every path under the temp dir except the root's contents, with
    /// everything that a write, chmod, chown, link, unlink or touch changes.
    fn outside(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(self.tmp.path(), self.tmp.path(), &self.root, &mut out);
        out
    }

    /// Nothing outside the root changed.
    fn assert_untouched(&self, case: &str) {
        let after = self.outside();
        assert_eq!(self.before, after, "{case}: something outside the root changed");
    }

    fn victim_abs(&self) -> String {
        self.victim.display().to_string()
    }

    /// Bytes in regular files under the root.
    fn bytes_in_root(&self) -> u64 {
        fn sum(dir: &Path) -> u64 {
            let mut n = 0;
            for e in fs::read_dir(dir).unwrap() {
                let m = fs::symlink_metadata(e.unwrap().path()).unwrap();
                n += if m.is_dir() {
                    0
                } else if m.is_file() {
                    m.len()
                } else {
                    0
                };
            }
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    n += sum(&p);
                }
            }
            n
        }
        sum(&self.root)
    }
}

fn walk(base: &Path, p: &Path, skip: &Path, out: &mut BTreeMap<String, String>) {
    if p == skip {
        return;
    }
    let m = fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let what = if ft.is_symlink() {
        format!("link {}", fs::read_link(p).unwrap().display())
    } else if ft.is_file() {
        format!("file {:?}", fs::read(p).unwrap())
    } else if ft.is_dir() {
        "dir".to_owned()
    } else {
        format!("special {:?} {}", ft, m.rdev())
    };
    let rel = p.strip_prefix(base).unwrap().display().to_string();
    out.insert(
        rel,
        format!(
            "{what} mode={:o} uid={} gid={} size={} mtime={}.{} ctime={}.{} ino={} nlink={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino(),
            m.nlink()
        ),
    );
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for n in names {
            walk(base, &n, skip, out);
        }
    }
}

/// How a case is applied.
#[derive(Clone, Copy, Debug)]
enum Via {
    Tar,
    Blob,
    Streaming,
}

type Check = Box<dyn Fn(&Arena, &Result<ApplyInfo, ApplyError>)>;

struct Case {
    name: String,
    via: Via,
    bytes: Vec<u8>,
    desc: Option<Descriptor>,
    opts: ApplyOptions,
    check: Check,
}

fn no_devices() -> ApplyOptions {
    ApplyOptions { mknod: false, ..ApplyOptions::default() }
}

impl Case {
    fn tar(name: &str, bytes: Vec<u8>, check: Check) -> Case {
        Case { name: name.to_owned(), via: Via::Tar, bytes, desc: None, opts: no_devices(), check }
    }

    fn run(self) {
        let a = Arena::new();
        // the victim's absolute path is known only now: substitute it
        let bytes = patch_victim(&self.bytes, &a.victim_abs());
        let desc = self.desc.clone().map(|d| {
            if bytes == self.bytes {
                d
            } else {
                Descriptor::new(d.media_type.clone(), Digest::sha256(&bytes), bytes.len() as u64)
            }
        });
        let res = match self.via {
            Via::Tar => layer_diff::apply_tar(&bytes[..], &a.root, &self.opts),
            Via::Blob => layer_diff::apply_blob(Cursor::new(&bytes), desc.as_ref().unwrap(), &a.root, &self.opts),
            Via::Streaming => layer_diff::apply_blob_streaming(&bytes[..], desc.as_ref().unwrap(), &a.root, &self.opts),
        };
        (self.check)(&a, &res);
        a.assert_untouched(&format!("{} via {:?} ({res:?})", self.name, self.via));
    }
}

/// A placeholder for the victim's absolute path (known only once the arena
/// exists), replaced in the name and link-name fields, checksum recomputed,
/// before applying.
const VICTIM: &str = "@VICTIM@";

fn patch_victim(tar: &[u8], victim: &str) -> Vec<u8> {
    let needle = VICTIM.as_bytes();
    if !tar.windows(needle.len()).any(|w| w == needle) {
        return tar.to_vec();
    }
    // only in uncompressed tars: rewrite name and linkname fields per header
    let mut out = tar.to_vec();
    let mut off = 0;
    while off + 512 <= out.len() {
        let block = &out[off..off + 512];
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(block);
        let size = h.entry_size().unwrap();
        let mut changed = false;
        for field in [0..100usize, 157..257] {
            let f = &h.as_bytes()[field.clone()];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            let s = String::from_utf8(f[..end].to_vec()).unwrap();
            if s.contains(VICTIM) {
                let new = s.replace(VICTIM, victim);
                assert!(new.len() < 100, "victim path too long for a ustar field");
                let mut buf = [0u8; 100];
                buf[..new.len()].copy_from_slice(new.as_bytes());
                h.as_mut_bytes()[field].copy_from_slice(&buf);
                changed = true;
            }
        }
        if changed {
            h.set_cksum();
            out[off..off + 512].copy_from_slice(h.as_bytes());
        }
        off += 512 + usize::try_from(size.div_ceil(512) * 512).unwrap();
    }
    out
}

fn ok(f: impl Fn(&Arena, &ApplyInfo) + 'static) -> Check {
    Box::new(move |a, r| match r {
        Ok(info) => f(a, info),
        Err(e) => panic!("expected the layer to be contained, got {e}"),
    })
}

fn refused(f: impl Fn(&Arena, &ApplyError) -> bool + 'static) -> Check {
    Box::new(move |a, r| match r {
        Ok(info) => panic!("expected the layer to be refused, it applied {info:?}"),
        Err(e) => assert!(f(a, e), "unexpected error: {e} ({e:?})"),
    })
}

fn read(a: &Arena, rel: &str) -> String {
    fs::read_to_string(a.root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn is_link_target(e: &ApplyError) -> bool {
    matches!(e, ApplyError::LinkTarget { .. })
}

fn is_io(e: &ApplyError) -> bool {
    matches!(e, ApplyError::Io { .. })
}

fn in_root(a: &Arena, rel: &str) -> PathBuf {
    a.root.join(rel.trim_start_matches('/'))
}

/// Sets a header's size field (octal, 11 digits) without touching the data.
fn lie_about_size(tar: &mut [u8], header_at: usize, field: &[u8]) {
    let h = &mut tar[header_at..header_at + 512];
    h[124..136].fill(0);
    h[124..124 + field.len()].copy_from_slice(field);
    let mut hdr = tar::Header::new_old();
    hdr.as_mut_bytes().copy_from_slice(h);
    hdr.set_cksum();
    h.copy_from_slice(hdr.as_bytes());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn desc_of(media_type: MediaType, bytes: &[u8]) -> Descriptor {
    Descriptor::new(media_type, Digest::sha256(bytes), bytes.len() as u64)
}

/// A tar holding one file `zeros` of `len` zero bytes, compressed on the fly
/// (never whole in memory).
fn bomb(len: u64, zstd_codec: bool) -> Vec<u8> {
    fn fill<W: Write>(mut w: W, len: u64) -> W {
        let mut h = tar::Header::new_ustar();
        h.set_path("zeros").unwrap();
        h.set_size(len);
        h.set_mode(0o644);
        h.set_cksum();
        w.write_all(h.as_bytes()).unwrap();
        io::copy(&mut io::repeat(0).take(len + 1024), &mut w).unwrap();
        w
    }
    if zstd_codec {
        let e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        fill(e, len).finish().unwrap()
    } else {
        let e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        fill(e, len).finish().unwrap()
    }
}

fn traversal_by_name() -> Vec<Case> {
    let mut v = Vec::new();
    for name in ["../victim/hello", "/../victim/hello", "../../../../../../victim/hello", "./../victim/./hello"] {
        v.push(Case::tar(
            name,
            RawTar::new().file(name, "pwned").build(),
            ok(|a, _| assert_eq!(read(a, "victim/hello"), "pwned")),
        ));
    }
    v.push(Case::tar(
        "absolute name of the victim",
        RawTar::new().file(&format!("{VICTIM}/hello"), "pwned").build(),
        ok(|a, _| assert_eq!(fs::read_to_string(in_root(a, &a.victim_abs()).join("hello")).unwrap(), "pwned")),
    ));
    v.push(Case::tar(
        "PAX path record",
        RawTar::new().pax(&[("path", b"../victim/pax")]).file("innocent", "pwned").build(),
        ok(|a, _| assert_eq!(read(a, "victim/pax"), "pwned")),
    ));
    let long = format!("{}victim/long\0", "../".repeat(60));
    v.push(Case::tar(
        "GNU long name",
        RawTar::new()
            .entry("././@LongLink", tar::EntryType::GNULongName, "", long.as_bytes(), 0o644)
            .file("short", "pwned")
            .build(),
        ok(|a, _| assert_eq!(read(a, "victim/long"), "pwned")),
    ));
    // a directory entry naming the root's parent changes only the root
    v.push(Case::tar(
        "directory ..",
        RawTar::new().entry("../", tar::EntryType::Directory, "", b"", 0o777).build(),
        ok(|a, _| assert_eq!(fs::metadata(&a.root).unwrap().mode() & 0o777, 0o777)),
    ));
    v
}

fn traversal_by_hardlink() -> Vec<Case> {
    vec![
        Case::tar(
            "hard link ../victim/hello",
            RawTar::new().hardlink("h", "../victim/hello").build(),
            refused(|_, e| is_link_target(e)),
        ),
        Case::tar(
            "hard link /../victim/hello",
            RawTar::new().hardlink("h", "/../victim/hello").build(),
            refused(|_, e| is_link_target(e)),
        ),
        Case::tar(
            "hard link to the victim's absolute path",
            RawTar::new().hardlink("h", &format!("{VICTIM}/hello")).build(),
            refused(|_, e| is_link_target(e)),
        ),
        Case::tar(
            "hard link to a directory outside",
            RawTar::new().hardlink("h", "../victim").file("h/file", "x").build(),
            refused(|_, e| is_link_target(e)),
        ),
        Case::tar(
            "hard link through a symlinked parent",
            RawTar::new().symlink("l", "../victim").hardlink("h", "l/hello").build(),
            refused(|_, e| is_link_target(e)),
        ),
        Case::tar(
            "hard link through an absolute symlinked parent",
            RawTar::new().symlink("l", VICTIM).hardlink("h", "l/hello").build(),
            refused(|_, e| is_link_target(e)),
        ),
        // the target resolves inside the root, where the layer put a file
        Case::tar(
            "hard link ../victim/hello after a clamped file",
            RawTar::new().file("../victim/hello", "inside").hardlink("h", "../victim/hello").build(),
            ok(|a, _| {
                let h = fs::metadata(a.root.join("h")).unwrap();
                assert_eq!(h.ino(), fs::metadata(a.root.join("victim/hello")).unwrap().ino());
                assert_eq!(read(a, "h"), "inside");
            }),
        ),
        // hard link -> symlink -> outside, then writes through each name
        Case::tar(
            "hard link to an escaping symlink, then written",
            RawTar::new()
                .symlink("s", "../victim/hello")
                .hardlink("h", "s")
                .file("h", "overwrite")
                .file("s", "overwrite")
                .build(),
            ok(|a, _| {
                assert_eq!(read(a, "h"), "overwrite");
                assert_eq!(read(a, "s"), "overwrite");
            }),
        ),
        Case::tar(
            "hard link chain through a loophole",
            RawTar::new()
                .symlink("loophole", "../victim")
                .hardlink("h1", "loophole/hello")
                .hardlink("h2", "h1")
                .build(),
            refused(|_, e| is_link_target(e)),
        ),
        Case::tar(
            "hard link kept as a symlink, then used as a parent",
            RawTar::new().symlink("s", "../victim").hardlink("h", "s").file("h/hello", "overwrite").build(),
            ok(|a, _| {
                assert!(fs::symlink_metadata(a.root.join("h")).unwrap().file_type().is_symlink());
                assert_eq!(read(a, "victim/hello"), "overwrite");
            }),
        ),
    ]
}

fn traversal_by_symlink() -> Vec<Case> {
    let v = vec![
        Case::tar(
            "symlink ../victim then a file through it",
            RawTar::new().symlink("l", "../victim").file("l/hello", "overwrite").file("l/new", "new").build(),
            ok(|a, _| {
                assert_eq!(read(a, "victim/hello"), "overwrite");
                assert_eq!(read(a, "victim/new"), "new");
                assert_eq!(fs::read_link(a.root.join("l")).unwrap(), Path::new("../victim"));
            }),
        ),
        Case::tar(
            "symlink to the victim's absolute path then a file through it",
            RawTar::new().symlink("l", VICTIM).file("l/hello", "overwrite").build(),
            ok(|a, _| {
                assert_eq!(fs::read_link(a.root.join("l")).unwrap(), a.victim);
                assert_eq!(fs::read_to_string(in_root(a, &a.victim_abs()).join("hello")).unwrap(), "overwrite");
            }),
        ),
        Case::tar(
            "symlink to a file outside, then the file written by the link's name",
            RawTar::new().symlink("s", "../victim/hello").file("s", "overwrite").build(),
            ok(|a, _| assert!(fs::symlink_metadata(a.root.join("s")).unwrap().is_file())),
        ),
        Case::tar(
            "symlink chain a -> b -> c -> ../../victim",
            RawTar::new()
                .symlink("a", "b")
                .symlink("b", "c")
                .symlink("c", "d/../../../victim")
                .file("a/hello", "overwrite")
                .dir("a/newdir/")
                .build(),
            ok(|a, _| {
                assert_eq!(read(a, "victim/hello"), "overwrite");
                assert!(a.root.join("victim/newdir").is_dir());
            }),
        ),
        Case::tar(
            "symlink chain across directories",
            RawTar::new()
                .dir("d1/")
                .dir("d2/")
                .symlink("d1/l", "../d2/l")
                .symlink("d2/l", "../../../victim")
                .file("d1/l/hello", "overwrite")
                .build(),
            ok(|a, _| assert_eq!(read(a, "victim/hello"), "overwrite")),
        ),
        Case::tar(
            "nested loophole dir/loophole -> ../../victim",
            RawTar::new()
                .dir("dir/")
                .symlink("dir/loophole", "../../victim")
                .file("dir/loophole/newdir/newfile", "x")
                .build(),
            ok(|a, _| assert_eq!(read(a, "victim/newdir/newfile"), "x")),
        ),
        Case::tar(
            "symlink replaced by a directory entry with mode 0777",
            RawTar::new().symlink("l", "../victim").entry("l/", tar::EntryType::Directory, "", b"", 0o777).build(),
            ok(|a, _| assert!(fs::symlink_metadata(a.root.join("l")).unwrap().is_dir())),
        ),
        Case::tar(
            "directory metadata through a symlinked parent",
            RawTar::new()
                .symlink("l", "..")
                .entry("l/victim/private/", tar::EntryType::Directory, "", b"", 0o777)
                .build(),
            ok(|a, _| assert_eq!(fs::metadata(a.root.join("victim/private")).unwrap().mode() & 0o777, 0o777)),
        ),
        Case::tar(
            "xattr through a symlinked parent",
            RawTar::new()
                .symlink("l", "../victim")
                .pax(&[("SCHILY.xattr.user.pwned", b"yes")])
                .file("l/hello", "x")
                .build(),
            ok(|a, _| assert_eq!(read(a, "victim/hello"), "x")),
        ),
    ];
    v
}

/// Symlink chains: the longest a resolution follows, and longer.
fn link_chains() -> Vec<Case> {
    let mut v = Vec::new();
    // a chain longer than the resolver follows
    let mut long = RawTar::new();
    for i in 0..300 {
        long.symlink(&format!("c{i}"), &format!("c{}", i + 1));
    }
    long.symlink("c300", "../victim").file("c0/hello", "overwrite");
    v.push(Case::tar("300-link chain", long.build(), refused(|_, e| matches!(e, ApplyError::SymlinkLoop { .. }))));
    // the kernel's limit, as every in-root resolution of kiln has it: a
    // path through 40 links resolves, one through 41 is a loop
    let chain = |links: usize| {
        let mut t = RawTar::new();
        t.dir("d");
        for i in 1..links {
            t.symlink(&format!("k{i}"), &format!("k{}", i + 1));
        }
        t.symlink(&format!("k{links}"), "d").file("k1/hello", "x");
        t.build()
    };
    v.push(Case::tar("40-link chain", chain(layer_diff::MAX_SYMLINKS), ok(|a, _| assert_eq!(read(a, "d/hello"), "x"))));
    v.push(Case::tar(
        "41-link chain",
        chain(layer_diff::MAX_SYMLINKS + 1),
        refused(|_, e| matches!(e, ApplyError::SymlinkLoop { .. })),
    ));
    v
}

/// Entries that go through a symlink in ways other than a plain write.
fn symlinks_swapped_and_looping() -> Vec<Case> {
    vec![
        // a directory created, then its parent swapped for a symlink to the
        // victim: setting the directory's time at the end must not follow it
        Case::tar(
            "directory times after the parent became a symlink",
            RawTar::new()
                .entry("a/sub/", tar::EntryType::Directory, "", b"", 0o755)
                .entry("a/private/", tar::EntryType::Directory, "", b"", 0o755)
                .symlink("a", "../victim")
                .build(),
            ok(|a, _| assert!(fs::symlink_metadata(a.root.join("a")).unwrap().file_type().is_symlink())),
        ),
        Case::tar(
            "fifo through a symlinked parent",
            RawTar::new().symlink("l", "../victim").entry("l/fifo", tar::EntryType::Fifo, "", b"", 0o644).build(),
            ok(|a, _| {
                assert!(fs::symlink_metadata(a.root.join("victim/fifo")).unwrap().file_type().is_fifo());
            }),
        ),
        Case::tar(
            "symlink loop",
            RawTar::new().symlink("l1", "l2").symlink("l2", "l1").file("l1/x", "x").build(),
            refused(|_, e| matches!(e, ApplyError::SymlinkLoop { .. })),
        ),
    ]
}

fn whiteouts_through_links() -> Vec<Case> {
    let mut v = vec![
        Case::tar(
            "whiteout through a symlinked parent",
            RawTar::new().symlink("l", "../victim").file("l/.wh.hello", "").file("l/sub/.wh.deep", "").build(),
            ok(|a, _| assert!(fs::symlink_metadata(a.root.join("l")).unwrap().file_type().is_symlink())),
        ),
        Case::tar(
            "opaque marker through a symlinked parent",
            RawTar::new().symlink("l", "../victim").file("l/.wh..wh..opq", "").build(),
            ok(|a, _| assert!(fs::symlink_metadata(a.root.join("l")).unwrap().file_type().is_symlink())),
        ),
        Case::tar(
            "whiteout through an absolute symlinked parent",
            RawTar::new().symlink("l", VICTIM).file("l/.wh.hello", "").file("l/.wh..wh..opq", "").build(),
            ok(|_, _| {}),
        ),
    ];
    // whiteouts whose name is . or ..: never the parent, never the root
    for name in [".wh...", ".wh..", "sub/.wh...", "../.wh...", "l/.wh..."] {
        v.push(Case::tar(
            name,
            RawTar::new().dir("sub/").file("sub/keep", "k").symlink("l", "../victim").file(name, "").build(),
            refused(|a, e| {
                assert_eq!(read(a, "sub/keep"), "k", "the root's contents stay");
                matches!(e, ApplyError::InvalidWhiteout { .. })
            }),
        ));
    }
    v
}

/// Applying into an overlayfs upper directory: whiteouts become 0:0 character
/// devices (created even where the parent is missing) and opaque directories
/// get an xattr, all resolved inside the root.
fn overlay_upper() -> Vec<Case> {
    let overlay = || ApplyOptions { overlay: Some(layer_diff::OverlayXattrs::User), ..no_devices() };
    let cases = vec![
        Case::tar(
            "overlay whiteout through a symlinked parent",
            RawTar::new().symlink("l", "../victim").file("l/.wh.hello", "").file("l/sub/.wh.deep", "").build(),
            ok(|a, _| {
                let m = fs::symlink_metadata(a.root.join("victim/hello")).unwrap();
                assert!(m.file_type().is_char_device() && m.rdev() == 0, "a 0:0 whiteout inside the root");
                assert!(fs::symlink_metadata(a.root.join("victim/sub/deep")).unwrap().file_type().is_char_device());
            }),
        ),
        Case::tar(
            "overlay whiteout through an absolute symlinked parent",
            RawTar::new().symlink("l", VICTIM).file("l/.wh.hello", "").build(),
            ok(|a, _| {
                let inside = in_root(a, &a.victim_abs()).join("hello");
                assert!(fs::symlink_metadata(inside).unwrap().file_type().is_char_device());
            }),
        ),
        Case::tar(
            "overlay opaque marker through a symlinked parent",
            RawTar::new().symlink("l", "../victim").dir("victim/").file("l/.wh..wh..opq", "").build(),
            ok(|a, _| {
                let v = xattr::get(a.root.join("victim"), "user.overlay.opaque").unwrap();
                assert_eq!(v.as_deref(), Some(&b"y"[..]));
            }),
        ),
        Case::tar(
            "overlay whiteout of ..",
            RawTar::new().symlink("l", "../victim").file("l/.wh...", "").build(),
            refused(|_, e| matches!(e, ApplyError::InvalidWhiteout { .. })),
        ),
    ];
    cases.into_iter().map(|c| Case { opts: overlay(), ..c }).collect()
}

fn devices() -> Vec<Case> {
    let mut v = Vec::new();
    for (kind, name) in [(tar::EntryType::Char, "null"), (tar::EntryType::Block, "sda")] {
        let mut t = RawTar::new();
        t.entry(name, kind, "", b"", 0o666);
        t.symlink("l", "../victim");
        t.entry(&format!("l/{name}"), kind, "", b"", 0o666);
        v.push(Case::tar(
            &format!("{kind:?} device without permission"),
            t.build(),
            ok(move |a, info| {
                assert_eq!(info.skipped_devices, 2);
                assert!(fs::symlink_metadata(a.root.join(name)).is_err(), "no device node created");
                // a skipped entry leaves no trace, not even its parent directory
                assert!(fs::symlink_metadata(a.root.join("victim")).is_err());
            }),
        ));
    }
    // with permission, a device through a symlinked parent stays inside
    let mut t = RawTar::new();
    t.symlink("l", "../victim").entry("l/null", tar::EntryType::Char, "", b"", 0o666);
    let mut c = Case::tar(
        "char device through a symlinked parent, mknod allowed",
        t.build(),
        Box::new(|a, r| {
            if is_root() {
                assert!(r.is_ok(), "{r:?}");
                let m = fs::symlink_metadata(a.root.join("victim/null")).unwrap();
                assert!(m.file_type().is_char_device());
            } else {
                assert!(matches!(r, Err(ApplyError::Io { .. })), "{r:?}");
            }
        }),
    );
    c.opts = ApplyOptions { mknod: true, ..ApplyOptions::default() };
    v.push(c);
    v
}

const LIMIT: u64 = 1 << 20;

fn bombs() -> Vec<Case> {
    let limited = || ApplyOptions { size_limit: Some(LIMIT), ..no_devices() };
    let too_large = |a: &Arena, e: &ApplyError| {
        assert!(a.bytes_in_root() <= LIMIT, "{} bytes written", a.bytes_in_root());
        matches!(e, ApplyError::TooLarge { limit } if *limit == LIMIT)
    };
    let mut v = Vec::new();
    for (zstd_codec, mt) in [(false, MediaType::OciLayerGzip), (true, MediaType::OciLayerZstd)] {
        let blob = bomb(64 << 20, zstd_codec);
        assert!(blob.len() < 256 << 10, "a bomb: {} bytes", blob.len());
        for via in [Via::Blob, Via::Streaming] {
            v.push(Case {
                name: format!("64 MiB {mt} bomb"),
                via,
                desc: Some(desc_of(mt.clone(), &blob)),
                bytes: blob.clone(),
                opts: limited(),
                check: refused(too_large),
            });
        }
    }
    let mut t = RawTar::new();
    t.file("small", "s");
    let mut plain = t.build();
    plain.truncate(plain.len() - 1024);
    let mut h = tar::Header::new_ustar();
    h.set_path("big").unwrap();
    h.set_size(LIMIT * 2);
    h.set_cksum();
    plain.extend_from_slice(h.as_bytes());
    plain.resize(plain.len() + usize::try_from(LIMIT * 2).unwrap() + 1024, 0);
    v.push(Case { opts: limited(), ..Case::tar("plain tar over the limit", plain, refused(too_large)) });
    v
}

fn broken_blobs() -> Vec<Case> {
    let tar = RawTar::new()
        .file("a", &"a".repeat(3000))
        .file("b", &"b".repeat(3000))
        .file("../victim/hello", "pwned")
        .build();
    let mut v = Vec::new();
    for (blob, mt) in [(gzip(&tar), MediaType::OciLayerGzip), (zstd(&tar), MediaType::OciLayerZstd)] {
        let good = desc_of(mt.clone(), &blob);
        let half = blob[..blob.len() / 2].to_vec();
        let mut flipped = blob.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        let mut bad_magic = blob.clone();
        bad_magic[0] ^= 0xff;
        for via in [Via::Blob, Via::Streaming] {
            let case = |name: &str, bytes: &[u8], desc: Descriptor, check: Check| Case {
                name: format!("{mt}: {name}"),
                via,
                bytes: bytes.to_vec(),
                desc: Some(desc),
                opts: no_devices(),
                check,
            };
            let verify_nothing_applied = move |a: &Arena, e: &ApplyError| {
                if matches!(via, Via::Blob) {
                    assert!(fs::read_dir(&a.root).unwrap().next().is_none(), "nothing applied");
                }
                matches!(e, ApplyError::Verify { .. }) || (matches!(via, Via::Streaming) && is_io(e))
            };
            // the descriptor is the intact blob's: verification catches them
            v.push(case("truncated, intact descriptor", &half, good.clone(), refused(verify_nothing_applied)));
            v.push(case("corrupted, intact descriptor", &flipped, good.clone(), refused(verify_nothing_applied)));
            let grown = [blob.clone(), vec![0u8; 7]].concat();
            v.push(case("trailing bytes, intact descriptor", &grown, good.clone(), refused(verify_nothing_applied)));
            let wrong_size = Descriptor::new(mt.clone(), good.digest.clone(), good.size + 1);
            v.push(case("size mismatch", &blob, wrong_size, refused(verify_nothing_applied)));
            let wrong_digest = Descriptor::new(mt.clone(), Digest::sha256(b"other"), good.size);
            v.push(case("digest mismatch", &blob, wrong_digest, refused(verify_nothing_applied)));
            // the descriptor matches the broken bytes: decoding fails
            v.push(case("truncated, matching descriptor", &half, desc_of(mt.clone(), &half), refused(|_, e| is_io(e))));
            v.push(case(
                "bad magic, matching descriptor",
                &bad_magic,
                desc_of(mt.clone(), &bad_magic),
                refused(|_, e| is_io(e)),
            ));
            // a corrupted stream may fail (gzip's CRC) or decode to something
            // else (zstd without a checksum); either way it stays inside
            let is_gzip = mt == MediaType::OciLayerGzip;
            v.push(case(
                "corrupted, matching descriptor",
                &flipped,
                desc_of(mt.clone(), &flipped),
                Box::new(move |_, r| {
                    if is_gzip {
                        assert!(matches!(r, Err(ApplyError::Io { .. })), "{r:?}");
                    }
                }),
            ));
        }
    }
    // the media type says gzip, the bytes are zstd
    let z = zstd(&tar);
    v.push(Case {
        name: "zstd bytes under a gzip media type".to_owned(),
        via: Via::Blob,
        desc: Some(desc_of(MediaType::OciLayerGzip, &z)),
        bytes: z.clone(),
        opts: no_devices(),
        check: refused(|_, e| is_io(e)),
    });
    v.push(Case {
        name: "config media type".to_owned(),
        via: Via::Blob,
        desc: Some(desc_of(MediaType::OciConfig, &z)),
        bytes: z,
        opts: no_devices(),
        check: refused(|_, e| matches!(e, ApplyError::NotALayer { .. })),
    });
    // plain tars cut short, in a header and in a file's data
    let mid_header = tar[..512 + 3072 + 100].to_vec();
    v.push(Case::tar("tar cut inside a header", mid_header, refused(|_, e| is_io(e))));
    let mid_data = tar[..512 + 1000].to_vec();
    v.push(Case::tar("tar cut inside file data", mid_data, refused(|_, e| is_io(e))));
    let mut bad_sum = tar.clone();
    bad_sum[512 + 3072 + 5] ^= 1;
    v.push(Case::tar("tar header with a bad checksum", bad_sum, refused(|_, e| is_io(e))));
    v
}

fn lying_headers() -> Vec<Case> {
    let mut v = Vec::new();
    // claims 1 MiB, holds 10 bytes, then the archive ends
    let mut t = RawTar::new().file("liar", "0123456789").build();
    t.truncate(1024);
    lie_about_size(&mut t, 0, b"00004000000");
    v.push(Case::tar("size larger than the archive", t, refused(|_, e| is_io(e))));
    // claims 8 GiB: with a limit the limit stops it, without, the end of data
    let mut t = RawTar::new().file("liar", &"x".repeat(600)).build();
    lie_about_size(&mut t, 0, b"77777777777");
    let huge = t.clone();
    v.push(Case::tar("size of 8 GiB", huge.clone(), refused(|_, e| is_io(e))));
    v.push(Case {
        opts: ApplyOptions { size_limit: Some(4096), ..no_devices() },
        ..Case::tar(
            "size of 8 GiB with a limit",
            huge,
            refused(|_, e| is_io(e) || matches!(e, ApplyError::TooLarge { .. })),
        )
    });
    // claims 0 bytes: its data is read as the next header, a smuggled entry
    let smuggled = RawTar::new().file("../victim/smuggled", "pwned").build();
    let mut t = RawTar::new().entry("carrier", tar::EntryType::Regular, "", &smuggled[..1024], 0o644).build();
    lie_about_size(&mut t, 0, b"00000000000");
    v.push(Case::tar(
        "size 0 with a smuggled header as data",
        t,
        ok(|a, _| {
            assert_eq!(read(a, "carrier"), "");
            assert_eq!(read(a, "victim/smuggled"), "pwned");
        }),
    ));
    // claims fewer bytes than it holds: the rest is garbage as a header
    let mut t = RawTar::new().file("short", &"A".repeat(2000)).build();
    lie_about_size(&mut t, 0, b"00000000144");
    v.push(Case::tar("size smaller than the data", t, refused(|_, e| is_io(e))));
    // a size that is not a number
    let mut t = RawTar::new().file("nan", "data").build();
    lie_about_size(&mut t, 0, b"zzzzzzzzzzz");
    v.push(Case::tar("size not a number", t, refused(|_, e| is_io(e))));
    // a base-256 size with the sign bit set (negative / absurd)
    let mut t = RawTar::new().file("neg", "data").build();
    lie_about_size(&mut t, 0, &[0xff; 12]);
    v.push(Case::tar("base-256 size of all ones", t, refused(|_, e| is_io(e))));
    // entry types kiln does not extract
    for kind in [tar::EntryType::GNUSparse, tar::EntryType::new(b'Z')] {
        let t = RawTar::new().entry("../victim/odd", kind, "", b"", 0o644).build();
        v.push(Case::tar(
            &format!("entry type {kind:?}"),
            t,
            refused(|a, e| {
                assert!(fs::read_dir(&a.root).unwrap().next().is_none(), "nothing applied");
                // (a sparse type in a ustar header is already a tar error)
                matches!(e, ApplyError::Unsupported { .. }) || is_io(e)
            }),
        ));
    }
    // a PAX size record that lies
    let t = RawTar::new().pax(&[("size", b"99999999999999")]).file("pax-liar", "data").build();
    v.push(Case::tar("PAX size record larger than the archive", t, refused(|_, e| is_io(e))));
    v
}

fn run_all(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for c in cases {
        c.run();
    }
}

#[test]
fn hostile_names_are_contained() {
    run_all(traversal_by_name());
}

#[test]
fn hostile_hardlinks_are_refused_or_contained() {
    run_all(traversal_by_hardlink());
}

#[test]
fn hostile_symlinks_and_chains_are_contained() {
    run_all(traversal_by_symlink());
    run_all(link_chains());
    run_all(symlinks_swapped_and_looping());
}

#[test]
fn hostile_whiteouts_are_refused_or_contained() {
    run_all(whiteouts_through_links());
}

#[test]
fn overlay_upper_whiteouts_are_contained() {
    run_all(overlay_upper());
}

#[test]
fn devices_without_permission_are_skipped() {
    run_all(devices());
}

#[test]
fn decompression_bombs_stop_at_the_limit() {
    run_all(bombs());
}

#[test]
fn truncated_corrupted_and_mismatched_blobs_are_refused() {
    run_all(broken_blobs());
}

#[test]
fn tar_headers_lying_about_their_size_are_refused_or_contained() {
    run_all(lying_headers());
}

/// The same corpus, every case applied through all three entry points where
/// it is a plain tar: `apply_blob` and `apply_blob_streaming` of an
/// uncompressed layer behave as `apply_tar`.
#[test]
fn plain_tar_cases_behave_the_same_through_blob_entry_points() {
    let mut n = 0;
    for group in [
        traversal_by_name(),
        traversal_by_hardlink(),
        traversal_by_symlink(),
        link_chains(),
        symlinks_swapped_and_looping(),
        lying_headers(),
    ] {
        for c in group {
            if !matches!(c.via, Via::Tar) || c.bytes.windows(VICTIM.len()).any(|w| w == VICTIM.as_bytes()) {
                continue;
            }
            let desc = desc_of(MediaType::OciLayer, &c.bytes);
            let a = Arena::new();
            let tar_result = layer_diff::apply_tar(&c.bytes[..], &a.root, &c.opts).map_err(|e| e.to_string());
            a.assert_untouched(&c.name);
            for via in [Via::Blob, Via::Streaming] {
                let b = Arena::new();
                let r = match via {
                    Via::Blob => layer_diff::apply_blob(Cursor::new(&c.bytes), &desc, &b.root, &c.opts),
                    _ => layer_diff::apply_blob_streaming(&c.bytes[..], &desc, &b.root, &c.opts),
                };
                b.assert_untouched(&c.name);
                assert_eq!(r.is_ok(), tar_result.is_ok(), "{} via {via:?}: {r:?} vs {tar_result:?}", c.name);
                n += 1;
            }
        }
    }
    assert!(n > 40, "{n} cases");
}

/// Layers kept in `fuzz-regressions/` (fuzz crashers and hostile layers that
/// once got through), replayed with the `apply` and `decode` fuzz targets'
/// invariants: applied twice onto the same root, nothing outside it changes,
/// `apply_blob` and `apply_blob_streaming` agree, and an applied layer reports
/// the size and sha256 of its whole uncompressed stream.
#[test]
fn fuzz_regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/layer_diff/fuzz-regressions");
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let name = path.display().to_string();
        let blob = fs::read(&path).unwrap();
        let codec = layer_diff::detect(&blob);
        let media_type = match codec {
            oci_image::Compression::Gzip => MediaType::OciLayerGzip,
            oci_image::Compression::Zstd => MediaType::OciLayerZstd,
            _ => MediaType::OciLayer,
        };
        let opts = ApplyOptions { mknod: false, size_limit: Some(LIMIT), ..ApplyOptions::default() };
        let mut whole = Vec::new();
        let decodes = layer_diff::Decompressor::new(&blob[..], Some(codec))
            .and_then(|d| d.take(LIMIT + 1).read_to_end(&mut whole))
            .is_ok();
        let desc = desc_of(media_type, &blob);
        let (seek, stream, plain) = (Arena::new(), Arena::new(), Arena::new());
        for round in 0..2 {
            let a = layer_diff::apply_blob(Cursor::new(&blob), &desc, &seek.root, &opts);
            seek.assert_untouched(&format!("{name} apply_blob round {round}"));
            let b = layer_diff::apply_blob_streaming(&blob[..], &desc, &stream.root, &opts);
            stream.assert_untouched(&format!("{name} apply_blob_streaming round {round}"));
            assert_eq!(a.as_ref().ok(), b.as_ref().ok(), "{name}: the blob paths disagree");
            if let Ok(info) = &a {
                assert!(decodes, "{name}");
                assert_eq!(info.tar_size, whole.len() as u64, "{name}");
                assert_eq!(info.diff_id, Digest::sha256(&whole), "{name}");
            }
            if codec == oci_image::Compression::None {
                let r = layer_diff::apply_tar(&blob[..], &plain.root, &opts);
                plain.assert_untouched(&format!("{name} apply_tar round {round}"));
                assert_eq!(r.as_ref().ok(), a.as_ref().ok(), "{name}: apply_tar and apply_blob disagree");
            }
        }
        n += 1;
    }
    assert!(n >= 3, "the regression fixtures are there ({n})");
}
