//! `kiln build`: a Dockerfile and a context directory to an image, with no
//! daemon.
//!
//! The Dockerfile is parsed and planned by [`dockerfile_parse`]; each stage
//! runs on a blocking thread (independent stages side by side); base images
//! come from a registry (only manifest and config until a step needs the
//! files), another stage, `scratch`, or a named context the caller gave
//! ([`Build::build_context`]: an OCI layout, an image, a directory). A
//! Dockerfile never names host paths itself.
//! Every layer goes through [`layer_diff`] in one pass into the local
//! content store ([`store`](self) under [`Build::cache_dir`]), which also
//! keeps the step cache. `RUN` goes through an [`Executor`], by default
//! [`Runc`]. Outputs are written only once the whole build succeeded.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use kiln::build::{Build, Output};
//! let built = Build::new("examples/hello")
//!     .tag("kiln/hello:latest".parse()?)
//!     .output(Output::Layout("kiln-out".into()))
//!     .build()
//!     .await?;
//! println!("{}", built.manifest.digest);
//! # Ok(()) }
//! ```

mod cancel;
mod context;
mod exec;
mod files;
mod instr;
mod rootfs;
mod ssh;
mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dockerfile_parse::command::Command;
use dockerfile_parse::dockerignore::DockerIgnore;
use dockerfile_parse::shell::Lexer;
use dockerfile_parse::stages::{Base, PLATFORM_ARGS, PROXY_ARGS, Plan};
use layer_diff::{ApplyOptions, OverlayXattrs, PackOptions};
use oci_image::{
    AnyManifest, Compression, ContainerConfig, Descriptor, Digest, History, ImageConfiguration, Layout,
    ManifestBuilder, Platform, Raw, Reference,
};
use registry_client::{Client, Repo};

pub use cancel::Cancel;
pub use context::{BuildContext, BuildContextError};
pub use exec::{ExecError, Executor, Exit, MountKind, Network, OUTPUT_TAIL, Process, ProcessMount, RunEnv, Runc};
pub use store::{CacheError, default_cache_dir};

use rootfs::OverlayMount;
use store::{CacheRecord, Store};

/// Where a build's image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// An OCI layout directory (created when missing), tagged with every
    /// [`Build::tag`] (or `latest`).
    Layout(PathBuf),
    /// A docker-archive tar file (`docker load` reads it), named with the first tag.
    DockerArchive(PathBuf),
    /// Pushed to every [`Build::tag`] reference.
    Registry,
}

/// What a build reports while it runs.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// A step starts (or is taken from the cache).
    Step {
        /// The stage's index.
        stage: usize,
        /// Its name, if it has one.
        name: Option<&'a str>,
        /// The Dockerfile line.
        line: usize,
        /// The instruction, as recorded in the history.
        instruction: &'a str,
        /// Taken from the cache without running.
        cached: bool,
    },
    /// Output of a `RUN` command.
    Output {
        /// The stage's index.
        stage: usize,
        /// The bytes, as they came.
        bytes: &'a [u8],
    },
    /// A base image's layers are being fetched.
    Pulling {
        /// The image.
        image: &'a str,
    },
    /// An output is being written.
    Writing {
        /// The output (`oci:DIR`, `docker-archive:FILE`, a reference).
        target: &'a str,
    },
    /// A blob in the cache did not match its digest when copied out: it was
    /// dropped, and the build runs again to make or fetch it anew.
    Corrupt {
        /// The blob.
        digest: &'a Digest,
    },
}

type ProgressFn = Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A failure at a Dockerfile instruction.
    #[error("{dockerfile}:{line}: {instruction}")]
    At {
        /// The Dockerfile's path.
        dockerfile: String,
        /// The line.
        line: usize,
        /// The instruction.
        instruction: String,
        /// What went wrong.
        #[source]
        source: Box<BuildError>,
    },
    /// The Dockerfile does not parse.
    #[error("parsing {dockerfile}")]
    Parse {
        /// The Dockerfile's path.
        dockerfile: String,
        /// Why.
        #[source]
        source: Box<dockerfile_parse::ParseError>,
    },
    /// The stages cannot be worked out (unknown target, bad instruction).
    #[error("planning {dockerfile}")]
    Plan {
        /// The Dockerfile's path.
        dockerfile: String,
        /// Why.
        #[source]
        source: Box<dockerfile_parse::stages::StageError>,
    },
    /// A `.dockerignore` that does not parse.
    #[error("reading .dockerignore")]
    Ignore(#[source] Box<dockerfile_parse::dockerignore::IgnoreError>),
    /// `--from` or `RUN --mount from=` names a stage or image that cannot be used.
    #[error("unknown stage or image {name:?}")]
    UnknownStage {
        /// The name.
        name: String,
    },
    /// A source file is not in the build context.
    #[error("{path}: not found in the build context")]
    MissingSource {
        /// The path as written.
        path: String,
    },
    /// A source path leaves the build context.
    #[error("{path}: outside the build context")]
    OutsideContext {
        /// The path as written.
        path: String,
    },
    /// A file kiln reads from a context on its own (the default
    /// Dockerfile, a `.dockerignore`) resolves outside that context.
    #[error(
        "{path} resolves to {resolved}, outside the build context {context}; kiln reads only files inside it (name a Dockerfile elsewhere with -f)"
    )]
    LeavesContext {
        /// The file as looked for.
        path: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
        /// The context.
        context: PathBuf,
    },
    /// A Dockerfile or ignore file that is not a regular file (a FIFO, a device).
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A Dockerfile or ignore file over [`MAX_DOCKERFILE_SIZE`].
    #[error("{path}: larger than {limit} bytes, the most kiln reads as a Dockerfile")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The Dockerfile names a host path (`oci:DIR`, a `file://` git
    /// repository), which only the invoker may.
    #[error(
        "{name}: a Dockerfile cannot name a host path; the invoker gives host layouts and directories as named contexts (--build-context NAME=oci-layout://PATH[:TAG] or NAME=DIR) and the Dockerfile uses NAME"
    )]
    HostPath {
        /// The name as written.
        name: String,
    },
    /// More than one source needs a directory destination ending in `/`.
    #[error("{dest}: when copying several sources the destination must be a directory ending in /")]
    DestNotDir {
        /// The destination.
        dest: String,
    },
    /// A `RUN` command exited non-zero.
    #[error("command exited with code {code}: {}", String::from_utf8_lossy(output).trim_end())]
    RunFailed {
        /// Its exit code.
        code: i32,
        /// The end of its output.
        output: Vec<u8>,
    },
    /// The executor could not run the command.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A user or group name not in the image's `/etc/passwd` / `/etc/group`.
    #[error("unknown {what} {name:?} (not in the image's {file})")]
    UnknownUser {
        /// `user` or `group`.
        what: &'static str,
        /// The name.
        name: String,
        /// The file looked in.
        file: &'static str,
    },
    /// A flag value kiln cannot use.
    #[error("invalid {flag} value {value:?}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A feature this version does not build.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// Word expansion failed at run time.
    #[error("expanding variables")]
    Expand(#[source] Box<dockerfile_parse::shell::ExpandError>),
    /// A downloaded file's checksum differs from `--checksum`.
    #[error("{url}: checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The source.
        url: String,
        /// `--checksum`.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// A base image could not be resolved or fetched.
    #[error("base image {image}")]
    Base {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] registry_client::Error),
    /// Making a layer failed.
    #[error(transparent)]
    Layer(#[from] layer_diff::LayerError),
    /// Applying a layer failed.
    #[error(transparent)]
    Apply(#[from] layer_diff::ApplyError),
    /// Comparing trees failed.
    #[error(transparent)]
    Snapshot(#[from] layer_diff::SnapshotError),
    /// The content store or an output layout failed.
    #[error(transparent)]
    Layout(Box<oci_image::LayoutError>),
    /// Writing an output failed.
    #[error("writing {target}")]
    Output {
        /// The output.
        target: String,
        /// Why.
        #[source]
        source: Box<crate::CopyError>,
    },
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cache directory cannot be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The build was cancelled ([`Build::cancel`]): its `RUN` processes were
    /// killed and its scratch state removed before this was returned.
    #[error("build cancelled{}", if problems.is_empty() { String::new() } else { format!("; clean-up left: {}", problems.join("; ")) })]
    Cancelled {
        /// What the clean-up could not undo (the next build on the cache
        /// reclaims it).
        problems: Vec<String>,
    },
    /// Blobs in the cache did not match their digests when copied out; they
    /// were dropped (the build makes or fetches them again once).
    #[error("corrupt blobs in the cache, dropped: {}", digests.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Corrupt {
        /// The blobs dropped.
        digests: Vec<Digest>,
        /// How the copy out failed.
        #[source]
        source: Box<BuildError>,
    },
    /// [`Build::epoch_from_git`] without a commit time to take.
    #[error("{}: no git commit time for the epoch: {reason}", context.display())]
    GitEpoch {
        /// The build context.
        context: PathBuf,
        /// What git said.
        reason: String,
    },
    /// A blocking task died.
    #[error("build task failed: {0}")]
    Task(String),
}

impl Built {
    /// Every blob of the image: config, manifest, layers.
    fn blobs(&self) -> Vec<Descriptor> {
        let mut all = vec![self.config.clone(), self.manifest.clone()];
        all.extend(self.layers.iter().cloned());
        all
    }
}

/// The background reaper of a build whose future was dropped: its drop sets
/// the build's cancellation flag and hands the clean-up to a blocking task
/// on the runtime (no I/O in `Drop` itself). That task waits until the
/// build's own tasks, which stop at the flag, have let go of the build,
/// then removes its scratch state. When the process exits first, the next
/// build on the same cache reclaims what is left.
struct Reaper(Option<Arc<Ctx>>);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Some(ctx) = self.0.take() else { return };
        ctx.cancel.cancel();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || {
                while Arc::strong_count(&ctx) > 1 {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                ctx.store.finish();
            });
        }
    }
}

/// Where a build's epoch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpochChoice {
    /// Not chosen by the invoker: a `SOURCE_DATE_EPOCH` build argument,
    /// else the Dockerfile's global `ARG` default, else 0.
    Unset,
    /// Chosen ([`Build::epoch`] or `SOURCE_DATE_EPOCH` in the environment);
    /// `None` is docker's times.
    Given(Option<u64>),
    /// The commit time of the context's git `HEAD` ([`Build::epoch_from_git`]).
    Git,
}

impl EpochChoice {
    /// The epoch of a build of `context` with build arguments `args` and `plan`.
    fn resolve(self, args: &BTreeMap<String, String>, plan: &Plan, context: &Path) -> Result<Option<u64>, BuildError> {
        match self {
            EpochChoice::Given(e) => Ok(e),
            EpochChoice::Git => git_commit_time(context).map(Some),
            EpochChoice::Unset => {
                let given = args.get("SOURCE_DATE_EPOCH").or_else(|| plan.global_values.get("SOURCE_DATE_EPOCH"));
                match given.map(String::as_str) {
                    // BuildKit's opt-in: the context's git commit time, when
                    // the context is a git work tree (else none is set)
                    Some("context") => Ok(Some(git_commit_time(context).unwrap_or(0))),
                    Some(v) if !v.is_empty() => v.trim().parse().map(Some).map_err(|_| BuildError::Flag {
                        flag: "SOURCE_DATE_EPOCH",
                        value: v.to_owned(),
                        reason: "not a number of seconds since 1970",
                    }),
                    _ => Ok(Some(0)),
                }
            }
        }
    }
}

/// The commit time of the git `HEAD` of the work tree holding `context`.
fn git_commit_time(context: &Path) -> Result<u64, BuildError> {
    let fail = |reason: String| BuildError::GitEpoch { context: context.to_owned(), reason };
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(context)
        .args(["log", "-1", "--format=%ct", "HEAD"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| fail(format!("git printed {:?}", text.trim())))
}

/// A tmpfs `size=` in bytes: a number with an optional binary unit (`k`,
/// `m`, `g`, `t`, `p`, with an optional `i` and `b`), as BuildKit reads it.
fn ram_in_bytes(text: &str) -> Result<u64, BuildError> {
    let bad = || BuildError::Flag { flag: "--mount size", value: text.to_owned(), reason: "not a size" };
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    Ok((num * (1u64 << shift) as f64) as u64)
}

/// Whether `e` (or the step failure wrapping it) is a cancellation.
fn is_cancelled_err(e: &BuildError) -> bool {
    match e {
        BuildError::Cancelled { .. } | BuildError::Exec(ExecError::Cancelled) => true,
        BuildError::At { source, .. } => is_cancelled_err(source),
        _ => false,
    }
}

impl BuildError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { op, path, source }
    }
}

impl From<oci_image::LayoutError> for BuildError {
    fn from(e: oci_image::LayoutError) -> Self {
        BuildError::Layout(Box::new(e))
    }
}

