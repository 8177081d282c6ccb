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
//! use kiln::build::Build;
//! let built = Build::new("examples/hello")
//!     .tag("kiln/hello:latest".parse()?)
//!     .output("oci:kiln-out".parse()?)
//!     .build()
//!     .await?;
//! println!("{}", built.manifest.digest);
//! # Ok(()) }
//! ```

mod base;
mod cache;
mod cancel;
mod config;
mod context;
mod copy;
mod driver;
mod epoch;
mod error;
mod exec;
mod files;
mod instr;
mod outputs;
mod rootfs;
mod run;
mod ssh;
mod stage;
mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dockerfile_parse::command::Command;
use dockerfile_parse::dockerignore::DockerIgnore;
use dockerfile_parse::shell::Lexer;
use dockerfile_parse::stages::{Base, PROXY_ARGS, Plan};
use layer_diff::{ApplyOptions, OverlayXattrs, PackOptions};
use oci_image::{
    AnyManifest, Compression, ContainerConfig, Descriptor, Digest, History, ImageConfiguration, Layout,
    ManifestBuilder, Platform, Raw, Reference,
};
use registry_client::{Client, Repository};

use crate::ImageLocation;

pub use cache::{CacheKey, CachedLayer, MissReason, StepCache, StepRecord};
pub use cancel::Cancel;
pub use context::{BuildContext, BuildContextError};
pub use error::BuildError;
pub use exec::{ExecError, Executor, Exit, MountKind, Network, OUTPUT_TAIL, Process, ProcessMount, RunEnv, Runc};
pub use store::{CacheError, default_cache_dir};

use base::BlobSource;
use cache::{KeyBuilder, LayerResult, StepRun};
use epoch::EpochChoice;
use error::is_cancelled_err;
use outputs::FileSink;
use rootfs::OverlayMount;
use run::overlay_dirs;
use store::Store;

/// An output as the caller asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OutputTarget {
    /// [`Build::output`].
    Location(ImageLocation),
    /// [`Build::push`]: a push to every tag.
    EveryTag,
}

/// A step of the build: where it is in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StepId {
    /// The stage's index.
    pub stage: usize,
    /// The stage's name, if it has one.
    pub name: Option<String>,
    /// The Dockerfile line of the instruction (of the `FROM` for the
    /// base image's `ONBUILD` triggers).
    pub line: usize,
}

