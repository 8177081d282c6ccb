//! Running `RUN` commands: the [`Executor`] trait and its default, [`Runc`],
//! which runs the command with the `runc` OCI runtime from a runtime bundle
//! generated with `oci-spec`'s runtime types.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxNamespaceType, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};

/// Network access of a `RUN` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Network {
    /// The host's network (what buildah's chroot isolation gives).
    #[default]
    Host,
    /// A network namespace with only loopback (`RUN --network=none`).
    None,
}

/// What is mounted at a path inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MountKind {
    /// A host directory or file.
    Bind {
        /// The host path.
        source: PathBuf,
        /// Mounted read-only.
        readonly: bool,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
}

/// One extra mount of a `RUN` (`RUN --mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMount {
    /// Absolute path inside the container.
    pub destination: String,
    /// What is mounted.
    pub kind: MountKind,
}

/// The process a `RUN` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Process {
    /// The command and its arguments (already wrapped in the shell for the shell form).
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory (absolute, inside the container).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Network access.
    pub network: Network,
    /// Extra mounts, in order.
    pub mounts: Vec<ProcessMount>,
}

impl Process {
    /// A root process in `/` running `args`, with the host's network.
    pub fn new(args: Vec<String>) -> Process {
        Process {
            args,
            env: Vec::new(),
            cwd: "/".to_owned(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            network: Network::Host,
            mounts: Vec::new(),
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exit {
    /// The exit code (128 + signal for a killed process).
    pub code: i32,
    /// The end of its combined stdout and stderr (at most [`OUTPUT_TAIL`] bytes).
    pub output: Vec<u8>,
}

/// How much of a command's output an [`Exit`] keeps.
pub const OUTPUT_TAIL: usize = 64 * 1024;

/// Why a command could not be run at all (a command that ran and failed is
/// an [`Exit`] with a non-zero code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The runtime or its bundle could not be set up.
    #[error("{what}")]
    Setup {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: Option<std::io::Error>,
    },
}

/// Runs `RUN` commands in a stage's root filesystem.
///
/// The default is [`Runc`]; embedders can run commands their own way (a VM,
/// a remote worker) by implementing this.
pub trait Executor: Send + Sync + fmt::Debug {
    /// Runs `process` with `rootfs` as its root directory (writable: what
    /// the command changes there becomes the step's layer). Output lines
    /// are passed to `output` as they arrive.
    ///
    /// # Errors
    /// [`ExecError`] when the command could not be started.
    fn run(&self, rootfs: &Path, process: &Process, output: &mut dyn FnMut(&[u8])) -> Result<Exit, ExecError>;
}

/// Runs commands with `runc` (found on `PATH`, or the path given).
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    hostname: String,
}

impl Default for Runc {
    fn default() -> Self {
        Runc { binary: PathBuf::from("runc"), hostname: "kiln".to_owned() }
    }
}

impl Runc {
    /// `runc` at `binary`.
    pub fn new(binary: impl Into<PathBuf>) -> Runc {
        Runc { binary: binary.into(), ..Runc::default() }
    }

    /// The runtime bundle's `config.json` for `process` in `rootfs`.
    ///
    /// # Errors
    /// [`ExecError::Setup`] when oci-spec refuses a value.
    pub fn spec(&self, rootfs: &Path, process: &Process) -> Result<Spec, ExecError> {
        let bad = |what: &str, e: &dyn fmt::Display| ExecError::Setup { what: format!("{what}: {e}"), source: None };
        // Docker's default capability set for build containers.
        let caps: std::collections::HashSet<Capability> = [
            Capability::Chown,
            Capability::DacOverride,
            Capability::Fsetid,
            Capability::Fowner,
            Capability::Mknod,
            Capability::NetRaw,
            Capability::Setgid,
            Capability::Setuid,
            Capability::Setfcap,
            Capability::Setpcap,
            Capability::NetBindService,
            Capability::SysChroot,
            Capability::Kill,
            Capability::AuditWrite,
        ]
        .into_iter()
        .collect();
        let capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()
            .map_err(|e| bad("capabilities", &e))?;
        let user = UserBuilder::default()
            .uid(process.uid)
            .gid(process.gid)
            .additional_gids(process.additional_gids.clone())
            .build()
            .map_err(|e| bad("user", &e))?;
        let proc = ProcessBuilder::default()
            .terminal(false)
            .args(process.args.clone())
            .env(process.env.clone())
            .cwd(PathBuf::from(&process.cwd))
            .user(user)
            .capabilities(capabilities)
            .no_new_privileges(false)
            .build()
            .map_err(|e| bad("process", &e))?;
        let root = RootBuilder::default().path(rootfs).readonly(false).build().map_err(|e| bad("root", &e))?;
        let mut spec = Spec::default();
        spec.set_process(Some(proc)).set_root(Some(root)).set_hostname(Some(self.hostname.clone()));
        let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
        // a writable /tmp-less default; the build's own mounts come last
        for m in &process.mounts {
            let mount = match &m.kind {
                MountKind::Bind { source, readonly } => {
                    // not recursive: a file system mounted below the source
                    // is not carried in, where `ro` would not reach it
                    let mut options = vec!["bind".to_owned()];
                    options.push(if *readonly { "ro" } else { "rw" }.to_owned());
                    MountBuilder::default()
                        .destination(&m.destination)
                        .typ("bind")
                        .source(source)
                        .options(options)
                        .build()
                }
                MountKind::Tmpfs { size } => {
                    let mut options = vec!["nosuid".to_owned(), "nodev".to_owned(), "mode=1777".to_owned()];
                    if let Some(s) = size {
                        options.push(format!("size={s}"));
                    }
                    MountBuilder::default()
                        .destination(&m.destination)
                        .typ("tmpfs")
                        .source("tmpfs")
                        .options(options)
                        .build()
                }
            }
            .map_err(|e| bad("mount", &e))?;
            mounts.push(mount);
        }
        if process.network == Network::Host {
            // the host's resolver, where the image has a file to mount it on
            for file in ["/etc/resolv.conf", "/etc/hosts"] {
                // looked up the way the container sees it: an absolute
                // symlink in the image never leads to the host's files
                let inside = super::files::inside(rootfs, file);
                let is_file = inside.is_some_and(|p| std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()));
                if is_file && Path::new(file).exists() {
                    let mount = MountBuilder::default()
                        .destination(file)
                        .typ("bind")
                        .source(file)
                        .options(vec!["bind".to_owned(), "ro".to_owned()])
                        .build()
                        .map_err(|e| bad("mount", &e))?;
                    mounts.push(mount);
                }
            }
        }
        spec.set_mounts(Some(mounts));
        if let Some(linux) = spec.linux_mut() {
            if process.network == Network::Host
                && let Some(ns) = linux.namespaces_mut()
            {
                ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
            }
            // no cgroup limits: a build step may use the machine
            linux.set_resources(None);
        }
        Ok(spec)
    }
}

static CONTAINERS: AtomicU64 = AtomicU64::new(0);

impl Executor for Runc {
    fn run(&self, rootfs: &Path, process: &Process, output: &mut dyn FnMut(&[u8])) -> Result<Exit, ExecError> {
        let setup = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| ExecError::Setup { what, source: Some(e) }
        };
        // the bundle (the command's environment, build arguments included)
        // and runc's state are this user's alone
        let bundle = tempfile::Builder::new()
            .prefix("kiln-bundle-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(setup("bundle directory"))?;
        let state = bundle.path().join("state");
        std::fs::create_dir(&state).map_err(setup("runc state directory"))?;
        let spec = self.spec(rootfs, process)?;
        let json = serde_json::to_vec(&spec)
            .map_err(|e| ExecError::Setup { what: format!("runtime config: {e}"), source: None })?;
        std::fs::write(bundle.path().join("config.json"), json).map_err(setup("runtime config"))?;
        let id = format!("kiln-{}-{}", std::process::id(), CONTAINERS.fetch_add(1, Ordering::Relaxed));
        let (reader, writer) = std::io::pipe().map_err(setup("output pipe"))?;
        let writer2 = writer.try_clone().map_err(setup("output pipe"))?;
        let mut child = Command::new(&self.binary)
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .spawn()
            .map_err(setup(&format!("starting {}", self.binary.display())))?;
        let mut tail = Vec::new();
        let mut reader = reader;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = buf.get(..n).unwrap_or_default();
                    output(chunk);
                    tail.extend_from_slice(chunk);
                    if tail.len() > 2 * OUTPUT_TAIL {
                        tail.drain(..tail.len() - OUTPUT_TAIL);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(setup("reading the command's output")(e)),
            }
        }
        let status = child.wait().map_err(setup("waiting for runc"))?;
        if tail.len() > OUTPUT_TAIL {
            tail.drain(..tail.len() - OUTPUT_TAIL);
        }
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        Ok(Exit { code, output: tail })
    }
}
