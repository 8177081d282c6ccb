//! `COPY`, `ADD` and `WORKDIR`: planned items (see `files`) written as a layer.

use super::{
    BuildError, CacheKey, Ctx, Descriptor, Digest, FileSink, FromSource, KeyBuilder, LayerResult, Named, Path, PathBuf,
    Platform, StageState, StepId, StepRun, View, context, files, instr,
};

impl Ctx {
    /// The layer of planned `COPY` items, from the cache under `key` or written now.
    pub(super) fn items_layer(
        &self,
        key: &CacheKey,
        step: Option<&StepRun<'_>>,
        items: &[files::Item],
    ) -> Result<LayerResult, BuildError> {
        self.layer_step(key, step, || {
            let now = crate::unix_now();
            let entries: Vec<layer_diff::Entry> = items.iter().map(|i| i.written(self.epoch, now)).collect();
            self.write_layer(step.map(|s| s.id.stage), |w| {
                w.read_ahead(items.iter().zip(&entries).map(|(item, e)| (item.source.clone(), e)));
                for (item, e) in items.iter().zip(&entries) {
                    w.append_from(&item.source, e)?;
                }
                Ok(items.len())
            })
        })
    }

    /// `WORKDIR`: creates the directory when the image lacks it.
    pub(super) fn workdir(
        &self,
        st: &mut StageState,
        path: &str,
        step: &StepId,
    ) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        let view = self.view(&st.image, Some(step))?;
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
        let now = crate::unix_now();
        self.write_layer(Some(step.stage), |w| {
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

    pub(super) fn copy(
        &self,
        st: &mut StageState,
        c: &dockerfile_parse::command::Copy,
        add: bool,
        key: KeyBuilder,
        step: &StepRun<'_>,
    ) -> Result<(LayerResult, Digest), BuildError> {
        // where the files come from
        let (source_view, source_root, source_key, ignore) = match &c.from {
            None => (None, self.context.clone(), String::from("context"), Some(&self.ignore)),
            Some(from) => match self.source_of(from, &st.image.config.platform())? {
                FromSource::Tree { root, ignore, name } => (None, root.to_owned(), name, Some(ignore)),
                FromSource::Image(img) => {
                    let key = img.key.to_string();
                    let view = self.view(&img, Some(&step.id))?;
                    let root = view.as_ref().map_or_else(|| self.store.root.join("empty"), |v| v.path().to_owned());
                    self.empty_dir()?;
                    (view, root, key, None)
                }
            },
        };
        let dest_view = self.view(&st.image, Some(&step.id))?;
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
        let key = key
            .field("from", &source_key)
            .field("files", files::items_digest(&items, Some(scratch.path()))?.to_string())
            .finish();
        let layer = self.items_layer(&key, Some(step), &items)?;
        drop(source_view);
        drop(dest_view);
        Ok((layer, key.digest().clone()))
    }

    /// What a `--from` names: an earlier stage, a named context (a
    /// directory's files are read directly), else an image.
    pub(super) fn source_of(&self, from: &str, platform: &Platform) -> Result<FromSource<'_>, BuildError> {
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
}
