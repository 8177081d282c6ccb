//! A private containerd daemon (Debian's `containerd`) for interoperability
//! tests: its own root, state, socket and `opt` directory in a temporary
//! directory, the CRI plugin off, run as this process's child and stopped
//! by its PID when dropped. `ctr` talks to it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tool;

/// A running containerd.
pub struct Containerd {
    daemon: Child,
    ctr: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts a daemon; `None` without `containerd` and `ctr` (outside CI)
    /// or when not root (containerd mounts and changes owners).
    ///
    /// # Errors
    /// When the daemon cannot be started or does not answer within 30 s
    /// (its log is in the error).
    pub fn start() -> io::Result<Option<Containerd>> {
        let (Some(bin), Some(ctr)) = (tool("containerd"), tool("ctr")) else { return Ok(None) };
        // /proc/self belongs to the effective user
        if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))? != 0 {
            eprintln!("note: containerd needs root; skipping");
            return Ok(None);
        }
        // a unix socket's path has at most 107 bytes: a short directory
        let dir = tempfile::Builder::new().prefix("kiln-ctrd-").tempdir_in("/tmp")?;
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/sock\"\n\
             [ttrpc]\n  address = \"{d}/sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config)?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let daemon = Command::new(bin)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut me = Containerd { daemon, ctr, dir };
        // it serves its socket once its plugins are loaded
        let sock = me.dir.path().join("sock");
        let serving = || std::os::unix::net::UnixStream::connect(&sock).is_ok();
        let log_file = me.dir.path().join("log");
        let log = || format!(": {}", last_lines(&log_file));
        crate::wait_for_daemon(&mut me.daemon, "containerd", Duration::from_secs(30), serving, log)?;
        Ok(Some(me))
    }

    /// `ctr` for this daemon (add `--namespace` and the command).
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("--address").arg(self.dir.path().join("sock")).stdin(Stdio::null());
        c
    }

    /// Where the `native` snapshotter keeps its snapshots: each a plain
    /// directory holding the tree.
    pub fn native_snapshots(&self) -> PathBuf {
        self.dir.path().join("root").join("io.containerd.snapshotter.v1.native").join("snapshots")
    }
}

/// The last 20 lines of the daemon's log.
fn last_lines(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines.get(lines.len().saturating_sub(20)..).unwrap_or_default().join("\n")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // by PID, never by name
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
