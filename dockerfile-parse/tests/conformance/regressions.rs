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

/// The `expand` fuzz target's crashers: each expands (or fails with a
/// typed error) without running away, whatever the lexer options.
#[test]
fn replay_expand_regressions() {
    use dockerfile_parse::shell::{ExpandError, Lexer, MAX_EXPANSION};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand-regressions");
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        let Some((&opts, rest)) = bytes.split_first() else { continue };
        let Ok(text) = std::str::from_utf8(rest) else { continue };
        let (word, value) = text.split_once('\0').unwrap_or((text, "v a l"));
        let lexer = Lexer::new(if opts & 1 == 0 { '\\' } else { '`' })
            .raw_quotes(opts & 2 != 0)
            .raw_escapes(opts & 4 != 0)
            .skip_unset(opts & 8 != 0)
            .skip_quotes(opts & 16 != 0);
        let env = std::collections::BTreeMap::from([("V".to_owned(), value.to_owned())]);
        match lexer.expand(word, &env) {
            Ok(e) => assert!(e.value.len() <= 64 * MAX_EXPANSION, "{}: {} bytes", path.display(), e.value.len()),
            Err(ExpandError::TooLong { .. }) => {}
            Err(e) => panic!("{}: {e}", path.display()),
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
