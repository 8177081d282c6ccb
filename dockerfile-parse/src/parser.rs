//! Dockerfile text to [`Dockerfile`], following BuildKit's
//! `frontend/dockerfile/parser` line by line.

use crate::ast::{Arguments, Directives, Dockerfile, Heredoc, Instruction, KeyValue, Keyword, Span, Warning};
use crate::json::{JsonArray, parse_array};
use crate::shell::{ExpandError, Expansion, Lexer, NoVars};

/// Deepest `ONBUILD ONBUILD ...` nesting the parser builds before failing.
const MAX_ONBUILD_DEPTH: usize = 16;

/// Why a Dockerfile was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// No instruction at all (empty file, only comments).
    #[error("file with no instructions (at {span})")]
    NoInstructions {
        /// The end of the input.
        span: Span,
    },
    /// A parser directive given twice.
    #[error("only one {name} parser directive can be used (at {span})")]
    DuplicateDirective {
        /// The directive name, lowercased.
        name: String,
        /// The repeated directive line.
        span: Span,
    },
    /// `# escape=` with something other than `\` or `` ` ``.
    #[error("invalid escape token {value:?} does not match ` or \\ (at {span})")]
    InvalidEscape {
        /// The value given.
        value: String,
        /// The directive line.
        span: Span,
    },
    /// Exec form with a JSON array holding something other than strings.
    #[error("when using JSON array syntax, arrays must be comprised of strings only: {text:?} (at {span})")]
    JsonNotStrings {
        /// The arguments as written.
        text: String,
        /// The instruction.
        span: Span,
    },
    /// `ENV key` / `LABEL key` with no value.
    #[error("{instruction} must have two arguments: {text:?} (at {span})")]
    MissingValue {
        /// `ENV` or `LABEL`.
        instruction: String,
        /// The arguments as written.
        text: String,
        /// The instruction.
        span: Span,
    },
    /// A word without `=` in `ENV a=b c`.
    #[error("syntax error - can't find = in {word:?}. must be of the form: name=value (at {span})")]
    MissingEquals {
        /// The offending word.
        word: String,
        /// The instruction.
        span: Span,
    },
    /// A heredoc whose delimiter never appears.
    #[error("unterminated heredoc {name:?} (at {span})")]
    UnterminatedHeredoc {
        /// The delimiter that was expected.
        name: String,
        /// The instruction through the end of input.
        span: Span,
    },
    /// A heredoc delimiter word that cannot be processed.
    #[error("invalid heredoc delimiter {word:?} (at {span})")]
    HeredocDelimiter {
        /// The word after `<<`.
        word: String,
        /// The instruction.
        span: Span,
        /// Why.
        #[source]
        source: Box<ExpandError>,
    },
    /// `ONBUILD ONBUILD ...` nested beyond what the parser builds.
    #[error("onbuild nested more than {MAX_ONBUILD_DEPTH} deep (at {span})")]
    OnbuildTooDeep {
        /// The instruction.
        span: Span,
    },
}

impl ParseError {
    /// Where the error is.
    pub fn span(&self) -> Span {
        match self {
            Self::NoInstructions { span }
            | Self::DuplicateDirective { span, .. }
            | Self::InvalidEscape { span, .. }
            | Self::JsonNotStrings { span, .. }
            | Self::MissingValue { span, .. }
            | Self::MissingEquals { span, .. }
            | Self::UnterminatedHeredoc { span, .. }
            | Self::HeredocDelimiter { span, .. }
            | Self::OnbuildTooDeep { span } => *span,
        }
    }
}

/// Parse a Dockerfile.
///
/// # Errors
///
/// [`ParseError`] when BuildKit's parser rejects the text: no instructions,
/// bad or repeated directives, exec-form JSON with non-string elements,
/// `ENV`/`LABEL` syntax errors, unterminated heredocs.
pub fn parse(src: &str) -> Result<Dockerfile, ParseError> {
    Parser::new(src).run()
}

struct Line<'a> {
    /// Byte offset of the line (after a BOM on the first line).
    start: usize,
    /// The line including its line ending.
    text: &'a str,
}

impl Line<'_> {
    /// The line without trailing `\r`/`\n` characters.
    fn body(&self) -> &str {
        self.text.trim_end_matches(['\r', '\n'])
    }
}

