//! Property tests: no panics on any input, spans in bounds, print-then-parse
//! gives the same tree, expansion reports only variables it looked up.

use std::collections::BTreeMap;

use dockerfile_parse::dockerignore::DockerIgnore;
use dockerfile_parse::shell::Lexer;
use dockerfile_parse::stages::{BuildOptions, plan};
use dockerfile_parse::{Dockerfile, parse};
use proptest::prelude::*;

/// Dockerfile-shaped text: keywords, flags, quotes, escapes, JSON brackets,
/// heredoc markers, comments, continuations.
fn dockerfile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("FROM ".to_string()),
        Just("RUN ".to_string()),
        Just("run ".to_string()),
        Just("COPY ".to_string()),
        Just("ADD ".to_string()),
        Just("ENV ".to_string()),
        Just("LABEL ".to_string()),
        Just("ARG ".to_string()),
        Just("CMD ".to_string()),
        Just("ENTRYPOINT ".to_string()),
        Just("HEALTHCHECK ".to_string()),
        Just("ONBUILD ".to_string()),
        Just("VOLUME ".to_string()),
        Just("EXPOSE ".to_string()),
        Just("USER ".to_string()),
        Just("WORKDIR ".to_string()),
        Just("SHELL ".to_string()),
        Just("--".to_string()),
        Just("--mount=type=cache,target=/x ".to_string()),
        Just("=".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\\".to_string()),
        Just("\\\n".to_string()),
        Just("`".to_string()),
        Just("# escape=`\n".to_string()),
        Just("# c\n".to_string()),
        Just("#".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-EOF".to_string()),
        Just("\nEOF\n".to_string()),
        Just("\tEOF\n".to_string()),
        Just("$".to_string()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just("AS".to_string()),
        Just("\u{a0}".to_string()),
        Just("\u{b}".to_string()),
        Just("\r".to_string()),
        Just("\u{feff}".to_string()),
        Just("#!sh\n".to_string()),
        Just("# syntax=x\n".to_string()),
        Just("3<<'EOF'".to_string()),
        Just("\"EOF\"".to_string()),
        Just("NONE".to_string()),
        Just("CMD".to_string()),
        "[a-z0-9/.:]{1,6}",
        "[한é♥]{1,2}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

pub(crate) fn check_invariants(src: &str, df: &Dockerfile) {
    for inst in &df.instructions {
        let s = inst.span;
        assert!(s.start <= s.end && s.end <= src.len(), "span {s:?} out of bounds");
        assert!(src.is_char_boundary(s.start) && src.is_char_boundary(s.end));
        assert!(s.line >= 1 && s.line <= s.end_line);
        for h in &inst.heredocs {
            assert!(h.span.start <= h.span.end && h.span.end <= src.len());
        }
    }
    let _ = df.dump();
    for inst in &df.instructions {
        let _ = inst.command();
    }
    let _ = plan(df, &BuildOptions::default());
}

/// Whether the printer can write this tree back. Not representable: an
/// instruction whose keyword is empty (a file ending in a lone continuation).
pub(crate) fn printable(df: &Dockerfile) -> bool {
    df.instructions.iter().all(|i| !i.name.is_empty())
}

/// Parse, check invariants, and when printable check that the printed text
/// parses back to the same tree.
pub(crate) fn check_all(src: &str) {
    if let Ok(df) = parse(src) {
        check_invariants(src, &df);
        if printable(&df) {
            let printed = df.to_string();
            let again = parse(&printed).unwrap_or_else(|e| panic!("printed text does not parse: {e}\n{printed}"));
            assert_eq!(df.without_positions(), again.without_positions(), "printed:\n{printed}");
        }
    }
    let env: BTreeMap<String, String> = BTreeMap::from([("A".into(), "a b".into())]);
    let _ = Lexer::new('\\').expand(src, &env);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(src in any::<String>()) {
        let _serial = crate::heavy();
        if let Ok(df) = parse(&src) {
            check_invariants(&src, &df);
        }
    }

    #[test]
    fn dockerfile_like_text_never_panics_and_round_trips(src in dockerfile_text()) {
        let _serial = crate::heavy();
        if let Ok(df) = parse(&src) {
            check_invariants(&src, &df);
            if printable(&df) {
                let printed = df.to_string();
                let again = parse(&printed);
                prop_assert!(again.is_ok(), "printed text does not parse: {:?}\n{}", again, printed);
                if let Ok(again) = again {
                    prop_assert_eq!(df.without_positions(), again.without_positions(), "printed:\n{}", printed);
                }
            }
        }
    }

    #[test]
    fn expansion_never_panics_and_reports_only_lookups(
        word in "[a-zA-Z_$:{}#%/?+\\-\\\\'\" *.]{0,40}",
        vars in prop::collection::btree_map("[a-zA-Z_]{1,3}", "[a-z *.]{0,5}", 0..6),
    ) {
        for escape in ['\\', '`'] {
            if let Ok(out) = Lexer::new(escape).expand(&word, &vars) {
                for name in &out.matched {
                    prop_assert!(vars.contains_key(name));
                    prop_assert!(word.contains(name.as_str()));
                }
                for name in &out.unmatched {
                    prop_assert!(!vars.contains_key(name));
                    prop_assert!(word.contains(name.as_str()));
                }
            }
        }
    }

    #[test]
    fn dockerignore_never_panics_and_exceptions_only_include(
        text in "([!#/a-c*?\\[\\]^\\\\. \n-]|\\*\\*){0,30}",
        path in "[a-c./]{0,12}",
    ) {
        if let Ok(ignore) = DockerIgnore::parse(&text) {
            let excluded = ignore.is_excluded(&path);
            // Without the exception lines, a path can only become more excluded.
            let no_exceptions: String = text.lines().filter(|l| !l.trim_start().starts_with('!')).collect::<Vec<_>>().join("\n");
            if let Ok(plain) = DockerIgnore::parse(&no_exceptions) {
                prop_assert!(!excluded || plain.is_excluded(&path));
            }
        }
    }

    #[test]
    fn expansion_of_arbitrary_text_never_panics(word in any::<String>()) {
        let env: BTreeMap<String, String> = BTreeMap::new();
        let _ = Lexer::new('\\').expand(&word, &env);
        let _ = Lexer::new('\\').raw_quotes(true).raw_escapes(true).skip_unset(true).expand(&word, &env);
    }
}
