//! Fuzz layer apply: tar bytes applied (twice, the second time onto the
//! first result) into `root/`, a directory beside a victim tree. Invariants:
//!
//! - nothing outside the root changes: the victim tree (files, a nested and a
//!   private directory, a relative and an absolute symlink) and a sibling file
//!   keep type, mode, owner, size, mtime, ctime, inode, link count, content
//!   and link target, and no new name appears beside the root;
//! - an applied layer reports the sha256 and size of exactly the bytes given
//!   (the stream is read to its end and hashed once);
//! - no panic, whatever the bytes.
//!
//! The first input byte picks the form of the rest (bit 0) and whether the
//! root is an overlayfs upper directory (bit 1: whiteouts become 0:0
//! devices, created even where the parent is missing, opaque directories get
//! `user.overlay.opaque`):
//! - even: raw tar bytes, with each header's checksum recomputed so mutations
//!   reach past the checksum check;
//! - odd: a compact list of entries (type, name, link name, data, mode) whose
//!   names are spelled with tokens that matter here (`..`, `/`, `victim`,
//!   the victim's absolute path, `.wh.`, the opaque marker, ...), written as
//!   a valid tar with PAX and GNU long-name records where asked.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run apply -- -max_total_time=60
//! ```
//!
//! Crashers go to `fuzz/artifacts/apply/`. Replaying one with
//! `KILN_FUZZ_DUMP_TAR=FILE` set writes the tar it applied to `FILE`; keep
//! that tar as `layer-diff/tests/layer_diff/fuzz-regressions/apply-*.tar`,
//! where `hostile::fuzz_regressions_replay` applies it with the same checks.

#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use layer_diff::{ApplyOptions, apply_tar};
use libfuzzer_sys::fuzz_target;
use oci_image::Digest;

struct Arena {
    base: PathBuf,
    root: PathBuf,
    victim: PathBuf,
    before: BTreeMap<String, String>,
}

fn describe(p: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    let m = fs::symlink_metadata(p).expect("victim tree readable");
    let ft = m.file_type();
    let what = if ft.is_symlink() {
        format!("link {:?}", fs::read_link(p).expect("read link"))
    } else if ft.is_file() {
        format!("file {:?}", fs::read(p).expect("read file"))
    } else {
        format!("{ft:?}")
    };
    let rel = p.strip_prefix(base).expect("under base").display().to_string();
    out.insert(
        rel,
        format!(
            "{what} {:o} {}:{} {} {}.{} {}.{} {} {}",
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
        let mut names: Vec<PathBuf> =
            fs::read_dir(p).expect("read dir").map(|e| e.expect("dir entry").path()).collect();
        names.sort();
        for n in names {
            describe(&n, base, out);
        }
    }
}

impl Arena {
    fn new() -> Arena {
        let base = std::env::temp_dir().join(format!("kiln-fuzz-apply-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("root");
        let victim = base.join("victim");
        fs::create_dir_all(victim.join("sub")).expect("set up");
        fs::create_dir_all(victim.join("private")).expect("set up");
        fs::write(victim.join("hello"), "hello").expect("set up");
        fs::write(victim.join("sub/deep"), "deep").expect("set up");
        fs::write(victim.join("private/secret"), "secret").expect("set up");
        std::os::unix::fs::symlink("hello", victim.join("link")).expect("set up");
        std::os::unix::fs::symlink(victim.join("sub"), victim.join("abs")).expect("set up");
        fs::write(base.join("sibling"), "sibling").expect("set up");
        fs::create_dir(&root).expect("set up");
        let mut a = Arena { base, root, victim, before: BTreeMap::new() };
        a.before = a.outside();
        a
    }

    fn outside(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        describe(&self.victim, &self.base, &mut out);
        describe(&self.base.join("sibling"), &self.base, &mut out);
        let mut top: Vec<String> = fs::read_dir(&self.base)
            .expect("read base")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        out.insert("<names>".into(), top.join(","));
        out
    }
}

fn arena() -> &'static Arena {
    static A: OnceLock<Arena> = OnceLock::new();
    A.get_or_init(Arena::new)
}

/// Recomputes the checksum of every header the way a reader walks them.
fn fix_checksums(tar: &mut [u8]) {
    let mut off = 0usize;
    while let Some(block) = tar.get_mut(off..off + 512) {
        if block.iter().all(|&b| b == 0) {
            off += 512;
            continue;
        }
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(block);
        h.set_cksum();
        block.copy_from_slice(h.as_bytes());
        let Ok(size) = h.entry_size() else { return };
        let Some(next) = usize::try_from(size.div_ceil(512)).ok().and_then(|b| b.checked_mul(512)) else { return };
        let Some(o) = off.checked_add(512 + next) else { return };
        off = o;
    }
}

/// Reads the structured form: a byte cursor.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.byte().unwrap_or(0)) % (max + 1);
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }

    /// A name spelled from tokens (at most 12).
    fn name(&mut self, victim: &str) -> Vec<u8> {
        const TOKENS: [&str; 20] = [
            "a",
            "b",
            "l",
            "/",
            "..",
            ".",
            "victim",
            "hello",
            "sub",
            ".wh.",
            ".wh..wh..opq",
            "/",
            "x/",
            "../",
            "./",
            "",
            ".wh..",
            "private",
            "link",
            "abs",
        ];
        let ids = self.bytes(12);
        let mut out = Vec::new();
        for id in ids {
            if usize::from(id) == TOKENS.len() {
                out.extend_from_slice(victim.as_bytes());
            } else {
                out.extend_from_slice(TOKENS[usize::from(id) % TOKENS.len()].as_bytes());
            }
        }
        out
    }
}

