//! `COPY` and `ADD`: which files go where, with Docker's rules, as a list of
//! layer entries (each with the file its content comes from) that the layer
//! writer streams in one pass. Nothing is copied into a staging tree.
//!
//! The rules: sources are relative to the context (or the `--from` image's
//! root) and may not leave it; wildcards match per path component; a
//! directory source copies its contents; several sources (or a wildcard)
//! need a destination ending in `/`; a relative destination is under
//! `WORKDIR`; a destination that is a directory in the image (through
//! symlinks, resolved inside the image's root) receives the sources;
//! missing parent directories are created (`0755`, owned per `--chown`);
//! files keep their mode (unless `--chmod`) and times and are owned by root
//! (unless `--chown`). `ADD` extracts local tar archives (plain, gzip,
//! zstd, bzip2, xz; other files are copied as they are), downloads URLs and
//! clones git repositories.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use dockerfile_parse::Heredoc;
use dockerfile_parse::dockerignore::DockerIgnore;
use dockerfile_parse::shell::Lexer;
use layer_diff::{Entry, Kind, Snapshot};
use oci_image::{Digest, DigestWriter};

use super::BuildError;

/// Where sources are read from.
pub(crate) struct SourceTree<'a> {
    pub root: &'a Path,
    pub ignore: Option<&'a DockerIgnore>,
    pub is_context: bool,
}

/// Downloads a URL into a file: its sha256 and `Last-Modified`.
pub(crate) type Fetch<'a> = &'a dyn Fn(&str, &Path) -> Result<(Digest, Option<std::time::SystemTime>), BuildError>;

/// A `COPY`/`ADD` after variable expansion.
pub(crate) struct CopyRequest<'a> {
    pub sources: &'a [String],
    pub dest: &'a str,
    pub heredocs: &'a [Heredoc],
    pub workdir: &'a str,
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<&'a Chmod>,
    pub exclude: &'a [String],
    pub parents: bool,
    pub add: bool,
    pub checksum: Option<&'a str>,
    pub keep_git_dir: bool,
    pub unpack: Option<bool>,
    pub lexer: Lexer,
    pub vars: &'a BTreeMap<String, String>,
    pub fetch: Fetch<'a>,
}

/// `--chmod`: an octal mode, or chmod(1)'s symbolic clauses (`go-w`,
/// `u=rw,g=r`, `a+X`) applied to each file's own mode, as BuildKit does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chmod {
    Octal(u32),
    Symbolic(String),
}

impl Chmod {
    /// Parses a `--chmod` value; `None` when it is neither an octal mode
    /// up to 7777 nor valid symbolic clauses.
    pub fn parse(text: &str) -> Option<Chmod> {
        if text.chars().all(|c| c.is_ascii_digit()) {
            return u32::from_str_radix(text, 8).ok().filter(|n| *n <= 0o7777).map(Chmod::Octal);
        }
        symbolic(text, 0, false).map(|_| Chmod::Symbolic(text.to_owned()))
    }

    /// The mode of an entry whose own mode is `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(s) => symbolic(s, mode, is_dir).unwrap_or(mode),
        }
    }

    /// The mode of a directory the step creates.
    pub fn for_new_dir(&self) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(_) => 0o755,
        }
    }
}

/// chmod(1)'s symbolic clauses (`[ugoa]*([-+=]([rwxXst]*|[ugo]))+`,
/// comma-separated) applied to `mode`; `None` when they do not parse.
fn symbolic(spec: &str, mode: u32, is_dir: bool) -> Option<u32> {
    let mut m = mode & 0o7777;
    for clause in spec.split(',') {
        let chars: Vec<char> = clause.chars().collect();
        let mut i = 0;
        let mut who = 0u32;
        while let Some(c) = chars.get(i).filter(|c| "ugoa".contains(**c)) {
            who |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                _ => 0o7777,
            };
            i += 1;
        }
        if who == 0 {
            who = 0o7777;
        }
        if i >= chars.len() {
            return None;
        }
        while let Some(&op) = chars.get(i) {
            if !"+-=".contains(op) {
                return None;
            }
            i += 1;
            let mut perm = 0u32;
            while let Some(&c) = chars.get(i).filter(|c| !"+-=".contains(**c)) {
                perm |= match c {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    'X' if is_dir || mode & 0o111 != 0 => 0o111,
                    'X' => 0,
                    's' => 0o6000,
                    't' => 0o1000,
                    'u' => ((m >> 6) & 7) * 0o111,
                    'g' => ((m >> 3) & 7) * 0o111,
                    'o' => (m & 7) * 0o111,
                    _ => return None,
                };
                i += 1;
            }
            let p = perm & who;
            match op {
                '+' => m |= p,
                '-' => m &= !p,
                _ => m = (m & !who) | p,
            }
        }
    }
    Some(m)
}

