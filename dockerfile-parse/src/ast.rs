//! The syntax tree: what BuildKit's parser produces, with spans.

use std::fmt;

/// Where a node is in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Span {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset just past the last character.
    pub end: usize,
    /// First line, 1-based.
    pub line: usize,
    /// Column of the first character on `line`, 1-based, in characters.
    pub column: usize,
    /// Last line, 1-based, inclusive.
    pub end_line: usize,
}

impl Span {
    /// A span covering `start..end` on lines `line..=end_line`.
    pub fn new(start: usize, end: usize, line: usize, column: usize, end_line: usize) -> Self {
        Self { start, end, line, column, end_line }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end_line > self.line {
            write!(f, "lines {}-{}", self.line, self.end_line)
        } else {
            write!(f, "line {}:{}", self.line, self.column)
        }
    }
}

/// The instruction keywords BuildKit knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Keyword {
    /// `ADD`
    Add,
    /// `ARG`
    Arg,
    /// `CMD`
    Cmd,
    /// `COPY`
    Copy,
    /// `ENTRYPOINT`
    Entrypoint,
    /// `ENV`
    Env,
    /// `EXPOSE`
    Expose,
    /// `FROM`
    From,
    /// `HEALTHCHECK`
    Healthcheck,
    /// `LABEL`
    Label,
    /// `MAINTAINER` (deprecated)
    Maintainer,
    /// `ONBUILD`
    Onbuild,
    /// `RUN`
    Run,
    /// `SHELL`
    Shell,
    /// `STOPSIGNAL`
    Stopsignal,
    /// `USER`
    User,
    /// `VOLUME`
    Volume,
    /// `WORKDIR`
    Workdir,
    /// Anything else: BuildKit keeps the instruction and drops its arguments.
    Unknown,
}

impl Keyword {
    /// The keyword for a lowercase instruction name.
    pub fn from_lowercase(name: &str) -> Self {
        match name {
            "add" => Self::Add,
            "arg" => Self::Arg,
            "cmd" => Self::Cmd,
            "copy" => Self::Copy,
            "entrypoint" => Self::Entrypoint,
            "env" => Self::Env,
            "expose" => Self::Expose,
            "from" => Self::From,
            "healthcheck" => Self::Healthcheck,
            "label" => Self::Label,
            "maintainer" => Self::Maintainer,
            "onbuild" => Self::Onbuild,
            "run" => Self::Run,
            "shell" => Self::Shell,
            "stopsignal" => Self::Stopsignal,
            "user" => Self::User,
            "volume" => Self::Volume,
            "workdir" => Self::Workdir,
            _ => Self::Unknown,
        }
    }

    /// The keyword in uppercase, as usually written (`UNKNOWN` for
    /// [`Keyword::Unknown`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Arg => "ARG",
            Self::Cmd => "CMD",
            Self::Copy => "COPY",
            Self::Entrypoint => "ENTRYPOINT",
            Self::Env => "ENV",
            Self::Expose => "EXPOSE",
            Self::From => "FROM",
            Self::Healthcheck => "HEALTHCHECK",
            Self::Label => "LABEL",
            Self::Maintainer => "MAINTAINER",
            Self::Onbuild => "ONBUILD",
            Self::Run => "RUN",
            Self::Shell => "SHELL",
            Self::Stopsignal => "STOPSIGNAL",
            Self::User => "USER",
            Self::Volume => "VOLUME",
            Self::Workdir => "WORKDIR",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// Whether a heredoc (`<<EOF`) in this instruction's shell form is read.
    pub fn takes_heredocs(self) -> bool {
        matches!(self, Self::Add | Self::Copy | Self::Run)
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `key=value` (or legacy `key value`) pair of `ENV` or `LABEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyValue {
    /// The key as written (quotes not removed).
    pub key: String,
    /// The value as written (quotes and escapes kept, expansion not done).
    pub value: String,
    /// `true` for `key=value`, `false` for the legacy `ENV key value`.
    pub equals: bool,
}

/// The arguments of an instruction, in BuildKit's shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arguments {
    /// No arguments.
    None,
    /// White-space separated words (`FROM`, `EXPOSE`, shell-form
    /// `COPY`/`ADD`/`VOLUME`), or shell-style words with quotes kept (`ARG`).
    Words(Vec<String>),
    /// The exec (JSON array) form.
    Json(Vec<String>),
    /// The rest of the line as written (shell-form `RUN`/`CMD`/`ENTRYPOINT`/
    /// `SHELL`, `USER`, `WORKDIR`, `STOPSIGNAL`, `MAINTAINER`).
    Text(String),
    /// `ENV` / `LABEL` pairs.
    KeyValues(Vec<KeyValue>),
    /// `HEALTHCHECK <kind> <command>`.
    Healthcheck {
        /// `CMD`, `NONE` or what was written.
        kind: String,
        /// [`Arguments::None`], [`Arguments::Json`] or [`Arguments::Text`].
        command: Box<Arguments>,
    },
    /// `ONBUILD <instruction>`.
    Onbuild(Box<Instruction>),
}

impl Arguments {
    /// Whether the arguments are in exec (JSON) form.
    pub fn is_json(&self) -> bool {
        match self {
            Self::Json(_) => true,
            Self::Healthcheck { command, .. } => command.is_json(),
            _ => false,
        }
    }
}

/// A heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The file descriptor before `<<` (`0` when none was written).
    pub fd: u32,
    /// Whether variables in the body are expanded (delimiter not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and delimiter line.
    pub chomp: bool,
    /// The body as read: every line with its line ending, tabs not stripped.
    pub raw_content: String,
    /// Where the body and the delimiter line are (not serialized: a
    /// heredoc moved to another line is the same heredoc).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub span: Span,
}

impl Heredoc {
    /// The body, with leading tabs removed from every line for `<<-`.
    pub fn content(&self) -> String {
        if !self.chomp {
            return self.raw_content.clone();
        }
        self.raw_content.split_inclusive('\n').map(|l| l.trim_start_matches('\t')).collect()
    }
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Instruction {
    /// The instruction name, lowercased (`run`).
    pub name: String,
    /// The keyword it names.
    pub keyword: Keyword,
    /// `--flag[=value]` words before the arguments, quotes removed.
    pub flags: Vec<String>,
    /// The arguments.
    pub args: Arguments,
    /// Heredoc bodies read after the line, in order.
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined) as BuildKit sees it.
    pub original: String,
    /// Comment lines right before the instruction, `#` and spaces removed.
    pub comments: Vec<String>,
    /// Where it is: the first character through the end of the last line
    /// (heredoc delimiters included). For an `ONBUILD` sub-instruction, the
    /// span of the `ONBUILD` line.
    pub span: Span,
}

/// The parser directives found at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Directives {
    /// The escape character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# syntax=` value.
    pub syntax: Option<String>,
    /// `# check=` value, as written.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Self { escape: '\\', syntax: None, check: None }
    }
}