/// What a build made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Built {
    /// The manifest (its digest is the image's digest).
    pub manifest: Descriptor,
    /// The config.
    pub config: Descriptor,
    /// The image's configuration.
    pub image: ImageConfiguration,
    /// The layers, base layers first.
    pub layers: Vec<Descriptor>,
    /// Steps taken from the cache.
    pub cached_steps: usize,
    /// Steps run.
    pub steps: usize,
    /// The base image's repository (pushes to its registry mount its layers).
    base_repo: Option<Repo>,
}

/// A Dockerfile build (see the [module docs](self)).
#[derive(Clone)]
pub struct Build {
    context: PathBuf,
    dockerfile: Option<PathBuf>,
    /// Named contexts by [`context::context_key`]: the name as given and what it is.
    contexts: BTreeMap<String, (String, BuildContext)>,
    args: BTreeMap<String, String>,
    target: Option<String>,
    platform: Platform,
    labels: BTreeMap<String, String>,
    epoch: EpochChoice,
    compression: Compression,
    level: Option<i32>,
    progress: Option<ProgressFn>,
    executor: Arc<dyn Executor>,
    outputs: Vec<Output>,
    tags: Vec<Reference>,
    client: Option<Client>,
    cache_dir: Option<PathBuf>,
    no_cache: bool,
    secrets: BTreeMap<String, PathBuf>,
    ssh: BTreeMap<String, PathBuf>,
    overlayfs: bool,
    overwrite: bool,
    cancel: Option<Cancel>,
}

impl fmt::Debug for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Build")
            .field("context", &self.context)
            .field("dockerfile", &self.dockerfile)
            .field("contexts", &self.contexts)
            .field("target", &self.target)
            .field("platform", &self.platform)
            .field("outputs", &self.outputs)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