fn header(kind: tar::EntryType, name: &[u8], link: &[u8], size: u64, mode: u32) -> Option<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    let old = h.as_old_mut();
    old.name.get_mut(..name.len())?.copy_from_slice(name);
    old.linkname.get_mut(..link.len())?.copy_from_slice(link);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000);
    h.set_device_major(1).ok()?;
    h.set_device_minor(3).ok()?;
    h.set_cksum();
    Some(h)
}

fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
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
    data
}

fn structured(data: &[u8], victim: &str) -> Vec<u8> {
    use tar::EntryType as T;
    let mut input = Input(data);
    let mut out = Vec::new();
    for _ in 0..32 {
        let Some(k) = input.byte() else { break };
        let name = input.name(victim);
        let link = input.name(victim);
        let body = input.bytes(64);
        let mode = u32::from(input.byte().unwrap_or(0)) * 4;
        let (kind, long) = match k % 12 {
            0 => (T::Regular, false),
            1 => (T::Directory, false),
            2 => (T::Symlink, false),
            3 => (T::Link, false),
            4 => (T::Fifo, false),
            5 => (T::Char, false),
            6 => (T::Block, false),
            7 => (T::Regular, true),
            8 => (T::Symlink, true),
            9 => (T::Link, true),
            10 => (T::Continuous, false),
            _ => (T::GNUSparse, false),
        };
        let body = if matches!(kind, T::Regular | T::Continuous) { body } else { Vec::new() };
        if long {
            // the names in PAX records, short stand-ins in the header
            let records = pax(&[("path", &name), ("linkpath", &link), ("SCHILY.xattr.user.k", b"v")]);
            let Some(h) = header(T::XHeader, b"PaxHeader", b"", records.len() as u64, 0o644) else { continue };
            push(&mut out, &h, &records);
            let Some(h) = header(kind, b"stand-in", b"stand-in", body.len() as u64, mode) else { continue };
            push(&mut out, &h, &body);
        } else if name.len() > 100 {
            let mut n = name.clone();
            n.push(0);
            let Some(h) = header(T::GNULongName, b"././@LongLink", b"", n.len() as u64, 0o644) else { continue };
            push(&mut out, &h, &n);
            let Some(h) = header(kind, b"stand-in", &link, body.len() as u64, mode) else { continue };
            push(&mut out, &h, &body);
        } else if let Some(h) = header(kind, &name, &link, body.len() as u64, mode) {
            push(&mut out, &h, &body);
        }
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    let a = arena();
    let victim = a.victim.display().to_string();
    let tar = if form % 2 == 0 {
        let mut t = rest.to_vec();
        fix_checksums(&mut t);
        t
    } else {
        structured(rest, &victim)
    };
    if let Some(path) = std::env::var_os("KILN_FUZZ_DUMP_TAR") {
        fs::write(path, &tar).expect("dump the tar");
    }
    let _ = fs::remove_dir_all(&a.root);
    fs::create_dir(&a.root).expect("fresh root");
    let overlay = (form & 2 != 0).then_some(layer_diff::OverlayXattrs::User);
    let opts = ApplyOptions { mknod: false, size_limit: Some(1 << 20), overlay, ..ApplyOptions::default() };
    for _ in 0..2 {
        let res = apply_tar(&tar[..], &a.root, &opts);
        assert_eq!(a.before, a.outside(), "something outside the root changed ({res:?})");
        if let Ok(info) = res {
            assert_eq!(info.tar_size, tar.len() as u64);
            assert_eq!(info.diff_id, Digest::sha256(&tar));
        }
    }
});
