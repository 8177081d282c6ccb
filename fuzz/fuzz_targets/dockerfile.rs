//! Fuzz the Dockerfile parser, printer, word expansion and `.dockerignore`
//! matcher, asserting invariants rather than only "no panic":
//!
//! - every span is in bounds and on character boundaries;
//! - the printed Dockerfile parses back to the same tree (positions aside);
//! - expansion reports only variables that occur in the input.
//!
//! Run (nightly, `cargo install cargo-fuzz`):
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run dockerfile -- -max_total_time=60
//! ```
//!
//! Crashers go to `fuzz/artifacts/dockerfile/`; copy them into
//! `dockerfile-parse/tests/fuzz-regressions/` so the test suite replays them.

#![no_main]

use std::collections::BTreeMap;

use dockerfile_parse::dockerignore::DockerIgnore;
use dockerfile_parse::shell::Lexer;
use dockerfile_parse::stages::{BuildOptions, plan};
use dockerfile_parse::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    if let Ok(df) = parse(src) {
        for inst in &df.instructions {
            let s = inst.span;
            assert!(s.start <= s.end && s.end <= src.len());
            assert!(src.is_char_boundary(s.start) && src.is_char_boundary(s.end));
            assert!(s.line >= 1 && s.line <= s.end_line);
            let _ = inst.command();
        }
        let _ = df.dump();
        let _ = plan(&df, &BuildOptions::default());
        if df.instructions.iter().all(|i| !i.name.is_empty()) {
            let printed = df.to_string();
            let again = parse(&printed).expect("printed Dockerfile must parse");
            assert_eq!(df.without_positions(), again.without_positions(), "printed:\n{printed}");
        }
    }
    let env: BTreeMap<String, String> = BTreeMap::from([("A".into(), "a b".into()), ("B".into(), String::new())]);
    if let Ok(out) = Lexer::new('\\').expand(src, &env) {
        for name in out.matched.iter().chain(&out.unmatched) {
            assert!(src.contains(name.as_str()));
        }
    }
    if let Ok(ignore) = DockerIgnore::parse(src) {
        for path in ["a", "a/b", "x/y/z.txt", ".git/config"] {
            let _ = ignore.is_excluded(path);
        }
    }
});
