//! `shell/envVarTest` (`ProcessWord`) and `shell/wordsTest` (`ProcessWords`).

use std::collections::BTreeMap;
use std::fs;

use dockerfile_parse::shell::Lexer;

#[test]
fn env_var_test() {
    let Some(path) = crate::part("shell/envVarTest") else { return };
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let env: BTreeMap<String, String> = [("PWD", "/home"), ("SHELL", "bash"), ("KOREAN", "한국어"), ("NULL", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lexer = Lexer::new('\\');
    let (mut run, mut failures) = (0, Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [platform, input, expected] = fields.as_slice() else {
            panic!("line {}: expected 3 fields: {line:?}", n + 1);
        };
        if !matches!(*platform, "A" | "U") {
            continue;
        }
        run += 1;
        let got = lexer.expand_word(input, &env);
        let ok = match (&got, *expected) {
            (Err(_), "error") => true,
            (Ok(v), e) => v == e,
            (Err(_), _) => false,
        };
        if !ok {
            failures.push(format!("line {}: {input:?}: expected {expected:?}, got {got:?}", n + 1));
        }
    }
    eprintln!("envVarTest: {} of {run} pass", run - failures.len());
    assert!(run > 0, "no envVarTest cases ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn words_test() {
    let Some(path) = crate::part("shell/wordsTest") else { return };
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lexer = Lexer::new('\\');
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let (mut run, mut failures) = (0, Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let entry = rest.trim_start_matches(' ');
            let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
            env.insert(k.to_string(), v.to_string());
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        let [input, expected] = parts.as_slice() else {
            panic!("line {}: expected one '|': {line:?}", n + 1);
        };
        let input = input.trim();
        let expected: Vec<String> = expected.trim_start_matches(' ').split(',').map(str::to_string).collect();
        run += 1;
        let got = lexer.expand_words(input, &env).unwrap_or_else(|_| vec!["error".to_string()]);
        if got != expected {
            failures.push(format!("line {}: {input:?}: expected {expected:?}, got {got:?}", n + 1));
        }
    }
    eprintln!("wordsTest: {} of {run} pass", run - failures.len());
    assert!(run > 0, "no wordsTest cases ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
