//! Replays inputs kept in `tests/fuzz-regressions/` (fuzz crashers and
//! property-test counterexamples) through the fuzz target's invariants.

use std::fs;
use std::path::Path;

#[test]
fn replay_fuzz_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        if let Ok(src) = std::str::from_utf8(&bytes) {
            crate::props::check_all(src);
            n += 1;
        }
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
