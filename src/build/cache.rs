//! The step cache: what a step's result is filed under ([`CacheKey`]),
//! where results are kept ([`StepCache`]; the local store by default), a
//! step's layer from the cache or made and recorded there, and the layer
//! writer every step uses.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{BuildError, Ctx, Descriptor, Digest, Progress, StepId};

/// The key of a step's result in a [`StepCache`]: a digest of a defined,
/// versioned byte encoding of the step's inputs.
///
/// # The key encoding (version 1)
///
/// A [`CacheKey`] is the SHA-256 of a byte string that names every input of
/// the step, so that a change to any of them gives another key:
///
/// ```text
/// "kiln-cache-key" 0x00 VERSION (u32, big-endian)
/// then, for every field in the order the step kind defines:
///   NAME (ASCII, no NUL) 0x00 LENGTH (u64, big-endian) VALUE (LENGTH bytes)
/// ```
///
/// The first field is always `kind` (`step`, `image`, `scratch`,
/// `context`). A step's fields are its parent's key (`parent`, the key of
/// everything below it), the build settings every layer depends on
/// (`setting`, one field each: `epoch=`, `compression=`, `level=`,
/// `engine=` (the compressor behind the level, versioned),
/// `manifest=`), the instruction as the
/// history records it (`instruction`), the instruction with its variables
/// expanded (`command`, as the JSON of
/// [`dockerfile_parse::command::Command`], where a heredoc is its body, not
/// its place in the file), and what the instruction kind reads besides:
/// `RUN` the container config (`config`, its JSON), the build arguments in
/// scope (`arg`, one field each, `NAME=value`, sorted) and its bind
/// mounts' sources (`mount`, one field each); `COPY`/`ADD` where the files
/// come from (`from`) and a digest of their paths, metadata and identity
/// (`files`); `WORKDIR` the path made (`path`).
/// A change to this encoding raises [`CacheKey::VERSION`], so that no key
/// of one version can equal a key of another.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    digest: Digest,
    encoding: Vec<u8>,
}

impl CacheKey {
    /// The version of the encoding.
    pub const VERSION: u32 = 1;

    /// A key of `kind`, its fields to follow.
    pub(crate) fn builder(kind: &str) -> KeyBuilder {
        let mut bytes = b"kiln-cache-key\0".to_vec();
        bytes.extend_from_slice(&Self::VERSION.to_be_bytes());
        KeyBuilder(bytes).field("kind", kind)
    }

    /// The key: the SHA-256 of [`CacheKey::encoding`].
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The encoded inputs.
    pub fn encoding(&self) -> &[u8] {
        &self.encoding
    }

    /// The fields of the encoding, by name, in order (`None` when the
    /// bytes are not a key of this version). Two keys' fields show which
    /// input of a step changed.
    pub fn fields(&self) -> Option<Vec<(&str, &[u8])>> {
        let mut rest = self.encoding.strip_prefix(b"kiln-cache-key\0".as_slice())?;
        let (version, tail) = rest.split_first_chunk::<4>()?;
        if u32::from_be_bytes(*version) != Self::VERSION {
            return None;
        }
        rest = tail;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let nul = rest.iter().position(|b| *b == 0)?;
            let name = std::str::from_utf8(rest.get(..nul)?).ok()?;
            let (len, tail) = rest.get(nul + 1..)?.split_first_chunk::<8>()?;
            let len = usize::try_from(u64::from_be_bytes(*len)).ok()?;
            out.push((name, tail.get(..len)?));
            rest = tail.get(len..)?;
        }
        Some(out)
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({})", self.digest)
    }
}

/// Builds a [`CacheKey`] field by field.
#[must_use]
pub(crate) struct KeyBuilder(Vec<u8>);

impl KeyBuilder {
    /// Appends the field `name` (ASCII, no NUL) with `value`.
    pub(crate) fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> KeyBuilder {
        debug_assert!(name.is_ascii() && !name.contains('\0'));
        let value = value.as_ref();
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.0.extend_from_slice(&(value.len() as u64).to_be_bytes());
        self.0.extend_from_slice(value);
        self
    }

