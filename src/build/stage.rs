//! One stage: its base, ONBUILD triggers and steps, each step from the
//! cache or made, and the history it records.

use super::{
    BTreeMap, Base, BuildError, Command, Ctx, Descriptor, Digest, History, Image, Named, Platform, StageState, StepId,
    StepRun, context, instr,
};

impl Ctx {
    pub(super) fn run_stage(&self, index: usize) -> Result<Image, BuildError> {
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
            // checked as the ONBUILD instruction checks its trigger
            let (cmd, original) = dockerfile_parse::stages::onbuild_trigger(&t).map_err(|e| {
                self.at(from_line, &format!("ONBUILD {t}"))(BuildError::Plan {
                    dockerfile: self.dockerfile.clone(),
                    source: Box::new(e),
                })
            })?;
            self.step(&mut st, &stage, &cmd, &original, from_line)
                .map_err(self.at(from_line, &format!("ONBUILD {original}")))?;
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
    pub(super) fn replaced_stage(
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

    /// The lookup for word expansion: `ARG`s, overridden by `ENV`.
    pub(super) fn vars(st: &StageState) -> BTreeMap<String, String> {
        let mut vars = st.args.clone();
        for e in st.image.env() {
            if let Some((k, v)) = e.split_once('=') {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
        vars
    }

    pub(super) fn history(&self, created_by: String, empty: bool) -> History {
        History {
            created: Some(self.created()),
            created_by: Some(created_by),
            empty_layer: empty.then_some(true),
            ..History::default()
        }
    }

    pub(super) fn push_history(&self, st: &mut StageState, created_by: String, layer: Option<(Descriptor, Digest)>) {
        let empty = layer.is_none();
        let h = self.history(created_by, empty);
        if let Some((desc, diff_id)) = layer {
            st.image.layers.push(desc);
            st.image.config.rootfs.diff_ids.push(diff_id);
        }
        st.image.config.history.get_or_insert_with(Vec::new).push(h);
    }

    pub(super) fn step(
        &self,
        st: &mut StageState,
        stage: &dockerfile_parse::stages::Stage,
        command: &Command,
        original: &str,
        line: usize,
    ) -> Result<(), BuildError> {
        let vars = Self::vars(st);
        let cmd = match command {
            // an ARG takes its values by the planner's rule; its expanded
            // form holds them, as the plan's steps do
            Command::Arg(defs) => {
                let mut out = Vec::with_capacity(defs.len());
                for d in defs {
                    let mut d = d.clone();
                    d.name = self.lexer.expand_word(&d.name, &vars).map_err(|e| BuildError::Expand(Box::new(e)))?;
                    d.default = if d.name == "TARGETSTAGE" && !self.args.contains_key(&d.name) {
                        // BuildKit's built-in: the name of the stage being built
                        let target = self.plan.stages.get(self.plan.target).and_then(|s| s.name.clone());
                        Some(target.unwrap_or_else(|| "default".into()))
                    } else {
                        dockerfile_parse::stages::arg_value(
                            &d,
                            &self.args,
                            Some(&self.plan.global_values),
                            &self.lexer,
                            &vars,
                        )
                        .map_err(|e| BuildError::Expand(Box::new(e)))?
                        .0
                    };
                    out.push(d);
                }
                Command::Arg(out)
            }
            other => other.expand(&self.lexer, &vars).map_err(|e| BuildError::Expand(Box::new(e)))?.0,
        };
        let created_by = instr::created_by(original);
        let step = StepRun::start(self, StepId { stage: st.index, name: stage.name.clone(), line }, created_by.clone());
        // the instruction as run, a defined encoding (see cache.rs)
        let encoding = |e: serde_json::Error| BuildError::Task(format!("encode the step: {e}"));
        let command = serde_json::to_vec(&cmd).map_err(encoding)?;
        let key = self.key("step", &st.image.key).field("instruction", &created_by).field("command", &command);
        // the steps that may make a layer: from the cache or made
        let (made, key) = match &cmd {
            Command::Run(run) => {
                // RUN sees the build arguments as environment variables,
                // and what its mounts hold (their options are in the command)
                let binds = self.bind_sources(st, run)?;
                let key = key
                    .field("config", serde_json::to_vec(&st.image.config.config).map_err(encoding)?)
                    .fields("arg", st.args.iter().map(|(k, v)| format!("{k}={v}")))
                    .fields("mount", Self::mounts_key(run, &binds)?)
                    .finish();
                let result = self.layer_step(&key, Some(&step), || self.run(st, run, binds, &step.id))?;
                (Some(result), key.digest().clone())
            }
            Command::Copy(c) | Command::Add(c) => {
                let (result, key) = self.copy(st, c, matches!(cmd, Command::Add(_)), key, &step)?;
                (Some(result), key)
            }
            Command::Workdir(dir) => {
                let cwd = st.image.cfg().working_dir.clone().unwrap_or_else(|| "/".into());
                let path = instr::workdir_path(&cwd, dir);
                st.image.cfg().working_dir = Some(path.clone());
                let path = instr::join_path("/", &path);
                let key = key.field("path", &path).finish();
                let result = self.layer_step(&key, Some(&step), || self.workdir(st, &path, &step.id))?;
                (Some(result), key.digest().clone())
            }
            _ => (None, key.finish().digest().clone()),
        };
        let (layer, cached) = if let Some(made) = made {
            made
        } else {
            match cmd {
                Command::Arg(defs) => {
                    for d in defs {
                        if let Some(v) = d.default {
                            st.args.insert(d.name, v);
                        }
                    }
                }
                // everything else only changes the image config
                other => super::config::apply(&mut st.image.config, other, &mut st.cmd_set)?,
            }
            (None, false)
        };
        step.finish(cached, layer.as_ref().map(|l| &l.0));
        self.push_history(st, created_by, layer);
        st.image.key = key;
        Ok(())
    }
}
