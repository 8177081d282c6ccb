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
    /// The runtime could not start the command (no user namespaces for a
    /// non-root build, the executable missing from the image, ...): the
    /// command never ran.
    #[error("the command could not be started: {cause}")]
    Start {
        /// What the runtime said.
        cause: String,
    },
    /// The build was cancelled; the command's processes were killed.
    #[error("cancelled")]
    Cancelled,
    /// An embedder's executor failed: its own error, kept as the source
    /// (downcast it to get it back).
    #[error("the executor failed")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// What a run may use besides its process.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RunEnv<'a> {
    /// A directory of the build's own for the run's state (bundles,
    /// runtime state): the build removes it, and the next build on the same
    /// cache reclaims it when the process died first.
    pub scratch: &'a Path,
    /// The build's cancellation: the run stops its processes when it fires.
    pub cancel: &'a super::Cancel,
}

impl<'a> RunEnv<'a> {
    /// A run's environment.
    pub fn new(scratch: &'a Path, cancel: &'a super::Cancel) -> RunEnv<'a> {
        RunEnv { scratch, cancel }
    }
}

/// Runs `RUN` commands in a stage's root filesystem.
///
/// The default is [`Runc`]; embedders can run commands their own way (a VM,
/// a remote worker) by implementing this.
pub trait Executor: Send + Sync + fmt::Debug {
    /// Runs `process` with `rootfs` as its root directory (writable: what
    /// the command changes there becomes the step's layer). Output lines
    /// are passed to `output` as they arrive. State the executor keeps goes
    /// under `env.scratch`; when `env.cancel` fires, the command's processes
    /// are stopped and [`ExecError::Cancelled`] returned.
    ///
    /// # Errors
    /// [`ExecError::Start`] when the command could not be started (an exit
    /// code is reported only for a command that ran), [`ExecError::Setup`],
    /// [`ExecError::Cancelled`].
    fn run(
        &self,
        rootfs: &Path,
        process: &Process,
        env: RunEnv<'_>,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Exit, ExecError>;
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

/// The runtime's own failure, from its JSON log (`--log-format json`):
/// the messages of its `error` entries, when there are any.
fn runtime_errors(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(serde_json::Value::as_str) == Some("error"))
        .filter_map(|v| v.get("msg").and_then(serde_json::Value::as_str).map(str::to_owned))
        .collect();
    (!msgs.is_empty()).then(|| msgs.join("; "))
}

/// Whether runc can be started as the init of a PID namespace that dies
/// with this process (root, with util-linux's `setpriv` and `unshare`).
fn can_isolate() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let on_path = |name: &str| {
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        };
        rustix::process::geteuid().is_root() && on_path("setpriv") && on_path("unshare")
    })
}

impl Runc {
    /// `runc run` for the bundle, wrapped (as root) so that runc is the
    /// init of a PID namespace whose launcher dies with this process.
    fn command(&self, state: &Path, log: &Path, bundle: &Path, id: &str) -> Command {
        let mut cmd = if can_isolate() {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
                .arg(&self.binary);
            c
        } else {
            Command::new(&self.binary)
        };
        cmd.arg("--root").arg(state).arg("--log").arg(log).args(["--log-format", "json", "run", "--bundle"]);
        cmd.arg(bundle).arg(id);
        cmd
    }

    /// `runc kill --all ID KILL`: every process of the container.
    fn kill(&self, state: &Path, id: &str) {
        runc_quiet(&self.binary, state, ["kill", "--all", id, "KILL"]);
    }

    /// Deletes the container's runtime state (and its cgroups), whatever
    /// became of it (`runc run` removes it itself when it ends normally).
    fn delete(&self, state: &Path, id: &str) {
        if !state.join(id).exists() {
            return;
        }
        runc_quiet(&self.binary, state, ["delete", "--force", id]);
    }
}

