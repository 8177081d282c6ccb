//! Stages and the build graph: global `ARG`s, build arguments, target
//! selection and the dependencies between stages, as BuildKit's dockerfile2llb
//! works them out before building.
//!
//! ```
//! use dockerfile_parse::{parse, stages::{plan, Base, BuildOptions}};
//!
//! let df = parse(
//!     "ARG GO=1.22\nFROM golang:${GO} AS build\nRUN make\n\
//!      FROM alpine AS final\nCOPY --from=build /app /app\n",
//! )?;
//! let opts = BuildOptions::new().build_arg("GO", "1.23");
//! let plan = plan(&df, &opts)?;
//! assert_eq!(plan.stages[0].base, Base::Image("golang:1.23".into()));
//! assert_eq!(plan.target, 1);
//! assert_eq!(plan.needed, vec![0, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::ast::{Dockerfile, Span};
use crate::command::{ArgDef, Command, CommandError};
use crate::shell::{Budget, ExpandError, Lexer, Lookup};

/// Why the stages could not be worked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// An instruction that is not a valid command.
    #[error(transparent)]
    Command(#[from] Box<CommandError>),
    /// A base image's `ONBUILD` trigger that is not one instruction, or
    /// one a trigger may not be (`ONBUILD`, `FROM`, `MAINTAINER`).
    #[error("invalid ONBUILD trigger {trigger:?} of the base image")]
    Trigger {
        /// The trigger as the image gives it.
        trigger: String,
        /// Why.
        #[source]
        problem: TriggerProblem,
    },
    /// An instruction other than `ARG` before the first `FROM`.
    #[error("no build stage in current context: {instruction} before the first FROM (at {span})")]
    NoStage {
        /// The instruction, uppercase.
        instruction: String,
        /// Where.
        span: Span,
    },
    /// A word that could not be expanded.
    #[error("cannot expand {word:?} (at {span})")]
    Expand {
        /// The word.
        word: String,
        /// Where.
        span: Span,
        /// Why.
        #[source]
        source: Box<ExpandError>,
    },
    /// `--from` naming the stage it is in or a later stage (which must be
    /// defined before the stage that uses it).
    #[error("circular dependency or forward index on stage reference {reference:?} (at {span})")]
    Circular {
        /// The reference as expanded.
        reference: String,
        /// Where.
        span: Span,
    },
    /// Two stages with the same name.
    #[error("duplicate stage name {name:?} (at {span})")]
    DuplicateName {
        /// The name.
        name: String,
        /// The second definition.
        span: Span,
    },
    /// The requested target stage does not exist.
    #[error("target stage {target:?} could not be found")]
    UnknownTarget {
        /// The target asked for.
        target: String,
    },
    /// The Dockerfile has no `FROM`.
    #[error("dockerfile has no stages")]
    NoStages,
}

/// Build arguments BuildKit defines for every build (from the build and
/// target platforms); usable in `FROM` without a global `ARG`.
pub const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// Predefined proxy build arguments: passed to `RUN` without an `ARG`, and
/// never reported as unused.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Inputs that change how a Dockerfile builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildOptions {
    /// `--build-arg NAME=value` values (including `BUILDPLATFORM`,
    /// `TARGETPLATFORM`, ... when the caller sets them).
    pub build_args: BTreeMap<String, String>,
    /// `--target`; the last stage when `None`.
    pub target: Option<String>,
    /// Names of the build's named contexts (`--build-context NAME=...`),
    /// lowercased. A stage named like one is replaced by that context, as
    /// BuildKit does: it keeps its index and name, but its instructions are
    /// not planned and it depends on nothing ([`Stage::replaced`]).
    pub named_contexts: BTreeSet<String>,
    /// The expansion budget the plan draws from (shared with whatever
    /// expands the build's instructions later); a fresh
    /// [`Budget::for_build`] when `None`.
    pub budget: Option<Budget>,
}

impl BuildOptions {
    /// No build arguments, last stage as target.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a `--build-arg name=value`.
    #[must_use]
    pub fn build_arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.build_args.insert(name.into(), value.into());
        self
    }

    /// Build `target` instead of the last stage.
    #[must_use]
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Add a named context `name`: a stage called so is replaced by it.
    #[must_use]
    pub fn named_context(mut self, name: impl Into<String>) -> Self {
        self.named_contexts.insert(name.into().to_lowercase());
        self
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Base {
    /// `FROM scratch`.
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    /// An image reference (expanded).
    Image(String),
}

/// Where a `COPY --from` or `RUN --mount from=` points.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// An earlier stage, by index.
    Stage(usize),
    /// An image reference.
    Image(String),
}

