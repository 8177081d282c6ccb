//! The final image and the outputs it is written to (OCI layout,
//! docker-archive, registry).

use super::{
    BTreeMap, BuildError, Built, Ctx, Descriptor, Image, ImageLocation, Layout, ManifestBuilder, Path, Progress, Raw,
    Reference, Repository,
};

/// A download written straight to a file.
pub(super) struct FileSink(pub(super) std::fs::File);

impl registry_client::BlobSink for FileSink {
    fn accept(&mut self, chunk: bytes::Bytes) -> impl std::future::Future<Output = registry_client::Result<()>> + Send {
        let r = std::io::Write::write_all(&mut self.0, &chunk).map_err(registry_client::Error::from);
        std::future::ready(r)
    }
}

/// `kiln/<context directory name>:latest` (`kiln/image:latest` when the name does not fit).
pub(super) fn default_name(context: &Path) -> Option<Reference> {
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

impl Ctx {
    /// The final image: build labels, config and manifest in the store.
    pub(super) fn finish(&self, mut image: Image) -> Result<Built, BuildError> {
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
            self.ensure_blob(l, &image.name, None)?;
        }
        let (cached_steps, steps) = self.counts.lock().map(|c| *c).unwrap_or_default();
        Ok(Built {
            manifest: manifest.descriptor(),
            config: config.descriptor(),
            image: image.config,
            layers: image.layers,
            cached_steps,
            steps,
            pushed: self
                .outputs
                .iter()
                .filter_map(|o| match o {
                    ImageLocation::Registry(r) => Some(r.clone()),
                    _ => None,
                })
                .collect(),
            base_repo: image.repo,
        })
    }

    /// Writes the built image (`desc` in the store) out with `write` on a
    /// blocking thread, stopped by the build's cancellation: `Cancelled`
    /// when it stopped before putting anything in place.
    async fn write_blocking(
        &self,
        built: &Built,
        fail: impl FnOnce(crate::CopyError) -> BuildError,
        write: impl FnOnce(&Layout, &Descriptor, &dyn Fn() -> bool) -> Result<bool, crate::CopyError> + Send + 'static,
    ) -> Result<(), BuildError> {
        let (store, desc, cancel) = (self.store.layout.clone(), built.manifest.clone(), self.cancel.clone());
        let written = tokio::task::spawn_blocking(move || write(&store, &desc, &|| cancel.is_cancelled()))
            .await
            .map_err(|e| BuildError::Task(e.to_string()))?
            .map_err(fail)?;
        if written { Ok(()) } else { Err(BuildError::Cancelled { problems: Vec::new() }) }
    }

    pub(super) async fn write_outputs(&self, built: &Built) -> Result<(), BuildError> {
        let tags: Vec<Reference> =
            if self.tags.is_empty() { default_name(&self.context).into_iter().collect() } else { self.tags.clone() };
        let cancelled = || BuildError::Cancelled { problems: Vec::new() };
        for out in self.outputs.iter().cloned() {
            if self.cancel.is_cancelled() {
                return Err(cancelled());
            }
            let target = out.to_string();
            self.emit(&Progress::Writing { target: &target });
            let fail = |e: crate::CopyError| BuildError::Output { target: target.clone(), source: Box::new(e) };
            match out {
                ImageLocation::Layout { dir, tag } => {
                    // the location's own tag, else every tag of the build
                    let names: Vec<_> = match tag {
                        Some(t) => vec![(t, None)],
                        None => tags.iter().filter_map(|t| Some((t.tag()?.clone(), Some(t.clone())))).collect(),
                    };
                    // the layers' copies written beside this output, for the first layout output
                    let copies = self.copies.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
                    self.write_blocking(built, fail, move |store, desc, stop| {
                        crate::copy::write_layout(store, desc, &dir, &names, stop, copies)
                    })
                    .await?;
                }
                ImageLocation::DockerArchive { file, name } => {
                    let name = name.or_else(|| tags.first().cloned());
                    let overwrite = self.overwrite;
                    self.write_blocking(built, fail, move |store, desc, stop| {
                        crate::copy::write_archive_unless(store, desc, &file, name.as_ref(), overwrite, stop)
                            .map(|written| written.is_some())
                    })
                    .await?;
                }
                ImageLocation::Registry(to) => {
                    // base layers already in the target registry are mounted, not uploaded
                    let mount_from =
                        built.base_repo.as_ref().filter(|r| r.registry() == Repository::of(&to).registry());
                    let client = self.client_for(None);
                    let push = client.push_from_layout(&self.store.layout, &built.manifest, &to, mount_from);
                    tokio::select! {
                        r = push => { r.map_err(|e| fail(e.into()))?; }
                        () = self.cancel.cancelled() => return Err(cancelled()),
                    }
                }
            }
        }
        Ok(())
    }
}
