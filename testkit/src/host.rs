//! Host-side fixtures for safety tests: an unprivileged local user to play
//! the attacker (or the victim), and a manifest of a directory tree that
//! shows, inode for inode, whether anything in it changed.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::Digest as _;

use crate::{in_ci, tool};

/// The name of the tests' unprivileged user.
pub const TEST_USER: &str = "kiln-test";

/// An unprivileged local user (see [`test_user`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestUser {
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl TestUser {
    /// `program` to be run as this user (no supplementary groups: the
    /// standard library drops root's when it switches user).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.uid(self.uid).gid(self.gid).env("HOME", "/nonexistent").env_remove("XDG_CACHE_HOME");
        cmd
    }

    /// Runs `script` with `/bin/sh -c` as this user; its exit status,
    /// stdout and stderr.
    ///
    /// # Errors
    /// When the shell cannot be started.
    pub fn sh(&self, script: &str) -> io::Result<std::process::Output> {
        self.command("/bin/sh").arg("-c").arg(script).stdin(std::process::Stdio::null()).output()
    }
}

fn lookup(name: &str) -> Option<TestUser> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some(TestUser { uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? }))?
    })
}

/// The unprivileged user `kiln-test`, created when missing. `test.sh`
/// creates it before any test starts; a test run without it creates it
/// here, and parallel tests (threads or processes) cannot race: `useradd`
/// locks the user database, and a second creator's "already exists"
/// (exit 9) counts as success. `None` (with a note) when not root, outside
/// CI.
///
/// # Panics
/// Under CI, when the user cannot be had: a safety test must not skip there.
pub fn test_user() -> Option<TestUser> {
    static CREATING: Mutex<()> = Mutex::new(());
    if let Some(u) = lookup(TEST_USER) {
        return Some(u);
    }
    let _guard = CREATING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(u) = lookup(TEST_USER) {
        return Some(u);
    }
    let made = tool("useradd").and_then(|useradd| {
        Command::new(useradd)
            .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", TEST_USER])
            .status()
            .ok()
    });
    match (made.and_then(|s| s.code()), lookup(TEST_USER)) {
        (Some(0 | 9), Some(u)) => Some(u),
        (status, _) => {
            assert!(!in_ci(), "cannot create the test user {TEST_USER} (useradd: {status:?}); test.sh creates it");
            eprintln!("note: no user {TEST_USER} (useradd: {status:?}); skipping (run as root, or ./test.sh)");
            None
        }
    }
}

/// A temporary directory other users can enter (`0755`), for binaries
/// and fixtures an unprivileged user must reach (a checkout under `/root`
/// is invisible to them).
///
/// # Errors
/// When it cannot be made.
pub fn shared_tempdir() -> io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("kiln-shared-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// What a directory tree is, path by path: kind, mode, owner, link count,
/// inode, size, modification time, and the content's sha256 (files) or
/// the target (symlinks). Equal manifests taken before and after mean
/// nothing in the tree was created, removed, replaced or changed.
///
/// # Errors
/// When the tree cannot be read.
pub fn tree_manifest(root: &Path) -> io::Result<BTreeMap<PathBuf, String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("link -> {}", std::fs::read_link(&p)?.display())
        } else if ft.is_file() {
            let mut hasher = sha2::Sha256::new();
            let mut f = std::fs::File::open(&p)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(buf.get(..n).unwrap_or_default());
            }
            format!("file {:x}", hasher.finalize())
        } else if ft.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
            "dir".to_owned()
        } else {
            "special".to_owned()
        };
        let line = format!(
            "{what} mode={:o} owner={}:{} nlink={} ino={} size={} mtime={}.{}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.nlink(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        );
        out.insert(p.strip_prefix(root).unwrap_or(&p).to_owned(), line);
    }
    Ok(out)
}