    /// Appends the fields `name` of every value, in order.
    pub(crate) fn fields<V: AsRef<[u8]>>(self, name: &str, values: impl IntoIterator<Item = V>) -> KeyBuilder {
        values.into_iter().fold(self, |k, v| k.field(name, v))
    }

    pub(crate) fn finish(self) -> CacheKey {
        CacheKey { digest: Digest::sha256(&self.0), encoding: self.0 }
    }
}

/// A layer a step made, as a [`StepCache`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CachedLayer {
    /// The compressed blob in the content store.
    pub blob: Descriptor,
    /// The digest of the uncompressed tar (the config's diff id).
    pub diff_id: Digest,
}

/// A step's result, as a [`StepCache`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepRecord {
    /// The layer the step made; `None` for a step that changed no file.
    pub layer: Option<CachedLayer>,
}

/// Where a build files its steps' results, so that a build of the same
/// inputs takes them instead of running the steps again.
///
/// The layers themselves stay in the build's content store
/// ([`Build::cache_dir`](super::Build::cache_dir)): a record whose blob is
/// gone from there is a miss ([`MissReason::BlobMissing`]). The default
/// keeps records in the content store's `cache/` directory; an embedder
/// may keep them anywhere ([`Build::step_cache`](super::Build::step_cache)).
pub trait StepCache: Send + Sync {
    /// The record filed under `key`, if any. A record that cannot be read
    /// is a miss, not an error.
    fn get(&self, key: &CacheKey) -> Option<StepRecord>;

    /// Files `record` under `key`. A failure only loses the record.
    fn put(&self, key: &CacheKey, record: &StepRecord);
}

/// A shared cache is a cache: an embedder keeps its handle to look inside.
impl<T: StepCache + ?Sized> StepCache for std::sync::Arc<T> {
    fn get(&self, key: &CacheKey) -> Option<StepRecord> {
        (**self).get(key)
    }

    fn put(&self, key: &CacheKey, record: &StepRecord) {
        (**self).put(key, record);
    }
}

/// Why a step was not taken from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissReason {
    /// The build runs every step ([`Build::no_cache`](super::Build::no_cache)).
    Disabled,
    /// Nothing is filed under the step's key: an input changed (the
    /// instruction, a file it reads, a step below it, a build setting) or
    /// the step never ran.
    NotFound,
    /// A record is filed, but its layer is gone from the content store.
    BlobMissing {
        /// The missing layer.
        digest: Digest,
    },
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissReason::Disabled => f.write_str("the cache is disabled"),
            MissReason::NotFound => f.write_str("no result for these inputs"),
            MissReason::BlobMissing { digest } => write!(f, "layer {digest} is gone from the store"),
        }
    }
}

/// A step as it runs: reports its start, a cache miss and its end.
pub(super) struct StepRun<'a> {
    ctx: &'a Ctx,
    pub(super) id: StepId,
    instruction: String,
    started: Instant,
}