struct Lines<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let rest = self.src.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let len = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let start = self.pos;
        let text = rest.get(..len)?;
        self.pos += len;
        Some(Line { start, text })
    }
}

struct DirectiveState {
    done: bool,
    seen: Vec<String>,
    lines: usize,
}

struct Parser<'a> {
    src: &'a str,
    lines: Lines<'a>,
    /// Number of lines consumed so far.
    line_no: usize,
    directives: Directives,
    dstate: DirectiveState,
}

fn is_go_space(c: char) -> bool {
    c.is_whitespace()
}

fn is_comment(line: &str) -> bool {
    line.trim_end_matches(['\r', '\n']).trim_start_matches(is_go_space).starts_with('#')
}

/// `[\t\v\f\r ]`
fn is_token_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Split on runs of `[\t\v\f\r ]`, like Go's `regexp.Split(s, -1)`.
fn split_token_space(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_space = false;
    for c in s.chars() {
        if is_token_space(c) {
            if !in_space {
                out.push(std::mem::take(&mut cur));
            }
            in_space = true;
        } else {
            in_space = false;
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Split once on the first run of `[\t\v\f\r ]`.
fn split_token_space_once(s: &str) -> (&str, Option<&str>) {
    match s.find(is_token_space) {
        Some(i) => {
            let head = s.get(..i).unwrap_or_default();
            let tail = s.get(i..).unwrap_or_default().trim_start_matches(is_token_space);
            (head, Some(tail))
        }
        None => (s, None),
    }
}

/// Go's regexp `\s`: `[\t\n\f\r ]`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// A parser-directive line, `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`:
/// the lowercased name and the value.
fn match_directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start_matches(is_re_space);
    if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let (name, after) = rest.split_at_checked(end)?;
    let raw = after.trim_start_matches(is_re_space).strip_prefix('=')?;
    let value = raw.trim_matches(is_re_space);
    if !value.is_empty() {
        return Some((name.to_ascii_lowercase(), value.to_string()));
    }
    // `(.+?)` needs one character: with only white space after `=`, the
    // regexp gives the last white-space character as the value.
    let last = raw.chars().last()?;
    Some((name.to_ascii_lowercase(), last.to_string()))
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        let pos = if src.starts_with('\u{feff}') { 3 } else { 0 };
        Self {
            src,
            lines: Lines { src, pos },
            line_no: 0,
            directives: Directives::default(),
            dstate: DirectiveState { done: false, seen: Vec::new(), lines: 0 },
        }
    }

    fn line_span(line: &Line<'_>, line_no: usize) -> Span {
        Span::new(line.start, line.start + line.body().len(), line_no, 1, line_no)
    }

    fn possible_directive(&mut self, token: &str, span: Span) -> Result<(), ParseError> {
        self.dstate.lines += 1;
        if self.dstate.done {
            return Ok(());
        }
        if self.dstate.lines == 1 && token.starts_with("#!") {
            return Ok(());
        }
        let Some((name, value)) = match_directive(token) else {
            self.dstate.done = true;
            return Ok(());
        };
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            self.dstate.done = true;
            return Ok(());
        }
        if self.dstate.seen.contains(&name) {
            return Err(ParseError::DuplicateDirective { name, span });
        }
        self.dstate.seen.push(name.clone());
        match name.as_str() {
            "escape" => {
                let esc = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return Err(ParseError::InvalidEscape { value, span }),
                };
                self.directives.escape = esc;
            }
            "syntax" => self.directives.syntax = Some(value),
            _ => self.directives.check = Some(value),
        }
        Ok(())
    }

    /// BuildKit's `processLine`: trim the line ending (and leading white
    /// space), look for a directive, drop a whole-line comment.
    fn process_line<'l>(
        &mut self,
        line: &'l Line<'_>,
        strip_left: bool,
        line_no: usize,
    ) -> Result<&'l str, ParseError> {
        let mut token = line.body();
        if strip_left {
            token = token.trim_start_matches(is_go_space);
        }
        let span = Self::line_span(line, line_no);
        self.possible_directive(token, span)?;
        if token.starts_with('#') {
            return Ok("");
        }
        Ok(token)
    }

    /// Remove a trailing line-continuation escape; `true` when the line ends
    /// the instruction.
    fn trim_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let esc = self.directives.escape;
        let trimmed = line.trim_end_matches([' ', '\t']);
        let Some(before) = trimmed.strip_suffix(esc) else {
            return (line, true);
        };
        if before.is_empty() {
            return ("", false);
        }
        if before.ends_with(esc) {
            return (line, true);
        }
        (before, false)
    }

    fn span_between(&self, start: usize, column: usize, first_line: usize, end: usize) -> Span {
        Span::new(start, end, first_line, column, self.line_no)
    }

    fn run(mut self) -> Result<Dockerfile, ParseError> {
        let mut instructions: Vec<Instruction> = Vec::new();
        let mut warnings = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        while let Some(line) = self.lines.next() {
            let line_no = self.line_no + 1;
            if is_comment(line.text) {
                let body = line.body().trim_start_matches(is_go_space);
                let text = body.get(1..).unwrap_or_default().trim_matches(is_go_space);
                comments.push(text.to_string());
            }
            let processed = self.process_line(&line, true, line_no)?;
            self.line_no = line_no;
            let start_line = line_no;
            let lead = line.body().len() - line.body().trim_start_matches(is_go_space).len();
            let start = line.start + lead;
            let column = line.body().get(..lead).map_or(0, |s| s.chars().count()) + 1;
            let (first, mut eol) = self.trim_continuation(processed);
            if eol && first.is_empty() {
                continue;
            }
            let mut logical = first.to_string();
            let mut end = line.start + line.body().len();
            let mut empty_continuation = false;
            while !eol {
                let Some(next) = self.lines.next() else {
                    break;
                };
                let no = self.line_no + 1;
                let processed = self.process_line(&next, false, no)?;
                self.line_no = no;
                if is_comment(next.text) {
                    continue;
                }
                if processed.trim_start_matches(is_go_space).is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (cont, e) = self.trim_continuation(processed);
                eol = e;
                logical.push_str(cont);
                end = next.start + next.body().len();
            }
            let span = self.span_between(start, column, start_line, end);
            if empty_continuation {
                warnings.push(Warning { message: format!("empty continuation line found in: {logical}"), span });
            }
            let mut inst = self.node_from_line(&logical, span, 0)?;
            inst.comments = std::mem::take(&mut comments);
            let heredoc_host = match &inst.args {
                Arguments::Onbuild(sub) => sub.as_ref(),
                _ => &inst,
            };
            if heredoc_host.keyword.takes_heredocs() && !heredoc_host.args.is_json() && logical.contains("<<") {
                let docs = heredocs_from_line(&logical).map_err(|(word, source)| ParseError::HeredocDelimiter {
                    word,
                    span,
                    source: Box::new(source),
                })?;
                for mut doc in docs {
                    let body_start = self.lines.pos;
                    let body_line = self.line_no + 1;
                    let mut terminated = false;
                    let mut content = String::new();
                    for l in self.lines.by_ref() {
                        self.line_no += 1;
                        let mut candidate = l.body();
                        if doc.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        end = l.start + l.body().len();
                        if candidate == doc.name {
                            terminated = true;
                            break;
                        }
                        content.push_str(l.text);
                    }
                    let doc_span = Span::new(body_start, end.max(body_start), body_line, 1, self.line_no);
                    if !terminated {
                        return Err(ParseError::UnterminatedHeredoc {
                            name: doc.name,
                            span: self.span_between(start, column, start_line, self.src.len()),
                        });
                    }
                    doc.raw_content = content;
                    doc.span = doc_span;
                    inst.heredocs.push(doc);
                }
                inst.span = self.span_between(start, column, start_line, end);
            }
            instructions.push(inst);
        }
        let (Some(first), Some(last)) = (instructions.first(), instructions.last()) else {
            let n = self.src.len();
            return Err(ParseError::NoInstructions {
                span: Span::new(n, n, self.line_no.max(1), 1, self.line_no.max(1)),
            });
        };
        let span = Span::new(first.span.start, last.span.end, first.span.line, first.span.column, last.span.end_line);
        Ok(Dockerfile { directives: self.directives, instructions, warnings, span })
    }

    fn node_from_line(&self, line: &str, span: Span, depth: usize) -> Result<Instruction, ParseError> {
        if depth > MAX_ONBUILD_DEPTH {
            return Err(ParseError::OnbuildTooDeep { span });
        }
        let (cmd, flags, rest) = split_command(line);
        let name = cmd.to_lowercase();
        let keyword = Keyword::from_lowercase(&name);
        let esc = self.directives.escape;
        let args = match keyword {
            Keyword::Add | Keyword::Copy | Keyword::Volume => maybe_json_to_list(rest, span)?,
            Keyword::Cmd | Keyword::Entrypoint | Keyword::Run | Keyword::Shell => maybe_json(rest, span)?,
            Keyword::Arg => words_or_none(parse_words(rest, esc)),
            Keyword::Env | Keyword::Label => name_val(rest, &name, esc, span)?,
            Keyword::Expose | Keyword::From => whitespace_list(rest),
            Keyword::Healthcheck => health(rest, span)?,
            Keyword::Maintainer | Keyword::Stopsignal | Keyword::User | Keyword::Workdir => {
                if rest.is_empty() {
                    Arguments::None
                } else {
                    Arguments::Text(rest.to_string())
                }
            }
            Keyword::Onbuild => {
                if rest.is_empty() {
                    Arguments::None
                } else {
                    Arguments::Onbuild(Box::new(self.node_from_line(rest, span, depth + 1)?))
                }
            }
            Keyword::Unknown => Arguments::None,
        };
        Ok(Instruction {
            name,
            keyword,
            flags,
            args,
            heredocs: Vec::new(),
            original: line.to_string(),
            comments: Vec::new(),
            span,
        })
    }
}

