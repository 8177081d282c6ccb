//! Typed commands: an [`Instruction`] checked and split into its parts the
//! way BuildKit's `instructions` package does (flags validated, `FROM ... AS`
//! split, `RUN --mount` parsed). Values are not expanded here; see
//! [`crate::stages`] and [`crate::shell`].

mod expand;
mod flags;
mod mount;

use std::time::Duration;

use crate::ast::{Heredoc, Instruction, Keyword, Span};

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

impl TryFrom<&Instruction> for Command {
    type Error = CommandError;

    fn try_from(inst: &Instruction) -> Result<Self, CommandError> {
        flags::command_from(inst)
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
        flags::command_from(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::flags::parse_go_duration;
    use super::*;
    use crate::shell::Lexer;

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
