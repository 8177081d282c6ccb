//! The layer writer: tar entries -> sha256 (diff id) -> compressor ->
//! sha256 (digest) + size -> any [`Write`], in one pass.
//!
//! Headers are laid out here (with `tar::Header` for the fields) instead of
//! through `tar::Builder`, for three reasons: the builder writes GNU long-name
//! entries where the OCI ecosystem expects PAX records, it never says when a
//! header needs a PAX record for a large size or id, and its `Drop` writes the
//! archive trailer (fallible I/O in `Drop`, which kiln avoids).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_image::{Compression, MediaType};

use crate::compress::Compressor;
use crate::hashing::{CHUNK, HashingWriter, OffloadHash};
use crate::readahead::ReadAhead;
use crate::snapshot::{Entry, Kind};
use crate::{LayerError, LayerInfo, PackOptions};

/// The prefix of whiteout names.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The staging buffer: filled, compressed, then handed whole to the hashing thread.
const STAGE: usize = CHUNK;
/// Largest value of a 7-digit octal header field (uid, gid).
const MAX7: u64 = 0o777_7777;
/// Largest value of an 11-digit octal header field (size, mtime).
const MAX11: u64 = 0o777_7777_7777;

/// Which appended entries read content: regular files, each hard-linked
/// inode once (later paths become link entries). The read-ahead list must
/// name exactly those, in order.
#[derive(Default)]
pub(crate) struct ContentReads(std::collections::HashSet<(u64, u64)>);

impl ContentReads {
    /// Whether appending `e` (the next entry) reads its file.
    pub(crate) fn reads(&mut self, e: &Entry) -> bool {
        e.kind == Kind::File && (e.nlink <= 1 || self.0.insert((e.dev, e.ino)))
    }
}

/// Streams tar entries into a layer blob, hashing both sides on the way.
///
/// Entries must be appended in order (parents before children); the writer
/// turns later paths of a hard-linked inode into link entries to the first.
pub struct LayerWriter<W: Write> {
    out: Compressor<HashingWriter<W>>,
    /// The tar's hash (the diff id); `None` when uncompressed, where it is the blob's.
    tar_hash: Option<OffloadHash>,
    /// The staging buffer, always `STAGE` initialised bytes long: files are
    /// read straight into it, with no zeroing first.
    stage: Vec<u8>,
    /// How much of `stage` holds tar bytes.
    filled: usize,
    opts: PackOptions,
    media_type: MediaType,
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Hints the files to come (see [`LayerWriter::read_ahead`]).
    ahead: Option<ReadAhead>,
    /// Regular files read so far.
    files_read: usize,
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io { op, path: path.to_owned(), source }
}

