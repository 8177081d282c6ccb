//! The build from start to end: preparing it (Dockerfile, plan, contexts,
//! store), running the stages in waves (independent stages side by side),
//! finishing the image and writing the outputs, and stopping cleanly.

use super::{
    Arc, BTreeMap, BTreeSet, Build, BuildContext, BuildError, Built, Cancel, Client, Ctx, DockerIgnore, HashMap,
    ImageLocation, Lexer, MAX_DOCKERFILE_SIZE, Mutex, Named, OutputTarget, PackOptions, Path, PathBuf, Platform,
    Progress, StepId, Store, default_cache_dir, is_cancelled_err, rootfs,
};

impl Ctx {
    pub(super) fn emit(&self, p: &Progress<'_>) {
        if let Some(f) = &self.progress {
            f(p);
        }
    }

    /// The build's client, its transfers reported as [`Progress::Blob`] of `step`.
    pub(super) fn client_for(&self, step: Option<&StepId>) -> Client {
        let Some(progress) = self.progress.clone() else { return self.client.clone() };
        let step = step.cloned();
        self.client.with_progress(move |p| {
            if let registry_client::Progress::Bytes { digest, done, total } = p {
                progress(&Progress::Blob { step: step.as_ref(), digest, done: *done, total: *total });
            }
        })
    }

    pub(super) fn created(&self) -> String {
        match self.epoch {
            Some(e) => crate::rfc3339_utc(e),
            None => crate::now_rfc3339(),
        }
    }

    pub(super) fn at(&self, line: usize, instruction: &str) -> impl FnOnce(BuildError) -> BuildError {
        let dockerfile = self.dockerfile.clone();
        let instruction = instruction.to_owned();
        move |e| match e {
            e @ BuildError::At { .. } => e,
            e => BuildError::At { dockerfile, line, instruction, source: Box::new(e) },
        }
    }

