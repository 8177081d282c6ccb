//! `parser/testfiles`, `parser/testfiles-negative`, `parser/testfile-line`.

use std::fs;
use std::path::Path;

use dockerfile_parse::parse;

fn case_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn read(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()))
}

#[test]
fn testfiles_dump_matches_result() {
    let Some(dir) = crate::part("parser/testfiles") else { return };
    let dirs = case_dirs(&dir);
    assert!(!dirs.is_empty(), "no parser cases found");
    let mut failures = Vec::new();
    for dir in &dirs {
        let src = read(&dir.join("Dockerfile"));
        let expected = read(&dir.join("result")).replace("\r\n", "\n");
        match parse(&src) {
            Ok(df) => {
                let got = df.dump();
                if got != expected {
                    failures.push(format!("{}:\n--- expected\n{expected}--- got\n{got}", dir.display()));
                }
            }
            Err(e) => failures.push(format!("{}: parse failed: {e}", dir.display())),
        }
    }
    eprintln!("parser testfiles: {} of {} pass", dirs.len() - failures.len(), dirs.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn testfiles_print_then_parse_round_trips() {
    let Some(dir) = crate::part("parser/testfiles") else { return };
    for dir in case_dirs(&dir) {
        let df = parse(&read(&dir.join("Dockerfile"))).unwrap();
        let printed = df.to_string();
        let again = parse(&printed).unwrap_or_else(|e| panic!("{}: reparse: {e}\n{printed}", dir.display()));
        assert_eq!(df.without_positions(), again.without_positions(), "{}", dir.display());
    }
}

#[test]
fn testfiles_negative_are_rejected() {
    let Some(dir) = crate::part("parser/testfiles-negative") else { return };
    let dirs = case_dirs(&dir);
    assert!(!dirs.is_empty(), "no negative cases found");
    for dir in &dirs {
        let src = read(&dir.join("Dockerfile"));
        let res = parse(&src);
        assert!(res.is_err(), "{} parsed: {:?}", dir.display(), res);
    }
    eprintln!("parser testfiles-negative: {} rejected", dirs.len());
}

#[test]
fn testfile_line_numbers() {
    let Some(path) = crate::part("parser/testfile-line/Dockerfile") else { return };
    let src = read(&path);
    let df = parse(&src).unwrap();
    assert_eq!((df.span.line, df.span.end_line), (5, 31));
    let lines: Vec<(usize, usize)> = df.instructions.iter().map(|i| (i.span.line, i.span.end_line)).collect();
    assert_eq!(lines, vec![(5, 5), (11, 12), (17, 31)]);
    for i in &df.instructions {
        assert!(i.span.start <= i.span.end && i.span.end <= src.len());
    }
}