fn words_or_none(words: Vec<String>) -> Arguments {
    if words.is_empty() { Arguments::None } else { Arguments::Words(words) }
}

fn whitespace_list(rest: &str) -> Arguments {
    if rest.is_empty() { Arguments::None } else { Arguments::Words(split_token_space(rest)) }
}

fn maybe_json(rest: &str, span: Span) -> Result<Arguments, ParseError> {
    if rest.is_empty() {
        return Ok(Arguments::None);
    }
    match parse_array(rest) {
        JsonArray::Strings(v) => Ok(Arguments::Json(v)),
        JsonArray::NotStrings => Err(ParseError::JsonNotStrings { text: rest.to_string(), span }),
        JsonArray::Invalid => Ok(Arguments::Text(rest.to_string())),
    }
}

fn maybe_json_to_list(rest: &str, span: Span) -> Result<Arguments, ParseError> {
    match parse_array(rest) {
        JsonArray::Strings(v) => Ok(Arguments::Json(v)),
        JsonArray::NotStrings => Err(ParseError::JsonNotStrings { text: rest.to_string(), span }),
        JsonArray::Invalid => Ok(whitespace_list(rest)),
    }
}

fn health(rest: &str, span: Span) -> Result<Arguments, ParseError> {
    let sep = rest.find(is_go_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Arguments::None);
    }
    let kind = rest.get(..sep).unwrap_or_default();
    let after = rest.get(sep..).unwrap_or_default().trim_start_matches(is_go_space);
    let command = maybe_json(after, span)?;
    Ok(Arguments::Healthcheck { kind: kind.to_string(), command: Box::new(command) })
}

