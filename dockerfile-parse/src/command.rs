//! Typed commands: an [`Instruction`] checked and split into its parts the
//! way BuildKit's `instructions` package does (flags validated, `FROM ... AS`
//! split, `RUN --mount` parsed). Values are not expanded here; see
//! [`crate::stages`] and [`crate::shell`].

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ast::{Arguments, Heredoc, Instruction, Keyword, Span};
use crate::shell::{ExpandError, Lexer, Lookup};

/// Why an instruction is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// A `--flag` the instruction does not take.
    #[error("unknown flag {flag:?} for {instruction} (at {span})")]
    UnknownFlag {
        /// The instruction.
        instruction: Keyword,
        /// The flag word.
        flag: String,
        /// The instruction's span.
        span: Span,
    },
    /// A flag with a bad value (missing, not a boolean, not a duration,
    /// given twice, unknown network mode, ...).
    #[error("invalid value {value:?} for flag --{flag} of {instruction}: {reason} (at {span})")]
    FlagValue {
        /// The instruction.
        instruction: Keyword,
        /// The flag name without `--`.
        flag: String,
        /// The value given.
        value: String,
        /// What was expected.
        reason: &'static str,
        /// The instruction's span.
        span: Span,
    },
    /// Too few or malformed arguments.
    #[error("{instruction} {expected}, got {got:?} (at {span})")]
    Arguments {
        /// The instruction.
        instruction: Keyword,
        /// What was expected.
        expected: &'static str,
        /// The arguments as written.
        got: String,
        /// The instruction's span.
        span: Span,
    },
    /// An instruction name BuildKit does not know.
    #[error("unknown instruction: {} (at {span})", name.to_uppercase())]
    UnknownInstruction {
        /// The name as written.
        name: String,
        /// The instruction's span.
        span: Span,
    },
    /// `FROM x AS <name>` with a name BuildKit rejects.
    #[error("invalid name for build stage: {name:?}, name can't start with a number or contain symbols (at {span})")]
    StageName {
        /// The name.
        name: String,
        /// The instruction's span.
        span: Span,
    },
    /// `RUN --mount=...` that does not parse.
    #[error("invalid mount {value:?}: {reason} (at {span})")]
    Mount {
        /// The flag value.
        value: String,
        /// What is wrong.
        reason: &'static str,
        /// The instruction's span.
        span: Span,
    },
    /// `ONBUILD ONBUILD`, `ONBUILD FROM`, `ONBUILD MAINTAINER`.
    #[error("{trigger} isn't allowed as an onbuild trigger (at {span})")]
    OnbuildTrigger {
        /// The nested instruction.
        trigger: String,
        /// The instruction's span.
        span: Span,
    },
}

/// Shell form or exec (JSON) form.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum CommandLine {
    /// Shell form: run through the stage's `SHELL`.
    Shell(String),
    /// Exec form.
    Exec(Vec<String>),
}

/// `FROM [--platform=p] image [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct From {
    /// The image (or stage name) as written, not expanded.
    pub image: String,
    /// The stage name, lowercased.
    pub name: Option<String>,
    /// `--platform`, not expanded.
    pub platform: Option<String>,
}

/// `RUN --mount=type=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum MountType {
    /// `type=bind` (the default).
    Bind,
    /// `type=cache`.
    Cache,
    /// `type=tmpfs`.
    Tmpfs,
    /// `type=secret`.
    Secret,
    /// `type=ssh`.
    Ssh,
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Sharing {
    /// `shared` (the default).
    Shared,
    /// `private`.
    Private,
    /// `locked`.
    Locked,
}

/// One `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Mount {
    /// The mount type.
    pub kind: MountType,
    /// `source=` / `src=`.
    pub source: Option<String>,
    /// `target=` / `dst=` / `destination=`.
    pub target: Option<String>,
    /// `from=`: a stage or image.
    pub from: Option<String>,
    /// `readonly` / `ro` (or not `rw`). Default: read-only for bind mounts.
    pub readonly: bool,
    /// `id=` (cache, secret, ssh).
    pub id: Option<String>,
    /// `sharing=` (cache).
    pub sharing: Sharing,
    /// `mode=`, octal.
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u64>,
    /// `gid=`.
    pub gid: Option<u64>,
    /// `required=` (secret, ssh).
    pub required: bool,
    /// `size=` (tmpfs), bytes as written.
    pub size: Option<String>,
    /// `env=` (secret).
    pub env: Option<String>,
}

