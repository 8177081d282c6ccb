//! Test fixtures for kiln: a real CNCF distribution registry (the Debian
//! `docker-registry` binary) on a free loopback port, the shared conformance
//! data, and lookups of peer tools (skopeo, umoci, ...).
//!
//! When `CI` is set, anything missing is a test failure, never a skip.
//!
//! ```no_run
//! let registry = testkit::Registry::start()?;
//! println!("registry at {}", registry.host());
//! # Ok::<(), std::io::Error>(())
//! ```

mod containerd;
mod fault;
mod git;
mod host;
mod image;
mod pki;
mod proxy;
mod scripted;
mod server;
mod ssh;
mod tmux;
mod token;

pub use containerd::Containerd;
pub use fault::{Fault, FaultCounts, FaultPlan, FaultProxy, TOKEN_LIFETIME};
pub use git::GitDaemon;
pub use host::{TEST_USER, TestUser, shared_tempdir, test_user, tree_manifest};
pub use image::{GROUP, PASSWD, busybox_image};
pub use pki::{CertPair, Pki};
pub use proxy::HttpProxy;
pub use scripted::{Logged, Quirks, ScriptedRegistry};
pub use ssh::SshAgent;
pub use tmux::Tmux;
pub use token::{ISSUER, SERVICE, TokenServer};

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when running under CI (`CI` set and not `false`/`0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The shared test data folder: `KILN_SHARED_DIR`, or the `shared` folder
/// beside the project root. `None` (with a note on stderr) when absent
/// outside CI.
///
/// # Panics
/// Under CI, when the folder is missing: a missing data set is a failure there.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_SHARED_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"), PathBuf::from);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(!in_ci(), "shared test data not found at {} (set KILN_SHARED_DIR); required under CI", dir.display());
    eprintln!("note: shared test data not found at {}; skipping (set KILN_SHARED_DIR)", dir.display());
    None
}

/// Waits for a daemon started as `child` (named `what` in errors): polls
/// `ready` until it holds; an error when the daemon exits first or after
/// `timeout`, with `log()` (what it wrote, or nothing) appended.
pub(crate) fn wait_for_daemon(
    child: &mut Child,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
    log: impl Fn() -> String,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("{what} exited with {status}{}", log())));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not answer within {timeout:?}{}", log()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The path of an installed tool, searched on `PATH`. `None` (with a note)
/// when missing outside CI.
///
/// # Panics
/// Under CI, when the tool is missing: `./test.sh` installs it.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        assert!(!in_ci(), "required tool {name} is not installed (./test.sh installs it)");
        eprintln!("note: {name} not installed; skipping (./test.sh installs it)");
    }
    found
}

/// Runs a command, returning stdout; fails with the command, status and stderr.
///
/// # Errors
/// When it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running distribution registry; stopped (by PID) when dropped.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
    ca_pem: Option<String>,
    token: Option<TokenServer>,
}

/// Options for [`Registry::start_with`].
#[derive(Debug, Default, Clone)]
pub struct RegistryOptions {
    /// Require htpasswd basic auth with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Require bearer tokens from a [`TokenServer`] that accepts this user
    /// and password (and optionally an OAuth2 refresh token).
    pub token_auth: Option<TokenAuth>,
    /// Serve HTTPS with a certificate from a CA made for this run.
    pub tls: bool,
}

/// Token-auth settings.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
    /// A refresh token the server also accepts (`identitytoken`).
    pub refresh_token: Option<String>,
    /// Token lifetime in seconds.
    pub ttl_secs: u64,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Registry {
    /// Starts an anonymous registry.
    ///
    /// # Errors
    /// When `docker-registry` is missing or does not come up.
    pub fn start() -> io::Result<Registry> {
        Registry::start_with(&RegistryOptions::default())
    }

    /// Starts a registry with options.
    ///
    /// # Errors
    /// When `docker-registry` (or `htpasswd` for basic auth) is missing or
    /// the registry does not answer within 20 seconds.
    pub fn start_with(opts: &RegistryOptions) -> io::Result<Registry> {
        let bin = tool("docker-registry").ok_or_else(|| io::Error::other("docker-registry not installed"))?;
        let mut dir = tempfile::tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut auth = String::new();
        if let Some((user, pass)) = &opts.basic_auth {
            let htpasswd = tool("htpasswd").ok_or_else(|| io::Error::other("htpasswd not installed"))?;
            let file = dir.path().join("htpasswd");
            run(Command::new(htpasswd).arg("-Bbc").arg(&file).arg(user).arg(pass))?;
            auth = format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", file.display());
        }
        let token = match &opts.token_auth {
            Some(t) => {
                let server = TokenServer::start(&t.user, &t.password, t.refresh_token.as_deref(), t.ttl_secs)?;
                let bundle = dir.path().join("token-root.pem");
                std::fs::write(&bundle, server.root_pem())?;
                auth = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    bundle.display()
                );
                Some(server)
            }
            None => None,
        };
        let mut tls = String::new();
        let mut ca_pem = None;
        if opts.tls {
            let pki = Pki::new()?;
            let pair = pki.loopback_server()?;
            std::fs::write(dir.path().join("server.pem"), &pair.cert_pem)?;
            std::fs::write(dir.path().join("server.key"), &pair.key_pem)?;
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("server.pem").display(),
                dir.path().join("server.key").display()
            );
            ca_pem = Some(pki.ca_pem());
        }
        let mut token = token;
        // retry a few times in case another process takes the port first
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
                    storage.display()
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            let mut reg = Registry {
                child,
                port,
                dir,
                credentials: opts.basic_auth.clone(),
                ca_pem: ca_pem.clone(),
                token: token.take(),
            };
            match reg.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    last_err = Some(e);
                    let _ = reg.child.kill();
                    let _ = reg.child.wait();
                    dir = reg.take_dir()?;
                    token = reg.token.take();
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    fn take_dir(&mut self) -> io::Result<tempfile::TempDir> {
        let fresh = tempfile::tempdir()?;
        Ok(std::mem::replace(&mut self.dir, fresh))
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
                return Err(io::Error::other(format!("docker-registry exited with {status}: {log}")));
            }
            if let Ok(200 | 401) = self.get_status("/v2/") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "docker-registry did not answer /v2/"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a bare HTTP/1.1 GET and returns the status code (over TLS
    /// registries, whether the port accepts connections: 200).
    ///
    /// # Errors
    /// When the connection fails or the answer is not HTTP.
    pub fn get_status(&self, path: &str) -> io::Result<u16> {
        if self.ca_pem.is_some() {
            TcpStream::connect(("127.0.0.1", self.port))?;
            return Ok(200);
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.host())?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        std::str::from_utf8(head.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other("not an HTTP answer"))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) when the registry serves TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The token server, when the registry uses token auth.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The PID of the registry process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The basic-auth user and password, when the registry requires them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // stop by PID, never by name
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_starts_and_stops_by_pid() {
        if tool("docker-registry").is_none() {
            return;
        }
        let reg = Registry::start().unwrap();
        assert_eq!(reg.get_status("/v2/").unwrap(), 200);
        let pid = reg.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(reg);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "registry still running: {stat}");
    }

    #[test]
    fn basic_auth_registry_challenges() {
        if tool("docker-registry").is_none() || tool("htpasswd").is_none() {
            return;
        }
        let reg = Registry::start_with(&RegistryOptions {
            basic_auth: Some(("kiln".into(), "s3cret".into())),
            ..RegistryOptions::default()
        })
        .unwrap();
        assert_eq!(reg.get_status("/v2/").unwrap(), 401);
        assert_eq!(reg.credentials(), Some(("kiln", "s3cret")));
    }
}
