//! Integration tests of layer-diff: one test per box of the layer-diff
//! checklist (shared/guides/layer-diff.md), plus interop with umoci and tar.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::many_single_char_names
)]

mod breakout;
mod changes;
mod hardlinks;
mod hostile;
mod interop;
mod special;
mod whiteouts;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use layer_diff::{ApplyInfo, ApplyOptions, LayerInfo, PackOptions};
use oci_image::Compression;

/// Root can mknod, chown and set trusted xattrs.
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Options for reproducible uncompressed layers.
pub(crate) fn plain() -> PackOptions {
    PackOptions { epoch: Some(1_000_000), compression: Compression::None, threads: 1, ..PackOptions::default() }
}

/// Packs a directory into a blob.
pub(crate) fn pack(root: &Path, opts: &PackOptions) -> (Vec<u8>, LayerInfo) {
    layer_diff::pack_dir(root, Vec::new(), opts).unwrap()
}

/// Applies a blob (verified first).
pub(crate) fn apply(blob: &[u8], info: &LayerInfo, root: &Path) -> ApplyInfo {
    layer_diff::apply_blob(Cursor::new(blob), &info.descriptor(), root, &ApplyOptions::default()).unwrap()
}

/// Applies a plain tar.
pub(crate) fn apply_tar(tar: &[u8], root: &Path) -> Result<ApplyInfo, layer_diff::ApplyError> {
    layer_diff::apply_tar(tar, root, &ApplyOptions::default())
}

/// The tar entries' names (and link names) of an uncompressed layer.
pub(crate) fn tar_names(tar: &[u8]) -> Vec<(String, tar::EntryType, Option<String>)> {
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            (String::from_utf8_lossy(&e.path_bytes()).into_owned(), e.header().entry_type(), link)
        })
        .collect()
}

/// One line per entry under `root`: type, mode, owner, content or target, and
/// (with `times`) the mtime. Directories end in `/`.
pub(crate) fn describe(root: &Path, times: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    describe_into(root, root, times, &mut out);
    out
}

fn describe_into(root: &Path, dir: &Path, times: bool, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_owned()
        } else if ft.is_symlink() {
            format!("link->{}", fs::read_link(&path).unwrap().display())
        } else if ft.is_file() {
            format!("file:{}", String::from_utf8_lossy(&fs::read(&path).unwrap()))
        } else {
            format!("special:{:o}:{}", m.mode() & 0o170_000, m.rdev())
        };
        let mode = m.permissions().mode() & 0o7777;
        let line = if ft.is_symlink() {
            what
        } else if times {
            format!("{what} mode={mode:o} owner={}:{} mtime={}", m.uid(), m.gid(), m.mtime())
        } else {
            format!("{what} mode={mode:o} owner={}:{}", m.uid(), m.gid())
        };
        let key = if ft.is_dir() { format!("{rel}/") } else { rel };
        out.insert(key, line);
        if ft.is_dir() {
            describe_into(root, &path, times, out);
        }
    }
}

/// The names under `root`, directories with a trailing `/`, sorted.
pub(crate) fn names(root: &Path) -> Vec<String> {
    describe(root, false).into_keys().collect()
}

/// A hand-made tar, for layers our writer would never produce (hostile names,
/// odd headers). Names and link names go into the header bytes unchecked.
pub(crate) struct RawTar {
    out: Vec<u8>,
}

impl RawTar {
    /// An empty archive.
    pub(crate) fn new() -> Self {
        RawTar { out: Vec::new() }
    }