    /// Runs the stages in waves (each wave's stages need only earlier
    /// waves), then finishes the image and writes the outputs. A failing
    /// stage cancels the others; every task is awaited before this returns.
    pub(super) async fn run_build(self: Arc<Self>) -> Result<Built, BuildError> {
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
    pub(super) fn block_on<T, E>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, BuildError> {
        let cancel = self.cancel.clone();
        self.rt.block_on(async move {
            tokio::select! {
                r = fut => Ok(r),
                () = cancel.cancelled() => Err(BuildError::Cancelled { problems: Vec::new() }),
            }
        })
    }
}

impl Build {
    pub(super) async fn build_once(self) -> Result<Built, BuildError> {
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
    pub(super) fn check_outputs(&self) -> Result<(), BuildError> {
        if self.outputs.contains(&OutputTarget::EveryTag) && self.tags.is_empty() {
            return Err(BuildError::Flag {
                flag: "--output",
                value: "registry".into(),
                reason: "pushing needs at least one -t reference",
            });
        }
        for out in &self.outputs {
            if let OutputTarget::Location(out @ ImageLocation::DockerArchive { file, .. }) = out {
                crate::copy::archive_writable(file, self.overwrite)
                    .map_err(|e| BuildError::Output { target: out.to_string(), source: Box::new(e.into()) })?;
            }
        }
        Ok(())
    }

    /// The Dockerfile of a build of `context`: its path (for the ignore
    /// file beside it), whether it is the default one, its name in errors
    /// and its text.
    fn dockerfile_of(&self, context: &Path) -> Result<(PathBuf, bool, String, String), BuildError> {
        let (path, within) = match &self.dockerfile {
            Some(f) if self.dockerfile_text.is_none() => (f.clone(), None),
            _ => (context.join("Dockerfile"), Some(context)),
        };
        match &self.dockerfile_text {
            Some(t) if t.len() as u64 > MAX_DOCKERFILE_SIZE => {
                Err(BuildError::TooLarge { path: "<Dockerfile text>".into(), limit: MAX_DOCKERFILE_SIZE })
            }
            Some(t) => Ok((path, true, "<Dockerfile text>".to_owned(), t.clone())),
            None => {
                let text = read_dockerfile(&path, within)?;
                Ok((path.clone(), within.is_some(), path.display().to_string(), text))
            }
        }
    }

    pub(super) fn prepare(self) -> Result<Ctx, BuildError> {
        self.check_outputs()?;
        // every host path absolute before it reaches a runtime spec
        let context =
            std::fs::canonicalize(&self.context).map_err(BuildError::io("open the build context", &self.context))?;
        let (dockerfile_path, default_file, dockerfile_name, text) = self.dockerfile_of(&context)?;
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
        let ignore = read_ignore(&context, &dockerfile_path, default_file)?;
        let named = prepare_named(self.contexts)?;
        let cache_dir = match &self.cache_dir {
            Some(d) => d.clone(),
            None => default_cache_dir()?,
        };
        let store = Store::open(&cache_dir)?;
        let client = match self.client {
            Some(c) => c,
            // credentials the way docker and podman read them
            None => registry_client::Client::builder()
                .credentials(registry_client::DockerConfig::from_env().map_err(BuildError::Credentials)?)
                .build()?,
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
        let settings = vec![
            format!("epoch={}", epoch.map_or_else(|| "none".to_owned(), |e| e.to_string())),
            format!("compression={}", self.compression),
            format!("level={}", self.level.map_or_else(|| "default".to_owned(), |l| l.to_string())),
            // the engine behind the level: a level that changes engine never reuses the other's bytes
            format!("engine={}", layer_diff::compression_engine(self.compression, self.level)),
            "manifest=oci-v1".to_owned(),
        ];
        let cache: Arc<dyn super::StepCache> = match self.step_cache {
            Some(c) => c,
            None => Arc::new(store.clone()),
        };
        let secrets = absolute_paths(self.secrets, "find the secret")?;
        let ssh = absolute_paths(self.ssh, "find the ssh agent")?;
        let outputs = locations(self.outputs, &self.tags);
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
            settings,
            cache,
            progress: self.progress,
            executor: self.executor,
            copy_dir: copy_dir(&outputs),
            image_stages: image_stages(&plan),
            copies: Mutex::new(HashMap::new()),
            outputs,
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

/// Every output's location, [`OutputTarget::EveryTag`] as a push to each of `tags`.
fn locations(outputs: Vec<OutputTarget>, tags: &[super::Reference]) -> Vec<ImageLocation> {
    outputs
        .into_iter()
        .flat_map(|o| match o {
            OutputTarget::Location(l) => vec![l],
            OutputTarget::EveryTag => tags.iter().cloned().map(ImageLocation::Registry).collect(),
        })
        .collect()
}

/// Where the layers are also written for the first OCI layout output (see
/// [`Ctx::copy_dir`]): the layout's directory when it exists, else its
/// parent when that exists; the output creates neither before its turn.
fn copy_dir(outputs: &[ImageLocation]) -> Option<PathBuf> {
    let dir = outputs.iter().find_map(|o| match o {
        ImageLocation::Layout { dir, .. } => Some(dir),
        _ => None,
    })?;
    if dir.is_dir() {
        return Some(dir.clone());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    parent.is_dir().then(|| parent.to_owned())
}

/// The target stage and the stages it is built `FROM`, down to its image.
fn image_stages(plan: &dockerfile_parse::stages::Plan) -> BTreeSet<usize> {
    let mut stages = BTreeSet::new();
    let mut next = plan.stages.get(plan.target);
    while let Some(s) = next {
        if !stages.insert(s.index) {
            break;
        }
        next = match s.base {
            dockerfile_parse::stages::Base::Stage(b) if !s.replaced => plan.stages.get(b),
            _ => None,
        };
    }
    stages
}

/// The background reaper of a build whose future was dropped: its drop sets
/// the build's cancellation flag and hands the clean-up to a blocking task
/// on the runtime (no I/O in `Drop` itself). That task waits until the
/// build's own tasks, which stop at the flag, have let go of the build,
/// then removes its scratch state. When the process exits first, the next
/// build on the same cache reclaims what is left.
pub(super) struct Reaper(Option<Arc<Ctx>>);

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

/// The named contexts ready to use: host paths made absolute, each
/// directory's `.dockerignore` read.
pub(super) fn prepare_named(
    contexts: BTreeMap<String, (String, BuildContext)>,
) -> Result<BTreeMap<String, Named>, BuildError> {
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
pub(super) fn read_inside(root: &Path, file: &Path) -> Result<Option<String>, BuildError> {
    if std::fs::symlink_metadata(file).is_err() {
        return Ok(None);
    }
    let resolved = std::fs::canonicalize(file).map_err(BuildError::io("resolve", file))?;
    if !resolved.starts_with(root) {
        return Err(BuildError::LeavesContext { path: file.to_owned(), resolved, context: root.to_owned() });
    }
    read_regular(&resolved).map(Some)
}

/// Reads a regular file as text, refusing anything else (a FIFO would
/// block, a device would never end) and anything over
/// [`MAX_DOCKERFILE_SIZE`]. The file is opened without blocking, so a FIFO
/// is refused rather than waited on.
pub(super) fn read_regular(path: &Path) -> Result<String, BuildError> {
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
pub(super) fn read_dockerfile(path: &Path, within: Option<&Path>) -> Result<String, BuildError> {
    match within {
        Some(root) => read_inside(root, path)?.ok_or_else(|| BuildError::Io {
            op: "read",
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
        None => read_regular(path),
    }
}

/// The paths of `by_id` made absolute (secrets and ssh agents the
/// invoker named), before anything changes the working directory.
fn absolute_paths(by_id: BTreeMap<String, PathBuf>, op: &'static str) -> Result<BTreeMap<String, PathBuf>, BuildError> {
    by_id
        .into_iter()
        .map(|(id, path)| {
            let abs = std::path::absolute(&path).map_err(BuildError::io(op, &path))?;
            Ok((id, abs))
        })
        .collect()
}

/// `TARGETPLATFORM` and friends for a build for `p` on this host.
pub(super) fn platform_args(p: &Platform) -> Vec<(String, String)> {
    let host = Platform::host();
    let mut out = Vec::new();
    for (prefix, p) in [("TARGET", p), ("BUILD", &host)] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
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
pub(super) fn read_ignore(context: &Path, dockerfile: &Path, default_file: bool) -> Result<DockerIgnore, BuildError> {
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
