//! Base images: resolving them (registry, OCI layout, named context,
//! directory), fetching their blobs, and their trees (extracted layers
//! stacked with overlayfs, or flattened).

use super::{
    AnyManifest, ApplyOptions, BTreeMap, BuildContext, BuildError, CacheKey, Ctx, Descriptor, Digest, DockerIgnore,
    HashMap, Image, ImageConfiguration, Layout, Named, OverlayMount, OverlayXattrs, Path, PathBuf, Platform, Progress,
    Raw, Reference, Repository, StepId, Store, View, context, files, overlay_dirs,
};

/// Where a base image's blobs come from until they are in the store.
#[derive(Clone)]
pub(super) enum BlobSource {
    Registry(Repository),
    Layout(Layout),
}

impl Ctx {
    /// The image a `FROM` or `--from` name (not a stage) stands for, for
    /// `platform`: a named context of that name, else a registry image
    /// (manifest and config only). A host path (`oci:DIR`) is refused: only
    /// the invoker names those, as named contexts.
    pub(super) fn base_image(&self, name: &str, platform: &Platform) -> Result<Image, BuildError> {
        if let Some(n) = self.named.get(&context::context_key(name)) {
            return self.named_image(name, n, platform);
        }
        if name.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("oci:")) {
            return Err(BuildError::HostPath { name: name.to_owned() });
        }
        let reference: Reference = name
            .parse()
            .map_err(|e: oci_image::ReferenceError| BuildError::Base { image: name.to_owned(), source: Box::new(e) })?;
        self.memo(format!("registry {reference}\0{platform}"), || self.registry_image(name, &reference, platform))
    }

    /// The image of a named context (resolved once per build and platform).
    pub(super) fn named_image(&self, name: &str, n: &Named, platform: &Platform) -> Result<Image, BuildError> {
        self.memo(format!("named {}\0{platform}", context::context_key(name)), || match n {
            Named::Image(BuildContext::OciLayout { dir, tag, digest }) => {
                self.layout_image(name, dir, tag.as_ref(), digest.as_ref(), platform)
            }
            Named::Image(BuildContext::Image(reference)) => self.registry_image(name, reference, platform),
            Named::Dir { root, ignore } => self.dir_image(name, root, ignore, platform),
            Named::Image(_) => Ok(Image::scratch(platform)),
        })
    }

    /// Each base image is resolved once per build, under `key`.
    fn memo(&self, key: String, resolve: impl FnOnce() -> Result<Image, BuildError>) -> Result<Image, BuildError> {
        if let Some(img) = self.images.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(img);
        }
        let img = resolve()?;
        if let Ok(mut m) = self.images.lock() {
            m.insert(key, img.clone());
        }
        Ok(img)
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
        let base =
            |source: Box<dyn std::error::Error + Send + Sync>| BuildError::Base { image: name.to_owned(), source };
        let layout = Layout::open(dir).map_err(|e| base(Box::new(e)))?;
        let desc = match (tag, digest) {
            (Some(t), _) => {
                let d = layout.resolve(t.as_str()).map_err(|e| base(Box::new(e)))?;
                if digest.is_some_and(|want| *want != d.digest) {
                    return Err(base(format!("tag {t} is {}, not the digest given", d.digest).into()));
                }
                d
            }
            (None, Some(want)) => layout
                .index()
                .map_err(|e| base(Box::new(e)))?
                .manifests
                .into_iter()
                .find(|d| d.digest == *want)
                .ok_or_else(|| base(format!("{want} is not in the layout's index.json").into()))?,
            (None, None) => layout.image(None).map_err(|e| base(Box::new(e)))?,
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
        self.adopt_image(name, &image, config, &BlobSource::Layout(layout))
    }

    /// A registry image for `platform`: manifest and config only.
    fn registry_image(&self, name: &str, reference: &Reference, platform: &Platform) -> Result<Image, BuildError> {
        let client = self.client.clone();
        let platform2 = platform.clone();
        let reference2 = reference.clone();
        let (image, config) = self
            .block_on(async move {
                let reference = reference2;
                let mut m = client.get_manifest(&reference).await?;
                if let AnyManifest::Index(index) = &m {
                    let child = index
                        .value()
                        .manifest_for(&platform2)
                        .cloned()
                        .ok_or_else(|| format!("{reference} has no manifest for {platform2}"))?;
                    m = client.get_manifest(&reference.repository_only().with_digest(child.digest)).await?;
                }
                let AnyManifest::Image(image) = m else {
                    return Err(format!("{reference}: the index names another index, not an image").into());
                };
                let config = client.fetch_small_blob(&Repository::of(&reference), &image.value().config).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((image, config))
            })?
            .map_err(|source: Box<dyn std::error::Error + Send + Sync>| BuildError::Base {
                image: name.to_owned(),
                source,
            })?;
        self.adopt_image(name, &image, config, &BlobSource::Registry(Repository::of(reference)))
    }

    /// Keeps a base image's manifest and config in the store and notes
    /// where its layers are to be fetched from.
    pub(super) fn adopt_image(
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
            key: CacheKey::builder("image").field("manifest", manifest.digest().to_string()).finish().digest().clone(),
            name: name.to_owned(),
            repo: match source {
                BlobSource::Registry(r) => Some(r.clone()),
                BlobSource::Layout(_) => None,
            },
        })
    }

    /// A named directory as a `FROM`: an image of one layer holding its
    /// files (its `.dockerignore` applied), on an empty config.
    pub(super) fn dir_image(
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
        let key = self
            .key("context", &image.key)
            .field("name", name)
            .field("files", files::items_digest(&items, Some(scratch.path()))?.to_string())
            .finish();
        let (layer, _) = self.items_layer(&key, None, &items)?;
        let h = self.history(format!("context {name}"), layer.is_none());
        if let Some((desc, diff_id)) = layer {
            image.layers.push(desc);
            image.config.rootfs.diff_ids.push(diff_id);
        }
        image.config.history.get_or_insert_with(Vec::new).push(h);
        image.key = key.digest().clone();
        Ok(image)
    }

    /// Makes sure the blob `desc` is in the store, fetching it from where its image came from.
    pub(super) fn ensure_blob(&self, desc: &Descriptor, image: &str, step: Option<&StepId>) -> Result<(), BuildError> {
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
                if let Some(step) = step {
                    self.emit(&Progress::Pulling { step, image });
                }
                let client = self.client_for(step);
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
    pub(super) fn layer_dirs(&self, image: &Image, step: Option<&StepId>) -> Result<Vec<PathBuf>, BuildError> {
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
                self.ensure_blob(desc, &image.name, step)?;
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
    pub(crate) fn view(&self, image: &Image, step: Option<&StepId>) -> Result<Option<View>, BuildError> {
        self.view_of(image, false, step)
    }

    /// A view of `image`'s tree (`None` for an image without layers),
    /// `writable` with writes going to a throwaway upper directory (or copy).
    pub(super) fn view_of(
        &self,
        image: &Image,
        writable: bool,
        step: Option<&StepId>,
    ) -> Result<Option<View>, BuildError> {
        if image.layers.is_empty() {
            return Ok(None);
        }
        let dir = self.store.tempdir("v-")?;
        if self.overlay {
            let mut lowers = vec![self.empty_dir()?];
            lowers.extend(self.layer_dirs(image, step)?);
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
        self.flatten(image, dir.path(), step)?;
        Ok(Some(View { mount: None, dir }))
    }

    /// Applies every layer of `image` onto `dir` (no overlayfs here).
    /// Every blob is there before the first is applied; each is checked
    /// while the one below it is applied.
    pub(super) fn flatten(&self, image: &Image, dir: &Path, step: Option<&StepId>) -> Result<(), BuildError> {
        let mut blobs = Vec::with_capacity(image.layers.len());
        for desc in &image.layers {
            self.ensure_blob(desc, &image.name, step)?;
            blobs.push((std::io::BufReader::new(self.store.layout.open_blob(&desc.digest)?), desc));
        }
        layer_diff::apply_blobs(blobs, dir, &ApplyOptions::default())?;
        Ok(())
    }

    pub(super) fn empty_dir(&self) -> Result<PathBuf, BuildError> {
        let d = self.store.root.join("empty");
        std::fs::create_dir_all(&d).map_err(BuildError::io("create", &d))?;
        Ok(d)
    }
}