/// One layer entry and the file its content comes from.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub source: PathBuf,
    pub entry: Entry,
    pub time: Time,
}

/// Where an entry comes from, which decides its modification time in the
/// layer (the writer then clamps every time to the epoch, when there is
/// one) and its owner (without `--chown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Time {
    /// Files from images, stages and archives: their own times and owners.
    Source,
    /// An input of the build (context files, heredocs, downloads, git
    /// checkouts): the epoch, so that a checkout's times never reach the
    /// image (without an epoch, docker's times: the file's own), and root
    /// as owner (as docker's client sends context files).
    Input,
    /// Made by the step (directories it creates): the epoch, else now.
    Made,
}

impl Time {
    /// Its name in cache keys.
    fn name(self) -> &'static str {
        match self {
            Time::Source => "source",
            Time::Input => "input",
            Time::Made => "made",
        }
    }
}

impl Item {
    /// The entry as the layer records it, its time set by [`Time`].
    pub fn written(&self, epoch: Option<u64>, now: i64) -> Entry {
        let mut e = self.entry.clone();
        let at = |sec: i64| layer_diff::Timestamp { sec, nsec: 0 };
        match (self.time, epoch) {
            (Time::Source, _) | (Time::Input, None) => {}
            (Time::Input | Time::Made, Some(epoch)) => e.mtime = at(i64::try_from(epoch).unwrap_or(i64::MAX)),
            (Time::Made, None) => e.mtime = at(now),
        }
        e
    }
}

/// `rel` resolved inside `root` as a process chrooted there would see it
/// (the one resolution layer extraction uses too).
pub(crate) use layer_diff::resolve_in_root as inside;

/// The directories to create (relative, top down) so that `path` (absolute
/// in the image) exists, given the image's tree at `root`: symlinks on the
/// way are followed inside the image (as `mkdir -p` in the container would),
/// so what gets created is where they lead.
pub(crate) fn missing_dirs(root: Option<&Path>, path: &str) -> Vec<PathBuf> {
    let rel = match root {
        Some(r) => match inside(r, path) {
            Some(resolved) => resolved.strip_prefix(r).map(Path::to_path_buf).unwrap_or_default(),
            None => return Vec::new(),
        },
        None => PathBuf::from(path.trim_start_matches('/')),
    };
    let mut prefix = PathBuf::new();
    let mut out = Vec::new();
    for part in rel.components().filter(|c| matches!(c, Component::Normal(_))) {
        prefix.push(part);
        if !root.is_some_and(|r| r.join(&prefix).is_dir()) {
            out.push(prefix.clone());
        }
    }
    out
}