impl Directives {
    /// The `# check=` directive parsed (defaults when absent).
    ///
    /// # Errors
    ///
    /// [`CheckError`] for a part that is not `skip=`, `error=` or
    /// `experimental=`, or an `error=` that is not a boolean.
    pub fn check_config(&self) -> Result<CheckConfig, CheckError> {
        self.check.as_deref().map_or_else(|| Ok(CheckConfig::default()), CheckConfig::parse)
    }
}

/// The `# check=skip=A,B;error=true;experimental=C` directive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckConfig {
    /// Rules not to run (`all` skips every rule).
    pub skip: Vec<String>,
    /// Whether rule violations fail the build.
    pub error: bool,
    /// Experimental rules to enable (`all` for every one).
    pub experimental: Vec<String>,
}

/// A `# check=` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid check directive {value:?}: {reason}")]
#[non_exhaustive]
pub struct CheckError {
    /// The directive value.
    pub value: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl CheckConfig {
    /// Parse a `check` directive value.
    ///
    /// # Errors
    ///
    /// As [`Directives::check_config`].
    pub fn parse(value: &str) -> Result<Self, CheckError> {
        let err = |reason| CheckError { value: value.to_string(), reason };
        let list = |v: &str| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        let mut out = Self::default();
        for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(err("expected key=value parts separated by ';'"));
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "skip" => out.skip = list(v),
                "experimental" => out.experimental = list(v),
                "error" => {
                    out.error = match v.trim().to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(err("error must be true or false")),
                    };
                }
                _ => return Err(err("unknown key: expected skip, error or experimental")),
            }
        }
        Ok(out)
    }

    /// Whether `rule` is skipped.
    pub fn skips(&self, rule: &str) -> bool {
        self.skip.iter().any(|s| s == "all" || s.eq_ignore_ascii_case(rule))
    }
}

/// A warning the parser reports without failing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Warning {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dockerfile {
    /// Parser directives.
    pub directives: Directives,
    /// Instructions in source order.
    pub instructions: Vec<Instruction>,
    /// Non-fatal findings (empty continuation lines).
    pub warnings: Vec<Warning>,
    /// Span of all instructions (first line of the first through the last
    /// line of the last).
    pub span: Span,
}

impl Dockerfile {
    /// The same tree with spans, original lines, comments and warnings
    /// cleared: what two parses of equivalent text share.
    #[must_use]
    pub fn without_positions(&self) -> Self {
        fn strip(i: &Instruction) -> Instruction {
            let mut i = i.clone();
            i.span = Span::default();
            i.original.clear();
            i.comments.clear();
            for h in &mut i.heredocs {
                h.span = Span::default();
            }
            if let Arguments::Onbuild(sub) = &i.args {
                i.args = Arguments::Onbuild(Box::new(strip(sub)));
            }
            i
        }
        Self {
            directives: self.directives.clone(),
            instructions: self.instructions.iter().map(strip).collect(),
            warnings: Vec::new(),
            span: Span::default(),
        }
    }
}