    /// Any entry, fields as given.
    pub(crate) fn entry(&mut self, name: &str, kind: tar::EntryType, link: &str, data: &[u8], mode: u32) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        let n = name.as_bytes();
        h.as_old_mut().name[..n.len()].copy_from_slice(n);
        let l = link.as_bytes();
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A directory (0755).
    pub(crate) fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Directory, "", b"", 0o755)
    }

    /// A regular file (0644).
    pub(crate) fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, "", data.as_bytes(), 0o644)
    }

    /// A symlink.
    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Symlink, target, b"", 0o777)
    }

    /// A hard link.
    pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, target, b"", 0o644)
    }

    /// A PAX extended header for the next entry.
    pub(crate) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let rest = 1 + k.len() + 1 + v.len() + 1;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len = len.to_string().len() + rest;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.entry("PaxHeader", tar::EntryType::XHeader, "", &data, 0o644)
    }

    /// The archive with its end-of-archive blocks.
    pub(crate) fn build(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// Builds a tree from lines: `dir/` is a directory, `name` a file whose content is its name.
pub(crate) fn make_tree(root: &Path, spec: &[&str]) {
    for s in spec {
        if let Some(d) = s.strip_suffix('/') {
            fs::create_dir_all(root.join(d)).unwrap();
        } else {
            if let Some(p) = Path::new(s).parent() {
                fs::create_dir_all(root.join(p)).unwrap();
            }
            fs::write(root.join(s), s.as_bytes()).unwrap();
        }
    }
}

/// A tar of `spec` lines (as [`make_tree`]), plus whiteouts/markers as empty files.
pub(crate) fn tar_of(spec: &[&str]) -> Vec<u8> {
    let mut t = RawTar::new();
    for s in spec {
        if s.ends_with('/') {
            t.dir(s);
        } else if Path::new(s).file_name().unwrap().as_bytes().starts_with(b".wh.") {
            t.file(s, "");
        } else {
            t.file(s, s);
        }
    }
    t.build()
}

/// A victim directory beside the root, as containers/storage `testBreakout` sets it up.
pub(crate) struct Breakout {
    /// Holds `root/` and `victim/`.
    pub(crate) tmp: tempfile::TempDir,
    /// Where layers are applied.
    pub(crate) root: PathBuf,
    /// Must stay untouched.
    pub(crate) victim: PathBuf,
    hello: fs::Metadata,
}

impl Breakout {
    /// A fresh root and victim.
    pub(crate) fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let victim = tmp.path().join("victim");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("hello"), "hello").unwrap();
        let hello = fs::metadata(victim.join("hello")).unwrap();
        Breakout { tmp, root, victim, hello }
    }

    /// The victim is unchanged, holds no new files, and nothing under the root is a copy of it.
    pub(crate) fn assert_safe(&self) {
        let names: Vec<_> = fs::read_dir(&self.victim).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["hello"], "victim dir gained files");
        assert_eq!(fs::read_to_string(self.victim.join("hello")).unwrap(), "hello");
        let vm = fs::metadata(self.victim.join("hello")).unwrap();
        assert_eq!(vm.nlink(), 1, "victim/hello was hard-linked");
        assert_eq!(vm.permissions().mode(), self.hello.permissions().mode(), "victim/hello changed mode");
        assert_eq!((vm.mtime(), vm.uid()), (self.hello.mtime(), self.hello.uid()), "victim/hello changed");
        for (name, line) in describe(&self.root, false) {
            let p = self.root.join(name.trim_end_matches('/'));
            if let Ok(m) = fs::symlink_metadata(&p) {
                assert!(!(m.ino() == vm.ino() && m.dev() == vm.dev()), "{name} is victim/hello ({line})");
            }
        }
        // no path in the tmp dir other than root/ and victim/ appeared
        let mut top: Vec<_> =
            fs::read_dir(self.tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        top.sort();
        assert_eq!(top, ["root", "victim"]);
    }

    /// Applies a raw tar into the root; the result may be an error, but must be safe.
    pub(crate) fn apply(&self, tar: &[u8]) -> Result<ApplyInfo, layer_diff::ApplyError> {
        apply_tar(tar, &self.root)
    }
}

/// Reads a whole (small) blob's tar from a gzip/zstd/none blob.
pub(crate) fn untar_bytes(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    layer_diff::Decompressor::new(blob, None).unwrap().read_to_end(&mut out).unwrap();
    out
}