/// One command of a stage with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Step {
    /// The command as written (values not expanded).
    pub command: Command,
    /// The command with the stage's `ARG` and `ENV` values at that point
    /// expanded (see [`Command::expand`]).
    pub expanded: Command,
    /// The variables the expansion looked up.
    pub used: BTreeSet<String>,
    /// The instruction's span.
    pub span: Span,
}

/// A build stage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stage {
    /// Position among the stages, from 0.
    pub index: usize,
    /// `AS` name, lowercased.
    pub name: Option<String>,
    /// What it starts from.
    pub base: Base,
    /// `--platform`, expanded.
    pub platform: Option<String>,
    /// The commands after `FROM`.
    pub steps: Vec<Step>,
    /// Stages and images used by `COPY --from` / `RUN --mount from=`.
    pub sources: Vec<Source>,
    /// Indexes of the stages this stage needs (base and sources).
    pub depends_on: BTreeSet<usize>,
    /// `ARG` and `ENV` values at the end of the stage (expanded), for
    /// information; ENV from a base stage is included.
    pub vars: BTreeMap<String, String>,
    /// The `FROM` instruction's span.
    pub span: Span,
    /// Replaced by a named context of the same name
    /// ([`BuildOptions::named_contexts`]): no steps, no dependencies, and
    /// its `base` is not to be used.
    pub replaced: bool,
    /// The `--from` references of its `ONBUILD` triggers, as written: the
    /// stages built on this one need them.
    pub onbuild_sources: Vec<String>,
}

/// The result of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// `ARG`s before the first `FROM`, as written.
    pub global_args: Vec<ArgDef>,
    /// Their values after build arguments and defaults.
    pub global_values: BTreeMap<String, String>,
    /// All stages.
    pub stages: Vec<Stage>,
    /// The target stage's index.
    pub target: usize,
    /// The stages the target needs, itself included, in build order.
    pub needed: Vec<usize>,
    /// Build arguments no `ARG` declared (BuildKit warns about these).
    pub unused_build_args: BTreeSet<String>,
}

impl Plan {
    /// The stage called `name` (case-insensitive), or with that index.
    pub fn stage(&self, name_or_index: &str) -> Option<&Stage> {
        find_stage(&self.stages, name_or_index).and_then(|i| self.stages.get(i))
    }
}

fn find_stage(stages: &[Stage], reference: &str) -> Option<usize> {
    let lower = reference.to_lowercase();
    if let Some(s) = stages.iter().find(|s| s.name.as_deref() == Some(lower.as_str())) {
        return Some(s.index);
    }
    reference.parse::<usize>().ok().filter(|&i| i < stages.len())
}

/// What is wrong with an `ONBUILD` trigger ([`StageError::Trigger`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerProblem {
    /// It does not parse.
    #[error(transparent)]
    Parse(Box<crate::ParseError>),
    /// It is no valid trigger (`ONBUILD`, `FROM`, `MAINTAINER`, bad flags).
    #[error(transparent)]
    Command(Box<CommandError>),
    /// It holds more or less than one instruction.
    #[error("{0} instructions, not one")]
    Count(usize),
}

/// A base image's `ONBUILD` trigger (the text its config's `OnBuild`
/// holds) as the command it runs, checked as the `ONBUILD` instruction
/// checks its trigger: one instruction, and not `ONBUILD`, `FROM` or
/// `MAINTAINER`. Returns the command and the instruction as written.
///
/// # Errors
///
/// [`StageError::Trigger`] naming the trigger.
pub fn onbuild_trigger(trigger: &str) -> Result<(Command, String), StageError> {
    let fail = |problem| StageError::Trigger { trigger: trigger.to_owned(), problem };
    let df = crate::parse(&format!("ONBUILD {trigger}")).map_err(|e| fail(TriggerProblem::Parse(Box::new(e))))?;
    let [inst] = df.instructions.as_slice() else {
        return Err(fail(TriggerProblem::Count(df.instructions.len())));
    };
    match inst.command().map_err(|e| fail(TriggerProblem::Command(Box::new(e))))? {
        Command::Onbuild { trigger: command, expression } => Ok((*command, expression)),
        // `ONBUILD X` parses as an ONBUILD or not at all
        _ => Err(fail(TriggerProblem::Count(0))),
    }
}

