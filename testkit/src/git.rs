//! A real `git daemon` on a free loopback port serving bare repositories
//! over `git://`, for builds that `ADD` a remote repository.

use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tool;

/// A running `git daemon`; stopped (by PID) when dropped.
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    /// Serves every repository under `base` as `git://127.0.0.1:PORT/NAME`.
    /// `None` (with a note) when git is missing outside CI.
    ///
    /// # Errors
    /// When the daemon does not start or accept connections within 10 s.
    pub fn start(base: &Path) -> io::Result<Option<GitDaemon>> {
        let Some(git) = tool("git") else { return Ok(None) };
        // `git daemon` would run `git-daemon` as a child of its own, which a
        // kill of `git` leaves running: the daemon itself is started, so
        // that stopping it by PID stops it
        let exec_path = Command::new(&git).arg("--exec-path").output()?;
        let daemon = Path::new(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(daemon)
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1", &format!("--port={port}")])
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut daemon = GitDaemon { child, port };
        let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        crate::wait_for_daemon(&mut daemon.child, "git daemon", Duration::from_secs(10), listening, String::new)?;
        Ok(Some(daemon))
    }

    /// `git://127.0.0.1:PORT/name`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // stop by PID, never by name
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::GitDaemon;

    #[test]
    fn a_dropped_daemon_stops_listening() {
        let dir = tempfile::tempdir().unwrap();
        let Some(daemon) = GitDaemon::start(dir.path()).unwrap() else { return };
        let port = daemon.port;
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(daemon);
        // nothing of it is left to answer
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "git-daemon still listens on {port}");
    }
}
