//! BuildKit's AST dump (`parser.Node.Dump`), the format of its `result`
//! test files, and the printer that writes a tree back as a Dockerfile.

use std::fmt::{self, Write as _};

use crate::ast::{Arguments, Dockerfile, Instruction, Keyword};

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x1_0000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`: letters, marks, numbers,
/// punctuation, symbols and the ASCII space. Control, format, private-use,
/// separator (other than U+0020) and noncharacter code points are not
/// printable. Unassigned code points are not detected (no Unicode tables).
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let format_or_private = matches!(u,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        | 0xE000..=0xF8FF | 0xF_0000..=0x10_FFFF);
    let noncharacter = (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE;
    !(format_or_private || noncharacter)
}

fn dump_args(args: &Arguments, out: &mut String) {
    match args {
        Arguments::None => {}
        Arguments::Words(v) | Arguments::Json(v) => {
            for w in v {
                out.push(' ');
                out.push_str(&go_quote(w));
            }
        }
        Arguments::Text(t) => {
            out.push(' ');
            out.push_str(&go_quote(t));
        }
        Arguments::KeyValues(kvs) => {
            for kv in kvs {
                out.push(' ');
                out.push_str(&go_quote(&kv.key));
                out.push(' ');
                out.push_str(&go_quote(&kv.value));
                out.push(' ');
                out.push_str(&go_quote(if kv.equals { "=" } else { "" }));
            }
        }
        Arguments::Healthcheck { kind, command } => {
            out.push(' ');
            out.push_str(&go_quote(kind));
            dump_args(command, out);
        }
        Arguments::Onbuild(sub) => {
            out.push_str(" (");
            out.push_str(&dump_instruction(sub));
            out.push(')');
        }
    }
}

/// One instruction in BuildKit's dump format, without the outer
/// parentheses: `run "echo hi"`.
pub fn dump_instruction(inst: &Instruction) -> String {
    let mut out = inst.name.to_lowercase();
    if !inst.flags.is_empty() {
        out.push_str(" [");
        let quoted: Vec<String> = inst.flags.iter().map(|f| go_quote(f)).collect();
        out.push_str(&quoted.join(" "));
        out.push(']');
    }
    dump_args(&inst.args, &mut out);
    out.trim_matches(char::is_whitespace).to_string()
}

impl Dockerfile {
    /// The tree in BuildKit's dump format: one `(instruction args...)` line
    /// per instruction, exactly what BuildKit's `result` test files hold.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for inst in &self.instructions {
            out.push('(');
            out.push_str(&dump_instruction(inst));
            out.push_str(")\n");
        }
        out
    }
}

fn needs_flag_quotes(flag: &str) -> bool {
    flag.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '`'))
}