/// `RUN [--mount ...] [--network=m] [--security=s] cmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Run {
    /// The command.
    pub command: CommandLine,
    /// Heredoc bodies (the command reads them).
    pub heredocs: Vec<Heredoc>,
    /// `--mount` flags.
    pub mounts: Vec<Mount>,
    /// `--network`: `default`, `none` or `host`.
    pub network: Option<String>,
    /// `--security`: `sandbox` or `insecure`.
    pub security: Option<String>,
}

/// `COPY` or `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Copy {
    /// Sources as written (heredoc sources appear as `<<NAME`).
    pub sources: Vec<String>,
    /// Destination as written.
    pub dest: String,
    /// Heredoc bodies used as sources.
    pub heredocs: Vec<Heredoc>,
    /// `--from` (COPY only).
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents` (COPY only).
    pub parents: bool,
    /// `--exclude`, repeatable.
    pub exclude: Vec<String>,
    /// `--checksum` (ADD only).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD only).
    pub keep_git_dir: bool,
    /// `--unpack` (ADD only); `None` when not given.
    pub unpack: Option<bool>,
}

/// An `ARG` name with an optional default, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ArgDef {
    /// The name.
    pub name: String,
    /// The default, not expanded, quotes kept.
    pub default: Option<String>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [options] CMD ...`.
    Cmd {
        /// The test command.
        command: CommandLine,
        /// `--interval`.
        interval: Option<Duration>,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--start-period`.
        start_period: Option<Duration>,
        /// `--start-interval`.
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

/// A typed instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Command {
    /// `FROM`
    From(From),
    /// `RUN`
    Run(Run),
    /// `CMD`
    Cmd(CommandLine),
    /// `ENTRYPOINT`
    Entrypoint(CommandLine),
    /// `SHELL` (always exec form).
    Shell(Vec<String>),
    /// `COPY`
    Copy(Copy),
    /// `ADD`
    Add(Copy),
    /// `ENV` pairs, values not expanded.
    Env(Vec<(String, String)>),
    /// `LABEL` pairs, values not expanded.
    Label(Vec<(String, String)>),
    /// `ARG`
    Arg(Vec<ArgDef>),
    /// `EXPOSE`
    Expose(Vec<String>),
    /// `VOLUME`
    Volume(Vec<String>),
    /// `USER`
    User(String),
    /// `WORKDIR`
    Workdir(String),
    /// `STOPSIGNAL`
    Stopsignal(String),
    /// `HEALTHCHECK`
    Healthcheck(Healthcheck),
    /// `ONBUILD` with its trigger, checked, and the trigger's source text.
    Onbuild {
        /// The trigger.
        trigger: Box<Command>,
        /// The trigger as written (what goes into the image config).
        expression: String,
    },
    /// `MAINTAINER` (deprecated).
    Maintainer(String),
}

impl Command {
    /// Whether BuildKit expands variables in this command's arguments.
    /// `RUN`, `CMD`, `ENTRYPOINT` and `SHELL` are left to the shell at run
    /// time, `HEALTHCHECK` to the container, `ONBUILD` triggers are
    /// expanded when they fire, `MAINTAINER` is taken as written.
    pub fn expands(&self) -> bool {
        !matches!(
            self,
            Self::Run(_)
                | Self::Cmd(_)
                | Self::Entrypoint(_)
                | Self::Shell(_)
                | Self::Onbuild { .. }
                | Self::Healthcheck(_)
                | Self::Maintainer(_)
        )
    }

    /// The command with variables expanded the way BuildKit's dispatcher
    /// does before running it: `ENV`/`LABEL` keys and values, `ARG` names and
    /// defaults, `COPY`/`ADD` sources (keeping `\` escapes), destination and `--from`/`--chown`/
    /// `--chmod`/`--checksum`, `FROM` image and `--platform`, `EXPOSE`,
    /// `VOLUME`, `USER`, `WORKDIR`, `STOPSIGNAL`; `RUN --mount` values.
    /// Commands that do not [expand](Command::expands) come back unchanged
    /// (apart from their mounts). Also returns the variables looked up.
    ///
    /// # Errors
    ///
    /// [`ExpandError`] from the first word that cannot be expanded.
    pub fn expand<L: Lookup + ?Sized>(
        &self,
        lexer: &Lexer,
        env: &L,
    ) -> Result<(Command, BTreeSet<String>), ExpandError> {
        let mut used = BTreeSet::new();
        // `COPY`/`ADD` sources keep their `\` escapes, so that `\*`, `\?`
        // and `\[` stay literal for the builder's wildcard matching (which
        // takes the escapes away, as Go's `filepath.Match` does)
        let mut raw_sources = match self {
            Self::Copy(c) | Self::Add(c) => {
                let raw = lexer.clone().raw_escapes(lexer.escape() == '\\');
                let mut out = Vec::with_capacity(c.sources.len());
                for s in &c.sources {
                    let e = raw.expand(s, env)?;
                    used.extend(e.matched);
                    used.extend(e.unmatched);
                    out.push(e.value);
                }
                Some(out)
            }
            _ => None,
        };
        let mut word = |w: &str| -> Result<String, ExpandError> {
            let out = lexer.expand(w, env)?;
            used.extend(out.matched);
            used.extend(out.unmatched);
            Ok(out.value)
        };
        let opt = |w: &Option<String>, word: &mut dyn FnMut(&str) -> Result<String, ExpandError>| {
            w.as_deref().map(&mut *word).transpose()
        };
        let cmd = match self {
            Self::From(f) => Self::From(From {
                image: word(&f.image)?,
                name: f.name.clone(),
                platform: opt(&f.platform, &mut word)?,
            }),
            Self::Env(pairs) | Self::Label(pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    out.push((word(k)?, word(v)?));
                }
                if matches!(self, Self::Env(_)) { Self::Env(out) } else { Self::Label(out) }
            }
            Self::Arg(defs) => {
                let mut out = Vec::with_capacity(defs.len());
                for d in defs {
                    out.push(ArgDef { name: word(&d.name)?, default: opt(&d.default, &mut word)? });
                }
                Self::Arg(out)
            }
            Self::Copy(c) | Self::Add(c) => {
                let mut c2 = c.clone();
                c2.sources = raw_sources.take().unwrap_or_default();
                c2.dest = word(&c.dest)?;
                c2.from = opt(&c.from, &mut word)?;
                c2.chown = opt(&c.chown, &mut word)?;
                c2.chmod = opt(&c.chmod, &mut word)?;
                c2.checksum = opt(&c.checksum, &mut word)?;
                c2.exclude = c.exclude.iter().map(|s| word(s)).collect::<Result<_, _>>()?;
                if matches!(self, Self::Copy(_)) { Self::Copy(c2) } else { Self::Add(c2) }
            }
            Self::Expose(v) => Self::Expose(v.iter().map(|s| word(s)).collect::<Result<_, _>>()?),
            Self::Volume(v) => Self::Volume(v.iter().map(|s| word(s)).collect::<Result<_, _>>()?),
            Self::User(s) => Self::User(word(s)?),
            Self::Workdir(s) => Self::Workdir(word(s)?),
            Self::Stopsignal(s) => Self::Stopsignal(word(s)?),
            Self::Run(r) => {
                let mut r2 = r.clone();
                for m in &mut r2.mounts {
                    m.source = opt(&m.source, &mut word)?;
                    m.target = opt(&m.target, &mut word)?;
                    m.from = opt(&m.from, &mut word)?;
                    m.id = opt(&m.id, &mut word)?;
                }
                Self::Run(r2)
            }
            other => other.clone(),
        };
        Ok((cmd, used))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Str,
    Strings,
}

struct Flags<'a> {
    inst: &'a Instruction,
    values: Vec<(&'static str, FlagKind, Vec<String>)>,
}

impl<'a> Flags<'a> {
    fn parse(inst: &'a Instruction, allowed: &[(&'static str, FlagKind)]) -> Result<Self, CommandError> {
        let mut values: Vec<(&'static str, FlagKind, Vec<String>)> =
            allowed.iter().map(|&(n, k)| (n, k, Vec::new())).collect();
        for word in &inst.flags {
            let body = word.strip_prefix("--").unwrap_or(word);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(slot) = values.iter_mut().find(|(n, _, _)| *n == name) else {
                return Err(CommandError::UnknownFlag {
                    instruction: inst.keyword,
                    flag: word.clone(),
                    span: inst.span,
                });
            };
            let bad = |reason: &'static str| CommandError::FlagValue {
                instruction: inst.keyword,
                flag: name.to_string(),
                value: value.unwrap_or_default().to_string(),
                reason,
                span: inst.span,
            };
            match slot.1 {
                FlagKind::Bool => {
                    let v = match value.map(str::to_ascii_lowercase).as_deref() {
                        None | Some("" | "true") => "true",
                        Some("false") => "false",
                        Some(_) => return Err(bad("expecting a boolean value")),
                    };
                    slot.2 = vec![v.to_string()];
                }
                FlagKind::Str => {
                    let Some(v) = value else {
                        return Err(bad("missing a value"));
                    };
                    if !slot.2.is_empty() {
                        return Err(bad("duplicate flag specified"));
                    }
                    slot.2.push(v.to_string());
                }
                FlagKind::Strings => {
                    let Some(v) = value else {
                        return Err(bad("missing a value"));
                    };
                    slot.2.push(v.to_string());
                }
            }
        }
        Ok(Self { inst, values })
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.values.iter().find(|(n, _, _)| *n == name).map(|(_, _, v)| v.clone()).unwrap_or_default()
    }

    fn string(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }

    fn bad(&self, flag: &str, value: &str, reason: &'static str) -> CommandError {
        CommandError::FlagValue {
            instruction: self.inst.keyword,
            flag: flag.to_string(),
            value: value.to_string(),
            reason,
            span: self.inst.span,
        }
    }
}

fn args_text(args: &Arguments) -> String {
    match args {
        Arguments::None => String::new(),
        Arguments::Words(v) | Arguments::Json(v) => v.join(" "),
        Arguments::Text(t) => t.clone(),
        Arguments::KeyValues(kv) => kv.iter().map(|p| format!("{}={}", p.key, p.value)).collect::<Vec<_>>().join(" "),
        Arguments::Healthcheck { kind, command } => format!("{kind} {}", args_text(command)),
        Arguments::Onbuild(i) => i.original.clone(),
    }
}

fn arg_error(inst: &Instruction, expected: &'static str) -> CommandError {
    CommandError::Arguments { instruction: inst.keyword, expected, got: args_text(&inst.args), span: inst.span }
}

fn list(inst: &Instruction) -> Vec<String> {
    match &inst.args {
        Arguments::Words(v) | Arguments::Json(v) => v.clone(),
        Arguments::Text(t) => vec![t.clone()],
        _ => Vec::new(),
    }
}

fn command_line(args: &Arguments) -> CommandLine {
    match args {
        Arguments::Json(v) => CommandLine::Exec(v.clone()),
        Arguments::Text(t) => CommandLine::Shell(t.clone()),
        Arguments::Words(v) => CommandLine::Shell(v.join(" ")),
        _ => CommandLine::Shell(String::new()),
    }
}

fn single_text(inst: &Instruction) -> Result<String, CommandError> {
    match &inst.args {
        Arguments::Text(t) if !t.is_empty() => Ok(t.clone()),
        _ => Err(arg_error(inst, "requires exactly one argument")),
    }
}

/// `^[a-z][a-z0-9-_.]*$`
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

impl TryFrom<&Instruction> for Command {
    type Error = CommandError;

    fn try_from(inst: &Instruction) -> Result<Self, CommandError> {
        command_from(inst)
    }
}

impl Instruction {
    /// This instruction as a typed [`Command`].
    ///
    /// # Errors
    ///
    /// [`CommandError`] for unknown instructions or flags, bad flag values,
    /// missing arguments, bad stage names, bad mounts and forbidden
    /// `ONBUILD` triggers.
    pub fn command(&self) -> Result<Command, CommandError> {
        command_from(self)
    }
}

#[allow(clippy::too_many_lines)]
fn command_from(inst: &Instruction) -> Result<Command, CommandError> {
    use FlagKind::{Bool, Str, Strings};
    let none: &[(&'static str, FlagKind)] = &[];
    Ok(match inst.keyword {
        Keyword::From => {
            let flags = Flags::parse(inst, &[("platform", Str)])?;
            let args = list(inst);
            let (image, name) = match args.as_slice() {
                [image] => (image.clone(), None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    let name = name.to_lowercase();
                    if !valid_stage_name(&name) {
                        return Err(CommandError::StageName { name, span: inst.span });
                    }
                    (image.clone(), Some(name))
                }
                _ => return Err(arg_error(inst, "requires either one or three arguments")),
            };
            Command::From(From { image, name, platform: flags.string("platform") })
        }
        Keyword::Run => {
            let flags = Flags::parse(inst, &[("mount", Strings), ("network", Str), ("security", Str)])?;
            if matches!(inst.args, Arguments::None) {
                return Err(arg_error(inst, "requires at least one argument"));
            }
            let mounts = flags.all("mount").iter().map(|m| parse_mount(m, inst.span)).collect::<Result<Vec<_>, _>>()?;
            let network = flags.string("network");
            if let Some(n) = &network
                && !matches!(n.as_str(), "default" | "none" | "host")
            {
                return Err(flags.bad("network", n, "expected default, none or host"));
            }
            let security = flags.string("security");
            if let Some(s) = &security
                && !matches!(s.as_str(), "sandbox" | "insecure")
            {
                return Err(flags.bad("security", s, "expected sandbox or insecure"));
            }
            Command::Run(Run {
                command: command_line(&inst.args),
                heredocs: inst.heredocs.clone(),
                mounts,
                network,
                security,
            })
        }
        Keyword::Cmd => {
            Flags::parse(inst, none)?;
            Command::Cmd(command_line(&inst.args))
        }
        Keyword::Entrypoint => {
            Flags::parse(inst, none)?;
            Command::Entrypoint(command_line(&inst.args))
        }
        Keyword::Shell => {
            Flags::parse(inst, none)?;
            match &inst.args {
                Arguments::Json(v) if !v.is_empty() => Command::Shell(v.clone()),
                _ => return Err(arg_error(inst, "requires the arguments to be in JSON form")),
            }
        }
        Keyword::Copy | Keyword::Add => {
            let is_copy = inst.keyword == Keyword::Copy;
            let allowed: &[(&'static str, FlagKind)] = if is_copy {
                &[
                    ("from", Str),
                    ("chown", Str),
                    ("chmod", Str),
                    ("link", Bool),
                    ("parents", Bool),
                    ("exclude", Strings),
                ]
            } else {
                &[
                    ("chown", Str),
                    ("chmod", Str),
                    ("link", Bool),
                    ("exclude", Strings),
                    ("checksum", Str),
                    ("keep-git-dir", Bool),
                    ("unpack", Bool),
                ]
            };
            let flags = Flags::parse(inst, allowed)?;
            let mut args = list(inst);
            let Some(dest) = args.pop().filter(|_| !args.is_empty()) else {
                return Err(arg_error(inst, "requires at least two arguments"));
            };
            let copy = Copy {
                sources: args,
                dest,
                heredocs: inst.heredocs.clone(),
                from: flags.string("from"),
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                parents: flags.bool("parents").unwrap_or(false),
                exclude: flags.all("exclude"),
                checksum: flags.string("checksum"),
                keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
                unpack: flags.bool("unpack"),
            };
            if is_copy { Command::Copy(copy) } else { Command::Add(copy) }
        }
        Keyword::Env | Keyword::Label => {
            Flags::parse(inst, none)?;
            let Arguments::KeyValues(kvs) = &inst.args else {
                return Err(arg_error(inst, "requires at least one argument"));
            };
            let mut pairs = Vec::with_capacity(kvs.len());
            for kv in kvs {
                if inst.keyword == Keyword::Env && kv.key.is_empty() {
                    return Err(arg_error(inst, "names can not be blank"));
                }
                pairs.push((kv.key.clone(), kv.value.clone()));
            }
            if inst.keyword == Keyword::Env { Command::Env(pairs) } else { Command::Label(pairs) }
        }
        Keyword::Arg => {
            Flags::parse(inst, none)?;
            let Arguments::Words(words) = &inst.args else {
                return Err(arg_error(inst, "requires at least one argument"));
            };
            let mut defs = Vec::with_capacity(words.len());
            for w in words {
                let def = match w.split_once('=') {
                    Some((n, d)) => ArgDef { name: n.to_string(), default: Some(d.to_string()) },
                    None => ArgDef { name: w.clone(), default: None },
                };
                if def.name.is_empty() {
                    return Err(arg_error(inst, "names can not be blank"));
                }
                defs.push(def);
            }
            Command::Arg(defs)
        }
        Keyword::Expose => {
            Flags::parse(inst, none)?;
            let ports = list(inst);
            if ports.is_empty() {
                return Err(arg_error(inst, "requires at least one argument"));
            }
            Command::Expose(ports)
        }
        Keyword::Volume => {
            Flags::parse(inst, none)?;
            let vols = list(inst);
            if vols.is_empty() {
                return Err(arg_error(inst, "requires at least one argument"));
            }
            if vols.iter().any(|v| v.trim().is_empty()) {
                return Err(arg_error(inst, "specified can not be an empty string"));
            }
            Command::Volume(vols)
        }
        Keyword::User => {
            Flags::parse(inst, none)?;
            Command::User(single_text(inst)?)
        }
        Keyword::Workdir => {
            Flags::parse(inst, none)?;
            Command::Workdir(single_text(inst)?)
        }
        Keyword::Stopsignal => {
            Flags::parse(inst, none)?;
            Command::Stopsignal(single_text(inst)?)
        }
        Keyword::Maintainer => {
            Flags::parse(inst, none)?;
            Command::Maintainer(single_text(inst)?)
        }
        Keyword::Healthcheck => healthcheck(inst)?,
        Keyword::Onbuild => {
            Flags::parse(inst, none)?;
            let Arguments::Onbuild(sub) = &inst.args else {
                return Err(arg_error(inst, "requires at least one argument"));
            };
            if matches!(sub.keyword, Keyword::Onbuild | Keyword::From | Keyword::Maintainer) {
                return Err(CommandError::OnbuildTrigger { trigger: sub.name.to_uppercase(), span: inst.span });
            }
            let trigger = command_from(sub)?;
            Command::Onbuild { trigger: Box::new(trigger), expression: sub.original.trim().to_string() }
        }
        Keyword::Unknown => {
            return Err(CommandError::UnknownInstruction { name: inst.name.clone(), span: inst.span });
        }
    })
}

fn healthcheck(inst: &Instruction) -> Result<Command, CommandError> {
    use FlagKind::Str;
    let flags = Flags::parse(
        inst,
        &[("interval", Str), ("timeout", Str), ("start-period", Str), ("start-interval", Str), ("retries", Str)],
    )?;
    let Arguments::Healthcheck { kind, command } = &inst.args else {
        return Err(arg_error(inst, "requires at least one argument"));
    };
    match kind.to_uppercase().as_str() {
        "NONE" => {
            if !matches!(command.as_ref(), Arguments::None) {
                return Err(arg_error(inst, "NONE takes no arguments"));
            }
            Ok(Command::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            if matches!(command.as_ref(), Arguments::None) {
                return Err(arg_error(inst, "CMD requires a command"));
            }
            let duration = |name: &str| -> Result<Option<Duration>, CommandError> {
                let Some(v) = flags.string(name) else {
                    return Ok(None);
                };
                let d = parse_go_duration(&v).ok_or_else(|| flags.bad(name, &v, "expected a duration like 30s"))?;
                if !d.is_zero() && d < Duration::from_millis(1) {
                    return Err(flags.bad(name, &v, "cannot be less than 1ms"));
                }
                Ok(Some(d))
            };
            let retries = match flags.string("retries") {
                None => None,
                Some(v) => {
                    Some(v.parse::<u32>().map_err(|_| flags.bad("retries", &v, "expected a non-negative integer"))?)
                }
            };
            Ok(Command::Healthcheck(Healthcheck::Cmd {
                command: command_line(command),
                interval: duration("interval")?,
                timeout: duration("timeout")?,
                start_period: duration("start-period")?,
                start_interval: duration("start-interval")?,
                retries,
            }))
        }
        _ => Err(arg_error(inst, "type must be CMD or NONE")),
    }
}

/// Go's `time.ParseDuration` for non-negative values.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at_checked(num_len)?;
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, after) = tail.split_at_checked(unit_len)?;
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos;
        rest = after;
    }
    if !total.is_finite() || total > 9.2e18 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(Duration::from_nanos(total as u64))
}

/// Split a `--mount` value on commas, honouring double quotes like Go's
/// `encoding/csv`.
fn csv_fields(value: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if at_start && c == '"' {
            at_start = false;
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    '"' => break,
                    c => cur.push(c),
                }
            }
            continue;
        }
        at_start = false;
        if c == ',' {
            fields.push(std::mem::take(&mut cur));
            at_start = true;
        } else {
            cur.push(c);
        }
    }
    fields.push(cur);
    Some(fields)
}

fn parse_mount(value: &str, span: Span) -> Result<Mount, CommandError> {
    let err = |reason: &'static str| CommandError::Mount { value: value.to_string(), reason, span };
    let fields = csv_fields(value).ok_or_else(|| err("unterminated quote"))?;
    let mut m = Mount {
        kind: MountType::Bind,
        source: None,
        target: None,
        from: None,
        readonly: true,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
    };
    // The type decides defaults, so find it first.
    let mut readonly: Option<bool> = None;
    for field in &fields {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        if k == "type" {
            m.kind = match v.as_deref() {
                Some("bind") => MountType::Bind,
                Some("cache") => MountType::Cache,
                Some("tmpfs") => MountType::Tmpfs,
                Some("secret") => MountType::Secret,
                Some("ssh") => MountType::Ssh,
                _ => return Err(err("type must be bind, cache, tmpfs, secret or ssh")),
            };
        }
    }
    for field in &fields {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let bool_value = |v: &Option<String>| -> Result<bool, CommandError> {
            match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("true" | "1") => Ok(true),
                Some("false" | "0") => Ok(false),
                Some(_) => Err(err("a boolean option has a value that is not a boolean")),
            }
        };
        let need = |v: Option<String>| v.ok_or_else(|| err("an option is missing its value"));
        match k.as_str() {
            "type" | "" => {}
            "source" | "src" => m.source = Some(need(v)?),
            "target" | "dst" | "destination" | "dest" => m.target = Some(need(v)?),
            "from" => m.from = Some(need(v)?),
            "readonly" | "ro" => readonly = Some(bool_value(&v)?),
            "readwrite" | "rw" => readonly = Some(!bool_value(&v)?),
            "id" => m.id = Some(need(v)?),
            "sharing" => {
                m.sharing = match need(v)?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => return Err(err("sharing must be shared, private or locked")),
                };
            }
            "mode" => {
                let v = need(v)?;
                m.mode = Some(u32::from_str_radix(&v, 8).map_err(|_| err("mode must be octal"))?);
            }
            "uid" => m.uid = Some(need(v)?.parse().map_err(|_| err("uid must be a number"))?),
            "gid" => m.gid = Some(need(v)?.parse().map_err(|_| err("gid must be a number"))?),
            "required" => m.required = bool_value(&v)?,
            "size" => m.size = Some(need(v)?),
            "env" => m.env = Some(need(v)?),
            _ => return Err(err("unknown option")),
        }
    }
    m.readonly = readonly.unwrap_or(matches!(m.kind, MountType::Bind | MountType::Secret | MountType::Ssh));
    if m.target.is_none() && matches!(m.kind, MountType::Bind | MountType::Cache | MountType::Tmpfs) {
        return Err(err("target is required"));
    }
    if m.target.is_none() && m.kind == MountType::Secret && m.env.is_none() && m.id.is_none() {
        return Err(err("secret mount needs id, target or env"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(src: &str) -> Result<Command, CommandError> {
        let df = crate::parse(src).unwrap();
        df.instructions[0].command()
    }

    #[test]
    fn from_forms() {
        assert_eq!(
            cmd("FROM --platform=$BUILDPLATFORM golang:1 AS Build").unwrap(),
            Command::From(From {
                image: "golang:1".into(),
                name: Some("build".into()),
                platform: Some("$BUILDPLATFORM".into()),
            })
        );
        assert!(matches!(cmd("FROM a b"), Err(CommandError::Arguments { .. })));
        assert!(matches!(cmd("FROM a AS 1x"), Err(CommandError::StageName { .. })));
        assert!(matches!(cmd("FROM --foo=1 a"), Err(CommandError::UnknownFlag { .. })));
    }

    #[test]
    fn copy_flags() {
        let Command::Copy(c) =
            cmd("COPY --from=build --chown=1:1 --chmod=755 --link --parents --exclude=*.md --exclude=x a b /d/")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(c.sources, vec!["a", "b"]);
        assert_eq!(c.dest, "/d/");
        assert_eq!(c.from.as_deref(), Some("build"));
        assert!(c.link && c.parents);
        assert_eq!(c.exclude, vec!["*.md", "x"]);
        let Command::Add(a) = cmd("ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false u /d").unwrap() else {
            panic!()
        };
        assert_eq!(a.unpack, Some(false));
        assert!(a.keep_git_dir);
        assert!(matches!(cmd("ADD --from=x a b"), Err(CommandError::UnknownFlag { .. })));
        assert!(matches!(cmd("COPY --link=maybe a b"), Err(CommandError::FlagValue { .. })));
        assert!(matches!(cmd("COPY --from a b"), Err(CommandError::FlagValue { .. })));
        assert!(matches!(cmd("COPY a"), Err(CommandError::Arguments { .. })));
        assert!(matches!(cmd("COPY [\"a\", \"b c\"]").unwrap(), Command::Copy(_)));
    }

    #[test]
    fn run_mounts() {
        let Command::Run(r) = cmd(
            "RUN --mount=type=cache,target=/root/.cache,sharing=locked,id=x --mount=type=secret,id=tok,required --mount=type=bind,from=b,source=/s,target=/t,rw --network=none --security=insecure make",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.mounts.len(), 3);
        assert_eq!(r.mounts[0].kind, MountType::Cache);
        assert_eq!(r.mounts[0].sharing, Sharing::Locked);
        assert!(!r.mounts[0].readonly);
        assert!(r.mounts[1].required);
        assert!(!r.mounts[2].readonly);
        assert_eq!(r.network.as_deref(), Some("none"));
        assert_eq!(r.command, CommandLine::Shell("make".into()));
        assert!(matches!(cmd("RUN --mount=type=cache x"), Err(CommandError::Mount { .. })));
        assert!(matches!(cmd("RUN --mount=type=nfs,target=/x x"), Err(CommandError::Mount { .. })));
        assert!(matches!(cmd("RUN --network=bridge x"), Err(CommandError::FlagValue { .. })));
    }

    #[test]
    fn healthcheck_forms() {
        let Command::Healthcheck(Healthcheck::Cmd { interval, retries, command, .. }) =
            cmd("HEALTHCHECK --interval=1m30s --retries=3 CMD [\"curl\", \"x\"]").unwrap()
        else {
            panic!()
        };
        assert_eq!(interval, Some(Duration::from_secs(90)));
        assert_eq!(retries, Some(3));
        assert_eq!(command, CommandLine::Exec(vec!["curl".into(), "x".into()]));
        assert_eq!(cmd("HEALTHCHECK NONE").unwrap(), Command::Healthcheck(Healthcheck::None));
        assert!(cmd("HEALTHCHECK NONE x").is_err());
        assert!(cmd("HEALTHCHECK CONNECT x").is_err());
        assert!(cmd("HEALTHCHECK --interval=5 CMD x").is_err());
        assert!(cmd("HEALTHCHECK --retries=-1 CMD x").is_err());
    }

    #[test]
    fn onbuild_rules() {
        assert!(matches!(cmd("ONBUILD RUN x").unwrap(), Command::Onbuild { .. }));
        assert!(matches!(cmd("ONBUILD ONBUILD RUN x"), Err(CommandError::OnbuildTrigger { .. })));
        assert!(matches!(cmd("ONBUILD FROM x"), Err(CommandError::OnbuildTrigger { .. })));
        assert!(matches!(cmd("ONBUILD MAINTAINER x"), Err(CommandError::OnbuildTrigger { .. })));
    }

    #[test]
    fn others() {
        assert_eq!(
            cmd("ARG a b=\"1 2\"").unwrap(),
            Command::Arg(vec![
                ArgDef { name: "a".into(), default: None },
                ArgDef { name: "b".into(), default: Some("\"1 2\"".into()) }
            ])
        );
        assert!(cmd("SHELL /bin/sh").is_err());
        assert_eq!(cmd("SHELL [\"sh\", \"-c\"]").unwrap(), Command::Shell(vec!["sh".into(), "-c".into()]));
        assert_eq!(cmd("MAINTAINER me").unwrap(), Command::Maintainer("me".into()));
        assert!(matches!(cmd("FOO bar"), Err(CommandError::UnknownInstruction { .. })));
        assert_eq!(cmd("ENV a b c").unwrap(), Command::Env(vec![("a".into(), "b c".into())]));
        assert!(cmd("VOLUME [\"\"]").is_err());
    }

    #[test]
    fn expansion_of_commands() {
        let env =
            std::collections::BTreeMap::from([("V".to_string(), "1".to_string()), ("D".to_string(), "/d".to_string())]);
        let l = Lexer::new('\\');
        let (c, used) = cmd("COPY --chown=$V a$V \"$D/x\"").unwrap().expand(&l, &env).unwrap();
        let Command::Copy(c) = c else { panic!() };
        assert_eq!((c.chown.as_deref(), c.sources[0].as_str(), c.dest.as_str()), (Some("1"), "a1", "/d/x"));
        assert_eq!(used, BTreeSet::from(["D".to_string(), "V".to_string()]));
        let (c, _) = cmd("ENV a=$V b=\"x y\"").unwrap().expand(&l, &env).unwrap();
        assert_eq!(c, Command::Env(vec![("a".into(), "1".into()), ("b".into(), "x y".into())]));
        let (c, used) = cmd("RUN echo $V").unwrap().expand(&l, &env).unwrap();
        assert_eq!(
            c,
            Command::Run(Run {
                command: CommandLine::Shell("echo $V".into()),
                heredocs: vec![],
                mounts: vec![],
                network: None,
                security: None
            })
        );
        assert!(used.is_empty());
        assert!(cmd("WORKDIR ${X:?no}").unwrap().expand(&l, &env).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("1x"), None);
    }
}