/// Cleans a source path relative to its tree; `None` when it leaves it.
fn clean_source(s: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in s.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Whether a source (as the Dockerfile wrote it, `\` escapes kept) holds a
/// glob character that is not escaped.
fn has_wildcard(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// A source without its `\` escapes (`n\?pe` names `n?pe`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    out
}

/// A source that matched: the full path of what is copied, its path
/// relative to the source tree, and whether ownership comes from the file
/// (archives extracted by `ADD`) rather than root/`--chown`.
struct Match {
    full: PathBuf,
    rel: String,
    /// The part of `rel` that `--parents` keeps (after a `/./` pivot).
    kept: String,
    /// Where its times (and owners) come from.
    time: Time,
    is_dir: bool,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let path = path.to_owned();
    move |source| BuildError::Io { op, path, source }
}

fn excluded(src: &SourceTree<'_>, rel: &str) -> bool {
    src.ignore.is_some_and(|i| !rel.is_empty() && i.is_excluded(rel))
}

/// Which of `entries` (a walk of the tree's directory `base`, sorted,
/// parents first) the tree's ignore rules keep: those not excluded, and the
/// excluded directories that hold a kept entry (a `!` re-include keeps
/// its parents, with their own metadata, as BuildKit's copier does): for
/// each entry, whether it is kept.
fn kept_entries(src: &SourceTree<'_>, base: &str, entries: &[Entry]) -> Vec<bool> {
    let Some(ignore) = src.ignore else { return vec![true; entries.len()] };
    let in_tree = |e: &Entry| {
        let p = e.path.to_string_lossy();
        if base.is_empty() { p.into_owned() } else { format!("{base}/{p}") }
    };
    let reincludes = ignore.has_exceptions();
    let mut needed: std::collections::HashSet<&Path> = std::collections::HashSet::new();
    let mut kept = vec![false; entries.len()];
    // children come after their parents: walk backwards, so that a kept
    // entry marks its parents before they are looked at
    for (e, keep) in entries.iter().zip(&mut kept).rev() {
        *keep = !excluded(src, &in_tree(e)) || (reincludes && e.kind == Kind::Dir && needed.contains(e.path.as_path()));
        if *keep && reincludes {
            needed.extend(e.path.ancestors().skip(1));
        }
    }
    kept
}

/// Whether the ignore rules keep anything of the excluded directory `rel`
/// (a `!` pattern re-including something below it).
fn keeps_something_below(src: &SourceTree<'_>, rel: &str, full: &Path) -> Result<bool, BuildError> {
    if !src.ignore.is_some_and(DockerIgnore::has_exceptions) || !full.is_dir() {
        return Ok(false);
    }
    let snap = Snapshot::walk(full)?;
    Ok(kept_entries(src, rel, snap.entries()).contains(&true))
}

/// Every path under `root` (relative, `/`-separated) with exactly `depth` components, not ignored.
fn paths_at_depth(src: &SourceTree<'_>, depth: usize) -> Vec<String> {
    let mut level = vec![String::new()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for dir in &level {
            let full = if dir.is_empty() { src.root.to_path_buf() } else { src.root.join(dir) };
            let Ok(rd) = std::fs::read_dir(&full) else { continue };
            let mut names: Vec<String> =
                rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            for n in names {
                let rel = if dir.is_empty() { n } else { format!("{dir}/{n}") };
                if !excluded(src, &rel) {
                    next.push(rel);
                }
            }
        }
        level = next;
    }
    level
}

fn find_heredoc<'a>(docs: &'a [Heredoc], source: &str) -> Option<&'a Heredoc> {
    let name = source.strip_prefix("<<")?.trim_start_matches('-').trim_matches(['"', '\'']);
    docs.iter().find(|d| d.name == name)
}

pub(crate) fn is_git_url(s: &str) -> bool {
    let repo = s.split('#').next().unwrap_or_default();
    s.starts_with("git@")
        || s.starts_with("git://")
        || (s.contains("://") && Path::new(repo).extension().is_some_and(|e| e.eq_ignore_ascii_case("git")))
}

/// The compression of a local file `ADD` may extract.
#[derive(Clone, Copy)]
enum Archive {
    Plain,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

/// The compression `head` (a file's first bytes) announces.
fn compression_of(head: &[u8]) -> Archive {
    match oci_image::Compression::detect(head) {
        oci_image::Compression::Gzip => return Archive::Gzip,
        oci_image::Compression::Zstd => return Archive::Zstd,
        _ => {}
    }
    if head.starts_with(b"BZh") {
        Archive::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Archive::Xz
    } else {
        Archive::Plain
    }
}

/// The decompressed bytes of `path` (xz goes through a temporary file in
/// `scratch`: its decoder writes rather than reads).
fn decompressed(path: &Path, kind: Archive, scratch: &Path) -> Result<Box<dyn Read>, BuildError> {
    let f = std::io::BufReader::new(std::fs::File::open(path).map_err(io_err("open", path))?);
    Ok(match kind {
        Archive::Plain => Box::new(f),
        Archive::Gzip => Box::new(
            layer_diff::Decompressor::new(f, Some(oci_image::Compression::Gzip)).map_err(io_err("decompress", path))?,
        ),
        Archive::Zstd => Box::new(
            layer_diff::Decompressor::new(f, Some(oci_image::Compression::Zstd)).map_err(io_err("decompress", path))?,
        ),
        Archive::Bzip2 => Box::new(bzip2::read::BzDecoder::new(f)),
        Archive::Xz => {
            let mut tmp = tempfile::tempfile_in(scratch).map_err(io_err("create a temporary file in", scratch))?;
            let mut input = f;
            lzma_rs::xz_decompress(&mut input, &mut tmp).map_err(|e| BuildError::Io {
                op: "decompress",
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}")),
            })?;
            std::io::Seek::rewind(&mut tmp).map_err(io_err("rewind", path))?;
            Box::new(std::io::BufReader::new(tmp))
        }
    })
}

/// Whether `path` is a tar archive, plain or compressed (gzip, zstd,
/// bzip2, xz), which `ADD` extracts; other files, compressed or not, are
/// copied as they are (as Docker does).
fn archive_kind(path: &Path, scratch: &Path) -> Result<Option<Archive>, BuildError> {
    let mut head = [0u8; 6];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(io_err("read", path))?;
    let kind = compression_of(head.get(..n).unwrap_or_default());
    // a file that does not decompress is not an archive: it is copied
    let Ok(mut r) = decompressed(path, kind, scratch) else { return Ok(None) };
    Ok(is_tar(&mut r).then_some(kind))
}

/// Whether a stream starts with a tar header (ustar magic, or a v7 header
/// whose checksum adds up).
fn is_tar(r: &mut dyn Read) -> bool {
    let mut block = [0u8; 512];
    let mut n = 0;
    while n < block.len() {
        match r.read(block.get_mut(n..).unwrap_or_default()) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    if n < block.len() {
        return false;
    }
    if block.get(257..262) == Some(b"ustar") {
        return true;
    }
    let stored = block
        .get(148..156)
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| u32::from_str_radix(f.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok());
    let sum: u32 =
        block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
    stored == Some(sum) && block.first().is_some_and(|&b| b != 0)
}

/// Resolves the sources of `req` into matches.
fn matches(src: &SourceTree<'_>, req: &CopyRequest<'_>, scratch: &Path) -> Result<Vec<Match>, BuildError> {
    let mut out = Vec::new();
    for (i, s) in req.sources.iter().enumerate() {
        if let Some(doc) = find_heredoc(req.heredocs, s) {
            let content = if doc.expand {
                // quotes in a heredoc are its text: variables inside them
                // expand too (BuildKit's SkipProcessQuotes)
                req.lexer
                    .clone()
                    .skip_quotes(true)
                    .expand_word(&doc.content(), req.vars)
                    .map_err(|e| BuildError::Expand(Box::new(e)))?
            } else {
                doc.content()
            };
            let file = scratch.join(format!("heredoc-{i}"));
            std::fs::create_dir_all(&file).map_err(io_err("create", &file))?;
            let path = file.join(&doc.name);
            std::fs::write(&path, content).map_err(io_err("write", &path))?;
            set_mode(&path, 0o644)?;
            out.push(Match {
                full: path,
                rel: doc.name.clone(),
                kept: String::new(),
                time: Time::Input,
                is_dir: false,
            });
            continue;
        }
        let raw = s;
        let s = &unescape(raw);
        if req.add && is_git_url(s) {
            out.push(git_clone(s, req.keep_git_dir, &scratch.join(format!("git-{i}")))?);
            continue;
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            if !req.add {
                return Err(BuildError::Unsupported { what: format!("COPY of a URL ({s}): use ADD") });
            }
            out.push(download(s, req, &scratch.join(format!("url-{i}")))?);
            continue;
        }
        let outside = || BuildError::OutsideContext { path: s.clone() };
        let clean = clean_source(raw.trim_start_matches('/').trim_start_matches("./")).ok_or_else(outside)?;
        // `--parents` keeps the path after a `/./` pivot (all of it without one)
        let pivot = match raw.split_once("/./") {
            Some((before, _)) if req.parents => {
                let p = unescape(&clean_source(before.trim_start_matches('/')).ok_or_else(outside)?);
                if p.is_empty() { p } else { format!("{p}/") }
            }
            _ => String::new(),
        };
        let candidates = if has_wildcard(&clean) {
            let matcher = DockerIgnore::from_patterns([clean.as_str()]).map_err(|e| BuildError::Ignore(Box::new(e)))?;
            let depth = clean.split('/').count();
            // a wildcard may match nothing (BuildKit's AllowEmptyWildcard)
            paths_at_depth(src, depth).into_iter().filter(|p| matcher.is_excluded(p)).collect()
        } else {
            vec![unescape(&clean)]
        };
        for rel in candidates {
            let kept = rel.strip_prefix(&pivot).unwrap_or(&rel).to_owned();
            // a symlink named as a source is followed (inside the tree)
            let full = inside(src.root, &rel).ok_or_else(|| BuildError::MissingSource { path: s.clone() })?;
            if excluded(src, &rel) && !keeps_something_below(src, &rel, &full)? {
                return Err(BuildError::MissingSource { path: s.clone() });
            }
            let meta = std::fs::metadata(&full).map_err(|_| BuildError::MissingSource { path: s.clone() })?;
            if req.add
                && meta.is_file()
                && req.unpack != Some(false)
                && let Some(archive) = archive_kind(&full, scratch)?
            {
                let dir = scratch.join(format!("archive-{i}-{}", out.len()));
                std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
                let tar = decompressed(&full, archive, scratch)?;
                layer_diff::apply_tar(tar, &dir, &layer_diff::ApplyOptions::default())?;
                out.push(Match { full: dir, rel, kept, time: Time::Source, is_dir: true });
                continue;
            }
            let time = if src.is_context { Time::Input } else { Time::Source };
            out.push(Match { full, rel, kept, time, is_dir: meta.is_dir() });
        }
    }
    Ok(out)
}

/// `ADD URL`: the file named by the URL's last path segment, mode 0600,
/// dated by the server's `Last-Modified`, checked against `--checksum`.
fn download(url: &str, req: &CopyRequest<'_>, dir: &Path) -> Result<Match, BuildError> {
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && !n.contains(':'))
        .ok_or_else(|| BuildError::Unsupported { what: format!("ADD {url}: cannot tell a file name from the URL") })?
        .to_owned();
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join(&name);
    let (digest, modified) = (req.fetch)(url, &path)?;
    if let Some(expected) = req.checksum
        && expected != digest.to_string()
    {
        return Err(BuildError::Checksum {
            url: url.to_owned(),
            expected: expected.to_owned(),
            actual: digest.to_string(),
        });
    }
    set_mode(&path, 0o600)?;
    if let Some(t) = modified {
        let f = std::fs::File::options().write(true).open(&path).map_err(io_err("open", &path))?;
        f.set_modified(t).map_err(io_err("set the time of", &path))?;
    }
    Ok(Match { full: path, rel: name, kept: String::new(), time: Time::Input, is_dir: false })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// `ADD <git URL>`: a shallow-less clone of a remote repository. Only
/// network transports (https, http, ssh, git, `user@host:path`): a
/// `file://` URL would let the Dockerfile read a repository of the host,
/// which only the invoker may give (as a named context); git is told the
/// same for submodules, and never prompts for credentials.
fn git_clone(url: &str, keep_git_dir: bool, dir: &Path) -> Result<Match, BuildError> {
    let (repo, reference) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f.split(':').next().unwrap_or_default())),
        None => (url, None),
    };
    let remote = ["https://", "http://", "ssh://", "git://"].iter().any(|p| repo.starts_with(p))
        || (repo.starts_with("git@") && repo.contains(':'));
    if !remote {
        return Err(BuildError::HostPath { name: url.to_owned() });
    }
    let mut cmd = std::process::Command::new("git");
    cmd.args(["-c", "protocol.file.allow=never", "-c", "protocol.ext.allow=never"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null());
    cmd.args(["clone", "--quiet", "--recurse-submodules"]);
    if let Some(r) = reference.filter(|r| !r.is_empty()) {
        cmd.args(["--branch", r]);
    }
    cmd.arg("--").arg(repo).arg(dir);
    let out = cmd.output().map_err(io_err("run git clone into", dir))?;
    if !out.status.success() {
        return Err(BuildError::Base {
            image: url.to_owned(),
            source: format!("git clone failed: {}", String::from_utf8_lossy(&out.stderr).trim()).into(),
        });
    }
    if !keep_git_dir {
        let git = dir.join(".git");
        std::fs::remove_dir_all(&git).map_err(io_err("remove", &git))?;
    }
    Ok(Match { full: dir.to_owned(), rel: String::new(), kept: String::new(), time: Time::Input, is_dir: true })
}

