//! Conformance runners over BuildKit's own parser and shell-lexer test data
//! (`$KILN_SHARED_DIR/conformance/dockerfile`, or `$DOCKERFILE_CONFORMANCE_DIR`),
//! plus documentation-derived cases and property tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod docs;
mod parser_cases;
mod props;
mod regressions;
mod scaling;
mod shell_cases;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// Timing tests hold this so the heavy property tests do not run beside them.
static HEAVY: Mutex<()> = Mutex::new(());

pub(crate) fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `rel` inside the corpus. A corpus named by `DOCKERFILE_CONFORMANCE_DIR`
/// may leave parts out (they are skipped with a note); the default corpus
/// must have them all.
pub(crate) fn part(rel: &str) -> Option<PathBuf> {
    let path = corpus()?.join(rel);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("DOCKERFILE_CONFORMANCE_DIR").is_some(),
        "conformance corpus part {} is missing",
        path.display()
    );
    eprintln!("note: {} not in this corpus; skipping", path.display());
    None
}

/// The corpus directory, or `None` (with a note) when it is absent outside CI.
///
/// `DOCKERFILE_CONFORMANCE_DIR` points straight at a corpus; otherwise the
/// corpus is `conformance/dockerfile` under `KILN_SHARED_DIR` (default: the
/// workspace's sibling `shared` folder).
pub(crate) fn corpus() -> Option<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("DOCKERFILE_CONFORMANCE_DIR") {
        PathBuf::from(d)
    } else {
        let shared = std::env::var_os("KILN_SHARED_DIR")
            .map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")), PathBuf::from);
        shared.join("conformance").join("dockerfile")
    };
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "conformance corpus {} is missing and CI is set", dir.display());
    eprintln!("note: conformance corpus {} not found; skipping", dir.display());
    None
}