/// What a build reports while it runs: one stream for the whole build,
/// transfers included. A step gives [`Progress::StepStarted`], then for a
/// step that can be cached and was not [`Progress::CacheMiss`], then its
/// output and transfers, then [`Progress::StepFinished`] once it succeeded
/// (a failed step ends the build with its error instead).
///
/// Events serialize as JSON objects named by `event` (`step_started`,
/// `cache_miss`, ...), durations in seconds, output as (lossy) UTF-8 text:
/// one per line is a machine-readable progress stream.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Progress<'a> {
    /// A step starts.
    StepStarted {
        /// The step.
        step: &'a StepId,
        /// The instruction, as recorded in the history.
        instruction: &'a str,
    },
    /// A step that can be cached was not found in the cache: it runs.
    CacheMiss {
        /// The step.
        step: &'a StepId,
        /// Why.
        #[serde(serialize_with = "as_text")]
        reason: &'a MissReason,
    },
    /// A step is done.
    StepFinished {
        /// The step.
        step: &'a StepId,
        /// The instruction, as recorded in the history.
        instruction: &'a str,
        /// Taken from the cache without running.
        cached: bool,
        /// How long it took, cache lookup and transfers included.
        #[serde(serialize_with = "as_seconds")]
        duration: std::time::Duration,
        /// The layer it added (`None`: the step changed only the config, or no file).
        layer: Option<&'a Descriptor>,
    },
    /// Output of a `RUN` command.
    Output {
        /// The step.
        step: &'a StepId,
        /// The bytes, as they came.
        #[serde(rename = "text", serialize_with = "as_lossy_text")]
        bytes: &'a [u8],
    },
    /// A base image's layers are being fetched for a step.
    Pulling {
        /// The step that needs them.
        step: &'a StepId,
        /// The image.
        image: &'a str,
    },
    /// Bytes of a blob moved: fetched for a step, or sent to an output.
    Blob {
        /// The step the blob is fetched for (`None`: an output's push).
        step: Option<&'a StepId>,
        /// The blob.
        digest: &'a Digest,
        /// Bytes moved so far.
        done: u64,
        /// The blob's size.
        total: u64,
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

fn as_text<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn as_seconds<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn as_lossy_text<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

impl Built {
    /// Every blob of the image: config, manifest, layers.
    fn blobs(&self) -> Vec<Descriptor> {
        let mut all = vec![self.config.clone(), self.manifest.clone()];
        all.extend(self.layers.iter().cloned());
        all
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
    /// The references the image was pushed to ([`Build::push`] and
    /// registry outputs), in order.
    pub pushed: Vec<Reference>,
    /// The base image's repository (pushes to its registry mount its layers).
    base_repo: Option<Repository>,
}

/// A Dockerfile build (see the [module docs](self)).
#[derive(Clone)]
pub struct Build {
    context: PathBuf,
    dockerfile: Option<PathBuf>,
    dockerfile_text: Option<String>,
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
    outputs: Vec<OutputTarget>,
    tags: Vec<Reference>,
    client: Option<Client>,
    cache_dir: Option<PathBuf>,
    step_cache: Option<Arc<dyn StepCache>>,
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
    /// at [`layer_diff::DEFAULT_GZIP_LEVEL`] (1, kiln's own fast deflate),
    /// the epoch of [`Build::epoch`] (`SOURCE_DATE_EPOCH`, else
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
            dockerfile_text: None,
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
            step_cache: None,
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

    /// The Dockerfile itself, as text (one a tool generates, or docker's
    /// `-f -`), instead of a file; the context's `.dockerignore` applies.
    /// Errors name it `<Dockerfile text>`. Overrides [`Build::dockerfile`].
    #[must_use]
    pub fn dockerfile_text(mut self, text: impl Into<String>) -> Build {
        self.dockerfile_text = Some(text.into());
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

    /// Adds an output: where the image is written once the whole build
    /// succeeded, in the location syntax of [`copy`](crate::copy) (the same
    /// path out of the store as a copy):
    /// - `oci:DIR[:TAG]`: an OCI layout directory (created when missing),
    ///   tagged `TAG`, else with every [`Build::tag`] (or `kiln/DIR:latest`
    ///   after the context's name);
    /// - `docker-archive:FILE[:NAME]`: a tar file `docker load` reads,
    ///   named `NAME`, else the first tag;
    /// - a registry reference: pushed there.
    ///
    /// [`Build::push`] pushes to every tag instead.
    #[must_use]
    pub fn output(mut self, output: ImageLocation) -> Build {
        self.outputs.push(OutputTarget::Location(output));
        self
    }

    /// Pushes the image to every [`Build::tag`] reference (docker's
    /// `--push`), base layers mounted from their repository when it is on
    /// the same registry.
    #[must_use]
    pub fn push(mut self, push: bool) -> Build {
        self.outputs.retain(|o| *o != OutputTarget::EveryTag);
        if push {
            self.outputs.push(OutputTarget::EveryTag);
        }
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

    /// Where step results are filed (default: the content store's own
    /// `cache/` directory). The layers stay in the content store either way.
    #[must_use]
    pub fn step_cache(mut self, cache: impl StepCache + 'static) -> Build {
        self.step_cache = Some(Arc::new(cache));
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
}

/// The largest Dockerfile (or `.dockerignore`) kiln reads: 16 MiB, some
/// twenty times the largest real Dockerfiles seen in public corpora, and
/// small enough to hold and parse without a second thought.
pub const MAX_DOCKERFILE_SIZE: u64 = 16 << 20;

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
    repo: Option<Repository>,
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
            key: CacheKey::builder("scratch").field("platform", platform.to_string()).finish().digest().clone(),
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
    /// level, manifest format), `NAME=value`: part of every step cache key.
    settings: Vec<String>,
    /// Where step results are filed.
    cache: Arc<dyn StepCache>,
    progress: Option<ProgressFn>,
    executor: Arc<dyn Executor>,
    /// Every output, pushes to the tags included.
    outputs: Vec<ImageLocation>,
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
    /// Where the layers of [`Ctx::image_stages`] are also written, in the
    /// same pass, for the first OCI layout output to link instead of
    /// copying them out of the store: a directory on that output's file
    /// system (`None`: no such output, or its parent does not exist yet).
    copy_dir: Option<PathBuf>,
    /// The target stage and the stages it is built `FROM`: the stages
    /// whose layers are the image's.
    image_stages: BTreeSet<usize>,
    /// Those copies, by digest, until the output takes them.
    copies: Mutex<HashMap<Digest, oci_image::BlobCopy>>,
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