fn name_val(rest: &str, name: &str, esc: char, span: Span) -> Result<Arguments, ParseError> {
    let words = parse_words(rest, esc);
    let Some(first) = words.first() else {
        return Ok(Arguments::None);
    };
    if !first.contains('=') {
        let (key, value) = split_token_space_once(rest);
        let Some(value) = value else {
            return Err(ParseError::MissingValue { instruction: name.to_uppercase(), text: rest.to_string(), span });
        };
        return Ok(Arguments::KeyValues(vec![KeyValue {
            key: key.to_string(),
            value: value.to_string(),
            equals: false,
        }]));
    }
    let mut pairs = Vec::with_capacity(words.len());
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return Err(ParseError::MissingEquals { word, span });
        };
        pairs.push(KeyValue { key: k.to_string(), value: v.to_string(), equals: true });
    }
    Ok(Arguments::KeyValues(pairs))
}

/// Parse one logical line as an instruction, with `escape` as the escape
/// character (what the printer checks its output against).
pub(crate) fn reparse_line(line: &str, escape: char) -> Option<Instruction> {
    let mut parser = Parser::new("");
    parser.directives.escape = escape;
    parser.node_from_line(line, Span::default(), 0).ok()
}

/// BuildKit's `parseWords`: split on white space, keep quotes and escapes.
pub(crate) fn parse_words(rest: &str, esc: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    // Every word is a contiguous slice of `rest` (only an escape character
    // at the very end is dropped), so track its bounds instead of copying
    // character by character.
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let (mut start, mut end) = (0, 0);
    let mut quote = '\0';
    let mut blank_ok = false;
    let push = |words: &mut Vec<String>, start: usize, end: usize| {
        words.push(rest.get(start..end).unwrap_or_default().to_string());
    };
    let mut chars = rest.char_indices();
    while let Some((pos, ch)) = chars.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
            (start, end) = (pos, pos);
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || end > start {
                    push(&mut words, start, end);
                }
                blank_ok = false;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == esc {
                if let Some((p, n)) = chars.next() {
                    end = p + n.len_utf8();
                }
                continue;
            }
            end = pos + ch.len_utf8();
            continue;
        }
        // In quotes.
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == esc && quote != '\'' {
            match chars.next() {
                Some((p, n)) => end = p + n.len_utf8(),
                None => phase = Phase::Word,
            }
            continue;
        }
        end = pos + ch.len_utf8();
    }
    if phase != Phase::Spaces && (blank_ok || end > start) {
        push(&mut words, start, end);
    }
    words
}

