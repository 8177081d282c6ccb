//! A real terminal for tests: a private `tmux` server (Debian's `tmux`)
//! running one command in a pane of a fixed size, with everything the
//! command wrote to the terminal recorded raw (`pipe-pane`), the pane's
//! final screen (`capture-pane`) and the command's exit code. The server
//! runs in the foreground (`tmux -D`) as this process's child, on its own
//! socket directory, and is stopped by its PID when dropped.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tool;

/// Panes started by this process, for unique server names.
static PANES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A command running in a `tmux` pane.
pub struct Tmux {
    server: Child,
    program: PathBuf,
    dir: tempfile::TempDir,
    name: String,
}

/// `arg` quoted for `sh`.
fn quote(arg: &OsStr) -> String {
    let text = String::from_utf8_lossy(arg.as_bytes());
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl Tmux {
    /// Runs `program` with `args` and the extra environment `env` in a
    /// `width` x `height` pane of a fresh server; `None` without `tmux`
    /// (outside CI). Recording starts before the command does.
    ///
    /// # Errors
    /// When the server or the session cannot be started.
    pub fn run<I, S>(program: &Path, args: I, env: &[(&str, &str)], width: u16, height: u16) -> io::Result<Option<Tmux>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let Some(tmux) = tool("tmux") else { return Ok(None) };
        let dir = tempfile::tempdir()?;
        let n = PANES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("kiln-test-{}-{n}", std::process::id());
        let server = Command::new(&tmux)
            .env("TMUX_TMPDIR", dir.path())
            .args(["-D", "-f", "/dev/null", "-L", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let me = Tmux { server, program: tmux, dir, name };
        let mut script = String::new();
        for (k, v) in env {
            let _ = writeln!(script, "export {k}={}", quote(OsStr::new(v)));
        }
        let _ = writeln!(script, "{} -N wait-for go", quote(me.program.as_os_str()));
        script.push_str(&quote(program.as_os_str()));
        for a in args {
            script.push(' ');
            script.push_str(&quote(a.as_ref()));
        }
        // the pane stays open (its screen kept) until the server stops
        let _ = write!(script, "\necho $? > {}\nexec sleep 3600\n", quote(me.exit_file().as_os_str()));
        std::fs::write(me.dir.path().join("run.sh"), script)?;
        let run = format!("sh {}", quote(me.dir.path().join("run.sh").as_os_str()));
        let (w, h) = (width.to_string(), height.to_string());
        // the server needs a moment to listen; until it does, a client would
        // start (and leave running) a daemon server of its own, so every
        // client runs with -N (never start a server) once the socket is there
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if me.socket_exists() {
                let out = me.tmux().args(["new-session", "-d", "-s", "t", "-x", &w, "-y", &h, &run]).output()?;
                if out.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!(
                        "tmux new-session: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            } else if Instant::now() > deadline {
                return Err(io::Error::other("the tmux server made no socket in 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let raw = format!("cat > {}", quote(me.raw_file().as_os_str()));
        me.command(&["pipe-pane", "-o", "-t", "t", &raw])?;
        me.command(&["wait-for", "-S", "go"])?;
        Ok(Some(me))
    }

    /// A client of this server (`-N`: it never starts one of its own).
    fn tmux(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.env("TMUX_TMPDIR", self.dir.path()).args(["-N", "-L", &self.name]);
        c
    }

    /// Whether the server's socket (`$TMUX_TMPDIR/tmux-UID/NAME`) is there.
    fn socket_exists(&self) -> bool {
        std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.file_name().to_string_lossy().starts_with("tmux-") && d.path().join(&self.name).exists())
    }

    fn command(&self, args: &[&str]) -> io::Result<String> {
        let out = self.tmux().args(args).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn exit_file(&self) -> PathBuf {
        self.dir.path().join("exit")
    }

    fn raw_file(&self) -> PathBuf {
        self.dir.path().join("raw")
    }

    /// Waits for the command to end (at most `timeout`), returning its
    /// exit code; the raw recording has caught up when this returns.
    ///
    /// # Errors
    /// When the command is still running after `timeout` (the error shows
    /// the screen).
    pub fn wait(&self, timeout: Duration) -> io::Result<i32> {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Ok(text) = std::fs::read_to_string(self.exit_file())
                && let Ok(code) = text.trim().parse()
            {
                break code;
            }
            if Instant::now() > deadline {
                let screen = self.screen().unwrap_or_default();
                return Err(io::Error::other(format!("still running after {timeout:?}:\n{screen}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // `pipe-pane` copies through a pipe: let it drain
        let mut size = u64::MAX;
        for _ in 0..100 {
            let now = std::fs::metadata(self.raw_file()).map_or(0, |m| m.len());
            if now == size {
                break;
            }
            size = now;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(code)
    }

    /// The pane's screen as text, a line per row, trailing blank rows
    /// dropped.
    ///
    /// # Errors
    /// When `tmux capture-pane` fails.
    pub fn screen(&self) -> io::Result<String> {
        let text = self.command(&["capture-pane", "-p", "-t", "t"])?;
        Ok(text.trim_end().to_owned())
    }

    /// Everything the command wrote to the terminal: text and control
    /// sequences, as the pane received them.
    ///
    /// # Errors
    /// When the recording cannot be read.
    pub fn raw(&self) -> io::Result<Vec<u8>> {
        std::fs::read(self.raw_file())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // the server's PID: it takes its panes' processes with it
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The processes whose command line has `arg` as one argument.
    fn processes_with(arg: &str) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
            if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
            }
        }
        found
    }

    #[test]
    fn a_pane_runs_its_command_and_nothing_outlives_it() {
        let pane = Tmux::run(Path::new("/bin/sh"), ["-c", "printf 'one\\ntwo\\n'; exit 3"], &[], 40, 10).unwrap();
        let Some(pane) = pane else { return };
        let name = pane.name.clone();
        assert_eq!(pane.wait(Duration::from_secs(30)).unwrap(), 3);
        assert_eq!(pane.screen().unwrap(), "one\ntwo");
        assert_eq!(String::from_utf8_lossy(&pane.raw().unwrap()), "one\r\ntwo\r\n");
        assert!(!processes_with(&name).is_empty(), "the server runs while the pane is open");
        drop(pane);
        // the server and its pane's processes are gone (a client that started
        // a daemon server of its own would leave it running)
        for _ in 0..50 {
            if processes_with(&name).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("left running: {:?}", processes_with(&name));
    }
}