/// The value an `ARG` takes, by BuildKit's rule, for the planner and for a
/// builder alike: the build argument of its name (the automatic platform
/// arguments included), else its default expanded against `scope` (the
/// variables as they are before the line; the default is expanded only when
/// it is used, so a `${X:?}` there fails only then), else, in a stage, the
/// value of the global `ARG` of that name (`globals`; `None` for a global
/// `ARG`). Also gives the variables the expansion looked up.
///
/// # Errors
///
/// [`ExpandError`] from the default.
pub fn arg_value<L: Lookup + ?Sized>(
    def: &ArgDef,
    build_args: &BTreeMap<String, String>,
    globals: Option<&BTreeMap<String, String>>,
    lexer: &Lexer,
    scope: &L,
) -> Result<(Option<String>, BTreeSet<String>), ExpandError> {
    if let Some(v) = build_args.get(&def.name) {
        return Ok((Some(v.clone()), BTreeSet::new()));
    }
    if let Some(d) = &def.default {
        let out = lexer.expand(d, scope)?;
        let used = out.matched.into_iter().chain(out.unmatched).collect();
        return Ok((Some(out.value), used));
    }
    Ok((globals.and_then(|g| g.get(&def.name)).cloned(), BTreeSet::new()))
}

fn expand(lexer: &Lexer, word: &str, env: &BTreeMap<String, String>, span: Span) -> Result<String, StageError> {
    lexer.expand_word(word, env).map_err(|source| StageError::Expand {
        word: word.to_string(),
        span,
        source: Box::new(source),
    })
}