/// BuildKit's `splitCommand`: the command word, `--flags`, and the rest.
fn split_command(line: &str) -> (&str, Vec<String>, &str) {
    let trimmed = line.trim_matches(is_go_space);
    let (cmd, rest) = split_token_space_once(trimmed);
    match rest {
        Some(rest) => {
            let (args, flags) = extract_flags(rest);
            (cmd, flags, args.trim_matches(is_go_space))
        }
        None => (cmd, Vec::new(), ""),
    }
}

/// BuildKit's `extractBuilderFlags` (always `\` as escape).
fn extract_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut it = line.char_indices().peekable();
    while let Some((pos, ch)) = it.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            let next_dash = it.peek().is_some_and(|&(_, c)| c == '-');
            if ch != '-' || !next_dash {
                return (line.get(pos..).unwrap_or_default(), words);
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line.get(pos..).unwrap_or_default(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                continue;
            }
            if ch == '\\' {
                match it.next() {
                    Some((_, n)) => word.push(n),
                    None => continue,
                }
                continue;
            }
            word.push(ch);
            continue;
        }
        if ch == quote {
            phase = Phase::Word;
            continue;
        }
        if ch == '\\' {
            match it.next() {
                Some((_, n)) => word.push(n),
                None => phase = Phase::Word,
            }
            continue;
        }
        word.push(ch);
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    ("", words)
}