fn quote_flag(flag: &str) -> String {
    let mut out = String::from("\"");
    for c in flag.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn json_array(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        for c in item.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

fn args_text(args: &Arguments) -> String {
    match args {
        Arguments::None => String::new(),
        Arguments::Words(v) => v.join(" "),
        Arguments::Json(v) => json_array(v),
        Arguments::Text(t) => t.clone(),
        Arguments::KeyValues(kvs) => kvs
            .iter()
            .map(|kv| if kv.equals { format!("{}={}", kv.key, kv.value) } else { format!("{} {}", kv.key, kv.value) })
            .collect::<Vec<_>>()
            .join(" "),
        Arguments::Healthcheck { kind, command } => {
            let cmd = args_text(command);
            if cmd.is_empty() { kind.clone() } else { format!("{kind} {cmd}") }
        }
        Arguments::Onbuild(sub) => instruction_line(sub),
    }
}

/// One instruction as a single Dockerfile line (no heredoc bodies).
fn instruction_line(inst: &Instruction) -> String {
    // Known keywords are written in uppercase; other names as parsed
    // (lowercase), since case mapping does not always round-trip.
    let mut line = if inst.keyword == Keyword::Unknown { inst.name.clone() } else { inst.keyword.as_str().to_string() };
    for flag in &inst.flags {
        line.push(' ');
        if needs_flag_quotes(flag) {
            // Flags always start with a literal `--`; quote what follows.
            let rest = flag.strip_prefix("--").unwrap_or(flag);
            line.push_str("--");
            line.push_str(&quote_flag(rest));
        } else {
            line.push_str(flag);
        }
    }
    let args = args_text(&inst.args);
    if !args.is_empty() {
        line.push(' ');
        if args.starts_with("--") {
            line.push_str("-- ");
        }
        line.push_str(&args);
    }
    if inst.keyword == Keyword::Unknown && (line.ends_with(['\\', '`']) || line.ends_with(char::is_whitespace)) {
        // BuildKit drops the arguments of unknown instructions; one keeps the
        // line from ending in an escape character (a continuation) or in
        // white space (trimmed away from the name).
        line.push_str(" _");
    }
    line
}

/// Whether `line` would be taken as continuing on the next line.
fn ends_in_continuation(line: &str, escape: char) -> bool {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(before) => before.is_empty() || !before.ends_with(escape),
        None => false,
    }
}

/// Whether `line` parses back to the instruction (positions aside).
fn same_node(inst: &Instruction, line: &str, escape: char) -> bool {
    fn same(a: &Instruction, b: &Instruction) -> bool {
        a.name == b.name
            && a.flags == b.flags
            && match (&a.args, &b.args) {
                (Arguments::Onbuild(x), Arguments::Onbuild(y)) => same(x, y),
                (x, y) => x == y,
            }
    }
    crate::parser::reparse_line(line, escape).is_some_and(|again| same(inst, &again))
}

/// Whether re-parsing `line` would read the heredocs `inst` has.
fn same_heredocs(inst: &Instruction, line: &str) -> bool {
    let host = match &inst.args {
        Arguments::Onbuild(sub) => sub.as_ref(),
        _ => inst,
    };
    if !host.keyword.takes_heredocs() || host.args.is_json() {
        return inst.heredocs.is_empty();
    }
    let Ok(found) = crate::parser::heredocs_from_line(line) else {
        return false;
    };
    found.len() == inst.heredocs.len()
        && found
            .iter()
            .zip(&inst.heredocs)
            .all(|(a, b)| a.name == b.name && a.chomp == b.chomp && a.expand == b.expand && a.fd == b.fd)
}

/// Writes the tree back as a Dockerfile that parses to the same tree
/// (spans, comments and original lines aside): directives first, one line
/// per instruction, heredoc bodies after their instruction.
impl fmt::Display for Dockerfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.directives.syntax {
            writeln!(f, "# syntax={s}")?;
        }
        if self.directives.escape != '\\' {
            writeln!(f, "# escape={}", self.directives.escape)?;
        }
        if let Some(c) = &self.directives.check {
            writeln!(f, "# check={c}")?;
        }
        let mut first_line =
            self.directives.syntax.is_none() && self.directives.check.is_none() && self.directives.escape == '\\';
        for inst in &self.instructions {
            let mut line = instruction_line(inst);
            let faithful = same_heredocs(inst, &line) && same_node(inst, &line, self.directives.escape);
            if !faithful && !inst.original.is_empty() {
                // The rebuilt line would parse differently (text that turns
                // into JSON once re-joined, heredoc detection that depends
                // on the exact line): the line as written is the faithful one.
                line.clone_from(&inst.original);
            }
            if ends_in_continuation(&line, self.directives.escape) {
                // The arguments really end in the escape character (the
                // source had a continuation at the end of the file, or white
                // space other than space and tab after it). A vertical tab is
                // not part of a continuation but is trimmed from the line.
                line.push('\u{b}');
            }
            if first_line && line.starts_with('\u{feff}') {
                // A byte-order mark opening the file is dropped by the parser.
                writeln!(f)?;
            }
            first_line = false;
            writeln!(f, "{line}")?;
            for doc in &inst.heredocs {
                f.write_str(&doc.raw_content)?;
                writeln!(f, "{}", doc.name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a\"b\\c\n\t\u{0}"), r#""a\"b\\c\n\t\x00""#);
        assert_eq!(go_quote("♥ 한국어"), "\"♥ 한국어\"");
        assert_eq!(go_quote("\u{a0}\u{feff}\u{10ffff}"), r#""\u00a0\ufeff\U0010ffff""#);
        assert_eq!(go_quote("\u{7f}\u{85}"), r#""\x7f\u0085""#);
    }

    #[test]
    fn prints_and_reparses() {
        let src = "# escape=`\nFROM a AS b\nRUN --mount=type=cache,target=/x echo `\n  hi\nCMD [\"a\", \"b c\"]\nENV a=\"1 2\" b=3\nENV legacy value here\nHEALTHCHECK --interval=5s CMD curl x\nONBUILD COPY <<EOF /x\nbody\nEOF\nCOPY -- --weird /dst\n";
        let df = crate::parse(src).unwrap();
        let printed = df.to_string();
        let again = crate::parse(&printed).unwrap();
        assert_eq!(df.without_positions(), again.without_positions(), "{printed}");
    }
}
