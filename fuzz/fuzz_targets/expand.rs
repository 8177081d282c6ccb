//! Fuzz Dockerfile word expansion (`dockerfile_parse::shell::Lexer`) with
//! invariants that follow from BuildKit's rules, for both escape characters
//! and every lexer option:
//!
//! - text without `$`, quotes or the escape character expands to itself and
//!   splits like `split_whitespace`, looking up no variable;
//! - text with every character escaped expands to the text, as one word (or
//!   to the escaped text itself with raw escapes);
//! - text in single quotes expands to the text (quotes kept with raw quotes);
//! - `"${V}"` and `"$V"` expand to V's value exactly, and unquoted `$V` splits
//!   it on white space, with `V` reported as matched;
//! - on any input: expansion is deterministic, `expand_word`/`expand_words`
//!   agree with `expand`, matched names are set and unmatched ones are not;
//! - never a panic.
//!
//! Input: the first byte picks the escape character and lexer options; the
//! rest is UTF-8 text, split at the first NUL into the word and V's value.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run expand -- -max_total_time=60
//! ```
//!
//! Crashers go to `fuzz/artifacts/expand/`; copy them into
//! `dockerfile-parse/tests/fuzz-regressions/` so the test suite replays them.

#![no_main]

use std::collections::BTreeMap;

use dockerfile_parse::shell::Lexer;
use libfuzzer_sys::fuzz_target;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (word, value) = text.split_once('\0').unwrap_or((text, "v a l"));
    let escape = if opts & 1 == 0 { '\\' } else { '`' };
    let raw_quotes = opts & 2 != 0;
    let raw_escapes = opts & 4 != 0;
    let lexer = Lexer::new(escape)
        .raw_quotes(raw_quotes)
        .raw_escapes(raw_escapes)
        .skip_unset(opts & 8 != 0)
        .skip_quotes(opts & 16 != 0);
    let env = BTreeMap::from([("V".to_owned(), value.to_owned()), ("EMPTY".to_owned(), String::new())]);

    // any input
    let first = lexer.expand(word, &env);
    assert_eq!(first, lexer.expand(word, &env), "deterministic");
    assert_eq!(lexer.expand_word(word, &env), first.as_ref().map(|e| e.value.clone()).map_err(Clone::clone));
    assert_eq!(lexer.expand_words(word, &env), first.as_ref().map(|e| e.words.clone()).map_err(Clone::clone));
    if let Ok(e) = &first {
        for name in &e.matched {
            assert!(env.contains_key(name), "matched {name} is not set");
        }
        for name in &e.unmatched {
            assert!(!env.contains_key(name), "unmatched {name} is set");
        }
    }

    // plain text is itself
    let plain: String = word.chars().filter(|&c| !matches!(c, '$' | '\'' | '"') && c != escape).collect();
    let e = lexer.expand(&plain, &env).expect("plain text expands");
    assert_eq!(e.value, plain);
    assert_eq!(e.words, words(&plain));
    assert!(e.used().is_empty());

    // quoting
    let default = Lexer::new(escape).raw_quotes(raw_quotes).raw_escapes(raw_escapes);
    let escaped: String = word.chars().flat_map(|c| [escape, c]).collect();
    let e = default.expand(&escaped, &env).expect("escaped text expands");
    if raw_escapes {
        assert_eq!(e.value, escaped);
    } else {
        assert_eq!(e.value, word);
        if !word.is_empty() {
            assert_eq!(e.words, [word]);
        }
    }
    assert!(e.used().is_empty());
    let unquoted: String = word.chars().filter(|&c| c != '\'').collect();
    let e = default.expand(&format!("'{unquoted}'"), &env).expect("single-quoted text expands");
    if raw_quotes {
        assert_eq!(e.value, format!("'{unquoted}'"));
    } else {
        assert_eq!(e.value, unquoted);
    }
    assert!(e.used().is_empty());

    // a variable's value, quoted and not
    for form in ["\"${V}\"", "\"$V\""] {
        let e = default.expand(form, &env).expect("a set variable expands");
        if raw_quotes {
            assert_eq!(e.value, format!("\"{value}\""));
        } else {
            assert_eq!(e.value, value);
        }
        assert!(e.matched.contains("V") && e.unmatched.is_empty());
    }
    let e = default.expand("$V", &env).expect("a set variable expands");
    assert_eq!(e.value, value);
    assert_eq!(e.words, words(value));
});