/// `BINARY --root STATE ARGS...` with no input and its output discarded:
/// whether it ran and succeeded.
pub(crate) fn runc_quiet<S: AsRef<std::ffi::OsStr>>(
    binary: &Path,
    state: &Path,
    args: impl IntoIterator<Item = S>,
) -> bool {
    Command::new(binary)
        .arg("--root")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Executor for Runc {
    /// Runs `runc run` in a bundle under `env.scratch`. As root, runc is the
    /// init of a PID namespace of its own (`unshare --pid --fork
    /// --kill-child --mount-proc`) whose launcher gets `SIGKILL` when this
    /// process dies (`setpriv --pdeathsig KILL`): killing the build, even
    /// with `SIGKILL`, makes the kernel kill every process of the `RUN`.
    /// Cancelling kills them the same way; the container's runtime state is
    /// deleted (`runc delete --force`) whatever happened.
    fn run(
        &self,
        rootfs: &Path,
        process: &Process,
        env: RunEnv<'_>,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Exit, ExecError> {
        use std::os::unix::fs::PermissionsExt;
        if env.cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let setup = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| ExecError::Setup { what, source: Some(e) }
        };
        // the bundle (the command's environment, build arguments included)
        // and runc's state are this user's alone, in the build's own scratch
        // directory: a build killed here leaves them for the next to reclaim
        let bundle = tempfile::Builder::new()
            .prefix("bundle-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(env.scratch)
            .map_err(setup("bundle directory"))?;
        let state = bundle.path().join("state");
        std::fs::create_dir(&state).map_err(setup("runc state directory"))?;
        let log = bundle.path().join("runc.log");
        let spec = self.spec(rootfs, process)?;
        let json = serde_json::to_vec(&spec)
            .map_err(|e| ExecError::Setup { what: format!("runtime config: {e}"), source: None })?;
        std::fs::write(bundle.path().join("config.json"), json).map_err(setup("runtime config"))?;
        let id = format!("kiln-{}-{}", std::process::id(), CONTAINERS.fetch_add(1, Ordering::Relaxed));
        let (reader, writer) = std::io::pipe().map_err(setup("output pipe"))?;
        let writer2 = writer.try_clone().map_err(setup("output pipe"))?;
        let mut cmd = self.command(&state, &log, bundle.path(), &id);
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        let mut child = cmd.spawn().map_err(setup(&format!("starting {}", self.binary.display())))?;
        drop(cmd);
        let pid = rustix::process::Pid::from_child(&child);
        let finished = std::sync::atomic::AtomicBool::new(false);
        let cancelled = std::sync::atomic::AtomicBool::new(false);
        let mut tail = Vec::new();
        // the container first (all there is to stop when runc could not be
        // made a namespace's init), then the launcher, whose PID namespace
        // dies with it
        let stop = || {
            self.kill(&state, &id);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        };
        let read = std::thread::scope(|scope| {
            // kills the launcher when the build is cancelled: its PID
            // namespace, the container's processes with it, dies
            scope.spawn(|| {
                while !finished.load(Ordering::Acquire) {
                    if env.cancel.wait_timeout(std::time::Duration::from_millis(50))
                        && !finished.load(Ordering::Acquire)
                    {
                        cancelled.store(true, Ordering::Release);
                        stop();
                        return;
                    }
                }
            });
            let mut reader = reader;
            let mut buf = vec![0u8; 16 * 1024];
            // `output` is the caller's: should it panic, the RUN is stopped
            // as a cancelled one is and its state deleted before the panic
            // goes on (the watcher would otherwise wait for it forever)
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            let chunk = buf.get(..n).unwrap_or_default();
                            output(chunk);
                            tail.extend_from_slice(chunk);
                            if tail.len() > 2 * OUTPUT_TAIL {
                                tail.drain(..tail.len() - OUTPUT_TAIL);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                }
            }));
            if result.is_err() {
                stop();
            }
            // reaped after the watcher stops: it never signals a recycled pid
            finished.store(true, Ordering::Release);
            result
        });
        let status = child.wait().map_err(setup("waiting for runc"));
        self.delete(&state, &id);
        let read = read.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if cancelled.load(Ordering::Acquire) {
            return Err(ExecError::Cancelled);
        }
        read.map_err(setup("reading the command's output"))?;
        let status = status?;
        if tail.len() > OUTPUT_TAIL {
            tail.drain(..tail.len() - OUTPUT_TAIL);
        }
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        if code != 0 {
            // the command never ran: the runtime says why in its log, or
            // (the launcher failed before runc started) there is no log
            if let Some(cause) = runtime_errors(&log) {
                return Err(ExecError::Start { cause });
            }
            if !log.exists() {
                let said = String::from_utf8_lossy(&tail).trim().to_owned();
                return Err(ExecError::Start { cause: format!("{} did not start: {said}", self.binary.display()) });
            }
        }
        Ok(Exit { code, output: tail })
    }
}
