//! Cases written from Docker's Dockerfile reference: parser directives,
//! escapes and continuations, heredocs, exec form, environment replacement.

use std::collections::BTreeMap;

use dockerfile_parse::shell::Lexer;
use dockerfile_parse::stages::{BuildOptions, plan};
use dockerfile_parse::{Arguments, ParseError, parse};

fn words(v: &[&str]) -> Arguments {
    Arguments::Words(v.iter().map(|s| (*s).to_string()).collect())
}

// --- Parser directives ---

#[test]
fn directive_forms_are_equivalent() {
    // "Non line-breaking whitespace is permitted in a parser directive."
    for top in ["#escape=`", "# escape =`", "#\tescape= `", "# escape = `", "#\t  eScApE=`"] {
        let df = parse(&format!("{top}\nFROM a\n")).unwrap();
        assert_eq!(df.directives.escape, '`', "{top:?}");
    }
}

#[test]
fn directive_with_line_continuation_is_a_comment() {
    // "Invalid due to line continuation": `# direc \` then `tive=value`.
    let df = parse("# direc \\\ntive=value\nFROM a\n").unwrap();
    assert_eq!(df.instructions[0].name, "tive=value");
}

#[test]
fn directive_twice_is_an_error() {
    let err = parse("# escape=`\n# escape=\\\nFROM a\n").unwrap_err();
    assert!(matches!(err, ParseError::DuplicateDirective { ref name, .. } if name == "escape"), "{err}");
    assert_eq!(err.span().line, 2);
}

#[test]
fn directive_after_instruction_or_comment_or_blank_is_a_comment() {
    assert_eq!(parse("FROM a\n# escape=`\nRUN x `\n").unwrap().directives.escape, '\\');
    assert_eq!(parse("# About my dockerfile\n# escape=`\nFROM a\n").unwrap().directives.escape, '\\');
    assert_eq!(parse("\n# escape=`\nFROM a\n").unwrap().directives.escape, '\\');
    // "Unknown directives are treated as comments" and end the directive block.
    assert_eq!(parse("# unknowndirective=value\n# escape=`\nFROM a\n").unwrap().directives.escape, '\\');
}

#[test]
fn syntax_and_check_directives() {
    let df = parse("# syntax=docker/dockerfile:1\n# check=skip=JSONArgsRecommended;error=true\nFROM a\n").unwrap();
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(df.directives.check.as_deref(), Some("skip=JSONArgsRecommended;error=true"));
    let check = df.directives.check_config().unwrap();
    assert!(check.skips("JSONArgsRecommended") && !check.skips("StageNameCasing"));
    assert!(check.error);
    let df = parse("# check=skip=all\nFROM a\n").unwrap();
    assert!(df.directives.check_config().unwrap().skips("anything"));
    let df = parse("# check=bogus\nFROM a\n").unwrap();
    assert!(df.directives.check_config().is_err());
}

#[test]
fn escape_backtick_windows_example() {
    let df = parse("# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n").unwrap();
    assert_eq!(df.instructions.len(), 3);
    assert_eq!(df.instructions[1].args, words(&["testfile.txt", "c:\\"]));
    assert_eq!(df.instructions[2].args, Arguments::Text("dir c:\\".into()));
    // Without the directive, the trailing backslash continues the line.
    let df = parse("FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n").unwrap();
    assert_eq!(df.instructions.len(), 2);
    assert_eq!(df.instructions[1].args, words(&["testfile.txt", "c:RUN", "dir", "c:"]));
}

#[test]
fn backtick_continuation() {
    let df = parse("# escape=`\nFROM a\nRUN echo a `\n  b\n").unwrap();
    assert_eq!(df.instructions[1].args, Arguments::Text("echo a   b".into()));
}

// --- Shell and exec form ---

#[test]
fn shell_form_continuation() {
    let df = parse("FROM a\nRUN source $HOME/.bashrc && \\\necho $HOME\n").unwrap();
    assert_eq!(df.instructions[1].args, Arguments::Text("source $HOME/.bashrc && echo $HOME".into()));
}

#[test]
fn exec_form_needs_double_quotes_and_escaped_backslashes() {
    let df = parse("RUN [\"c:\\\\windows\\\\system32\\\\tasklist.exe\"]\nRUN ['sh']\n").unwrap();
    assert_eq!(df.instructions[0].args, Arguments::Json(vec!["c:\\windows\\system32\\tasklist.exe".into()]));
    assert_eq!(df.instructions[1].args, Arguments::Text("['sh']".into()));
}

// --- Heredocs ---