/// Work out the stages of `df` for `opts`.
///
/// One pass over the instructions, in the order BuildKit applies them.
///
/// # Errors
///
/// [`StageError`] for invalid commands, instructions before the first
/// `FROM` other than `ARG`, expansion errors, references to later stages,
/// duplicate stage names, and an unknown target.
#[allow(clippy::too_many_lines)] // one linear walk; splitting it scatters the scoping rules
pub fn plan(df: &Dockerfile, opts: &BuildOptions) -> Result<Plan, StageError> {
    let lexer = Lexer::new(df.directives.escape).with_budget(opts.budget.clone().unwrap_or_else(Budget::for_build));
    let mut global_args = Vec::new();
    let mut global_values: BTreeMap<String, String> = BTreeMap::new();
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    // Stage names, by index, for references to stages defined later.
    let mut names: Vec<Option<String>> = Vec::new();
    for inst in &df.instructions {
        if inst.keyword == crate::ast::Keyword::From
            && let Command::From(f) = inst.command().map_err(Box::new)?
        {
            names.push(f.name);
        }
    }

    for inst in &df.instructions {
        let command = inst.command().map_err(Box::new)?;
        let span = inst.span;
        match command {
            Command::Arg(defs) if stages.last().is_some_and(|s| s.replaced) => {
                // a replaced stage's ARGs still count as declared
                declared.extend(defs.into_iter().map(|d| d.name));
            }
            Command::Arg(defs) => {
                // Stage ARG defaults see the variables as they were before
                // the line; global ones see the globals declared before them.
                let before = env.clone();
                let mut used = BTreeSet::new();
                for def in &defs {
                    declared.insert(def.name.clone());
                    let (scope, globals) =
                        if stages.is_empty() { (&global_values, None) } else { (&before, Some(&global_values)) };
                    let (value, looked_up) =
                        arg_value(def, &opts.build_args, globals, &lexer, scope).map_err(|source| {
                            StageError::Expand {
                                word: def.default.clone().unwrap_or_default(),
                                span,
                                source: Box::new(source),
                            }
                        })?;
                    used.extend(looked_up);
                    if stages.is_empty() {
                        if let Some(v) = value {
                            global_values.insert(def.name.clone(), v);
                        }
                    } else if let Some(v) = value {
                        env.insert(def.name.clone(), v);
                    }
                }
                if stages.is_empty() {
                    global_args.extend(defs);
                } else if let Some(stage) = stages.last_mut() {
                    let expanded = Command::Arg(
                        defs.iter()
                            .map(|d| ArgDef { name: d.name.clone(), default: env.get(&d.name).cloned() })
                            .collect(),
                    );
                    stage.steps.push(Step { command: Command::Arg(defs), expanded, used, span });
                }
            }
            Command::From(from) => {
                // FROM sees the global ARGs and the platform build arguments
                // BuildKit defines automatically.
                let mut scope = global_values.clone();
                for name in PLATFORM_ARGS {
                    if let Some(v) = opts.build_args.get(*name) {
                        scope.entry((*name).to_string()).or_insert_with(|| v.clone());
                    }
                }
                let image = expand(&lexer, &from.image, &scope, span)?;
                let platform = from.platform.as_deref().map(|p| expand(&lexer, p, &scope, span)).transpose()?;
                let index = stages.len();
                if let Some(name) = &from.name
                    && stages.iter().any(|s| s.name.as_deref() == Some(name.as_str()))
                {
                    return Err(StageError::DuplicateName { name: name.clone(), span });
                }
                let lower = image.to_lowercase();
                let base_stage = stages.iter().find(|s| s.name.as_deref() == Some(lower.as_str())).map(|s| s.index);
                let mut depends_on = BTreeSet::new();
                env = BTreeMap::new();
                let replaced = from.name.as_ref().is_some_and(|n| opts.named_contexts.contains(n));
                let base = if replaced {
                    Base::Scratch
                } else if let Some(i) = base_stage {
                    depends_on.insert(i);
                    if let Some(b) = stages.get(i) {
                        // ENV is inherited from the base stage; ARG is not, but
                        // the recorded vars do not tell them apart.
                        env.clone_from(&b.vars);
                    }
                    Base::Stage(i)
                } else if lower == "scratch" {
                    Base::Scratch
                } else {
                    Base::Image(image)
                };
                // the base stage's ONBUILD triggers run here: what they
                // copy or mount from is needed too
                let mut sources = Vec::new();
                if let Base::Stage(b) = &base {
                    let refs = stages.get(*b).map(|s| s.onbuild_sources.clone()).unwrap_or_default();
                    for r in refs {
                        let lower = r.to_lowercase();
                        match stages.iter().find(|s| s.name.as_deref() == Some(lower.as_str())) {
                            Some(s) => {
                                depends_on.insert(s.index);
                                sources.push(Source::Stage(s.index));
                            }
                            None => match r.parse::<usize>() {
                                Ok(i) if i < index => {
                                    depends_on.insert(i);
                                    sources.push(Source::Stage(i));
                                }
                                _ => sources.push(Source::Image(r)),
                            },
                        }
                    }
                }
                stages.push(Stage {
                    index,
                    name: from.name,
                    base,
                    platform,
                    steps: Vec::new(),
                    sources,
                    depends_on,
                    vars: BTreeMap::new(),
                    span,
                    replaced,
                    onbuild_sources: Vec::new(),
                });
            }
            other => {
                let Some(stage) = stages.last_mut() else {
                    return Err(StageError::NoStage { instruction: inst.name.to_uppercase(), span });
                };
                if stage.replaced {
                    // the named context stands in for everything the stage would do
                    continue;
                }
                let (expanded, used) = other.expand(&lexer, &env).map_err(|source| StageError::Expand {
                    word: inst.original.clone(),
                    span,
                    source: Box::new(source),
                })?;
                let mut refs: Vec<String> = Vec::new();
                match &expanded {
                    // Every value on one ENV line saw the variables as they
                    // were before the line.
                    Command::Env(pairs) => env.extend(pairs.iter().cloned()),
                    Command::Copy(c) => refs.extend(c.from.iter().cloned()),
                    Command::Run(r) => refs.extend(r.mounts.iter().filter_map(|m| m.from.clone())),
                    Command::Onbuild { trigger, .. } => {
                        let trigger_refs: Vec<String> = match trigger.as_ref() {
                            Command::Copy(c) | Command::Add(c) => c.from.iter().cloned().collect(),
                            Command::Run(r) => r.mounts.iter().filter_map(|m| m.from.clone()).collect(),
                            _ => Vec::new(),
                        };
                        stage.onbuild_sources.extend(trigger_refs);
                    }
                    _ => {}
                }
                let index = stage.index;
                for r in refs {
                    let lower = r.to_lowercase();
                    let by_name = names.iter().position(|n| n.as_deref() == Some(lower.as_str()));
                    let found = match by_name {
                        // a stage is usable only below its definition
                        // (BuildKit: "needs to be defined before")
                        Some(i) if i >= index => {
                            return Err(StageError::Circular { reference: r, span });
                        }
                        Some(i) => Some(i),
                        None => match r.parse::<usize>() {
                            Ok(i) if i >= index => {
                                return Err(StageError::Circular { reference: r, span });
                            }
                            Ok(i) => Some(i),
                            Err(_) => None,
                        },
                    };
                    let Some(stage) = stages.last_mut() else {
                        continue;
                    };
                    match found {
                        Some(i) => {
                            stage.depends_on.insert(i);
                            stage.sources.push(Source::Stage(i));
                        }
                        None => stage.sources.push(Source::Image(r)),
                    }
                }
                if let Some(stage) = stages.last_mut() {
                    stage.steps.push(Step { command: other, expanded, used, span });
                }
            }
        }
        if let Some(stage) = stages.last_mut() {
            stage.vars.clone_from(&env);
        }
    }

    if stages.is_empty() {
        return Err(StageError::NoStages);
    }
    check_cycles(&stages)?;
    let target = match &opts.target {
        None => stages.len() - 1,
        Some(t) => {
            let lower = t.to_lowercase();
            stages
                .iter()
                .find(|s| s.name.as_deref() == Some(lower.as_str()))
                .map(|s| s.index)
                .ok_or_else(|| StageError::UnknownTarget { target: t.clone() })?
        }
    };
    let mut needed_set = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if needed_set.insert(i)
            && let Some(s) = stages.get(i)
        {
            todo.extend(s.depends_on.iter().copied());
        }
    }
    let unused_build_args = opts
        .build_args
        .keys()
        .filter(|k| !declared.contains(*k) && !PLATFORM_ARGS.contains(&k.as_str()) && !PROXY_ARGS.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok(Plan { global_args, global_values, stages, target, needed: needed_set.into_iter().collect(), unused_build_args })
}

