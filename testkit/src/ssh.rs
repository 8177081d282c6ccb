//! A real `ssh-agent` (Debian's `openssh-client`) holding one fresh key,
//! for builds that forward an agent (`RUN --mount=type=ssh`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{run, tool};

/// A running `ssh-agent` with one ed25519 key, stopped by its PID when dropped.
pub struct SshAgent {
    child: Child,
    /// The agent's socket (what `SSH_AUTH_SOCK` would name).
    pub socket: PathBuf,
    /// The key's fingerprint (`SHA256:…`), as `ssh-add -l` lists it.
    pub fingerprint: String,
}

impl SshAgent {
    /// Starts an agent with its socket and key in `dir`; `None` without
    /// the openssh tools (outside CI).
    ///
    /// # Errors
    /// When a tool fails.
    pub fn start(dir: &Path) -> io::Result<Option<SshAgent>> {
        let (Some(agent), Some(add), Some(keygen)) = (tool("ssh-agent"), tool("ssh-add"), tool("ssh-keygen")) else {
            return Ok(None);
        };
        let socket = dir.join("agent.sock");
        let child = Command::new(agent).arg("-D").arg("-a").arg(&socket).stdout(Stdio::null()).spawn()?;
        let mut me = SshAgent { child, socket, fingerprint: String::new() };
        for _ in 0..250 {
            if me.socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let key = dir.join("id_ed25519");
        run(Command::new(&keygen).args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"]).arg(&key))?;
        run(Command::new(&add).arg(&key).env("SSH_AUTH_SOCK", &me.socket))?;
        let fp = run(Command::new(&keygen).arg("-lf").arg(key.with_extension("pub")))?;
        fp.split_whitespace().nth(1).unwrap_or_default().clone_into(&mut me.fingerprint);
        Ok(Some(me))
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
