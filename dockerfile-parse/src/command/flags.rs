//! Instructions to typed commands: flags checked per instruction,
//! arguments split, `HEALTHCHECK` options and Go durations parsed.

use std::time::Duration;

use super::mount::parse_mount;
use super::{ArgDef, Command, CommandError, CommandLine, Copy, From, Healthcheck, Run};
use crate::ast::{Arguments, Instruction, Keyword};

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

#[allow(clippy::too_many_lines)]
pub(super) fn command_from(inst: &Instruction) -> Result<Command, CommandError> {
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
pub(super) fn parse_go_duration(s: &str) -> Option<Duration> {
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