/// Fail when stages depend on each other in a cycle (possible through
/// `--from` references to later stages).
fn check_cycles(stages: &[Stage]) -> Result<(), StageError> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut color = vec![0u8; stages.len()];
    for root in 0..stages.len() {
        if color.get(root) != Some(&0) {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> = Vec::new();
        let deps = |i: usize| stages.get(i).map(|s| s.depends_on.iter().copied().collect()).unwrap_or_default();
        if let Some(c) = color.get_mut(root) {
            *c = 1;
        }
        stack.push((root, deps(root)));
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            if let Some(next) = pending.pop() {
                match color.get(next) {
                    Some(0) => {
                        if let Some(c) = color.get_mut(next) {
                            *c = 1;
                        }
                        stack.push((next, deps(next)));
                    }
                    Some(1) => {
                        let stage = stages.get(next);
                        return Err(StageError::Circular {
                            reference: stage.and_then(|s| s.name.clone()).unwrap_or_else(|| next.to_string()),
                            span: stages.get(node).map(|s| s.span).unwrap_or_default(),
                        });
                    }
                    _ => {}
                }
            } else {
                if let Some(c) = color.get_mut(node) {
                    *c = 2;
                }
                stack.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn p(src: &str, args: &[(&str, &str)], target: Option<&str>) -> Result<Plan, StageError> {
        let opts = BuildOptions {
            build_args: args.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
            target: target.map(str::to_string),
            named_contexts: BTreeSet::new(),
            budget: None,
        };
        plan(&parse(src).unwrap(), &opts)
    }

    const SRC: &str = "ARG BASE=alpine\nARG TAG=3\nFROM ${BASE}:${TAG} AS base\nARG TAG\nENV T=$TAG\n\
FROM base AS build\nRUN --mount=type=bind,from=tools,target=/t make\n\
FROM busybox AS tools\n\
FROM scratch AS out\nCOPY --from=build /a /a\nCOPY --from=0 /b /b\nCOPY --from=nginx:1 /c /c\n";

    #[test]
    fn stages_and_graph() {
        // a stage is usable only below its definition (BuildKit: "needs to
        // be defined before"): `from=tools` names a later stage
        assert!(matches!(p(SRC, &[], None), Err(StageError::Circular { ref reference, .. }) if reference == "tools"));
        let cyc = "FROM a AS one\nCOPY --from=two / /\nFROM b AS two\nCOPY --from=one / /\n";
        assert!(matches!(p(cyc, &[], None), Err(StageError::Circular { .. })));
        assert!(matches!(p("FROM a\nCOPY --from=0 / /", &[], None), Err(StageError::Circular { .. })));
        let src = SRC.replace("from=tools", "from=base");
        let plan = p(&src, &[("TAG", "3.20"), ("UNUSED", "x")], None).unwrap();
        assert_eq!(plan.stages.len(), 4);
        assert_eq!(plan.stages[0].base, Base::Image("alpine:3.20".into()));
        assert_eq!(plan.stages[0].vars.get("T").map(String::as_str), Some("3.20"));
        assert_eq!(plan.stages[1].base, Base::Stage(0));
        assert_eq!(plan.stages[3].base, Base::Scratch);
        assert_eq!(plan.stages[3].sources[2], Source::Image("nginx:1".into()));
        assert_eq!(plan.target, 3);
        assert_eq!(plan.needed, vec![0, 1, 3]);
        assert_eq!(plan.unused_build_args, BTreeSet::from(["UNUSED".to_string()]));
        let plan = p(&src, &[], Some("TOOLS")).unwrap();
        assert_eq!(plan.needed, vec![2]);
        assert!(matches!(p(&src, &[], Some("nope")), Err(StageError::UnknownTarget { .. })));
        assert_eq!(plan.stage("build").map(|s| s.index), Some(1));
        assert_eq!(plan.stage("2").map(|s| s.index), Some(2));
    }

    #[test]
    fn onbuild_triggers_bring_their_sources_to_the_stages_built_on_them() {
        let src = "FROM a AS src\nFROM b AS base\nONBUILD COPY --from=src /in /out\nFROM base AS mid\nFROM scratch\nCOPY --from=mid /out /\n";
        let plan = p(src, &[], None).unwrap();
        assert_eq!(plan.stages[1].onbuild_sources, vec!["src".to_string()]);
        assert!(plan.stages[2].depends_on.contains(&0));
        assert_eq!(plan.needed, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_named_context_replaces_the_stage_of_its_name() {
        let src = "FROM unpullable:1 AS deps\nARG A=${undefined?fails}\nCOPY ${undefined?fails} /x\nCOPY --from=tools / /\n\
FROM busybox AS tools\nFROM deps\nCOPY --from=deps /a /a\n";
        let opts = BuildOptions::new().named_context("DEPS");
        let plan = plan(&parse(src).unwrap(), &opts).unwrap();
        let deps = &plan.stages[0];
        assert!(deps.replaced && deps.steps.is_empty() && deps.depends_on.is_empty() && deps.sources.is_empty());
        assert!(!plan.stages[2].replaced);
        assert_eq!(plan.stages[2].base, Base::Stage(0));
        // the stage it no longer needs is not built
        assert_eq!(plan.needed, vec![0, 2]);
        // without the context, the stage is planned (and fails here)
        assert!(p(src, &[], None).is_err());
    }

    #[test]
    fn doubling_variables_exhaust_the_budget_instead_of_memory() {
        use std::fmt::Write as _;
        let mut src = String::from("FROM scratch\nENV V0=0123456789abcdef\n");
        for i in 1..=40 {
            let _ = writeln!(src, "ENV V{i}=${{V{}}}${{V{}}}", i - 1, i - 1);
        }
        let e = p(&src, &[], None).unwrap_err();
        assert!(e.to_string().contains("expansion") || format!("{e:?}").contains("OverBudget"), "{e:?}");
        // a word that names a big value many times is stopped as it grows
        let opts = BuildOptions { budget: Some(Budget::new(1000)), ..BuildOptions::new() };
        let src = format!("FROM scratch\nENV A={}\nENV B=$A$A$A$A$A$A$A$A$A$A$A$A\n", "x".repeat(100));
        let e = plan(&parse(&src).unwrap(), &opts).unwrap_err();
        assert!(format!("{e:?}").contains("OverBudget"), "{e:?}");
        // an ordinary Dockerfile stays far below it
        let budget = Budget::for_build();
        let opts = BuildOptions { budget: Some(budget.clone()), ..BuildOptions::new() };
        plan(&parse(&SRC.replace("from=tools", "from=base")).unwrap(), &opts).unwrap();
        assert!(budget.left() > crate::shell::MAX_BUILD_EXPANSION - 1000);
    }

    #[test]
    fn platform_args_in_from() {
        let plan = p(
            "FROM --platform=$BUILDPLATFORM golang AS b\nFROM alpine:$TARGETARCH\n",
            &[("BUILDPLATFORM", "linux/amd64"), ("TARGETARCH", "arm64"), ("http_proxy", "x")],
            None,
        )
        .unwrap();
        assert_eq!(plan.stages[0].platform.as_deref(), Some("linux/amd64"));
        assert_eq!(plan.stages[1].base, Base::Image("alpine:arm64".into()));
        assert!(plan.unused_build_args.is_empty());
    }

    #[test]
    fn steps_are_expanded_in_order() {
        let src = "FROM a\nARG V=1\nENV W=$V/x\nARG X=$W Y=$V\nWORKDIR /$W\nENV W=2 Z=$W\nRUN echo $W\n";
        let plan = p(src, &[], None).unwrap();
        let steps = &plan.stages[0].steps;
        assert_eq!(
            steps[2].expanded,
            Command::Arg(vec![
                ArgDef { name: "X".into(), default: Some("1/x".into()) },
                ArgDef { name: "Y".into(), default: Some("1".into()) }
            ])
        );
        assert_eq!(steps[3].expanded, Command::Workdir("/1/x".into()));
        assert_eq!(steps[3].used, BTreeSet::from(["W".to_string()]));
        assert_eq!(steps[4].expanded, Command::Env(vec![("W".into(), "2".into()), ("Z".into(), "1/x".into())]));
        assert!(matches!(&steps[5].expanded, Command::Run(_)));
        assert_eq!(plan.stages[0].vars.get("Z").map(String::as_str), Some("1/x"));
    }

    #[test]
    fn global_args_scope() {
        let plan = p("ARG V=1\nFROM a\nRUN x\nFROM b\nARG V\nENV W=$V\n", &[], None).unwrap();
        assert!(!plan.stages[0].vars.contains_key("V"));
        assert_eq!(plan.stages[1].vars.get("W").map(String::as_str), Some("1"));
    }

    #[test]
    fn onbuild_triggers_are_checked_as_the_instruction_checks_them() {
        let (cmd, text) = onbuild_trigger("RUN echo hi").unwrap();
        assert!(matches!(cmd, Command::Run(_)), "{cmd:?}");
        assert_eq!(text, "RUN echo hi");
        for bad in ["FROM alpine", "MAINTAINER me", "ONBUILD RUN x", "NOTANINSTRUCTION x", "", "RUN a\nRUN b"] {
            assert!(matches!(onbuild_trigger(bad), Err(StageError::Trigger { .. })), "{bad:?}");
        }
    }

    #[test]
    fn arg_values_follow_buildkits_rule() {
        let lexer = Lexer::new('\\');
        let def = |name: &str, default: Option<&str>| ArgDef { name: name.into(), default: default.map(Into::into) };
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let (given, globals, scope) = (map(&[("A", "given")]), map(&[("G", "global")]), map(&[("S", "scoped")]));
        let value = |d: &ArgDef, globals: Option<&BTreeMap<String, String>>| {
            arg_value(d, &given, globals, &lexer, &scope).map(|(v, _)| v)
        };
        // a given argument wins, and its default is never expanded
        assert_eq!(value(&def("A", Some("${UNSET:?must be set}")), None).unwrap().as_deref(), Some("given"));
        // else the default, expanded against the scope before the line
        let (v, used) = arg_value(&def("B", Some("x-$S")), &given, None, &lexer, &scope).unwrap();
        assert_eq!((v.as_deref(), used), (Some("x-scoped"), BTreeSet::from(["S".to_owned()])));
        assert!(value(&def("B", Some("${UNSET:?must be set}")), None).is_err());
        // else, in a stage, the global ARG's value; a global ARG has none
        assert_eq!(value(&def("G", None), Some(&globals)).unwrap().as_deref(), Some("global"));
        assert_eq!(value(&def("G", None), None).unwrap(), None);
    }

    #[test]
    fn errors() {
        assert!(matches!(p("RUN x\nFROM a", &[], None), Err(StageError::NoStage { .. })));
        assert!(matches!(p("ARG a\n", &[], None), Err(StageError::NoStages)));
        assert!(matches!(p("FROM a AS x\nFROM b AS x", &[], None), Err(StageError::DuplicateName { .. })));
        assert!(matches!(p("FROM ${a", &[], None), Err(StageError::Expand { .. })));
    }
}
