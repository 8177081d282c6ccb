//! The step cache: a step's layer from the cache under its key, or made
//! and recorded there, and the layer writer every step uses.

use super::{BuildError, CacheRecord, Ctx, Descriptor, Digest};

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

    /// A step that may make a layer: taken from the cache under `key`, or
    /// made by `make` and recorded there.
    pub(super) fn layer_step(
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

    pub(super) fn cached(&self, key: &Digest) -> Option<CacheRecord> {
        if self.no_cache {
            return None;
        }
        let rec = self.store.cache_get(key)?;
        self.count(true);
        Some(rec)
    }

    /// Writes a layer through `f` into the store; `None` when `f` wrote no entries.
    pub(super) fn write_layer(
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
}