impl<'a> StepRun<'a> {
    pub(super) fn start(ctx: &'a Ctx, id: StepId, instruction: String) -> StepRun<'a> {
        ctx.emit(&Progress::StepStarted { step: &id, instruction: &instruction });
        StepRun { ctx, id, instruction, started: Instant::now() }
    }

    fn miss(&self, reason: &MissReason) {
        self.ctx.emit(&Progress::CacheMiss { step: &self.id, reason });
    }

    pub(super) fn finish(self, cached: bool, layer: Option<&Descriptor>) {
        let duration: Duration = self.started.elapsed();
        self.ctx.emit(&Progress::StepFinished {
            step: &self.id,
            instruction: &self.instruction,
            cached,
            duration,
            layer,
        });
    }
}

/// A layer step's result: the layer (with its diff id) if the step made
/// one, and whether it came from the cache.
pub(super) type LayerResult = (Option<(Descriptor, Digest)>, bool);

impl Ctx {
    pub(super) fn count(&self, cached: bool) {
        if let Ok(mut c) = self.counts.lock() {
            if cached {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }

    /// A key of `kind` for a step of this build: the build's settings first.
    pub(super) fn key(&self, kind: &str, parent: &Digest) -> KeyBuilder {
        CacheKey::builder(kind).field("parent", parent.to_string()).fields("setting", &self.settings)
    }

    /// A step that may make a layer: taken from the cache under `key`, or
    /// made by `make` and recorded there.
    pub(super) fn layer_step(
        &self,
        key: &CacheKey,
        step: Option<&StepRun<'_>>,
        make: impl FnOnce() -> Result<Option<(Descriptor, Digest)>, BuildError>,
    ) -> Result<LayerResult, BuildError> {
        match self.lookup(key) {
            Ok(rec) => {
                self.count(true);
                return Ok((rec.layer.map(|l| (l.blob, l.diff_id)), true));
            }
            Err(reason) => {
                if let Some(s) = step {
                    s.miss(&reason);
                }
            }
        }
        let layer = make()?;
        let record = StepRecord { layer: layer.clone().map(|(blob, diff_id)| CachedLayer { blob, diff_id }) };
        self.cache.put(key, &record);
        self.count(false);
        Ok((layer, false))
    }

    fn lookup(&self, key: &CacheKey) -> Result<StepRecord, MissReason> {
        if self.no_cache {
            return Err(MissReason::Disabled);
        }
        let rec = self.cache.get(key).ok_or(MissReason::NotFound)?;
        match &rec.layer {
            Some(l) if !self.store.layout.has_blob(&l.blob.digest) => {
                Err(MissReason::BlobMissing { digest: l.blob.digest.clone() })
            }
            _ => Ok(rec),
        }
    }

    /// Writes a layer of `stage` through `f` into the store; `None` when
    /// `f` wrote no entries. A layer of the image's stages is also written
    /// into [`Ctx::copy_dir`] in the same pass, for the output.
    pub(super) fn write_layer(
        &self,
        stage: Option<usize>,
        f: impl FnOnce(&mut layer_diff::LayerWriter<oci_image::UnhashedBlobWriter>) -> Result<usize, BuildError>,
    ) -> Result<Option<(Descriptor, Digest)>, BuildError> {
        // the layer pipeline hashes the blob in the pass that makes it: the
        // store takes that digest instead of hashing a second time
        let mut blob = self.store.layout.dangerous_unhashed_blob_writer()?;
        if let Some(dir) = &self.copy_dir
            && stage.is_some_and(|s| self.image_stages.contains(&s))
        {
            blob.copy_into(dir);
        }
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
        let (_, copy) = blob.dangerous_finish_with_copy(&info.digest)?;
        if let Some(copy) = copy
            && let Ok(mut copies) = self.copies.lock()
        {
            copies.insert(info.digest.clone(), copy);
        }
        Ok(Some((info.descriptor(), info.diff_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::CacheKey;

    #[test]
    fn fields_round_trip_and_any_change_gives_another_key() {
        let a = CacheKey::builder("step").field("parent", "p").fields("arg", ["A=1", "B="]).finish();
        let fields = a.fields().expect("fields");
        let want: Vec<(&str, &[u8])> = vec![("kind", b"step"), ("parent", b"p"), ("arg", b"A=1"), ("arg", b"B=")];
        assert_eq!(fields, want);
        // field boundaries are part of the key: moving a byte between fields changes it
        let b = CacheKey::builder("step").field("parent", "p").fields("arg", ["A=1B", "="]).finish();
        assert_ne!(a.digest(), b.digest());
        let c = CacheKey::builder("step").field("parent", "p").fields("arg", ["A=1", "B="]).finish();
        assert_eq!(a, c);
        assert_eq!(a.encoding().get(..15), Some(b"kiln-cache-key\0".as_slice()));
        assert_eq!(a.encoding().get(15..19), Some(CacheKey::VERSION.to_be_bytes().as_slice()));
    }

    #[test]
    fn another_version_has_no_fields() {
        let a = CacheKey::builder("step").finish();
        let mut bytes = a.encoding().to_vec();
        if let Some(v) = bytes.get_mut(18) {
            *v ^= 0xff;
        }
        let other = CacheKey { digest: a.digest().clone(), encoding: bytes };
        assert_eq!(other.fields(), None);
    }
}
