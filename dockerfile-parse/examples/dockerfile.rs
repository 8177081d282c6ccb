//! Parse a Dockerfile and print its tree.
//!
//! ```text
//! cargo run -p dockerfile-parse --example dockerfile -- FILE [--dump buildkit|json|print]
//! ```
//!
//! `buildkit` (the default) prints BuildKit's AST dump (the format of its
//! parser `result` test files), `json` the tree as JSON, `print` the
//! Dockerfile written back by the printer.

use std::fmt::Write as _;
use std::process::ExitCode;

use dockerfile_parse::{Arguments, Dockerfile, Heredoc, Instruction, Span, parse};

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(","))
}

fn json_span(s: Span) -> String {
    format!(
        "{{\"start\":{},\"end\":{},\"line\":{},\"column\":{},\"end_line\":{}}}",
        s.start, s.end, s.line, s.column, s.end_line
    )
}

fn json_args(a: &Arguments) -> String {
    match a {
        Arguments::Words(v) => format!("{{\"words\":{}}}", json_list(v)),
        Arguments::Json(v) => format!("{{\"json\":{}}}", json_list(v)),
        Arguments::Text(t) => format!("{{\"text\":{}}}", json_str(t)),
        Arguments::KeyValues(kvs) => {
            let items: Vec<String> = kvs
                .iter()
                .map(|kv| {
                    format!(
                        "{{\"key\":{},\"value\":{},\"equals\":{}}}",
                        json_str(&kv.key),
                        json_str(&kv.value),
                        kv.equals
                    )
                })
                .collect();
            format!("{{\"key_values\":[{}]}}", items.join(","))
        }
        Arguments::Healthcheck { kind, command } => {
            format!("{{\"healthcheck\":{{\"kind\":{},\"command\":{}}}}}", json_str(kind), json_args(command))
        }
        Arguments::Onbuild(sub) => format!("{{\"onbuild\":{}}}", json_instruction(sub)),
        _ => "null".to_string(),
    }
}

fn json_heredoc(h: &Heredoc) -> String {
    format!(
        "{{\"name\":{},\"fd\":{},\"expand\":{},\"chomp\":{},\"content\":{},\"span\":{}}}",
        json_str(&h.name),
        h.fd,
        h.expand,
        h.chomp,
        json_str(&h.content()),
        json_span(h.span)
    )
}

fn json_instruction(i: &Instruction) -> String {
    format!(
        "{{\"name\":{},\"flags\":{},\"args\":{},\"heredocs\":[{}],\"span\":{}}}",
        json_str(&i.name),
        json_list(&i.flags),
        json_args(&i.args),
        i.heredocs.iter().map(json_heredoc).collect::<Vec<_>>().join(","),
        json_span(i.span)
    )
}

fn json(df: &Dockerfile) -> String {
    let d = &df.directives;
    let opt = |o: &Option<String>| o.as_deref().map_or_else(|| "null".to_string(), json_str);
    format!(
        "{{\"directives\":{{\"escape\":{},\"syntax\":{},\"check\":{}}},\"instructions\":[\n{}\n]}}",
        json_str(&d.escape.to_string()),
        opt(&d.syntax),
        opt(&d.check),
        df.instructions.iter().map(json_instruction).collect::<Vec<_>>().join(",\n")
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut file = None;
    let mut mode = "buildkit".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--dump" {
            let Some(m) = it.next() else {
                eprintln!("--dump needs buildkit, json or print");
                return ExitCode::from(2);
            };
            mode.clone_from(m);
        } else {
            file = Some(a.clone());
        }
    }
    let Some(file) = file else {
        eprintln!("usage: dockerfile FILE [--dump buildkit|json|print]");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let df = match parse(&text) {
        Ok(df) => df,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match mode.as_str() {
        "buildkit" => print!("{}", df.dump()),
        "json" => println!("{}", json(&df)),
        "print" => print!("{df}"),
        other => {
            eprintln!("unknown dump format {other:?}: use buildkit, json or print");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