/// The key items are merged and ordered by: `p`'s names joined by NUL,
/// which no name holds and every byte sorts after, so that the keys' bytes
/// sort as [`Path`]s do, by their names (and are compared at memory speed).
fn components(p: &Path) -> Vec<u8> {
    let mut key = Vec::with_capacity(p.as_os_str().len());
    for c in p.components() {
        if let Component::Normal(name) = c {
            if !key.is_empty() {
                key.push(0);
            }
            key.extend_from_slice(name.as_bytes());
        }
    }
    key
}

/// Plans a `COPY`/`ADD`: the entries of its layer, sorted, parents first.
#[allow(clippy::too_many_lines)] // Docker's rules in one place
pub(crate) fn plan(
    src: &SourceTree<'_>,
    req: &CopyRequest<'_>,
    dest_root: Option<&Path>,
    scratch: &Path,
) -> Result<Vec<Item>, BuildError> {
    let found = matches(src, req, scratch)?;
    let dest_abs = super::instr::join_path(req.workdir, req.dest);
    let dir_syntax = req.dest.ends_with('/') || req.dest == "." || req.dest.ends_with("/.") || req.dest.is_empty();
    // directories (and archives ADD extracts) fill the destination as a
    // directory, as BuildKit does; several files, or files and directories,
    // need a destination that is one
    let files = found.iter().filter(|m| !m.is_dir).count();
    let several = files > 1 || (files == 1 && found.len() > 1);
    let exists_as_dir = dest_root.and_then(|r| inside(r, &dest_abs)).is_some_and(|p| p.is_dir());
    if several && !dir_syntax && !exists_as_dir {
        return Err(BuildError::DestNotDir { dest: req.dest.to_owned() });
    }
    let dest_is_dir = dir_syntax || several || exists_as_dir;
    let excludes = if req.exclude.is_empty() {
        None
    } else {
        Some(DockerIgnore::from_patterns(req.exclude.iter()).map_err(|e| BuildError::Ignore(Box::new(e)))?)
    };
    let (uid, gid) = req.chown.unwrap_or((0, 0));
    // keyed items in the order they are put; [`merged`] sorts them
    let mut items: Vec<(Vec<u8>, Item)> = Vec::new();
    let put = |entry: Entry, source: PathBuf, time: Time, items: &mut Vec<(Vec<u8>, Item)>| {
        items.push((components(&entry.path), Item { source, entry, time }));
    };
    // where the destination directory (or the file's directory) really is in the image
    let resolve_dir = |abs: &str| -> PathBuf {
        match dest_root {
            Some(r) => match inside(r, abs) {
                Some(p) => p.strip_prefix(r).map(Path::to_path_buf).unwrap_or_default(),
                None => PathBuf::from(abs.trim_start_matches('/')),
            },
            None => PathBuf::from(abs.trim_start_matches('/')),
        }
    };
    let mut created_dirs: Vec<PathBuf> = Vec::new();
    for m in &found {
        let sub = if req.parents && !m.kept.is_empty() {
            if m.is_dir {
                m.kept.clone()
            } else {
                Path::new(&m.kept).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
            }
        } else {
            String::new()
        };
        let target_abs = if sub.is_empty() { dest_abs.clone() } else { super::instr::join_path(&dest_abs, &sub) };
        let keep = |e: &mut Entry| {
            if m.time != Time::Source {
                e.uid = uid;
                e.gid = gid;
            } else if let Some((u, g)) = req.chown {
                e.uid = u;
                e.gid = g;
            }
            if let Some(chmod) = req.chmod {
                e.mode = chmod.apply(e.mode, e.kind == Kind::Dir);
            }
        };
        if m.is_dir {
            let base = resolve_dir(&target_abs);
            for d in missing_dirs(dest_root, &target_abs) {
                created_dirs.push(d);
            }
            let snap = Snapshot::walk(&m.full)?;
            let kept = src.is_context.then(|| kept_entries(src, &m.rel, snap.entries()));
            for (i, mut entry) in snap.into_entries().into_iter().enumerate() {
                if kept.as_ref().is_some_and(|k| k.get(i) != Some(&true)) {
                    continue;
                }
                if excludes.as_ref().is_some_and(|x| x.is_excluded(&entry.path.to_string_lossy())) {
                    continue;
                }
                let source = m.full.join(&entry.path);
                entry.path = base.join(&entry.path);
                keep(&mut entry);
                put(entry, source, m.time, &mut items);
            }
        } else {
            let name = Path::new(&m.rel).file_name().map_or_else(|| OsString::from("file"), OsString::from);
            let (dir_abs, file_name) = if dest_is_dir {
                (target_abs.clone(), name)
            } else {
                let p = Path::new(&dest_abs);
                (
                    p.parent().map_or_else(|| "/".to_owned(), |d| d.to_string_lossy().into_owned()),
                    p.file_name().map(OsString::from).unwrap_or(name),
                )
            };
            if excludes.as_ref().is_some_and(|x| x.is_excluded(&m.rel)) {
                continue;
            }
            for d in missing_dirs(dest_root, &dir_abs) {
                created_dirs.push(d);
            }
            let base = resolve_dir(&dir_abs);
            let Some(mut entry) = Entry::read(&m.full, base.join(&file_name))? else { continue };
            entry.nlink = 1;
            keep(&mut entry);
            put(entry, m.full.clone(), m.time, &mut items);
        }
    }
    let mut items = merged(items);
    let copied = items.len();
    for d in created_dirs {
        let key = components(&d);
        if key.is_empty() || items.get(..copied).is_some_and(|c| c.binary_search_by(|(k, _)| k.cmp(&key)).is_ok()) {
            continue;
        }
        // parents the step creates get --chmod's mode too (BuildKit's copier)
        let entry = Entry::new(d, Kind::Dir, req.chmod.map_or(0o755, Chmod::for_new_dir), uid, gid);
        put(entry, PathBuf::from("/"), Time::Made, &mut items);
    }
    let mut items = merged(items);
    if let Some(root) = dest_root {
        let paths: Vec<PathBuf> = items.iter().map(|(_, i)| i.entry.path.clone()).collect();
        for entry in existing_above(root, &paths)? {
            let full = root.join(&entry.path);
            put(entry, full, Time::Source, &mut items);
        }
        items = merged(items);
    }
    Ok(items.into_iter().map(|(_, i)| i).collect())
}