impl Build {
    /// A build of `CONTEXT/Dockerfile` (see [`Build::dockerfile`]) with
    /// `context` as the build context. Defaults: the host's platform, gzip
    /// level 6, the epoch of [`Build::epoch`] (`SOURCE_DATE_EPOCH`, else
    /// 0), [`Runc`], the cache in [`default_cache_dir`], no outputs (the
    /// image stays in the cache).
    ///
    /// The default Dockerfile and the context's `.dockerignore` are read
    /// only when they resolve inside the context (a symlink leading out is
    /// refused, [`BuildError::LeavesContext`]).
    pub fn new(context: impl Into<PathBuf>) -> Build {
        let env_epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok());
        Build {
            context: context.into(),
            dockerfile: None,
            contexts: BTreeMap::new(),
            args: BTreeMap::new(),
            target: None,
            platform: Platform::host(),
            labels: BTreeMap::new(),
            epoch: env_epoch.map_or(EpochChoice::Unset, |e| EpochChoice::Given(Some(e))),
            compression: Compression::Gzip,
            level: None,
            progress: None,
            executor: Arc::new(Runc::default()),
            outputs: Vec::new(),
            tags: Vec::new(),
            client: None,
            cache_dir: None,
            no_cache: false,
            secrets: BTreeMap::new(),
            ssh: BTreeMap::new(),
            overlayfs: true,
            overwrite: false,
            cancel: None,
        }
    }

    /// `-f FILE`: the Dockerfile to build, wherever it is (the invoker's
    /// choice, followed like the docker CLI follows it), instead of
    /// `CONTEXT/Dockerfile`. `FILE.dockerignore` beside it is read before
    /// the context's `.dockerignore`.
    #[must_use]
    pub fn dockerfile(mut self, path: impl Into<PathBuf>) -> Build {
        self.dockerfile = Some(path.into());
        self
    }

    /// `--build-context NAME=VALUE`: lets the Dockerfile use `context` as
    /// `FROM NAME`, `COPY --from=NAME` and `RUN --mount=from=NAME`; a stage
    /// called `NAME` is replaced by it. Image names match as BuildKit
    /// matches them (`alpine` is `docker.io/library/alpine:latest`). This is
    /// the only way a build reads host layouts and directories besides its
    /// context: a Dockerfile cannot name them.
    #[must_use]
    pub fn build_context(mut self, name: impl Into<String>, context: BuildContext) -> Build {
        let name = name.into();
        self.contexts.insert(context::context_key(&name), (name, context));
        self
    }

    /// `--build-arg NAME=value`.
    #[must_use]
    pub fn build_arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Build {
        self.args.insert(name.into(), value.into());
        self
    }

    /// `--target STAGE`.
    #[must_use]
    pub fn target(mut self, stage: impl Into<String>) -> Build {
        self.target = Some(stage.into());
        self
    }

    /// `--platform`.
    #[must_use]
    pub fn platform(mut self, platform: Platform) -> Build {
        self.platform = platform;
        self
    }

    /// `--label KEY=value` on the image.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Build {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The build's epoch (seconds since 1970; default `SOURCE_DATE_EPOCH`
    /// from the environment, else a `SOURCE_DATE_EPOCH` build argument or
    /// global `ARG` default of the Dockerfile, else 0). It is the time of
    /// every input (context files, heredocs, downloads, git checkouts), of
    /// what steps make (directories, `RUN`'s new files: their times are
    /// clamped) and of every `created`; files taken from images, stages and
    /// archives keep their times, clamped to it. The same inputs give the
    /// same image on any machine, from any checkout.
    ///
    /// `None` is docker's times instead: nothing is rewritten, `created` is
    /// the time of the build, and each input's time is part of its step's
    /// cache key.
    #[must_use]
    pub fn epoch(mut self, epoch: Option<u64>) -> Build {
        self.epoch = EpochChoice::Given(epoch);
        self
    }

    /// Takes the epoch from the commit time of the context's git `HEAD`
    /// (as BuildKit's opt-in `SOURCE_DATE_EPOCH` from the context does):
    /// the same commit gives the same image from any checkout, dated when
    /// it was committed. A context outside a git work tree is an error
    /// ([`BuildError::GitEpoch`]).
    #[must_use]
    pub fn epoch_from_git(mut self) -> Build {
        self.epoch = EpochChoice::Git;
        self
    }

    /// Layer compression and level.
    #[must_use]
    pub fn compression(mut self, compression: Compression, level: Option<i32>) -> Build {
        self.compression = compression;
        self.level = level;
        self
    }

    /// Called with [`Progress`] events.
    #[must_use]
    pub fn progress(mut self, f: impl Fn(&Progress<'_>) + Send + Sync + 'static) -> Build {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Runs `RUN` commands with `executor` instead of [`Runc`].
    #[must_use]
    pub fn executor(mut self, executor: Arc<dyn Executor>) -> Build {
        self.executor = executor;
        self
    }

    /// Adds an output.
    #[must_use]
    pub fn output(mut self, output: Output) -> Build {
        self.outputs.push(output);
        self
    }

    /// Adds a name for the image (`-t`).
    #[must_use]
    pub fn tag(mut self, reference: Reference) -> Build {
        self.tags.push(reference);
        self
    }

    /// The registry client for base images and pushes (default: docker's
    /// credentials, plain HTTP for loopback only).
    #[must_use]
    pub fn client(mut self, client: Client) -> Build {
        self.client = Some(client);
        self
    }

    /// The content store and cache directory (default:
    /// [`default_cache_dir`]). It is created `0700` when missing and must
    /// belong to the user running the build and be closed to other users
    /// ([`CacheError`]).
    #[must_use]
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Build {
        self.cache_dir = Some(dir.into());
        self
    }

    /// `--no-cache`: run every step.
    #[must_use]
    pub fn no_cache(mut self, no_cache: bool) -> Build {
        self.no_cache = no_cache;
        self
    }

    /// Whether to use overlayfs (default: when it can be mounted). Without
    /// it, every step sees a flattened copy of its tree and `RUN` changes
    /// are found by comparing snapshots before and after: slower, and what
    /// is left where mounting is not allowed.
    #[must_use]
    pub fn overlayfs(mut self, use_it: bool) -> Build {
        self.overlayfs = use_it;
        self
    }

    /// Stops the build when `cancel` fires: running `RUN` processes are
    /// killed, transfers stop, the build's scratch state is removed, and
    /// [`Build::build`] returns [`BuildError::Cancelled`] once all that is
    /// done (see [`Cancel`]; dropping the build future cancels too).
    #[must_use]
    pub fn cancel(mut self, cancel: Cancel) -> Build {
        self.cancel = Some(cancel);
        self
    }

    /// `--overwrite`: replace a docker-archive output file that exists
    /// (refused otherwise, before the build starts, as skopeo refuses).
    #[must_use]
    pub fn overwrite(mut self, overwrite: bool) -> Build {
        self.overwrite = overwrite;
        self
    }

    /// A secret for `RUN --mount=type=secret,id=ID` (the file's content).
    #[must_use]
    pub fn secret(mut self, id: impl Into<String>, file: impl Into<PathBuf>) -> Build {
        self.secrets.insert(id.into(), file.into());
        self
    }

    /// An ssh agent for `RUN --mount=type=ssh[,id=ID]` (`id` defaults to
    /// `default`): `socket` is the agent's socket (`SSH_AUTH_SOCK` for
    /// docker's `--ssh default`). Each such mount gets a socket of its own
    /// relaying to the agent; neither the socket nor a key reaches a layer
    /// or the cache.
    #[must_use]
    pub fn ssh(mut self, id: impl Into<String>, socket: impl Into<PathBuf>) -> Build {
        self.ssh.insert(id.into(), socket.into());
        self
    }

    /// Runs the build, then writes every output.
    ///
    /// Every blob is checked against its digest as it is copied out of the
    /// cache into an output. A cached blob that fails (a flipped bit on
    /// disk, a tampered cache) is dropped from the cache, reported
    /// ([`Progress::Corrupt`]), and the build runs once more, which makes
    /// or fetches it again: a corrupt blob is never shipped.
    ///
    /// # Errors
    /// [`BuildError`], wrapped in [`BuildError::At`] with the Dockerfile
    /// line for failures of a step. No output is written unless the whole
    /// build succeeded.
    pub async fn build(self) -> Result<Built, BuildError> {
        let progress = self.progress.clone();
        match Box::pin(self.clone().build_once()).await {
            Err(BuildError::Corrupt { digests, .. }) => {
                if let Some(f) = &progress {
                    for d in &digests {
                        f(&Progress::Corrupt { digest: d });
                    }
                }
                // the dropped blobs are made or fetched again; a second
                // failure is reported as it is
                Box::pin(self.build_once()).await
            }
            other => other,
        }
    }

    async fn build_once(self) -> Result<Built, BuildError> {
        let user = self.cancel.clone().unwrap_or_default();
        let ctx = Arc::new(self.prepare()?);
        // dropping this future cancels the build and hands its clean-up to
        // the background reaper (see `Reaper`)
        let mut reaper = Reaper(Some(Arc::clone(&ctx)));
        let forward = {
            let (user, own) = (user.clone(), ctx.cancel.clone());
            tokio::spawn(async move {
                user.cancelled().await;
                own.cancel();
            })
        };
        let result = Arc::clone(&ctx).run_build().await;
        forward.abort();
        reaper.0 = None;
        let ctx2 = Arc::clone(&ctx);
        let problems = tokio::task::spawn_blocking(move || ctx2.store.finish())
            .await
            .unwrap_or_else(|e| vec![format!("clean-up task: {e}")]);
        if user.is_cancelled() {
            return Err(BuildError::Cancelled { problems });
        }
        result
    }

    /// Outputs that cannot be written are refused before anything runs.
    fn check_outputs(&self) -> Result<(), BuildError> {
        if self.outputs.contains(&Output::Registry) && self.tags.is_empty() {
            return Err(BuildError::Flag {
                flag: "--output",
                value: "registry".into(),
                reason: "pushing needs at least one -t reference",
            });
        }
        for out in &self.outputs {
            if let Output::DockerArchive(file) = out {
                crate::copy::archive_writable(file, self.overwrite)
                    .map_err(|e| BuildError::Output { target: out.to_string(), source: Box::new(e.into()) })?;
            }
        }
        Ok(())
    }

    fn prepare(self) -> Result<Ctx, BuildError> {
        self.check_outputs()?;
        // every host path absolute before it reaches a runtime spec
        let context =
            std::fs::canonicalize(&self.context).map_err(BuildError::io("open the build context", &self.context))?;
        let (dockerfile_path, within) = match &self.dockerfile {
            Some(f) => (f.clone(), None),
            None => (context.join("Dockerfile"), Some(context.as_path())),
        };
        let dockerfile_name = dockerfile_path.display().to_string();
        let text = read_dockerfile(&dockerfile_path, within)?;
        let df = dockerfile_parse::parse(&text)
            .map_err(|e| BuildError::Parse { dockerfile: dockerfile_name.clone(), source: Box::new(e) })?;
        let mut args = self.args.clone();
        for (k, v) in platform_args(&self.platform) {
            args.entry(k).or_insert(v);
        }
        let mut opts = dockerfile_parse::stages::BuildOptions::new();
        opts.build_args.clone_from(&args);
        opts.target.clone_from(&self.target);
        for key in self.contexts.keys() {
            opts = opts.named_context(key.clone());
        }
        // one budget for every variable expansion of the build, the plan's
        // and the steps': a hostile Dockerfile runs out of it, not of memory
        let budget = dockerfile_parse::shell::Budget::for_build();
        opts.budget = Some(budget.clone());
        let plan = dockerfile_parse::stages::plan(&df, &opts)
            .map_err(|e| BuildError::Plan { dockerfile: dockerfile_name.clone(), source: Box::new(e) })?;
        let epoch = self.epoch.resolve(&self.args, &plan, &context)?;
        let ignore = read_ignore(&context, &dockerfile_path, self.dockerfile.is_none())?;
        let named = prepare_named(self.contexts)?;
        let cache_dir = match &self.cache_dir {
            Some(d) => d.clone(),
            None => default_cache_dir()?,
        };
        let store = Store::open(&cache_dir)?;
        let client = match self.client {
            Some(c) => c,
            None => crate::cli::client(&[]).map_err(|e| BuildError::Task(format!("registry client: {e}")))?,
        };
        let overlay =
            self.overlayfs && rustix::process::geteuid().is_root() && rootfs::overlay_available(store.build_dir());
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let pack = PackOptions {
            epoch,
            normalize_owner: false,
            id_map: None,
            compression: self.compression,
            level: self.level,
            threads,
            prefix: None,
        };
        // what every layer depends on besides its step: part of every cache key
        let salt = format!("epoch={epoch:?} compression={:?} level={:?} manifest=oci-v1", self.compression, self.level);
        let secrets = self
            .secrets
            .into_iter()
            .map(|(id, file)| {
                let abs = std::path::absolute(&file).map_err(BuildError::io("find the secret", &file))?;
                Ok((id, abs))
            })
            .collect::<Result<_, BuildError>>()?;
        let ssh = self
            .ssh
            .into_iter()
            .map(|(id, socket)| {
                let abs = std::path::absolute(&socket).map_err(BuildError::io("find the ssh agent", &socket))?;
                Ok((id, abs))
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(Ctx {
            context,
            text,
            ssh,
            dockerfile: dockerfile_name,
            args,
            platform: self.platform,
            labels: self.labels,
            epoch,
            pack,
            salt,
            progress: self.progress,
            executor: self.executor,
            outputs: self.outputs,
            overwrite: self.overwrite,
            tags: self.tags,
            client,
            store,
            no_cache: self.no_cache,
            ignore,
            named,
            lexer: Lexer::new(df.directives.escape).with_budget(budget),
            secrets,
            overlay,
            plan,
            rt: tokio::runtime::Handle::current(),
            sources: Mutex::new(HashMap::new()),
            done: Mutex::new(BTreeMap::new()),
            images: Mutex::new(HashMap::new()),
            counts: Mutex::new((0, 0)),
            cancel: Cancel::new(),
        })
    }
}

/// The named contexts ready to use: host paths made absolute, each
/// directory's `.dockerignore` read.
fn prepare_named(contexts: BTreeMap<String, (String, BuildContext)>) -> Result<BTreeMap<String, Named>, BuildError> {
    let mut named = BTreeMap::new();
    for (key, (name, c)) in contexts {
        let n = match c {
            BuildContext::Dir(dir) => {
                let root = std::fs::canonicalize(&dir).map_err(BuildError::io("open the build context", &dir))?;
                if !root.is_dir() {
                    return Err(BuildError::Flag {
                        flag: "--build-context",
                        value: format!("{name}={}", dir.display()),
                        reason: "not a directory",
                    });
                }
                let ignore = read_ignore(&root, &root.join("Dockerfile"), true)?;
                Named::Dir { root, ignore }
            }
            BuildContext::OciLayout { dir, tag, digest } => {
                let dir = std::fs::canonicalize(&dir).map_err(BuildError::io("open the build context", &dir))?;
                Named::Image(BuildContext::OciLayout { dir, tag, digest })
            }
            other => Named::Image(other),
        };
        named.insert(key, n);
    }
    Ok(named)
}

/// Reads a file kiln looks for on its own in a tree it was given (the
/// default Dockerfile, a `.dockerignore`): `None` when absent; refused when
/// it resolves outside `root` (a symlink leading out), so that nothing
/// outside a context is read, or quoted in a parse error, without the
/// invoker naming it.
fn read_inside(root: &Path, file: &Path) -> Result<Option<String>, BuildError> {
    if std::fs::symlink_metadata(file).is_err() {
        return Ok(None);
    }
    let resolved = std::fs::canonicalize(file).map_err(BuildError::io("resolve", file))?;
    if !resolved.starts_with(root) {
        return Err(BuildError::LeavesContext { path: file.to_owned(), resolved, context: root.to_owned() });
    }
    read_regular(&resolved).map(Some)
}

/// The largest Dockerfile (or `.dockerignore`) kiln reads: 16 MiB, some
/// twenty times the largest real Dockerfiles seen in public corpora, and
/// small enough to hold and parse without a second thought.
pub const MAX_DOCKERFILE_SIZE: u64 = 16 << 20;

/// Reads a regular file as text, refusing anything else (a FIFO would
/// block, a device would never end) and anything over
/// [`MAX_DOCKERFILE_SIZE`]. The file is opened without blocking, so a FIFO
/// is refused rather than waited on.
fn read_regular(path: &Path) -> Result<String, BuildError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
        .open(path)
        .map_err(BuildError::io("open", path))?;
    let meta = f.metadata().map_err(BuildError::io("inspect", path))?;
    if !meta.is_file() {
        return Err(BuildError::NotAFile { path: path.to_owned() });
    }
    let mut text = String::new();
    f.take(MAX_DOCKERFILE_SIZE + 1).read_to_string(&mut text).map_err(BuildError::io("read", path))?;
    if text.len() as u64 > MAX_DOCKERFILE_SIZE {
        return Err(BuildError::TooLarge { path: path.to_owned(), limit: MAX_DOCKERFILE_SIZE });
    }
    Ok(text)
}

/// The Dockerfile's text: the default one only from inside `within` (the
/// context), an explicit `-f` wherever it is.
fn read_dockerfile(path: &Path, within: Option<&Path>) -> Result<String, BuildError> {
    match within {
        Some(root) => read_inside(root, path)?.ok_or_else(|| BuildError::Io {
            op: "read",
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
        None => read_regular(path),
    }
}

/// `os/arch[/variant]`.
fn platform_string(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// `TARGETPLATFORM` and friends for a build for `p` on this host.
fn platform_args(p: &Platform) -> Vec<(String, String)> {
    let host = Platform::host();
    let fmt_p = platform_string;
    let mut out = Vec::new();
    for (prefix, p) in [("TARGET", p), ("BUILD", &host)] {
        out.push((format!("{prefix}PLATFORM"), fmt_p(p)));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((format!("{prefix}VARIANT"), p.variant.clone().unwrap_or_default()));
    }
    out
}

/// The `.dockerignore` of a build: `<Dockerfile>.dockerignore` beside the
/// Dockerfile wins over the context's. Beside a default Dockerfile
/// (`default_file`), and always in the context, it is read only from
/// inside the context; beside an explicit `-f` file it is followed.
fn read_ignore(context: &Path, dockerfile: &Path, default_file: bool) -> Result<DockerIgnore, BuildError> {
    let name = dockerfile.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut text = None;
    if let Some(beside) = dockerfile.parent().map(|dir| dir.join(format!("{name}.dockerignore"))) {
        text = if default_file {
            read_inside(context, &beside)?
        } else if std::fs::symlink_metadata(&beside).is_ok() {
            Some(read_regular(&beside)?)
        } else {
            None
        };
    }
    if text.is_none() {
        text = read_inside(context, &context.join(".dockerignore"))?;
    }
    DockerIgnore::parse(text.as_deref().unwrap_or("")).map_err(|e| BuildError::Ignore(Box::new(e)))
}

/// Where a base image's blobs come from until they are in the store.
#[derive(Clone)]
enum BlobSource {
    Registry(Repo),
    Layout(Layout),
}

/// A stage's image as it is being built.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    config: ImageConfiguration,
    layers: Vec<Descriptor>,
    /// The cache key of everything so far.
    key: Digest,
    /// Where it came from, for messages.
    name: String,
    /// The registry repository of the base image, for cross-repository mounts.
    repo: Option<Repo>,
}

impl Image {
    fn scratch(platform: &Platform) -> Image {
        // Docker and buildah give a scratch image the default PATH
        let cfg = ContainerConfig {
            env: Some(vec![format!("PATH={DEFAULT_PATH}")]),
            working_dir: Some("/".into()),
            ..ContainerConfig::default()
        };
        let config = oci_image::ConfigBuilder::new(platform).config(cfg).build();
        Image {
            config,
            layers: Vec::new(),
            key: Digest::sha256(format!("scratch {}", platform_string(platform)).as_bytes()),
            name: "scratch".into(),
            repo: None,
        }
    }

    fn cfg(&mut self) -> &mut ContainerConfig {
        self.config.config.get_or_insert_with(ContainerConfig::default)
    }

    /// Gives the image the default `PATH` when its config has none, as
    /// BuildKit does for every stage, whatever its base.
    fn with_path(mut self) -> Image {
        let env = self.cfg().env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.split_once('=').is_some_and(|(k, _)| k == "PATH")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        self
    }

    fn env(&self) -> Vec<String> {
        self.config.config.as_ref().and_then(|c| c.env.clone()).unwrap_or_default()
    }
}

struct Ctx {
    context: PathBuf,
    /// The Dockerfile's text (spans index into it).
    text: String,
    dockerfile: String,
    args: BTreeMap<String, String>,
    platform: Platform,
    labels: BTreeMap<String, String>,
    epoch: Option<u64>,
    pack: PackOptions,
    /// What every layer depends on besides its step (epoch, compression,
    /// level, manifest format): mixed into every step cache key.
    salt: String,
    progress: Option<ProgressFn>,
    executor: Arc<dyn Executor>,
    outputs: Vec<Output>,
    overwrite: bool,
    tags: Vec<Reference>,
    client: Client,
    store: Store,
    no_cache: bool,
    ignore: DockerIgnore,
    /// Named contexts by [`context::context_key`].
    named: BTreeMap<String, Named>,
    lexer: Lexer,
    secrets: BTreeMap<String, PathBuf>,
    ssh: BTreeMap<String, PathBuf>,
    overlay: bool,
    plan: Plan,
    rt: tokio::runtime::Handle,
    sources: Mutex<HashMap<Digest, BlobSource>>,
    done: Mutex<BTreeMap<usize, Image>>,
    images: Mutex<HashMap<String, Image>>,
    /// (cached, run) steps.
    counts: Mutex<(usize, usize)>,
    /// The build's own cancellation: the caller's [`Build::cancel`], a
    /// dropped build future, or a failed stage stopping its siblings.
    cancel: Cancel,
}

/// A named context, ready to use.
enum Named {
    /// An image (a layout's, a registry's, scratch).
    Image(BuildContext),
    /// A local directory (canonical) with its `.dockerignore`.
    Dir { root: PathBuf, ignore: DockerIgnore },
}

/// Where `COPY --from` / `RUN --mount from=` files come from.
enum FromSource<'a> {
    /// An image (an earlier stage's or a named one).
    Image(Box<Image>),
    /// A directory of the host (the context or a named one) with its ignore rules.
    Tree { root: &'a Path, ignore: &'a DockerIgnore, name: String },
}

/// A `RUN --mount=type=bind`'s source, resolved.
enum BindSource {
    /// A subtree of the context or a named directory, `name` saying which.
    Tree { name: String, tree: files::TreeMount },
    /// An image (an earlier stage's or a named one).
    Image(Box<Image>),
}

/// Where a `RUN --mount` goes: its target, relative ones taken from `cwd`.
fn mount_target(m: &dockerfile_parse::command::Mount, cwd: &str) -> Option<String> {
    m.target.as_deref().map(|t| instr::join_path(cwd, t))
}

/// [`mount_target`], for the mount types that cannot go without one.
fn required_target(m: &dockerfile_parse::command::Mount, cwd: &str) -> Result<String, BuildError> {
    mount_target(m, cwd).ok_or_else(|| BuildError::Flag {
        flag: "--mount",
        value: format!("{m:?}"),
        reason: "needs a target",
    })
}

/// An overlay's `upper`, `work` and `merged` directories, made in `dir`.
fn overlay_dirs(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), BuildError> {
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).map_err(BuildError::io("create", d))?;
    }
    Ok((upper, work, merged))
}

/// A read-only view of an image's tree, gone when dropped.
pub(crate) struct View {
    mount: Option<OverlayMount>,
    dir: tempfile::TempDir,
}

impl View {
    pub(crate) fn path(&self) -> &Path {
        match &self.mount {
            Some(m) => m.path(),
            None => self.dir.path(),
        }
    }
}

/// The per-stage state a step sees.
struct StageState {
    index: usize,
    image: Image,
    /// `ARG` values in scope.
    args: BTreeMap<String, String>,
    /// `CMD` set in this stage (an `ENTRYPOINT` then keeps it).
    cmd_set: bool,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Ctx {
    fn emit(&self, p: &Progress<'_>) {
        if let Some(f) = &self.progress {
            f(p);
        }
    }

    fn created(&self) -> String {
        match self.epoch {
            Some(e) => crate::rfc3339_utc(e),
            None => crate::rfc3339_utc(Self::now().try_into().unwrap_or(0)),
        }
    }

    /// Seconds since the Unix epoch, now.
    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    fn at(&self, line: usize, instruction: &str) -> impl FnOnce(BuildError) -> BuildError {
        let dockerfile = self.dockerfile.clone();
        let instruction = instruction.to_owned();
        move |e| match e {
            e @ BuildError::At { .. } => e,
            e => BuildError::At { dockerfile, line, instruction, source: Box::new(e) },
        }
    }

    fn run_stage(&self, index: usize) -> Result<Image, BuildError> {
        let stage = self.plan.stages.get(index).ok_or_else(|| BuildError::Task(format!("no stage {index}")))?.clone();
        let from_line = stage.span.line;
        let platform = match &stage.platform {
            Some(p) => p.parse::<Platform>().map_err(|_| {
                self.at(from_line, "FROM")(BuildError::Flag {
                    flag: "--platform",
                    value: p.clone(),
                    reason: "not os/arch[/variant]",
                })
            })?,
            None => self.platform.clone(),
        };
        if stage.replaced {
            return self.replaced_stage(&stage, &platform).map(Image::with_path).map_err(self.at(from_line, "FROM"));
        }
        let base = match &stage.base {
            Base::Scratch => Image::scratch(&platform),
            Base::Stage(i) => self
                .done
                .lock()
                .map_err(|_| BuildError::Task("poisoned".into()))?
                .get(i)
                .cloned()
                .ok_or_else(|| BuildError::Task(format!("stage {i} did not run")))?,
            Base::Image(name) => {
                self.base_image(name, &platform).map_err(self.at(from_line, &format!("FROM {name}")))?
            }
            _ => return Err(BuildError::Unsupported { what: "this kind of base".into() }),
        };
        let mut st = StageState { index, image: base.with_path(), args: BTreeMap::new(), cmd_set: false };
        let triggers = st.image.cfg().on_build.take().unwrap_or_default();
        // the base's ONBUILD triggers run first (an image's or an earlier stage's)
        for t in triggers {
            let df = dockerfile_parse::parse(&t).map_err(|e| {
                self.at(from_line, &format!("ONBUILD {t}"))(BuildError::Parse {
                    dockerfile: self.dockerfile.clone(),
                    source: Box::new(e),
                })
            })?;
            for inst in &df.instructions {
                let cmd = inst.command().map_err(|e| {
                    self.at(from_line, &format!("ONBUILD {t}"))(BuildError::Plan {
                        dockerfile: self.dockerfile.clone(),
                        source: Box::new(dockerfile_parse::stages::StageError::Command(Box::new(e))),
                    })
                })?;
                let original = inst.original.clone();
                self.step(&mut st, &stage, &cmd, &original, from_line)
                    .map_err(self.at(from_line, &format!("ONBUILD {original}")))?;
            }
        }
        for step in &stage.steps {
            if self.cancel.is_cancelled() {
                return Err(BuildError::Cancelled { problems: Vec::new() });
            }
            let original = self.text.get(step.span.start..step.span.end).unwrap_or_default().trim().to_owned();
            self.step(&mut st, &stage, &step.command, &original, step.span.line)
                .map_err(self.at(step.span.line, &original))?;
        }
        Ok(st.image)
    }

    /// A stage replaced by the named context of its name: that context's
    /// image. A directory is packed into an image only when something
    /// builds on the stage (its files are read directly otherwise).
    fn replaced_stage(
        &self,
        stage: &dockerfile_parse::stages::Stage,
        platform: &Platform,
    ) -> Result<Image, BuildError> {
        let name = stage.name.clone().unwrap_or_default();
        let named = self
            .named
            .get(&context::context_key(&name))
            .ok_or_else(|| BuildError::UnknownStage { name: name.clone() })?;
        let built_on =
            self.plan.target == stage.index
                || self.plan.needed.iter().any(|i| {
                    self.plan.stages.get(*i).is_some_and(|s| !s.replaced && s.base == Base::Stage(stage.index))
                });
        match named {
            Named::Dir { .. } if !built_on => Ok(Image::scratch(platform)),
            n => self.named_image(&name, n, platform),
        }
    }

    /// Runs the stages in waves (each wave's stages need only earlier
    /// waves), then finishes the image and writes the outputs. A failing
    /// stage cancels the others; every task is awaited before this returns.
    async fn run_build(self: Arc<Self>) -> Result<Built, BuildError> {
        let ctx = self;
        let mut done_set: BTreeSet<usize> = BTreeSet::new();
        let needed = ctx.plan.needed.clone();
        while done_set.len() < needed.len() {
            let wave: Vec<usize> = needed
                .iter()
                .copied()
                .filter(|i| !done_set.contains(i))
                .filter(|i| ctx.plan.stages.get(*i).is_some_and(|s| s.depends_on.iter().all(|d| done_set.contains(d))))
                .collect();
            if wave.is_empty() {
                return Err(BuildError::Task("stage dependencies do not resolve".into()));
            }
            let mut handles = Vec::new();
            for i in &wave {
                let ctx = Arc::clone(&ctx);
                let i = *i;
                handles.push(tokio::task::spawn_blocking(move || {
                    let r = ctx.run_stage(i);
                    if r.is_err() {
                        // the other stages of the wave stop too
                        ctx.cancel.cancel();
                    }
                    r
                }));
            }
            let mut first_err = None;
            for (i, h) in wave.iter().zip(handles) {
                match h.await.map_err(|e| BuildError::Task(e.to_string())).and_then(|r| r) {
                    Ok(image) => {
                        ctx.done.lock().map_err(|_| BuildError::Task("poisoned".into()))?.insert(*i, image);
                        done_set.insert(*i);
                    }
                    // a stage stopped by another's failure is not the failure
                    Err(e) => {
                        if first_err.as_ref().is_none_or(|f| is_cancelled_err(f) && !is_cancelled_err(&e)) {
                            first_err = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        let target = ctx.plan.target;
        let image = ctx
            .done
            .lock()
            .map_err(|_| BuildError::Task("poisoned".into()))?
            .get(&target)
            .cloned()
            .ok_or_else(|| BuildError::Task("target stage did not run".into()))?;
        let ctx2 = Arc::clone(&ctx);
        let built = tokio::task::spawn_blocking(move || ctx2.finish(image))
            .await
            .map_err(|e| BuildError::Task(e.to_string()))??;
        if let Err(e) = ctx.write_outputs(&built).await {
            // was it the cache? each blob of the image read once more (only
            // now, on a failure): the ones that do not match are dropped
            let ctx2 = Arc::clone(&ctx);
            let built2 = built.clone();
            let dropped = tokio::task::spawn_blocking(move || ctx2.store.drop_corrupt(&built2.blobs()))
                .await
                .map_err(|e| BuildError::Task(e.to_string()))?;
            if !dropped.is_empty() {
                return Err(BuildError::Corrupt { digests: dropped, source: Box::new(e) });
            }
            return Err(e);
        }
        Ok(built)
    }

    /// Runs `fut` on the build's runtime from a blocking task, stopping
    /// when the build is cancelled.
    fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, registry_client::Error>>,
    ) -> Result<Result<T, registry_client::Error>, BuildError> {
        let cancel = self.cancel.clone();
        self.rt.block_on(async move {
            tokio::select! {
                r = fut => Ok(r),
                () = cancel.cancelled() => Err(BuildError::Cancelled { problems: Vec::new() }),
            }
        })
    }

    /// The lookup for word expansion: `ARG`s, overridden by `ENV`.
    fn vars(st: &StageState) -> BTreeMap<String, String> {
        let mut vars = st.args.clone();
        for e in st.image.env() {
            if let Some((k, v)) = e.split_once('=') {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
        vars
    }

    fn history(&self, created_by: String, empty: bool) -> History {
        History {
            created: Some(self.created()),
            created_by: Some(created_by),
            empty_layer: empty.then_some(true),
            ..History::default()
        }
    }

    fn push_history(&self, st: &mut StageState, created_by: String, layer: Option<(Descriptor, Digest)>) {
        let empty = layer.is_none();
        let h = self.history(created_by, empty);
        if let Some((desc, diff_id)) = layer {
            st.image.layers.push(desc);
            st.image.config.rootfs.diff_ids.push(diff_id);
        }
        st.image.config.history.get_or_insert_with(Vec::new).push(h);
    }

    #[allow(clippy::too_many_lines)] // one arm per instruction
    fn step(
        &self,
        st: &mut StageState,
        stage: &dockerfile_parse::stages::Stage,
        command: &Command,
        original: &str,
        line: usize,
    ) -> Result<(), BuildError> {
        let vars = Self::vars(st);
        // the default of an argument the build gives is never expanded (a
        // `${X:?}` there only fails when the default is used, as in BuildKit)
        let given = |name: &str| self.args.contains_key(name) && !PLATFORM_ARGS.contains(&name);
        let (cmd, _) = match command {
            Command::Arg(defs) if defs.iter().any(|d| d.default.is_some() && given(&d.name)) => {
                let defs = defs
                    .iter()
                    .map(|d| {
                        let mut d = d.clone();
                        if given(&d.name) {
                            d.default = None;
                        }
                        d
                    })
                    .collect();
                Command::Arg(defs).expand(&self.lexer, &vars)
            }
            other => other.expand(&self.lexer, &vars),
        }
        .map_err(|e| BuildError::Expand(Box::new(e)))?;
        let created_by = instr::created_by(original);
        let key_text = format!("{created_by}\n{cmd:?}");
        let stage_index = st.index;
        let report = |cached: bool| {
            self.emit(&Progress::Step {
                stage: stage_index,
                name: stage.name.as_deref(),
                line,
                instruction: &created_by,
                cached,
            });
        };
        match &cmd {
            Command::Run(run) => {
                // RUN sees the build arguments as environment variables,
                // and what its mounts hold (their options are in key_text)
                let binds = self.bind_sources(st, run)?;
                let mounts = Self::mounts_key(run, &binds)?;
                let key = Digest::sha256(
                    format!(
                        "{}\n{}\n{}\n{:?}\n{mounts}",
                        st.image.key,
                        key_text,
                        serde_json::to_string(&st.image.config.config).unwrap_or_default(),
                        st.args
                    )
                    .as_bytes(),
                );
                let layer = self.layer_step(&key, &report, || self.run(st, run, binds))?;
                self.push_history(st, created_by.clone(), layer);
                st.image.key = key;
                return Ok(());
            }
            Command::Copy(c) | Command::Add(c) => {
                let add = matches!(cmd, Command::Add(_));
                let (layer, key) = self.copy(st, c, add, &key_text, &report)?;
                self.push_history(st, created_by.clone(), layer);
                st.image.key = key;
                return Ok(());
            }
            Command::Workdir(dir) => {
                let cwd = st.image.cfg().working_dir.clone().unwrap_or_else(|| "/".into());
                let path = instr::workdir_path(&cwd, dir);
                st.image.cfg().working_dir = Some(path.clone());
                let path = instr::join_path("/", &path);
                let key = Digest::sha256(format!("{}\n{key_text}\n{path}", st.image.key).as_bytes());
                let layer = self.layer_step(&key, &report, || self.workdir(st, &path))?;
                self.push_history(st, created_by, layer);
                st.image.key = key;
                return Ok(());
            }
            _ => {}
        }
        report(false);
        match cmd {
            Command::Env(pairs) => {
                let cfg = st.image.cfg();
                let env = cfg.env.get_or_insert_with(Vec::new);
                for (k, v) in pairs {
                    instr::set_env(env, &k, &v);
                }
            }
            Command::Label(pairs) => {
                let labels = st.image.cfg().labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in pairs {
                    labels.insert(k, v);
                }
            }
            Command::Arg(defs) => {
                for d in defs {
                    if d.name == "TARGETSTAGE" && !self.args.contains_key(&d.name) {
                        // BuildKit's built-in: the name of the stage being built
                        let target = self.plan.stages.get(self.plan.target).and_then(|s| s.name.clone());
                        st.args.insert(d.name.clone(), target.unwrap_or_else(|| "default".into()));
                        continue;
                    }
                    let value = self
                        .args
                        .get(&d.name)
                        .filter(|_| !PLATFORM_ARGS.contains(&d.name.as_str()) || self.args.contains_key(&d.name))
                        .cloned()
                        .or(d.default.clone())
                        .or_else(|| self.plan.global_values.get(&d.name).cloned());
                    if let Some(v) = value {
                        st.args.insert(d.name.clone(), v);
                    }
                }
            }
            Command::Expose(ports) => {
                let set = st.image.cfg().exposed_ports.get_or_insert_with(BTreeSet::new);
                // a variable may hold several ports (BuildKit splits words here)
                for p in ports.iter().flat_map(|p| p.split_whitespace()) {
                    for one in instr::expand_ports(p)? {
                        set.insert(one);
                    }
                }
            }
            Command::Volume(vols) => {
                let set = st.image.cfg().volumes.get_or_insert_with(BTreeSet::new);
                for v in vols.into_iter().filter(|v| !v.is_empty()) {
                    set.insert(v);
                }
            }
            Command::User(u) => st.image.cfg().user = Some(u),
            Command::Stopsignal(s) => st.image.cfg().stop_signal = Some(s),
            Command::Healthcheck(h) => st.image.cfg().healthcheck = Some(instr::healthcheck(&h)),
            Command::Shell(sh) => st.image.cfg().shell = Some(sh),
            Command::Cmd(cl) => {
                let args = instr::command_args(&cl, &Self::shell(st));
                st.image.cfg().cmd = Some(args);
                st.cmd_set = true;
            }
            Command::Entrypoint(cl) => {
                let args = instr::command_args(&cl, &Self::shell(st));
                let cmd_set = st.cmd_set;
                let cfg = st.image.cfg();
                cfg.entrypoint = Some(args);
                if !cmd_set {
                    cfg.cmd = None;
                }
            }
            Command::Onbuild { expression, .. } => {
                st.image.cfg().on_build.get_or_insert_with(Vec::new).push(expression);
            }
            Command::Maintainer(m) => st.image.config.author = Some(m),
            other => {
                return Err(BuildError::Unsupported { what: format!("instruction {other:?} inside a stage") });
            }
        }
        st.image.key = Digest::sha256(format!("{}\n{key_text}", st.image.key).as_bytes());
        self.push_history(st, created_by, None);
        Ok(())
    }

    fn count(&self, cached: bool) {
        if let Ok(mut c) = self.counts.lock() {
            if cached {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }

    /// The sources of a `RUN`'s bind mounts (`None` for the other mounts),
    /// resolved once: for the step's cache key and, when it runs, the mounts.
    fn bind_sources(
        &self,
        st: &StageState,
        run: &dockerfile_parse::command::Run,
    ) -> Result<Vec<Option<BindSource>>, BuildError> {
        use dockerfile_parse::command::MountType;
        let mut out = Vec::with_capacity(run.mounts.len());
        for m in &run.mounts {
            if m.kind != MountType::Bind {
                out.push(None);
                continue;
            }
            let from = match &m.from {
                Some(from) => self.source_of(from, &st.image.config.platform())?,
                None => FromSource::Tree { root: &self.context, ignore: &self.ignore, name: "context".into() },
            };
            out.push(Some(match from {
                FromSource::Tree { root, ignore, name } => {
                    let src = files::SourceTree { root, ignore: Some(ignore), is_context: true };
                    BindSource::Tree { name, tree: files::tree_mount(&src, m.source.as_deref().unwrap_or("/"))? }
                }
                FromSource::Image(img) => BindSource::Image(img),
            }));
        }
        Ok(out)
    }

    /// What a `RUN`'s mounts hold, for its cache key: bound files by the
    /// keys `COPY` uses (paths, metadata, file identity), images and stages
    /// by their keys. Mount options (cache ids and sharing, secret ids,
    /// targets) are in the instruction itself; secret contents never are.
    fn mounts_key(run: &dockerfile_parse::command::Run, binds: &[Option<BindSource>]) -> Result<String, BuildError> {
        let mut out = String::new();
        for (m, bind) in run.mounts.iter().zip(binds) {
            let source = m.source.as_deref().unwrap_or("/");
            let part = match bind {
                None => continue,
                Some(BindSource::Tree { name, tree }) => {
                    format!("{name} {source} {}", files::items_digest(&tree.items, None)?)
                }
                Some(BindSource::Image(img)) => format!("image {} {source}", img.key),
            };
            out.push_str(&part);
            out.push('\n');
        }
        Ok(out)
    }

    /// A step that may make a layer: taken from the cache under `key`, or
    /// made by `make` and recorded there.
    fn layer_step(
        &self,
        key: &Digest,
        report: &dyn Fn(bool),
        make: impl FnOnce() -> Result<Option<(Descriptor, Digest)>, BuildError>,
    ) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        // the same step under another epoch, compression or level makes other blobs
        let key = &Digest::sha256(format!("{}\n{key}", self.salt).as_bytes());
        if let Some(rec) = self.cached(key) {
            report(true);
            return Ok(rec.layer);
        }
        report(false);
        let layer = make()?;
        self.store.cache_put(key, &CacheRecord { layer: layer.clone() });
        self.count(false);
        Ok(layer)
    }

    fn cached(&self, key: &Digest) -> Option<CacheRecord> {
        if self.no_cache {
            return None;
        }
        let rec = self.store.cache_get(key)?;
        self.count(true);
        Some(rec)
    }

    fn shell(st: &mut StageState) -> Vec<String> {
        st.image.cfg().shell.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// The image a `FROM` or `--from` name (not a stage) stands for, for
    /// `platform`: a named context of that name, else a registry image
    /// (manifest and config only). A host path (`oci:DIR`) is refused: only
    /// the invoker names those, as named contexts.
    fn base_image(&self, name: &str, platform: &Platform) -> Result<Image, BuildError> {
        if let Some(n) = self.named.get(&context::context_key(name)) {
            return self.named_image(name, n, platform);
        }
        if name.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("oci:")) {
            return Err(BuildError::HostPath { name: name.to_owned() });
        }
        let reference: Reference = name
            .parse()
            .map_err(|e: oci_image::ReferenceError| BuildError::Base { image: name.to_owned(), source: Box::new(e) })?;
        self.registry_image(name, &reference, platform)
    }

    /// The image of a named context.
    fn named_image(&self, name: &str, n: &Named, platform: &Platform) -> Result<Image, BuildError> {
        match n {
            Named::Image(BuildContext::OciLayout { dir, tag, digest }) => {
                self.layout_image(name, dir, tag.as_ref(), digest.as_ref(), platform)
            }
            Named::Image(BuildContext::Image(reference)) => self.registry_image(name, reference, platform),
            Named::Dir { root, ignore } => self.dir_image(name, root, ignore, platform),
            Named::Image(_) => Ok(Image::scratch(platform)),
        }
    }

    /// An image in the OCI layout `dir`: by tag, by digest, or its only one.
    fn layout_image(
        &self,
        name: &str,
        dir: &Path,
        tag: Option<&oci_image::Tag>,
        digest: Option<&Digest>,
        platform: &Platform,
    ) -> Result<Image, BuildError> {
        let cache_key = format!("oci-layout {} {tag:?} {digest:?} {}", dir.display(), platform_string(platform));
        if let Some(img) = self.images.lock().ok().and_then(|m| m.get(&cache_key).cloned()) {
            return Ok(img);
        }
        let base =
            |source: Box<dyn std::error::Error + Send + Sync>| BuildError::Base { image: name.to_owned(), source };
        let layout = Layout::open(dir).map_err(|e| base(Box::new(e)))?;
        let entries = layout.index().map_err(|e| base(Box::new(e)))?.manifests;
        let desc = match (tag, digest) {
            (Some(t), _) => {
                let d = layout.resolve(t.as_str()).map_err(|e| base(Box::new(e)))?;
                if digest.is_some_and(|want| *want != d.digest) {
                    return Err(base(format!("tag {t} is {}, not the digest given", d.digest).into()));
                }
                d
            }
            (None, Some(want)) => entries
                .iter()
                .find(|d| d.digest == *want)
                .cloned()
                .ok_or_else(|| base(format!("{want} is not in the layout's index.json").into()))?,
            (None, None) => match entries.as_slice() {
                [only] => only.clone(),
                _ => return Err(base("the layout holds several images; name one with :TAG".into())),
            },
        };
        let mut m = layout.read_manifest(&desc).map_err(|e| base(Box::new(e)))?;
        if let AnyManifest::Index(index) = &m {
            let child = index
                .value()
                .manifest_for(platform)
                .cloned()
                .ok_or_else(|| base(format!("no manifest for platform {platform}").into()))?;
            m = layout.read_manifest(&child).map_err(|e| base(Box::new(e)))?;
        }
        let AnyManifest::Image(image) = m else {
            return Err(base("not an image manifest".into()));
        };
        let config = layout.read_blob(&image.value().config).map_err(|e| base(Box::new(e)))?;
        let img = self.adopt_image(name, &image, config, &BlobSource::Layout(layout))?;
        if let Ok(mut m) = self.images.lock() {
            m.insert(cache_key, img.clone());
        }
        Ok(img)
    }

    /// A registry image for `platform`: manifest and config only.
    fn registry_image(&self, name: &str, reference: &Reference, platform: &Platform) -> Result<Image, BuildError> {
        let cache_key = format!("registry {reference} {}", platform_string(platform));
        if let Some(img) = self.images.lock().ok().and_then(|m| m.get(&cache_key).cloned()) {
            return Ok(img);
        }
        let client = self.client.clone();
        let platform2 = platform.clone();
        let reference2 = reference.clone();
        let (image, config) = self
            .block_on(async move {
                let reference = reference2;
                let mut m = client.get_manifest(&reference).await?;
                if let AnyManifest::Index(index) = &m {
                    let child = index.value().manifest_for(&platform2).cloned().ok_or_else(|| {
                        registry_client::Error::not_found(format!("{reference} has no manifest for {platform2}"))
                    })?;
                    m = client.get_manifest(&reference.repository_only().with_digest(child.digest)).await?;
                }
                let AnyManifest::Image(image) = m else {
                    return Err(registry_client::Error::not_found(format!("{reference}: not an image")));
                };
                let config = client.fetch_small_blob(&Repo::of(&reference), &image.value().config).await?;
                Ok((image, config))
            })?
            .map_err(|e: registry_client::Error| BuildError::Base { image: name.to_owned(), source: Box::new(e) })?;
        let img = self.adopt_image(name, &image, config, &BlobSource::Registry(Repo::of(reference)))?;
        if let Ok(mut m) = self.images.lock() {
            m.insert(cache_key, img.clone());
        }
        Ok(img)
    }

    /// Keeps a base image's manifest and config in the store and notes
    /// where its layers are to be fetched from.
    fn adopt_image(
        &self,
        name: &str,
        manifest: &Raw<oci_image::ImageManifest>,
        config_bytes: bytes::Bytes,
        source: &BlobSource,
    ) -> Result<Image, BuildError> {
        let base =
            |source: Box<dyn std::error::Error + Send + Sync>| BuildError::Base { image: name.to_owned(), source };
        let config_raw = Raw::<ImageConfiguration>::from_bytes(config_bytes).map_err(|e| base(Box::new(e)))?;
        let manifest_value = manifest.value();
        if manifest_value.layers.len() != config_raw.value().rootfs.diff_ids.len() {
            return Err(base("the manifest's layers and the config's diff ids differ in number".into()));
        }
        self.store.layout.write_blob_bytes(manifest.bytes()).map_err(|e| base(Box::new(e)))?;
        self.store.layout.write_blob_bytes(config_raw.bytes()).map_err(|e| base(Box::new(e)))?;
        if let Ok(mut sources) = self.sources.lock() {
            for l in &manifest_value.layers {
                sources.entry(l.digest.clone()).or_insert_with(|| source.clone());
            }
        }
        Ok(Image {
            config: config_raw.value().clone(),
            layers: manifest_value.layers.clone(),
            key: Digest::sha256(format!("image {}", manifest.digest()).as_bytes()),
            name: name.to_owned(),
            repo: match source {
                BlobSource::Registry(r) => Some(r.clone()),
                BlobSource::Layout(_) => None,
            },
        })
    }

    /// A named directory as a `FROM`: an image of one layer holding its
    /// files (its `.dockerignore` applied), on an empty config.
    fn dir_image(
        &self,
        name: &str,
        root: &Path,
        ignore: &DockerIgnore,
        platform: &Platform,
    ) -> Result<Image, BuildError> {
        let mut image = Image::scratch(platform);
        name.clone_into(&mut image.name);
        let scratch = self.store.tempdir("c-")?;
        let vars = BTreeMap::new();
        let fetch = |url: &str, _: &Path| -> Result<(Digest, Option<std::time::SystemTime>), BuildError> {
            Err(BuildError::Unsupported { what: format!("a download ({url}) in a directory context") })
        };
        let req = files::CopyRequest {
            sources: &[".".to_owned()],
            dest: "/",
            heredocs: &[],
            workdir: "/",
            chown: None,
            chmod: None,
            exclude: &[],
            parents: false,
            add: false,
            checksum: None,
            keep_git_dir: false,
            unpack: None,
            lexer: self.lexer.clone(),
            vars: &vars,
            fetch: &fetch,
        };
        let src = files::SourceTree { root, ignore: Some(ignore), is_context: true };
        let items = files::plan(&src, &req, None, scratch.path())?;
        let key = Digest::sha256(
            format!("{}\ncontext {name}\n{}", image.key, files::items_digest(&items, Some(scratch.path()))?).as_bytes(),
        );
        let layer = self.items_layer(&key, &|_| {}, &items)?;
        let h = self.history(format!("context {name}"), layer.is_none());
        if let Some((desc, diff_id)) = layer {
            image.layers.push(desc);
            image.config.rootfs.diff_ids.push(diff_id);
        }
        image.config.history.get_or_insert_with(Vec::new).push(h);
        image.key = key;
        Ok(image)
    }

    /// Makes sure the blob `desc` is in the store, fetching it from where its image came from.
    fn ensure_blob(&self, desc: &Descriptor, image: &str) -> Result<(), BuildError> {
        if self.store.layout.has_blob(&desc.digest) {
            return Ok(());
        }
        let source = self.sources.lock().ok().and_then(|s| s.get(&desc.digest).cloned());
        match source {
            Some(BlobSource::Layout(layout)) => {
                let blob = layout.open_blob(&desc.digest)?;
                self.store.layout.write_blob(blob, Some((&desc.digest, desc.size)))?;
            }
            Some(BlobSource::Registry(repo)) => {
                self.emit(&Progress::Pulling { image });
                let client = self.client.clone();
                let layout = self.store.layout.clone();
                let desc = desc.clone();
                self.block_on(async move { client.fetch_blob_to_layout(&repo, &desc, &layout).await })??;
            }
            None => {
                return Err(BuildError::Base {
                    image: image.to_owned(),
                    source: format!("layer {} is neither in the store nor in a known source", desc.digest).into(),
                });
            }
        }
        Ok(())
    }

    /// The extracted (overlay form) directories of `image`'s layers, bottom
    /// first, each directory once: overlayfs refuses a lower directory
    /// stacked twice. A layer repeated right above itself is left out
    /// (applying a layer twice in a row is applying it once); one repeated
    /// above other layers (A, B, A) gets another extracted copy.
    fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, BuildError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut last: Option<&Digest> = None;
        let mut seen: HashMap<&Digest, usize> = HashMap::new();
        for desc in &image.layers {
            if last == Some(&desc.digest) {
                continue;
            }
            last = Some(&desc.digest);
            let copy = seen.entry(&desc.digest).or_insert(0);
            let dir = self.store.layer_dir(&desc.digest, *copy);
            *copy += 1;
            if !dir.exists() {
                self.ensure_blob(desc, &image.name)?;
                let tmp = self.store.tempdir("x-")?;
                let blob = self.store.layout.open_blob(&desc.digest)?;
                let opts = ApplyOptions { overlay: Some(OverlayXattrs::Trusted), ..ApplyOptions::default() };
                layer_diff::apply_blob(std::io::BufReader::new(blob), desc, tmp.path(), &opts)?;
                Store::adopt_layer_dir(&dir, tmp).map_err(BuildError::io("store", &dir))?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// A read-only view of `image`'s tree (`None` for an image without layers).
    pub(crate) fn view(&self, image: &Image) -> Result<Option<View>, BuildError> {
        self.view_of(image, false)
    }

    /// A view of `image`'s tree (`None` for an image without layers),
    /// `writable` with writes going to a throwaway upper directory (or copy).
    fn view_of(&self, image: &Image, writable: bool) -> Result<Option<View>, BuildError> {
        if image.layers.is_empty() {
            return Ok(None);
        }
        let dir = self.store.tempdir("v-")?;
        if self.overlay {
            let mut lowers = vec![self.empty_dir()?];
            lowers.extend(self.layer_dirs(image)?);
            let mount = if writable {
                let (upper, work, merged) = overlay_dirs(dir.path())?;
                OverlayMount::mount(&lowers, Some((&upper, &work)), &merged)
                    .map_err(BuildError::io("mount overlay on", &merged))?
            } else {
                OverlayMount::mount(&lowers, None, dir.path())
                    .map_err(BuildError::io("mount overlay on", dir.path()))?
            };
            return Ok(Some(View { mount: Some(mount), dir }));
        }
        self.flatten(image, dir.path())?;
        Ok(Some(View { mount: None, dir }))
    }

    /// Applies every layer of `image` onto `dir` (no overlayfs here).
    fn flatten(&self, image: &Image, dir: &Path) -> Result<(), BuildError> {
        for desc in &image.layers {
            self.ensure_blob(desc, &image.name)?;
            let blob = self.store.layout.open_blob(&desc.digest)?;
            layer_diff::apply_blob(std::io::BufReader::new(blob), desc, dir, &ApplyOptions::default())?;
        }
        Ok(())
    }

    fn empty_dir(&self) -> Result<PathBuf, BuildError> {
        let d = self.store.root.join("empty");
        std::fs::create_dir_all(&d).map_err(BuildError::io("create", &d))?;
        Ok(d)
    }

    /// Writes a layer through `f` into the store; `None` when `f` wrote no entries.
    fn write_layer(
        &self,
        f: impl FnOnce(&mut layer_diff::LayerWriter<oci_image::UnhashedBlobWriter>) -> Result<usize, BuildError>,
    ) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        // the layer pipeline hashes the blob in the pass that makes it: the
        // store takes that digest instead of hashing a second time
        let blob = self.store.layout.dangerous_unhashed_blob_writer()?;
        let mut w = layer_diff::LayerWriter::new(blob, &self.pack)?;
        let entries = f(&mut w)?;
        if entries == 0 {
            return Ok(None);
        }
        let (blob, info) = w.finish()?;
        if blob.size() != info.size {
            return Err(BuildError::Task(format!(
                "layer writer reported {} bytes but wrote {}",
                info.size,
                blob.size()
            )));
        }
        blob.dangerous_finish(&info.digest)?;
        Ok(Some((info.descriptor(), info.diff_id)))
    }

    /// The layer of planned `COPY` items, from the cache under `key` or written now.
    fn items_layer(
        &self,
        key: &Digest,
        report: &dyn Fn(bool),
        items: &[files::Item],
    ) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        self.layer_step(key, report, || {
            let now = Self::now();
            let entries: Vec<layer_diff::Entry> = items.iter().map(|i| i.written(self.epoch, now)).collect();
            self.write_layer(|w| {
                w.read_ahead(items.iter().zip(&entries).map(|(item, e)| (item.source.clone(), e)));
                for (item, e) in items.iter().zip(&entries) {
                    w.append_from(&item.source, e)?;
                }
                Ok(items.len())
            })
        })
    }

    /// `WORKDIR`: creates the directory when the image lacks it.
    fn workdir(&self, st: &mut StageState, path: &str) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        let view = self.view(&st.image)?;
        let root = view.as_ref().map(View::path);
        // every directory made is the user's (BuildKit's mkdir -p as USER)
        let user = st.image.cfg().user.clone().unwrap_or_default();
        let (uid, gid) = instr::mkdir_owner(root, &user);
        let missing = files::missing_dirs(root, path);
        // the directories above that exist go in as they are (see files::existing_above)
        let above = match root {
            Some(r) => files::existing_above(r, &missing)?,
            None => Vec::new(),
        };
        let now = Self::now();
        self.write_layer(|w| {
            for e in &above {
                w.append_from(Path::new("/"), e)?;
            }
            for dir in &missing {
                let entry = files::Item {
                    source: PathBuf::from("/"),
                    entry: layer_diff::Entry::new(dir.clone(), layer_diff::Kind::Dir, 0o755, uid, gid),
                    time: files::Time::Made,
                };
                w.append_from(Path::new("/"), &entry.written(self.epoch, now))?;
            }
            Ok(above.len() + missing.len())
        })
    }

    fn copy(
        &self,
        st: &mut StageState,
        c: &dockerfile_parse::command::Copy,
        add: bool,
        key_text: &str,
        report: &dyn Fn(bool),
    ) -> Result<(Option<(Descriptor, Digest)>, Digest), BuildError> {
        // where the files come from
        let (source_view, source_root, source_key, ignore) = match &c.from {
            None => (None, self.context.clone(), String::from("context"), Some(&self.ignore)),
            Some(from) => match self.source_of(from, &st.image.config.platform())? {
                FromSource::Tree { root, ignore, name } => (None, root.to_owned(), name, Some(ignore)),
                FromSource::Image(img) => {
                    let key = img.key.to_string();
                    let view = self.view(&img)?;
                    let root = view.as_ref().map_or_else(|| self.store.root.join("empty"), |v| v.path().to_owned());
                    self.empty_dir()?;
                    (view, root, key, None)
                }
            },
        };
        let dest_view = self.view(&st.image)?;
        let dest_root = dest_view.as_ref().map(View::path);
        let workdir = st.image.cfg().working_dir.clone().unwrap_or_else(|| "/".into());
        let chown = match &c.chown {
            Some(spec) => Some(instr::resolve_user(dest_root, spec, true)?),
            None => None,
        };
        let chmod = match &c.chmod {
            Some(m) => Some(files::Chmod::parse(m).ok_or_else(|| BuildError::Flag {
                flag: "--chmod",
                value: m.clone(),
                reason: "expected an octal mode from 0 to 7777 or symbolic clauses such as u+x,go-w",
            })?),
            None => None,
        };
        if c.checksum.is_some() {
            let source = c.sources.first().map(String::as_str).unwrap_or_default();
            let remote = c.sources.len() == 1
                && (source.starts_with("http://") || source.starts_with("https://") || files::is_git_url(source));
            if !remote {
                return Err(BuildError::Flag {
                    flag: "--checksum",
                    value: c.sources.join(" "),
                    reason: "needs exactly one HTTP(S) or git source",
                });
            }
        }
        let vars = Self::vars(st);
        let scratch = self.store.tempdir("c-")?;
        let fetch = |url: &str, path: &Path| -> Result<(Digest, Option<std::time::SystemTime>), BuildError> {
            let file = std::fs::File::create(path).map_err(BuildError::io("create", path))?;
            let client = self.client.clone();
            let url = url.to_owned();
            let d = self.block_on(async move { client.download(&url, &mut FileSink(file)).await })??;
            Ok((d.digest, d.last_modified))
        };
        let req = files::CopyRequest {
            sources: &c.sources,
            dest: &c.dest,
            heredocs: &c.heredocs,
            workdir: &workdir,
            chown,
            chmod: chmod.as_ref(),
            exclude: &c.exclude,
            parents: c.parents,
            add,
            checksum: c.checksum.as_deref(),
            keep_git_dir: c.keep_git_dir,
            unpack: c.unpack,
            lexer: self.lexer.clone(),
            vars: &vars,
            fetch: &fetch,
        };
        let src = files::SourceTree { root: &source_root, ignore, is_context: ignore.is_some() };
        let items = files::plan(&src, &req, dest_root, scratch.path())?;
        let key = Digest::sha256(
            format!(
                "{}\n{key_text}\n{source_key}\n{}",
                st.image.key,
                files::items_digest(&items, Some(scratch.path()))?
            )
            .as_bytes(),
        );
        let layer = self.items_layer(&key, report, &items)?;
        drop(source_view);
        drop(dest_view);
        Ok((layer, key))
    }

    /// What a `--from` names: an earlier stage, a named context (a
    /// directory's files are read directly), else an image.
    fn source_of(&self, from: &str, platform: &Platform) -> Result<FromSource<'_>, BuildError> {
        let stage = self.plan.stage(from);
        let key = match stage {
            Some(s) if s.replaced => s.name.as_deref().map(context::context_key),
            Some(_) => None,
            None => Some(context::context_key(from)),
        };
        if let Some(Named::Dir { root, ignore }) = key.and_then(|k| self.named.get(&k)) {
            return Ok(FromSource::Tree { root, ignore, name: format!("context {}", from.to_lowercase()) });
        }
        if let Some(stage) = stage {
            return self
                .done
                .lock()
                .map_err(|_| BuildError::Task("poisoned".into()))?
                .get(&stage.index)
                .cloned()
                .map(|i| FromSource::Image(Box::new(i)))
                .ok_or_else(|| BuildError::UnknownStage { name: from.to_owned() });
        }
        self.base_image(from, platform).map(|i| FromSource::Image(Box::new(i))).map_err(|e| match e {
            BuildError::Base { .. } if !from.contains(['/', ':', '.']) => {
                BuildError::UnknownStage { name: from.to_owned() }
            }
            e => e,
        })
    }

    #[allow(clippy::too_many_lines)]
    fn run(
        &self,
        st: &mut StageState,
        run: &dockerfile_parse::command::Run,
        binds: Vec<Option<BindSource>>,
    ) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        let shell = Self::shell(st);
        let args = instr::run_args(run, &shell);
        let network = match run.network.as_deref() {
            None | Some("default" | "host") => Network::Host,
            Some("none") => Network::None,
            Some(other) => {
                return Err(BuildError::Flag {
                    flag: "--network",
                    value: other.into(),
                    reason: "use default, host or none",
                });
            }
        };
        let work = self.store.tempdir("r-")?;
        let (upper, workdir, merged) = overlay_dirs(work.path())?;
        let mut lowers = vec![self.empty_dir()?];
        let (mount, before) = if self.overlay {
            lowers.extend(self.layer_dirs(&st.image)?);
            let m = OverlayMount::mount(&lowers, Some((&upper, &workdir)), &merged)
                .map_err(BuildError::io("mount overlay on", &merged))?;
            (Some(m), None)
        } else {
            self.flatten(&st.image, &merged)?;
            (None, Some(layer_diff::Snapshot::walk(&merged)?))
        };
        let cfg = st.image.cfg().clone();
        let (uid, gid) = instr::resolve_user(Some(&merged), cfg.user.as_deref().unwrap_or(""), false)?;
        let cwd = cfg.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
        let mut env: Vec<String> = cfg.env.clone().unwrap_or_default();
        for (k, v) in &st.args {
            if !env.iter().any(|e| e.split_once('=').is_some_and(|(ek, _)| ek == k)) {
                env.push(format!("{k}={v}"));
            }
        }
        for p in PROXY_ARGS {
            if let Some(v) = self.args.get(*p)
                && !st.args.contains_key(*p)
            {
                env.push(format!("{p}={v}"));
            }
        }
        // BuildKit's proxy settings: a proxy argument in either case is
        // also the upper-case variable RUN sees
        for p in PROXY_ARGS.iter().filter(|p| p.chars().all(|c| !c.is_ascii_lowercase())) {
            let given = self.args.get(*p).or_else(|| self.args.get(&p.to_ascii_lowercase()));
            if let Some(v) = given
                && !env.iter().any(|e| e.split_once('=').is_some_and(|(k, _)| k == *p))
            {
                env.push(format!("{p}={v}"));
            }
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", instr::home_of(Some(&merged), uid)));
        }
        // mount points runc will create (relative to the root): removed
        // again afterwards unless the command made them its own
        let stubs: Vec<PathBuf> = ["proc", "dev", "sys"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| std::fs::symlink_metadata(merged.join(p)).is_err())
            .collect();
        // paths inside the image are resolved inside it: an absolute symlink
        // in the image must not lead to the host's directories
        let cwd_path = files::inside(&merged, &cwd).ok_or_else(|| BuildError::Flag {
            flag: "WORKDIR",
            value: cwd.clone(),
            reason: "too many symlinks",
        })?;
        if std::fs::symlink_metadata(&cwd_path).is_err() {
            std::fs::create_dir_all(&cwd_path).map_err(BuildError::io("create", &cwd_path))?;
        }
        let mut mounts = Vec::new();
        let mut mount_stubs = Vec::new();
        let mut parents: Vec<rootfs::Parent> = Vec::new();
        let mut held_views = Vec::new();
        // ssh mounts: a relay socket each, in a private directory of its own
        // (short: a socket path has at most 107 bytes)
        let ssh_dir = Self::private_dir_for(run)?;
        let mut relays = Vec::new();
        let mut ssh_index = 0;
        for (m, bind) in run.mounts.iter().zip(binds) {
            if m.kind == dockerfile_parse::command::MountType::Ssh {
                let n = ssh_index;
                ssh_index += 1;
                let Some(dir) = &ssh_dir else { continue };
                let Some((pm, relay)) = self.ssh_mount(m, n, dir.path(), &cwd)? else { continue };
                if n == 0 {
                    instr::set_env(&mut env, "SSH_AUTH_SOCK", &pm.destination);
                }
                Self::mount_point_stubs(&merged, &pm.destination, &mut mount_stubs, &mut parents);
                mounts.push(pm);
                relays.push(relay);
                continue;
            }
            if let Some((name, value)) = self.secret_env(m)? {
                instr::set_env(&mut env, &name, &value);
                if m.target.is_none() {
                    // env= alone: no file
                    continue;
                }
            }
            let (pm, view) = match bind {
                Some(source) => self.bind_mount(m, source, &cwd)?,
                None => self.run_mount(m, &cwd, ssh_dir.as_ref().map(tempfile::TempDir::path))?,
            };
            Self::mount_point_stubs(&merged, &pm.destination, &mut mount_stubs, &mut parents);
            mounts.push(pm);
            held_views.extend(view);
        }
        // a heredoc with a `#!` line runs as a program of its own, bound
        // read-only at /dev/pipes/NAME (inside runc's /dev: no trace in the image)
        let mut args = args;
        if let (Some((name, text)), Some(dir)) = (instr::shebang_script(run), &ssh_dir) {
            let script = dir.path().join("script");
            std::fs::write(&script, text).map_err(BuildError::io("write", &script))?;
            std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(BuildError::io("chmod", &script))?;
            let dest = format!("/dev/pipes/{name}");
            mounts.push(ProcessMount {
                destination: dest.clone(),
                kind: MountKind::Bind { source: script, readonly: true },
            });
            args = vec![dest];
        }
        let mut process = Process::new(args);
        process.env = env;
        process.cwd = cwd;
        process.uid = uid;
        process.gid = gid;
        process.network = network;
        process.mounts = mounts;
        let index = st.index;
        let scratch = self.store.tempdir("x-")?;
        let env = RunEnv::new(scratch.path(), &self.cancel);
        let exit = self.executor.run(&merged, &process, env, &mut |bytes| {
            self.emit(&Progress::Output { stage: index, bytes });
        })?;
        drop(held_views);
        drop(relays);
        drop(ssh_dir);
        // The mount points made for the command go again (deepest first)
        // while still what the runtime made. Never through the live tree: on
        // the upper directory once unmounted, or the flattened tree, each
        // path opened component by component without following symlinks,
        // since the command may have swapped a parent for a link to the host.
        let stub_root = match mount {
            Some(m) => {
                m.unmount().map_err(BuildError::io("unmount", &merged))?;
                &upper
            }
            None => &merged,
        };
        for p in mount_stubs.iter().rev().chain(stubs.iter()) {
            rootfs::remove_stub(stub_root, p);
        }
        // and the directories above them are what they were
        rootfs::restore_parents(stub_root, &parents, stub_root == &upper);
        if exit.code != 0 {
            return Err(BuildError::RunFailed { code: exit.code, output: exit.output });
        }
        let (layer, adopt) = match before {
            None => {
                let (snap, changes) = layer_diff::overlay_changes(&upper)?;
                let layer = self.write_layer(|w| {
                    w.append_changes(&snap, &changes)?;
                    Ok(changes.len())
                })?;
                (layer, true)
            }
            Some(before) => {
                let after = layer_diff::Snapshot::walk(&merged)?;
                let changes = layer_diff::diff(&before, &after)?;
                let layer = self.write_layer(|w| {
                    w.append_changes(&after, &changes)?;
                    Ok(changes.len())
                })?;
                (layer, false)
            }
        };
        if adopt && let Some((desc, _)) = &layer {
            // the upper directory is this layer in overlay form: keep it
            let dir = self.store.layer_dir(&desc.digest, 0);
            if !dir.exists() {
                let _ = std::fs::rename(&upper, &dir);
            }
        }
        Ok(layer)
    }

    /// Every directory runc will create for the mount point `dest`, top
    /// down (to remove after the step), and those above it as they are now
    /// (to restore).
    fn mount_point_stubs(merged: &Path, dest: &str, stubs: &mut Vec<PathBuf>, parents: &mut Vec<rootfs::Parent>) {
        let mut prefix = String::new();
        for part in dest.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            let Some(path) = files::inside(merged, &prefix) else { break };
            let Ok(rel) = path.strip_prefix(merged) else { break };
            if std::fs::symlink_metadata(&path).is_err() {
                if !stubs.iter().any(|s: &PathBuf| s == rel) {
                    stubs.push(rel.to_owned());
                }
            } else if prefix != dest
                && let Some(p) = rootfs::Parent::read(merged, rel)
            {
                parents.push(p);
            }
        }
    }

    /// A private directory (0700, in the system's temporary directory, so
    /// that socket paths stay short) for a step's ssh relay sockets, secret
    /// copies and `#!` heredoc script; `None` when the step has none.
    fn private_dir_for(run: &dockerfile_parse::command::Run) -> Result<Option<tempfile::TempDir>, BuildError> {
        use dockerfile_parse::command::MountType;
        if !run.mounts.iter().any(|m| matches!(m.kind, MountType::Ssh | MountType::Secret))
            && instr::shebang_script(run).is_none()
        {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-run-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(BuildError::io("create", std::env::temp_dir()))?;
        Ok(Some(dir))
    }

    /// A `RUN --mount=type=ssh`, the `n`th of its step: a relay socket to
    /// the agent given for its id, at its target (default
    /// `/run/buildkit/ssh_agent.N`), owned `uid`:`gid` (root) with `mode`
    /// (0600). `None` for an optional mount whose agent was not given.
    fn ssh_mount(
        &self,
        m: &dockerfile_parse::command::Mount,
        n: usize,
        dir: &Path,
        cwd: &str,
    ) -> Result<Option<(ProcessMount, ssh::AgentRelay)>, BuildError> {
        let id = m.id.clone().unwrap_or_else(|| "default".into());
        let Some(agent) = self.ssh.get(&id) else {
            if m.required {
                return Err(BuildError::Flag {
                    flag: "--mount",
                    value: format!("type=ssh,id={id}"),
                    reason: "no ssh agent given to the build for this id (--ssh)",
                });
            }
            return Ok(None);
        };
        let (uid, gid) = Self::mount_owner(m)?;
        let path = dir.join(format!("ssh-{n}.sock"));
        let relay = ssh::AgentRelay::start(&path, agent, uid, gid, m.mode.unwrap_or(0o600))
            .map_err(BuildError::io("relay the ssh agent at", agent))?;
        let dest = mount_target(m, cwd).unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
        let pm = ProcessMount {
            destination: dest,
            kind: MountKind::Bind { source: relay.path().to_owned(), readonly: false },
        };
        Ok(Some((pm, relay)))
    }

    /// A mount's `uid` and `gid` (root when not given).
    fn mount_owner(m: &dockerfile_parse::command::Mount) -> Result<(u32, u32), BuildError> {
        let id = |n: Option<u64>, what: &'static str| -> Result<u32, BuildError> {
            u32::try_from(n.unwrap_or(0)).map_err(|_| BuildError::Flag {
                flag: what,
                value: n.unwrap_or(0).to_string(),
                reason: "not a 32-bit id",
            })
        };
        Ok((id(m.uid, "--mount uid")?, id(m.gid, "--mount gid")?))
    }

    /// `RUN --mount=type=secret,env=NAME`: `NAME` and the secret's value
    /// (`None` for other mounts, and for an optional secret not given).
    fn secret_env(&self, m: &dockerfile_parse::command::Mount) -> Result<Option<(String, String)>, BuildError> {
        use dockerfile_parse::command::MountType;
        let (MountType::Secret, Some(name)) = (&m.kind, &m.env) else { return Ok(None) };
        let Some(file) = self.secret_file(m, &Self::secret_id(m))? else { return Ok(None) };
        // an environment variable: a small value, read whole
        let mut value = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(file).map_err(BuildError::io("open the secret", file))?,
                1 << 20,
            ),
            &mut value,
        )
        .map_err(BuildError::io("read the secret", file))?;
        Ok(Some((name.clone(), value)))
    }

    /// The file given for the secret `id` that `m` mounts: `None` when it
    /// was not given and `m` may go without it, an error when it is required.
    fn secret_file(&self, m: &dockerfile_parse::command::Mount, id: &str) -> Result<Option<&PathBuf>, BuildError> {
        match self.secrets.get(id) {
            None if m.required => Err(BuildError::Flag {
                flag: "--mount",
                value: format!("type=secret,id={id}"),
                reason: "secret not given to the build",
            }),
            file => Ok(file),
        }
    }

    /// A secret mount's id: `id=`, else the target's last component.
    fn secret_id(m: &dockerfile_parse::command::Mount) -> String {
        m.id.clone()
            .or_else(|| m.target.as_deref().and_then(|t| t.rsplit('/').next()).map(str::to_owned))
            .unwrap_or_default()
    }

    /// A `RUN --mount=type=bind` of `source` (from [`Self::bind_sources`]):
    /// what to mount and any view that must stay mounted meanwhile.
    fn bind_mount(
        &self,
        m: &dockerfile_parse::command::Mount,
        source: BindSource,
        cwd: &str,
    ) -> Result<(ProcessMount, Option<View>), BuildError> {
        let dest = required_target(m, cwd)?;
        let source_rel = m.source.as_deref().unwrap_or("/");
        // writes through a bind mount never reach its source: a
        // read-write (`rw`) bind gets a throwaway copy or upper layer
        let writable = !m.readonly;
        let (source, view) = match source {
            BindSource::Tree { tree, .. } => {
                if tree.filtered || writable {
                    // what COPY would see, and nothing else
                    let dir = self.store.tempdir("b-")?;
                    files::materialize(&tree, dir.path(), !writable)?;
                    let path = if tree.is_dir {
                        dir.path().to_owned()
                    } else {
                        tree.items.first().map_or_else(|| dir.path().to_owned(), |i| dir.path().join(&i.entry.path))
                    };
                    (path, Some(View { mount: None, dir }))
                } else {
                    (tree.full, None)
                }
            }
            BindSource::Image(img) => {
                let view = if let Some(v) = self.view_of(&img, writable)? {
                    v
                } else {
                    // an image without layers: an empty directory of its own
                    let dir = self.store.tempdir("b-")?;
                    View { mount: None, dir }
                };
                let source = files::inside(view.path(), source_rel)
                    .ok_or_else(|| BuildError::OutsideContext { path: source_rel.to_owned() })?;
                if std::fs::symlink_metadata(&source).is_err() {
                    return Err(BuildError::MissingSource { path: source_rel.to_owned() });
                }
                (source, Some(view))
            }
        };
        Ok((ProcessMount { destination: dest, kind: MountKind::Bind { source, readonly: !writable } }, view))
    }

    /// One `RUN --mount` other than a bind ([`Self::bind_mount`]): what to mount.
    fn run_mount(
        &self,
        m: &dockerfile_parse::command::Mount,
        cwd: &str,
        private: Option<&Path>,
    ) -> Result<(ProcessMount, Option<View>), BuildError> {
        use dockerfile_parse::command::MountType;
        match m.kind {
            MountType::Cache => {
                let dest = required_target(m, cwd)?;
                let id = m.id.clone().unwrap_or_else(|| dest.clone());
                let dir = self.store.root.join("cache-mounts").join(Digest::sha256(id.as_bytes()).encoded());
                if !dir.exists() {
                    Self::new_cache_mount(m, &dir)?;
                }
                Ok((ProcessMount { destination: dest, kind: MountKind::Bind { source: dir, readonly: false } }, None))
            }
            MountType::Tmpfs => {
                let dest = required_target(m, cwd)?;
                let size = m.size.as_deref().map(ram_in_bytes).transpose()?;
                Ok((ProcessMount { destination: dest, kind: MountKind::Tmpfs { size } }, None))
            }
            MountType::Secret => {
                let id = Self::secret_id(m);
                let dest = mount_target(m, cwd).unwrap_or_else(|| format!("/run/secrets/{id}"));
                match (self.secret_file(m, &id)?, private) {
                    (Some(file), Some(private)) => {
                        // a copy of its own, owned uid:gid (root) with mode
                        // (0400), as BuildKit mounts secrets; gone after the step
                        let copy = private.join(format!("secret-{}", Digest::sha256(dest.as_bytes()).encoded()));
                        std::fs::copy(file, &copy).map_err(BuildError::io("copy the secret", file))?;
                        let (uid, gid) = Self::mount_owner(m)?;
                        std::os::unix::fs::chown(&copy, Some(uid), Some(gid))
                            .map_err(BuildError::io("chown", &copy))?;
                        std::fs::set_permissions(
                            &copy,
                            std::os::unix::fs::PermissionsExt::from_mode(m.mode.unwrap_or(0o400) & 0o7777),
                        )
                        .map_err(BuildError::io("chmod", &copy))?;
                        Ok((
                            ProcessMount { destination: dest, kind: MountKind::Bind { source: copy, readonly: true } },
                            None,
                        ))
                    }
                    (Some(file), None) => Ok((
                        ProcessMount {
                            destination: dest,
                            kind: MountKind::Bind { source: file.clone(), readonly: true },
                        },
                        None,
                    )),
                    (None, _) => {
                        Ok((ProcessMount { destination: dest, kind: MountKind::Tmpfs { size: Some(4096) } }, None))
                    }
                }
            }
            _ => Err(BuildError::Unsupported { what: format!("RUN --mount type {:?}", m.kind) }),
        }
    }

    /// Makes the directory of a cache mount on its first use, owned by the
    /// mount's `uid`/`gid` (root) with its `mode` (0755), as BuildKit does;
    /// later uses find it as the steps before left it.
    fn new_cache_mount(m: &dockerfile_parse::command::Mount, dir: &Path) -> Result<(), BuildError> {
        use std::os::unix::fs::PermissionsExt;
        let (uid, gid) = Self::mount_owner(m)?;
        let parent = dir.parent().unwrap_or(dir);
        let tmp =
            tempfile::Builder::new().prefix(".new-").tempdir_in(parent).map_err(BuildError::io("create", parent))?;
        std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid)).map_err(BuildError::io("chown", tmp.path()))?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(m.mode.unwrap_or(0o755) & 0o7777))
            .map_err(BuildError::io("chmod", tmp.path()))?;
        let path = tmp.keep();
        if std::fs::rename(&path, dir).is_err() {
            // another build made it first
            let _ = std::fs::remove_dir(&path);
            if !dir.is_dir() {
                return Err(BuildError::Io {
                    op: "create",
                    path: dir.to_owned(),
                    source: std::io::Error::other("cannot make the cache mount's directory"),
                });
            }
        }
        Ok(())
    }

    /// The final image: build labels, config and manifest in the store.
    fn finish(&self, mut image: Image) -> Result<Built, BuildError> {
        if !self.labels.is_empty() {
            let labels = image.cfg().labels.get_or_insert_with(BTreeMap::new);
            labels.extend(self.labels.clone());
        }
        image.config.created = Some(self.created());
        let config = Raw::new(image.config.clone());
        self.store.layout.write_blob_bytes(config.bytes())?;
        let mut mb = ManifestBuilder::new(config.descriptor());
        for l in &image.layers {
            mb = mb.layer(l.clone());
        }
        let manifest = Raw::new(mb.build());
        self.store.layout.write_blob_bytes(manifest.bytes())?;
        // every blob of the image in the store: outputs copy from there
        for l in &image.layers {
            self.ensure_blob(l, &image.name)?;
        }
        let (cached_steps, steps) = self.counts.lock().map(|c| *c).unwrap_or_default();
        Ok(Built {
            manifest: manifest.descriptor(),
            config: config.descriptor(),
            image: image.config,
            layers: image.layers,
            cached_steps,
            steps,
            base_repo: image.repo,
        })
    }

    async fn write_outputs(&self, built: &Built) -> Result<(), BuildError> {
        let tags: Vec<Reference> =
            if self.tags.is_empty() { default_name(&self.context).into_iter().collect() } else { self.tags.clone() };
        let cancelled = || BuildError::Cancelled { problems: Vec::new() };
        for out in &self.outputs {
            if self.cancel.is_cancelled() {
                return Err(cancelled());
            }
            let target = match out {
                Output::Layout(d) => format!("oci:{}", d.display()),
                Output::DockerArchive(f) => format!("docker-archive:{}", f.display()),
                Output::Registry => tags.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            };
            self.emit(&Progress::Writing { target: &target });
            let fail = |e: crate::CopyError| BuildError::Output { target: target.clone(), source: Box::new(e) };
            match out {
                Output::Layout(dir) => {
                    let store = self.store.layout.clone();
                    let dir = dir.clone();
                    let built = built.clone();
                    let tags = tags.clone();
                    let cancel = self.cancel.clone();
                    let written =
                        tokio::task::spawn_blocking(move || write_layout(&store, &built, &dir, &tags, &cancel))
                            .await
                            .map_err(|e| BuildError::Task(e.to_string()))?
                            .map_err(fail)?;
                    if !written {
                        return Err(cancelled());
                    }
                }
                Output::DockerArchive(file) => {
                    let store = self.store.layout.clone();
                    let file = file.clone();
                    let desc = built.manifest.clone();
                    let name = tags.first().cloned();
                    let overwrite = self.overwrite;
                    let cancel = self.cancel.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        crate::copy::write_archive_unless(&store, &desc, &file, name.as_ref(), overwrite, &|| {
                            cancel.is_cancelled()
                        })
                    })
                    .await
                    .map_err(|e| BuildError::Task(e.to_string()))?
                    .map_err(fail)?;
                    if written.is_none() {
                        return Err(cancelled());
                    }
                }
                Output::Registry => {
                    for t in &self.tags {
                        // base layers already in the target registry are mounted, not uploaded
                        let mount_from = built.base_repo.as_ref().filter(|r| r.registry == Repo::of(t).registry);
                        let push = self.client.push_from_layout(&self.store.layout, &built.manifest, t, mount_from);
                        tokio::select! {
                            r = push => { r.map_err(|e| fail(e.into()))?; }
                            () = self.cancel.cancelled() => return Err(cancelled()),
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A download written straight to a file.
struct FileSink(std::fs::File);

impl registry_client::BlobSink for FileSink {
    fn accept(&mut self, chunk: bytes::Bytes) -> impl std::future::Future<Output = registry_client::Result<()>> + Send {
        let r = std::io::Write::write_all(&mut self.0, &chunk).map_err(registry_client::Error::from);
        std::future::ready(r)
    }
}

/// `kiln/<context directory name>:latest` (`kiln/image:latest` when the name does not fit).
fn default_name(context: &Path) -> Option<Reference> {
    let dir = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_owned());
    let name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect();
    format!("kiln/{name}:latest").parse().ok().or_else(|| "kiln/image:latest".parse().ok())
}

/// Copies the built image from the store into the layout at `dir` and
/// names it: every blob copied (reflinked where the file system can, never
/// hard-linked) and checked against its digest on the way. A new layout is
/// filled in a temporary directory beside `dir` and renamed into place, so
/// it appears whole; when another writer makes `dir` first, the image goes
/// into theirs. Tags are set under the layout's index lock.
/// Returns false, having written no tag and renamed nothing into place,
/// when `cancel` fires first.
fn write_layout(
    store: &Layout,
    built: &Built,
    dir: &Path,
    tags: &[Reference],
    cancel: &Cancel,
) -> Result<bool, crate::CopyError> {
    let fill = |out: &Layout| -> Result<bool, crate::CopyError> {
        for d in built.blobs() {
            if cancel.is_cancelled() {
                return Ok(false);
            }
            store.copy_blob_to(&d, out)?;
        }
        if cancel.is_cancelled() {
            return Ok(false);
        }
        for t in tags {
            match t.tag() {
                Some(tag) => out.set_ref_name(tag, Some(t), built.manifest.clone())?,
                None => out.add_manifest(built.manifest.clone())?,
            }
        }
        Ok(true)
    };
    let exists = std::fs::symlink_metadata(dir).is_ok();
    if exists && !std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        // an existing layout (or something that is not one: refused); what
        // writers killed halfway left in it goes first
        let out = Layout::create(dir)?;
        out.reclaim()?;
        return fill(&out);
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(parent).map_err(crate::CopyError::Temp)?;
    // staging directories of writers killed halfway; ours is locked while
    // it is filled, so that nobody takes it for one of those
    oci_image::reclaim_stale(parent, ".kiln-out-").map_err(crate::CopyError::Temp)?;
    let (tmp, _held) = oci_image::locked_tempdir_in(parent, ".kiln-out-").map_err(crate::CopyError::Temp)?;
    let staged = tmp.path().join("layout");
    if !fill(&Layout::create(&staged)?)? {
        return Ok(false);
    }
    match std::fs::rename(&staged, dir) {
        Ok(()) => Ok(true),
        // another writer made it meanwhile: add the image to theirs
        Err(e) => match Layout::open(dir) {
            Ok(theirs) => fill(&theirs),
            Err(_) => Err(crate::CopyError::Temp(e)),
        },
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Layout(d) => write!(f, "oci:{}", d.display()),
            Output::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
            Output::Registry => f.write_str("registry"),
        }
    }
}
