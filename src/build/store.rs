//! The local content store of builds: blobs in an OCI layout, layers
//! extracted once each (in overlayfs form, ready to stack), and the step
//! cache.
//!
//! ```text
//! <root>/oci/            OCI layout: every blob a build made or pulled
//! <root>/l/<id>/         one extracted layer per blob digest (overlay form)
//! <root>/cache/<key>     step cache records: key -> layer (or none)
//! <root>/tmp/            scratch space on the same file system
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_image::{Descriptor, Digest, Layout};
use serde::{Deserialize, Serialize};

use super::BuildError;

/// A cached step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheRecord {
    /// The layer the step made, with its diff id; `None` for steps without one.
    pub layer: Option<(Descriptor, Digest)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub root: PathBuf,
    pub layout: Layout,
}

fn short(digest: &Digest) -> String {
    digest.encoded().chars().take(24).collect()
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, BuildError> {
        for d in ["l", "cache", "tmp"] {
            fs::create_dir_all(root.join(d)).map_err(BuildError::io("create", root.join(d)))?;
        }
        let layout = Layout::create(root.join("oci")).map_err(|e| BuildError::Layout(Box::new(e)))?;
        Ok(Store { root: root.to_owned(), layout })
    }

    /// Where the layer blob `digest` is (or will be) extracted.
    pub fn layer_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("l").join(short(digest))
    }

    /// A fresh directory on the store's file system, removed when dropped.
    pub fn tempdir(&self, prefix: &str) -> io::Result<tempfile::TempDir> {
        tempfile::Builder::new().prefix(prefix).tempdir_in(self.root.join("tmp"))
    }

    fn cache_path(&self, key: &Digest) -> PathBuf {
        self.root.join("cache").join(key.encoded())
    }

    /// The cached result of the step `key`, when its blobs are still here.
    pub fn cache_get(&self, key: &Digest) -> Option<CacheRecord> {
        let bytes = fs::read(self.cache_path(key)).ok()?;
        let rec: CacheRecord = serde_json::from_slice(&bytes).ok()?;
        match &rec.layer {
            Some((desc, _)) if !self.layout.has_blob(&desc.digest) => None,
            _ => Some(rec),
        }
    }

    /// Records the step `key`'s result (atomically; a failure only loses the cache entry).
    pub fn cache_put(&self, key: &Digest, rec: &CacheRecord) {
        let Ok(bytes) = serde_json::to_vec(rec) else { return };
        let path = self.cache_path(key);
        let Ok(mut tmp) = tempfile::NamedTempFile::new_in(self.root.join("tmp")) else { return };
        if io::Write::write_all(&mut tmp, &bytes).is_ok() {
            let _ = tmp.persist(path);
        }
    }

    /// Moves a finished extraction into place as the layer `digest`'s
    /// directory (another build may have got there first: then keeps theirs).
    pub fn adopt_layer_dir(&self, digest: &Digest, dir: tempfile::TempDir) -> io::Result<PathBuf> {
        let target = self.layer_dir(digest);
        if target.exists() {
            return Ok(target);
        }
        let path = dir.keep();
        match fs::rename(&path, &target) {
            Ok(()) => Ok(target),
            Err(_) if target.exists() => {
                let _ = fs::remove_dir_all(&path);
                Ok(target)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }
}

/// The default store: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("kiln");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("kiln"),
        None => std::env::temp_dir().join("kiln-cache"),
    }
}