/// A tar name: `/`-separated bytes, relative.
fn tar_name(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // "<len> <key>=<value>\n" where len counts the whole record, its own digits included
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Copies as much of `src` as fits into `dst`.
fn fill(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

/// Fits `name` into a ustar header's name and prefix fields; `false` when it does not fit.
fn set_ustar_name(h: &mut tar::Header, name: &[u8]) -> bool {
    let Some(ustar) = h.as_ustar_mut() else { return false };
    if name.len() <= 100 {
        fill(&mut ustar.name, name);
        return true;
    }
    // split at a '/' so that prefix <= 155 and name <= 100 (trailing '/' of dirs stays in name)
    for (i, &b) in name.iter().enumerate() {
        let rest = name.len() - i - 1;
        if b == b'/' && i > 0 && i <= 155 && rest > 0 && rest <= 100 {
            let (prefix, tail) = name.split_at(i);
            fill(&mut ustar.prefix, prefix);
            fill(&mut ustar.name, tail.get(1..).unwrap_or_default());
            return true;
        }
    }
    fill(&mut ustar.name, name);
    false
}

/// Header fields of one entry.
struct Fields<'a> {
    name: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: Option<&'a [u8]>,
    device: Option<(u32, u32)>,
    xattrs: Option<&'a std::collections::BTreeMap<String, Vec<u8>>>,
}

impl<W: Write> LayerWriter<W> {
    /// Starts a layer written to `w`, compressed as `opts.compression`.
    ///
    /// # Errors
    /// [`LayerError::Io`] when the compressor cannot be set up.
    pub fn new(w: W, opts: &PackOptions) -> Result<LayerWriter<W>, LayerError> {
        let media_type = match opts.compression {
            Compression::Gzip => MediaType::OciLayerGzip,
            Compression::Zstd => MediaType::OciLayerZstd,
            _ => MediaType::OciLayer,
        };
        // with threads to spare, both hashes run on threads of their own
        let threaded = opts.threads > 1;
        let out = Compressor::new(HashingWriter::new(w, threaded), opts.compression, opts.level, opts.threads)
            .map_err(io_at("set up compression of", Path::new("layer")))?;
        let tar_hash = (opts.compression != Compression::None).then(|| OffloadHash::new(threaded));
        Ok(LayerWriter {
            out,
            tar_hash,
            stage: vec![0; STAGE],
            filled: 0,
            opts: opts.clone(),
            media_type,
            links: HashMap::new(),
            ahead: None,
            files_read: 0,
        })
    }

    /// Announces what the next appends will be, in order: each entry with
    /// the file its content comes from. A helper thread then opens each
    /// regular file a little before the writer needs it and asks the kernel
    /// to start reading it, so files that are not in the page cache do not
    /// stall the pipeline one by one, and the writer's thread skips the path
    /// lookups. Appends work the same without it: a file is taken from the
    /// helper only when it is the one the append names at that position.
    pub fn read_ahead<'a>(&mut self, entries: impl IntoIterator<Item = (PathBuf, &'a Entry)>) {
        let mut seen = ContentReads::default();
        let files: Vec<_> =
            entries.into_iter().filter(|(_, e)| seen.reads(e)).map(|(source, e)| (source, e.size)).collect();
        self.ahead = None;
        self.files_read = 0;
        if files.len() > 1 {
            self.read_ahead_stream(files);
        }
    }

    /// As [`LayerWriter::read_ahead`], for files (source path and size,
    /// filtered by [`ContentReads`]) that arrive while the layer is being
    /// written.
    pub(crate) fn read_ahead_stream<I>(&mut self, files: I)
    where
        I: IntoIterator<Item = (PathBuf, u64)> + Send + 'static,
        I::IntoIter: Send,
    {
        self.ahead = ReadAhead::start(files);
        self.files_read = 0;
    }

    /// Compresses the staged bytes and hands them to the tar's hash.
    fn flush_stage(&mut self) -> io::Result<()> {
        self.out.write_all(self.stage.get(..self.filled).unwrap_or_default())?;
        if let Some(h) = &mut self.tar_hash {
            let mut full = std::mem::take(&mut self.stage);
            full.truncate(self.filled);
            // the buffer to fill next comes back with its old bytes: only
            // a shorter one has a tail to zero
            self.stage = h.update_owned(full)?;
            self.stage.resize(STAGE, 0);
        }
        self.filled = 0;
        Ok(())
    }

    /// The unfilled part of the stage, at most `max` bytes of it.
    fn stage_room(&mut self, max: usize) -> &mut [u8] {
        let end = STAGE.min(self.filled.saturating_add(max));
        self.stage.get_mut(self.filled..end).unwrap_or_default()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.filled + bytes.len() > STAGE {
            self.flush_stage()?;
        }
        if bytes.len() >= STAGE {
            self.out.write_all(bytes)?;
            match &mut self.tar_hash {
                Some(h) => h.update(bytes),
                None => Ok(()),
            }
        } else {
            self.stage_room(bytes.len()).copy_from_slice(bytes);
            self.filled += bytes.len();
            Ok(())
        }
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = usize::try_from(size % 512).unwrap_or(0);
        if rem != 0 {
            self.put([0u8; 512].get(rem..).unwrap_or_default())?;
        }
        Ok(())
    }

    fn write_header(&mut self, f: &Fields<'_>) -> io::Result<()> {
        let mut pax = Vec::new();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(f.kind);
        if !set_ustar_name(&mut h, &f.name) {
            pax_record(&mut pax, "path", &f.name);
        }
        if let Some(link) = f.link {
            if link.len() > 100 {
                pax_record(&mut pax, "linkpath", link);
            }
            if let Some(u) = h.as_ustar_mut() {
                fill(&mut u.linkname, link);
            }
        }
        h.set_mode(f.mode & 0o7777);
        if f.uid > MAX7 {
            pax_record(&mut pax, "uid", f.uid.to_string().as_bytes());
        }
        h.set_uid(if f.uid > MAX7 { 0 } else { f.uid });
        if f.gid > MAX7 {
            pax_record(&mut pax, "gid", f.gid.to_string().as_bytes());
        }
        h.set_gid(if f.gid > MAX7 { 0 } else { f.gid });
        if f.size > MAX11 {
            pax_record(&mut pax, "size", f.size.to_string().as_bytes());
        }
        h.set_size(if f.size > MAX11 { 0 } else { f.size });
        if f.mtime > MAX11 {
            pax_record(&mut pax, "mtime", f.mtime.to_string().as_bytes());
        }
        h.set_mtime(f.mtime.min(MAX11));
        if let Some((major, minor)) = f.device {
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
        }
        if let Some(xattrs) = f.xattrs {
            for (k, v) in xattrs {
                if !v.is_empty() {
                    pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
                }
            }
        }
        if !pax.is_empty() {
            let mut ph = tar::Header::new_ustar();
            ph.set_entry_type(tar::EntryType::XHeader);
            set_ustar_name(&mut ph, b"././@PaxHeader");
            ph.set_mode(0o644);
            ph.set_size(pax.len() as u64);
            ph.set_mtime(0);
            ph.set_cksum();
            self.put(ph.as_bytes())?;
            self.put(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        h.set_cksum();
        self.put(h.as_bytes())
    }

    fn mtime(&self, e: &Entry) -> u64 {
        let m = u64::try_from(e.mtime.sec).unwrap_or(0);
        self.opts.epoch.map_or(m, |epoch| m.min(epoch))
    }

    fn owner(&self, e: &Entry) -> (u64, u64) {
        if self.opts.normalize_owner {
            return (0, 0);
        }
        let (uid, gid) = match &self.opts.id_map {
            Some(map) => (map.to_container_uid(e.uid), map.to_container_gid(e.gid)),
            None => (e.uid, e.gid),
        };
        (u64::from(uid), u64::from(gid))
    }

    fn name_of(&self, path: &Path, dir: bool) -> Vec<u8> {
        let mut name = match &self.opts.prefix {
            Some(p) => tar_name(&p.join(path)),
            None => tar_name(path),
        };
        if dir {
            name.push(b'/');
        }
        name
    }

    /// Appends `entry`, whose file (for content) is at `root.join(&entry.path)`.
    ///
    /// # Errors
    /// [`LayerError::ReservedName`] for a name starting with `.wh.`,
    /// [`LayerError::Io`] for unreadable files or a failing writer.
    pub fn append(&mut self, root: &Path, entry: &Entry) -> Result<(), LayerError> {
        self.append_from(&root.join(&entry.path), entry)
    }

    /// Appends `entry` under its own path (`entry.path`, the name in the
    /// layer) with the content of the file at `source`: for layers whose
    /// entries come from elsewhere (a build's `COPY a.txt /b.txt`). The
    /// metadata written is the entry's, whatever `source` has.
    ///
    /// # Errors
    /// As [`LayerWriter::append`].
    pub fn append_from(&mut self, source: &Path, entry: &Entry) -> Result<(), LayerError> {
        let full = source.to_owned();
        if entry.path.file_name().is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())) {
            return Err(LayerError::ReservedName { path: full });
        }
        let write = |e| LayerError::Io { op: "write layer entry for", path: full.clone(), source: e };
        let name = self.name_of(&entry.path, entry.kind.is_dir());
        let (uid, gid) = self.owner(entry);
        let mut fields = Fields {
            name,
            kind: tar::EntryType::Regular,
            mode: entry.mode,
            uid,
            gid,
            mtime: self.mtime(entry),
            size: 0,
            link: None,
            device: None,
            xattrs: Some(&entry.xattrs),
        };
        if !entry.kind.is_dir() && entry.nlink > 1 {
            let key = (entry.dev, entry.ino);
            if let Some(first) = self.links.get(&key).cloned() {
                fields.kind = tar::EntryType::Link;
                fields.link = Some(&first);
                fields.xattrs = None;
                return self.write_header(&fields).map_err(write);
            }
            let first = self.name_of(&entry.path, false);
            self.links.insert(key, first);
        }
        let target;
        match &entry.kind {
            Kind::Dir => fields.kind = tar::EntryType::Directory,
            Kind::Symlink(t) => {
                fields.kind = tar::EntryType::Symlink;
                target = tar_name(t);
                fields.link = Some(&target);
            }
            Kind::Fifo => fields.kind = tar::EntryType::Fifo,
            Kind::Char { major, minor } => {
                fields.kind = tar::EntryType::Char;
                fields.device = Some((*major, *minor));
            }
            Kind::Block { major, minor } => {
                fields.kind = tar::EntryType::Block;
                fields.device = Some((*major, *minor));
            }
            Kind::File => {
                let opened = self.ahead.as_mut().and_then(|a| a.take(self.files_read, &full));
                self.files_read += 1;
                let file = match opened {
                    Some(file) => file,
                    None => fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
                        .open(&full)
                        .map_err(io_at("open", &full))?,
                };
                fields.size = entry.size;
                self.write_header(&fields).map_err(write)?;
                return self.copy_exact(file, entry.size, &full);
            }
        }
        self.write_header(&fields).map_err(write)
    }

    /// Copies exactly `size` bytes of `file` (zero-filled if it shrank meanwhile).
    fn copy_exact(&mut self, file: fs::File, size: u64, path: &Path) -> Result<(), LayerError> {
        let mut reader = file.take(size);
        let mut left = size;
        while left > 0 {
            if self.filled == STAGE {
                self.flush_stage().map_err(io_at("write layer entry for", path))?;
            }
            let want = usize::try_from(left).unwrap_or(usize::MAX);
            let n = match reader.read(self.stage_room(want)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_at("read", path)(e)),
            };
            if n == 0 {
                // the file shrank after it was measured: keep the archive well-formed
                let zeros = vec![0u8; want.min(STAGE)];
                while left > 0 {
                    let k = usize::try_from(left).unwrap_or(usize::MAX).min(zeros.len());
                    self.put(zeros.get(..k).unwrap_or_default()).map_err(io_at("write layer entry for", path))?;
                    left -= k as u64;
                }
                break;
            }
            self.filled += n;
            left -= n as u64;
        }
        self.pad(size).map_err(io_at("write layer entry for", path))
    }

    /// Appends `changes`: entries from `upper` for additions and
    /// modifications, whiteouts for deletions, opaque markers for opaque
    /// directories (what [`crate::pack_changes`] writes).
    ///
    /// # Errors
    /// [`LayerError::InvalidPath`] for a change with an empty or unknown
    /// path, and the errors of [`LayerWriter::append`].
    pub fn append_changes(&mut self, upper: &crate::Snapshot, changes: &[crate::Change]) -> Result<(), LayerError> {
        for c in changes {
            if c.path.as_os_str().is_empty() {
                if c.opaque {
                    self.append_opaque(Path::new(""))?;
                    continue;
                }
                return Err(LayerError::InvalidPath { path: c.path.clone() });
            }
            if c.kind == crate::ChangeKind::Delete {
                self.append_whiteout(&c.path)?;
                continue;
            }
            let entry = upper.get(&c.path).ok_or_else(|| LayerError::InvalidPath { path: c.path.clone() })?;
            self.append(upper.root(), entry)?;
            if c.opaque && entry.kind.is_dir() {
                self.append_opaque(&c.path)?;
            }
        }
        Ok(())
    }

    /// Appends a whiteout that deletes `path` (relative) in lower layers.
    ///
    /// # Errors
    /// [`LayerError::Io`] when writing fails.
    pub fn append_whiteout(&mut self, path: &Path) -> Result<(), LayerError> {
        let Some(file) = path.file_name() else {
            return Err(LayerError::InvalidPath { path: path.to_owned() });
        };
        let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
        wh.push(file);
        let rel = path.parent().map_or_else(|| PathBuf::from(&wh), |p| p.join(&wh));
        self.marker(&rel, path)
    }

    /// Appends the marker that makes directory `dir` (relative; empty for the root) opaque.
    ///
    /// # Errors
    /// [`LayerError::Io`] when writing fails.
    pub fn append_opaque(&mut self, dir: &Path) -> Result<(), LayerError> {
        self.marker(&dir.join(OPAQUE_MARKER), dir)
    }

    fn marker(&mut self, rel: &Path, for_path: &Path) -> Result<(), LayerError> {
        let fields = Fields {
            name: self.name_of(rel, false),
            kind: tar::EntryType::Regular,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link: None,
            device: None,
            xattrs: None,
        };
        self.write_header(&fields).map_err(io_at("write whiteout for", for_path))
    }

    /// Ends the tar and the compressed stream; returns the writer and the layer's digests.
    ///
    /// # Errors
    /// [`LayerError::Io`] when the final writes fail.
    pub fn finish(mut self) -> Result<(W, LayerInfo), LayerError> {
        let io = io_at("finish", Path::new("layer"));
        let media_type = self.media_type.clone();
        let end = (|| {
            self.put(&[0u8; 1024])?;
            self.flush_stage()?;
            let tar = self.tar_hash.take().map(OffloadHash::finish).transpose()?;
            let (w, digest, size) = self.out.finish()?.finish()?;
            // uncompressed, the tar is the blob
            let diff_id = tar.map_or_else(|| digest.clone(), |(d, _)| d);
            Ok::<_, io::Error>((w, LayerInfo { digest, diff_id, size, media_type }))
        })();
        end.map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, "path", b"a");
        assert_eq!(out, b"9 path=a\n");
        let mut out = Vec::new();
        let v = vec![b'x'; 95];
        pax_record(&mut out, "path", &v);
        assert_eq!(out.len(), 105);
        assert!(out.starts_with(b"105 path="));
    }

    #[test]
    fn pax_records_for_long_names_links_large_ids_and_sizes() {
        let opts = PackOptions { compression: Compression::None, threads: 1, ..PackOptions::default() };
        let mut lw = LayerWriter::new(Vec::new(), &opts).unwrap();
        let name = "n".repeat(300).into_bytes();
        let link = "l".repeat(150).into_bytes();
        let fields = Fields {
            name: name.clone(),
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            uid: 3_000_000,
            gid: 4_000_000,
            mtime: 1,
            size: 9 << 30,
            link: Some(&link),
            device: None,
            xattrs: None,
        };
        lw.write_header(&fields).unwrap();
        let bytes = lw.stage.get(..lw.filled).unwrap().to_vec();
        let pax_header = tar::Header::from_byte_slice(&bytes[..512]);
        assert_eq!(pax_header.entry_type(), tar::EntryType::XHeader);
        let len = usize::try_from(pax_header.size().unwrap()).unwrap();
        let pax = String::from_utf8_lossy(&bytes[512..512 + len]).into_owned();
        for want in [
            format!("path={}\n", "n".repeat(300)),
            format!("linkpath={}\n", "l".repeat(150)),
            "uid=3000000\n".to_owned(),
            "gid=4000000\n".to_owned(),
            format!("size={}\n", 9u64 << 30),
        ] {
            assert!(pax.contains(&want), "{want} in {pax}");
        }
        // the ustar header itself stays plain octal (no base-256 extensions)
        let start = 512 + len.div_ceil(512) * 512;
        let h = tar::Header::from_byte_slice(&bytes[start..start + 512]);
        assert_eq!(h.uid().unwrap(), 0);
        assert_eq!(h.size().unwrap(), 0);
    }

    #[test]
    fn ustar_name_split() {
        let mut h = tar::Header::new_ustar();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        assert!(set_ustar_name(&mut h, long.as_bytes()));
        assert_eq!(h.path_bytes().as_ref(), long.as_bytes());
        let mut h = tar::Header::new_ustar();
        assert!(!set_ustar_name(&mut h, "x".repeat(300).as_bytes()));
    }
}