/// `items` sorted by key, the last put of a key kept (a source named later
/// replaces what an earlier one put at the same path). A directory's walk
/// comes already sorted, which the sort sees in one pass.
fn merged(mut items: Vec<(Vec<u8>, Item)>) -> Vec<(Vec<u8>, Item)> {
    // stable: equal keys stay in the order they were put
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Vec<u8>, Item)> = Vec::with_capacity(items.len());
    for (key, item) in items {
        match out.last_mut() {
            Some(last) if last.0 == key => last.1 = item,
            _ => out.push((key, item)),
        }
    }
    out
}

/// The directories above `paths` (relative, in the image) that the image
/// at `root` already has and `paths` do not name, as they are. A layer
/// holds them so that, extracted on its own to be stacked with overlayfs,
/// it does not make them anew (root's, 0755) and hide their owner and mode
/// below.
pub(crate) fn existing_above(root: &Path, paths: &[PathBuf]) -> Result<Vec<Entry>, BuildError> {
    let named: std::collections::HashSet<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let mut seen = std::collections::BTreeSet::new();
    for p in paths {
        for a in p.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
            if !named.contains(a) {
                seen.insert(a.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    for dir in seen {
        let full = root.join(&dir);
        if std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir())
            && let Some(entry) = Entry::read(&full, dir)?
        {
            out.push(entry);
        }
    }
    Ok(out)
}

/// A digest of what a planned copy writes, the step cache's key: paths and
/// metadata, and for files either their identity and change time (device,
/// inode, size, mtime and ctime in nanoseconds: what git trusts to tell that
/// a file changed, so a cached rebuild need not read the whole context) or,
/// for files this build made under `scratch` (heredocs, extracted archives,
/// git checkouts, new each time), their contents, and their time only when
/// it is their own (an archive's), not the epoch or the time they were made.
pub(crate) fn items_digest(items: &[Item], scratch: Option<&Path>) -> Result<Digest, BuildError> {
    let mut w = DigestWriter::new(std::io::sink());
    // the items' lines are put together here and hashed 32 KiB at a time
    let mut lines: Vec<u8> = Vec::with_capacity(40 * 1024);
    for item in items {
        let e = &item.entry;
        let made_here = scratch.is_some_and(|s| item.source.starts_with(s));
        // what this build made is new each time: its contents say what it
        // is, and its time is the epoch (a setting of every key) unless it
        // came with its own (an archive's entries)
        let mtime = if made_here && item.time != Time::Source { layer_diff::Timestamp::default() } else { e.mtime };
        let hashed = (|| {
            write!(lines, "{}\0", e.path.display())?;
            match &e.kind {
                Kind::File => lines.push(b'f'),
                Kind::Dir => lines.push(b'd'),
                Kind::Symlink(t) => write!(lines, "l {}", t.display())?,
                other => write!(lines, "{other:?}")?,
            }
            writeln!(
                lines,
                "\0{:o}\0{}\0{}\0{}\0{}\0{}.{}",
                e.mode,
                e.uid,
                e.gid,
                e.size,
                item.time.name(),
                mtime.sec,
                mtime.nsec
            )?;
            if matches!(e.kind, Kind::File) && !made_here {
                writeln!(
                    lines,
                    "{}\0{}\0{}.{}\0{}.{}",
                    e.dev, e.ino, e.mtime.sec, e.mtime.nsec, e.ctime.sec, e.ctime.nsec
                )?;
            }
            Ok::<_, std::io::Error>(())
        })();
        hashed.map_err(io_err("hash", &item.source))?;
        let contents = matches!(e.kind, Kind::File) && made_here;
        if contents || lines.len() >= 32 * 1024 {
            w.write_all(&lines).map_err(io_err("hash", &item.source))?;
            lines.clear();
        }
        if contents {
            let mut f = std::fs::File::open(&item.source).map_err(io_err("open", &item.source))?;
            std::io::copy(&mut f, &mut w).map_err(io_err("read", &item.source))?;
        }
    }
    w.write_all(&lines).map_err(io_err("hash", Path::new("")))?;
    let (_, digest, _) = w.finish();
    Ok(digest)
}

/// A subtree of a host tree (the context, a named directory) as a `RUN
/// --mount=type=bind` shows it: the same files `COPY` would see.
pub(crate) struct TreeMount {
    /// The source, resolved inside the tree.
    pub full: PathBuf,
    /// What is visible, each entry relative to `full` (a file source: one
    /// entry named after it).
    pub items: Vec<Item>,
    /// Whether the ignore rules hid something, so that `full` cannot be
    /// mounted as it is.
    pub filtered: bool,
    /// Whether the source is a directory.
    pub is_dir: bool,
}

/// The subtree `source` (relative to the tree, `/` for all of it) with the
/// tree's ignore rules applied, as `COPY` applies them.
pub(crate) fn tree_mount(src: &SourceTree<'_>, source: &str) -> Result<TreeMount, BuildError> {
    let clean = clean_source(source.trim_start_matches('/').trim_start_matches("./"))
        .ok_or_else(|| BuildError::OutsideContext { path: source.to_owned() })?;
    let missing = || BuildError::MissingSource { path: source.to_owned() };
    let full = inside(src.root, &clean).ok_or_else(missing)?;
    let rel = full.strip_prefix(src.root).map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
    if excluded(src, &rel) && !keeps_something_below(src, &rel, &full)? {
        return Err(missing());
    }
    let meta = std::fs::metadata(&full).map_err(|_| missing())?;
    if !meta.is_dir() {
        let name = full.file_name().map_or_else(|| PathBuf::from("file"), PathBuf::from);
        let entry = Entry::read(&full, name)?.ok_or_else(missing)?;
        return Ok(TreeMount {
            items: vec![Item { source: full.clone(), entry, time: Time::Source }],
            full,
            filtered: false,
            is_dir: false,
        });
    }
    // what COPY of the same source would take (re-included files with their parents)
    let snap = Snapshot::walk(&full)?;
    let kept = kept_entries(src, &rel, snap.entries());
    let filtered = kept.contains(&false);
    let items = snap
        .into_entries()
        .into_iter()
        .zip(kept)
        .filter(|&(_, keep)| keep)
        .map(|(entry, _)| Item { source: full.join(&entry.path), entry, time: Time::Source })
        .collect();
    Ok(TreeMount { full, items, filtered, is_dir: true })
}

/// Recreates what `tree` shows under the directory `into`: directories
/// and symlinks anew, files hard-linked to their source (`link`, for
/// read-only mounts: same file system, nothing copied) or copied (for a
/// mount whose writes must not reach the source). Devices, FIFOs and
/// sockets are left out.
pub(crate) fn materialize(tree: &TreeMount, into: &Path, link: bool) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let perms = |mode: u32| std::fs::Permissions::from_mode(mode & 0o7777);
    if tree.is_dir {
        let mode = std::fs::metadata(&tree.full).map_err(io_err("inspect", &tree.full))?.permissions();
        std::fs::set_permissions(into, mode).map_err(io_err("chmod", into))?;
    }
    for item in &tree.items {
        let dest = into.join(&item.entry.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        match &item.entry.kind {
            Kind::Dir => {
                if !dest.is_dir() {
                    std::fs::create_dir(&dest).map_err(io_err("create", &dest))?;
                }
                std::fs::set_permissions(&dest, perms(item.entry.mode)).map_err(io_err("chmod", &dest))?;
            }
            Kind::File => {
                let linked = link && std::fs::hard_link(&item.source, &dest).is_ok();
                if !linked {
                    std::fs::copy(&item.source, &dest).map_err(io_err("copy", &item.source))?;
                }
            }
            Kind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &dest).map_err(io_err("create", &dest))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dirs_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        assert_eq!(
            missing_dirs(Some(r), "/bin/new/deeper"),
            vec![PathBuf::from("usr/bin/new"), PathBuf::from("usr/bin/new/deeper")]
        );
        assert_eq!(missing_dirs(None, "/a/b"), vec![PathBuf::from("a"), PathBuf::from("a/b")]);
        assert!(missing_dirs(Some(r), "/usr").is_empty());
    }

    #[test]
    fn sources_cannot_leave() {
        assert_eq!(clean_source("a/./b/../c"), Some("a/c".into()));
        assert_eq!(clean_source("../x"), None);
        assert_eq!(clean_source("a/../../x"), None);
    }

    #[test]
    fn chmod_octal_and_symbolic() {
        let c = |t: &str| Chmod::parse(t).unwrap_or_else(|| panic!("{t}"));
        assert_eq!(c("755").apply(0o600, false), 0o755);
        assert_eq!(Chmod::parse("10000"), None);
        assert_eq!(Chmod::parse("u+q"), None);
        assert_eq!(Chmod::parse("go"), None);
        assert_eq!(c("go-w").apply(0o666, false), 0o644);
        assert_eq!(c("u=rw,g=r,o=r").apply(0o777, false), 0o644);
        assert_eq!(c("a+X").apply(0o666, false), 0o666);
        assert_eq!(c("a+X").apply(0o124, true), 0o135);
        assert_eq!(c("a+X").apply(0o644, false), 0o644);
        assert_eq!(c("a+X").apply(0o744, false), 0o755);
        assert_eq!(c("go-w").apply(0o124, true), 0o104);
        assert_eq!(c("u+rw,g+r,o-x,o+w").apply(0o124, true), 0o766);
        assert_eq!(c("+x").apply(0o600, false), 0o711);
        assert_eq!(c("g=u").apply(0o750, false), 0o770);
        assert_eq!(c("u+s,o+t").apply(0o755, true), 0o5755);
    }
}
