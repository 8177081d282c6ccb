//! Replays inputs kept in `tests/fuzz-regressions/` (fuzz crashers and
//! property-test counterexamples) through the fuzz target's invariants.

use std::fs;
use std::path::Path;

/// Every input file (not the README) in `tests/<name>/`, with its path; at least one.
fn inputs(name: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(name);
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        out.push((path, bytes));
    }
    assert!(!out.is_empty(), "no regression inputs in {}", dir.display());
    out
}

#[test]
fn replay_fuzz_regressions() {
    for (_, bytes) in inputs("fuzz-regressions") {
        if let Ok(src) = std::str::from_utf8(&bytes) {
            crate::props::check_all(src);
        }
    }
}

/// The `expand` fuzz target's crashers, all expansion bombs so far: each
/// must stop with [`ExpandError::TooLong`] instead of eating memory.
#[test]
fn replay_expand_regressions() {
    use dockerfile_parse::shell::{ExpandError, Lexer};
    for (path, bytes) in inputs("expand-regressions") {
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
            Ok(e) => panic!("{}: expanded to {} bytes", path.display(), e.value.len()),
            Err(ExpandError::TooLong { .. }) => {}
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}