#[test]
fn heredoc_run_script() {
    let df = parse("FROM debian\nRUN <<EOF\napt-get update\napt-get install -y curl\nEOF\nCMD x\n").unwrap();
    let run = &df.instructions[1];
    assert_eq!(run.heredocs.len(), 1);
    assert_eq!(run.heredocs[0].content(), "apt-get update\napt-get install -y curl\n");
    assert_eq!((run.span.line, run.span.end_line), (2, 5));
    assert_eq!(df.instructions[2].name, "cmd");
}

#[test]
fn heredoc_with_program_and_shebang() {
    let df = parse("FROM a\nRUN <<EOT bash\n  set -ex\n  apt-get update\nEOT\nRUN <<EOT\n#!/usr/bin/env python\nprint(\"hello world\")\nEOT\n").unwrap();
    assert_eq!(df.instructions[1].args, Arguments::Text("<<EOT bash".into()));
    assert_eq!(df.instructions[1].heredocs[0].content(), "  set -ex\n  apt-get update\n");
    // A `#` line inside a heredoc is content, not a comment.
    assert_eq!(df.instructions[2].heredocs[0].content(), "#!/usr/bin/env python\nprint(\"hello world\")\n");
}

#[test]
fn heredoc_copy_creates_file() {
    let df =
        parse("FROM nginx\nCOPY <<EOF /usr/share/nginx/html/index.html\n(your index page goes here)\nEOF\n").unwrap();
    let copy = &df.instructions[1];
    assert_eq!(copy.args, words(&["<<EOF", "/usr/share/nginx/html/index.html"]));
    assert_eq!(copy.heredocs[0].content(), "(your index page goes here)\n");
}

#[test]
fn several_heredocs_on_one_line() {
    let src = "FROM a\nRUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2\n";
    let df = parse(src).unwrap();
    let docs = &df.instructions[1].heredocs;
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].name.as_str(), docs[0].content().as_str()), ("FILE1", "I am\nfirst\n"));
    assert_eq!((docs[1].name.as_str(), docs[1].content().as_str()), ("FILE2", "I am\nsecond\n"));
}

#[test]
fn heredoc_quoting_controls_expansion() {
    let df = parse("FROM a\nRUN <<EOT\necho $FOO\nEOT\nRUN <<'EOT'\necho $FOO\nEOT\nRUN <<\"EOT\"\necho $FOO\nEOT\n")
        .unwrap();
    assert!(df.instructions[1].heredocs[0].expand);
    assert!(!df.instructions[2].heredocs[0].expand);
    assert!(!df.instructions[3].heredocs[0].expand);
    assert_eq!(df.instructions[3].heredocs[0].name, "EOT");
}

#[test]
fn heredoc_dash_strips_leading_tabs() {
    let df = parse("FROM a\nRUN <<-EOT\n\techo hello\n\t\techo world\n\tEOT\n").unwrap();
    let doc = &df.instructions[1].heredocs[0];
    assert!(doc.chomp);
    assert_eq!(doc.content(), "echo hello\necho world\n");
    assert_eq!(doc.raw_content, "\techo hello\n\t\techo world\n");
    // Without `-` a tab-indented delimiter does not end the heredoc.
    assert!(matches!(parse("RUN <<EOT\nx\n\tEOT\n"), Err(ParseError::UnterminatedHeredoc { .. })));
}

#[test]
fn heredoc_file_descriptor() {
    let df = parse("RUN 3<<EOF cat /dev/fd/3\nhi\nEOF\n").unwrap();
    assert_eq!(df.instructions[0].heredocs[0].fd, 3);
}

// --- Environment replacement ---

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

#[test]
fn environment_replacement_operators() {
    let e = env(&[("string", "foobarbaz"), ("set", "x")]);
    let l = Lexer::new('\\');
    let x = |w: &str| l.expand_word(w, &e).unwrap();
    assert_eq!(x("${string#f*b}"), "arbaz");
    assert_eq!(x("${string##f*b}"), "az");
    assert_eq!(x("${string%a*z}"), "foobarb");
    assert_eq!(x("${string%%a*z}"), "foob");
    assert_eq!(x("${string/ba/fo}"), "fooforbaz");
    assert_eq!(x("${string//ba/fo}"), "fooforfoz");
    assert_eq!(x("${unset:-word}"), "word");
    assert_eq!(x("${set:+word}"), "word");
    assert_eq!(x("${unset:+word}"), "");
    assert!(l.expand_word("${unset?word}", &e).is_err());
    assert!(l.expand_word("${unset:?word}", &e).is_err());
    assert_eq!(x("\\$string"), "$string");
}

#[test]
fn env_on_one_line_sees_values_from_before_the_line() {
    let df = parse("FROM busybox\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n").unwrap();
    let plan = plan(&df, &BuildOptions::default()).unwrap();
    let vars = &plan.stages[0].vars;
    assert_eq!(vars.get("def").map(String::as_str), Some("hello"));
    assert_eq!(vars.get("ghi").map(String::as_str), Some("bye"));
}