/// Heredocs named on a line: `<<EOF`, `<<-EOF`, `3<<"EOF"`.
pub(crate) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, (String, ExpandError)> {
    let lexer = Lexer::new('\\').raw_quotes(true).raw_escapes(true).skip_unset(true);
    let Ok(Expansion { words, .. }) = lexer.expand_keeping(line, &NoVars, |w| w.contains("<<")) else {
        return Ok(Vec::new());
    };
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = heredoc_from_word(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Match `^(\d*)<<(-?)([^<]*)$` and build the heredoc.
fn heredoc_from_word(word: &str) -> Result<Option<Heredoc>, (String, ExpandError)> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fd, rest) = word.split_at_checked(digits).unwrap_or(("", word));
    let Some(rest) = rest.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let lexer = Lexer::new('\\').skip_unset(true);
    let words = lexer.expand_words(rest, &NoVars).map_err(|e| (rest.to_string(), e))?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = lexer.raw_quotes(true).expand_words(rest, &NoVars).map_err(|e| (rest.to_string(), e))?;
    let [raw_name] = raw.as_slice() else {
        return Ok(None);
    };
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    Ok(Some(Heredoc {
        name: name.clone(),
        fd: fd.parse().unwrap_or(0),
        expand: quotes(name) == quotes(raw_name),
        chomp,
        raw_content: String::new(),
        span: Span::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Instruction {
        let df = parse(src).unwrap();
        assert_eq!(df.instructions.len(), 1, "{df:?}");
        df.instructions.into_iter().next().unwrap()
    }

    #[test]
    fn flags_and_double_dash() {
        let i = one("COPY --from=a --chown=\"x y\" -- --odd /dst\n");
        assert_eq!(i.flags, vec!["--from=a", "--chown=x y"]);
        assert_eq!(i.args, Arguments::Words(vec!["--odd".into(), "/dst".into()]));
    }

    #[test]
    fn crlf_and_bom() {
        let df = parse("\u{feff}FROM a\r\nRUN x \\\r\n  y\r\n").unwrap();
        assert_eq!(df.instructions.len(), 2);
        assert_eq!(df.instructions[1].args, Arguments::Text("x   y".into()));
        assert_eq!(df.instructions[1].span.line, 2);
        assert_eq!(df.instructions[1].span.end_line, 3);
    }

    #[test]
    fn directives_only_at_top() {
        let df = parse("# syntax=docker/dockerfile:1\n# ESCAPE=`\n# check=skip=all\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '`');
        assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
        let df = parse("# hello\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '\\');
        let df = parse("FROM a\n# escape=`\n").unwrap();
        assert_eq!(df.directives.escape, '\\');
        assert!(matches!(parse("# escape=`\n# escape=\\\nFROM a"), Err(ParseError::DuplicateDirective { .. })));
        assert!(matches!(parse("# escape=x\nFROM a"), Err(ParseError::InvalidEscape { .. })));
        assert!(matches!(parse("# escape=  \nFROM a"), Err(ParseError::InvalidEscape { .. })));
        let df = parse("#\u{b}escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '\\');
        let df = parse("#!/usr/bin/env buildctl\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '`');
    }

    #[test]
    fn heredocs() {
        let df = parse("FROM a\nRUN <<EOF\necho hi\nEOF\nRUN x\n").unwrap();
        let run = &df.instructions[1];
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].name, "EOF");
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[0].content(), "echo hi\n");
        assert_eq!(run.span.end_line, 4);
        assert_eq!(df.instructions[2].span.line, 5);
    }

    #[test]
    fn heredoc_quoted_chomp_several() {
        let src = "COPY <<-'A' 3<<\"B\" /dst/\n\t\tone\n\tA\ntwo\nB\n";
        let i = one(src);
        assert_eq!(i.heredocs.len(), 2);
        assert!(!i.heredocs[0].expand);
        assert!(i.heredocs[0].chomp);
        assert_eq!(i.heredocs[0].content(), "one\n");
        assert_eq!(i.heredocs[1].fd, 3);
        assert!(!i.heredocs[1].expand);
        assert_eq!(i.heredocs[1].content(), "two\n");
    }

    #[test]
    fn heredoc_not_in_json_or_other_instructions() {
        let df = parse("RUN [\"<<EOF\"]\nENV a=<<EOF\n").unwrap();
        assert!(df.instructions.iter().all(|i| i.heredocs.is_empty()));
        assert!(matches!(parse("RUN <<EOF\nx\n"), Err(ParseError::UnterminatedHeredoc { .. })));
    }

    #[test]
    fn onbuild_heredoc() {
        let i = one("ONBUILD RUN <<EOF\nx\nEOF\n");
        assert_eq!(i.heredocs.len(), 1);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse("ENV a"), Err(ParseError::MissingValue { .. })));
        assert!(matches!(parse("ENV a=b c"), Err(ParseError::MissingEquals { .. })));
        assert!(matches!(parse("CMD [1]"), Err(ParseError::JsonNotStrings { .. })));
        assert!(matches!(parse(""), Err(ParseError::NoInstructions { .. })));
        let deep = format!("{}RUN x", "ONBUILD ".repeat(100));
        assert!(matches!(parse(&deep), Err(ParseError::OnbuildTooDeep { .. })));
    }

    #[test]
    fn empty_continuation_warns() {
        let df = parse("RUN a \\\n\n b\n").unwrap();
        assert_eq!(df.warnings.len(), 1);
        assert_eq!(df.instructions[0].args, Arguments::Text("a  b".into()));
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(parse_words(r#"a="1 2" b \"c"#, '\\'), vec![r#"a="1 2""#, "b", r#"\"c"#]);
    }
}
