//! `RUN --mount=type=ssh`: the build's ssh agent forwarded into one `RUN`.
//!
//! The container never sees the invoker's agent socket itself: each ssh
//! mount gets a socket of its own in the step's private scratch directory,
//! owned and moded as the mount asks (`uid`, `gid`, `mode`, as BuildKit
//! does), and every connection to it is relayed to the agent. Keys stay in
//! the agent; nothing of the socket or the agent reaches a layer or a cache
//! record. The relay stops when the step ends.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A socket relaying connections to an ssh agent, for one step.
pub(crate) struct AgentRelay {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentRelay {
    /// Listens at `path` (owned by `uid`:`gid`, mode `mode`) and relays
    /// every connection to the agent listening at `agent`.
    pub fn start(path: &Path, agent: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<AgentRelay> {
        // the agent must be there now, not only when a command connects
        UnixStream::connect(agent)
            .map_err(|e| io::Error::new(e.kind(), format!("ssh agent {}: {e}", agent.display())))?;
        let listener = UnixListener::bind(path)?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, agent) = (Arc::clone(&stop), agent.to_owned());
        let thread = std::thread::Builder::new().name("kiln-ssh-relay".into()).spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let agent = agent.clone();
                // one connection at a time per thread; an agent request is short
                let _ = std::thread::Builder::new().name("kiln-ssh-conn".into()).spawn(move || relay(conn, &agent));
            }
        })?;
        Ok(AgentRelay { path: path.to_owned(), stop, thread: Some(thread) })
    }

    /// The socket's path on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AgentRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wake the accept loop so that it sees the flag
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies bytes both ways between a client and the agent until either side closes.
fn relay(client: UnixStream, agent: &Path) {
    let Ok(upstream) = UnixStream::connect(agent) else { return };
    let (Ok(mut c_read), Ok(mut u_write)) = (client.try_clone(), upstream.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}
