//! `RUN`: the step's root file system, its mounts (bind, cache, tmpfs,
//! secret, ssh) and the process, and the layer it leaves.

use super::{
    BuildError, Ctx, DEFAULT_PATH, Descriptor, Digest, FromSource, Image, MountKind, Network, OverlayMount, PROXY_ARGS,
    Path, PathBuf, Process, ProcessMount, Progress, RunEnv, StageState, StepId, View, files, instr, rootfs, ssh,
};

/// A tmpfs `size=` in bytes: a number with an optional binary unit (`k`,
/// `m`, `g`, `t`, `p`, with an optional `i` and `b`), as BuildKit reads it.
pub(super) fn ram_in_bytes(text: &str) -> Result<u64, BuildError> {
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

/// A `RUN --mount=type=bind`'s source, resolved.
pub(super) enum BindSource {
    /// A subtree of the context or a named directory, `name` saying which.
    Tree { name: String, tree: files::TreeMount },
    /// An image (an earlier stage's or a named one).
    Image(Box<Image>),
}

/// Where a `RUN --mount` goes: its target, relative ones taken from `cwd`.
pub(super) fn mount_target(m: &dockerfile_parse::command::Mount, cwd: &str) -> Option<String> {
    m.target.as_deref().map(|t| instr::join_path(cwd, t))
}

/// [`mount_target`], for the mount types that cannot go without one.
pub(super) fn required_target(m: &dockerfile_parse::command::Mount, cwd: &str) -> Result<String, BuildError> {
    mount_target(m, cwd).ok_or_else(|| BuildError::Flag {
        flag: "--mount",
        value: format!("{m:?}"),
        reason: "needs a target",
    })
}

/// An overlay's `upper`, `work` and `merged` directories, made in `dir`.
pub(super) fn overlay_dirs(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), BuildError> {
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).map_err(BuildError::io("create", d))?;
    }
    Ok((upper, work, merged))
}

impl Ctx {
    /// The sources of a `RUN`'s bind mounts (`None` for the other mounts),
    /// resolved once: for the step's cache key and, when it runs, the mounts.
    pub(super) fn bind_sources(
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
    pub(super) fn mounts_key(
        run: &dockerfile_parse::command::Run,
        binds: &[Option<BindSource>],
    ) -> Result<Vec<String>, BuildError> {
        let mut out = Vec::new();
        for (i, (m, bind)) in run.mounts.iter().zip(binds).enumerate() {
            let source = m.source.as_deref().unwrap_or("/");
            let part = match bind {
                None => continue,
                Some(BindSource::Tree { name, tree }) => {
                    format!("{i}\0{name}\0{source}\0{}", files::items_digest(&tree.items, None)?)
                }
                Some(BindSource::Image(img)) => format!("{i}\0image {}\0{source}", img.key),
            };
            out.push(part);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_lines)]
    pub(super) fn run(
        &self,
        st: &mut StageState,
        run: &dockerfile_parse::command::Run,
        binds: Vec<Option<BindSource>>,
        step: &StepId,
    ) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        let shell = super::config::shell(&st.image.config);
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
            lowers.extend(self.layer_dirs(&st.image, Some(step))?);
            let m = OverlayMount::mount(&lowers, Some((&upper, &workdir)), &merged)
                .map_err(BuildError::io("mount overlay on", &merged))?;
            (Some(m), None)
        } else {
            self.flatten(&st.image, &merged, Some(step))?;
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
        // the step's private directory (ssh relay sockets, secret copies, a
        // `#!` script); ssh mounts get a relay socket each
        let private = Self::private_dir_for(run)?;
        let mut relays = Vec::new();
        let mut ssh_index = 0;
        for (m, bind) in run.mounts.iter().zip(binds) {
            if m.kind == dockerfile_parse::command::MountType::Ssh {
                let n = ssh_index;
                ssh_index += 1;
                let Some(dir) = &private else { continue };
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
                Some(source) => self.bind_mount(m, source, &cwd, step)?,
                None => self.run_mount(m, &cwd, private.as_ref().map(tempfile::TempDir::path))?,
            };
            Self::mount_point_stubs(&merged, &pm.destination, &mut mount_stubs, &mut parents);
            mounts.push(pm);
            held_views.extend(view);
        }
        // a heredoc with a `#!` line runs as a program of its own, bound
        // read-only at /dev/pipes/NAME (inside runc's /dev: no trace in the image)
        let mut args = args;
        if let (Some((name, text)), Some(dir)) = (instr::shebang_script(run), &private) {
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
        let scratch = self.store.tempdir("x-")?;
        let env = RunEnv::new(scratch.path(), &self.cancel);
        let exit = self.executor.run(&merged, &process, env, &mut |bytes| {
            self.emit(&Progress::Output { step, bytes });
        })?;
        drop(held_views);
        drop(relays);
        drop(private);
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
                let layer = self.write_layer(Some(step.stage), |w| {
                    w.append_changes(&snap, &changes)?;
                    Ok(changes.len())
                })?;
                (layer, true)
            }
            Some(before) => {
                let after = layer_diff::Snapshot::walk(&merged)?;
                let changes = layer_diff::diff(&before, &after)?;
                let layer = self.write_layer(Some(step.stage), |w| {
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
    pub(super) fn mount_point_stubs(
        merged: &Path,
        dest: &str,
        stubs: &mut Vec<PathBuf>,
        parents: &mut Vec<rootfs::Parent>,
    ) {
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
    pub(super) fn private_dir_for(
        run: &dockerfile_parse::command::Run,
    ) -> Result<Option<tempfile::TempDir>, BuildError> {
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
    pub(super) fn ssh_mount(
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
    pub(super) fn mount_owner(m: &dockerfile_parse::command::Mount) -> Result<(u32, u32), BuildError> {
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
    pub(super) fn secret_env(
        &self,
        m: &dockerfile_parse::command::Mount,
    ) -> Result<Option<(String, String)>, BuildError> {
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
    pub(super) fn secret_file(
        &self,
        m: &dockerfile_parse::command::Mount,
        id: &str,
    ) -> Result<Option<&PathBuf>, BuildError> {
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
    pub(super) fn secret_id(m: &dockerfile_parse::command::Mount) -> String {
        m.id.clone()
            .or_else(|| m.target.as_deref().and_then(|t| t.rsplit('/').next()).map(str::to_owned))
            .unwrap_or_default()
    }

    /// A `RUN --mount=type=bind` of `source` (from [`Self::bind_sources`]):
    /// what to mount and any view that must stay mounted meanwhile.
    pub(super) fn bind_mount(
        &self,
        m: &dockerfile_parse::command::Mount,
        source: BindSource,
        cwd: &str,
        step: &StepId,
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
                let view = if let Some(v) = self.view_of(&img, writable, Some(step))? {
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
    pub(super) fn run_mount(
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
    pub(super) fn new_cache_mount(m: &dockerfile_parse::command::Mount, dir: &Path) -> Result<(), BuildError> {
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
}
