//! Instruction semantics shared by the steps: paths, environment, ports,
//! commands, health checks and users, as Docker defines them.

use std::path::Path;
use std::time::Duration;

use dockerfile_parse::command::{CommandLine, Healthcheck, Run};

use super::BuildError;

/// The history's `created_by` for a step: the instruction as written, on
/// one line, keyword in capitals.
pub(crate) fn created_by(original: &str) -> String {
    let mut words = original.split_whitespace();
    let keyword = words.next().unwrap_or_default().to_uppercase();
    let rest: Vec<&str> = words.collect();
    format!("{keyword} {}", rest.join(" ")).trim_end().to_owned()
}

/// `path` resolved against the working directory `cwd`, cleaned (no `.`, `..` or doubled `/`).
pub(crate) fn join_path(cwd: &str, path: &str) -> String {
    let full = if path.starts_with('/') { path.to_owned() } else { format!("{cwd}/{path}") };
    let mut parts: Vec<&str> = Vec::new();
    for p in full.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The working directory `WORKDIR path` sets on top of `cwd`, as the
/// config records it: an absolute path as written (`/tmp/` keeps its
/// slash), a relative one joined to `cwd` and cleaned (BuildKit's
/// `NormalizeWorkdir`).
pub(crate) fn workdir_path(cwd: &str, path: &str) -> String {
    if path.starts_with('/') { path.to_owned() } else { join_path(cwd, path) }
}

/// Sets `key` in a `KEY=value` list, replacing an earlier value in place.
pub(crate) fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env.iter_mut().find(|e| e.split_once('=').is_some_and(|(k, _)| k == key)) {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

/// `EXPOSE` words to `port/proto` keys; ranges (`8000-8002/tcp`) give one key per port.
pub(crate) fn expand_ports(spec: &str) -> Result<Vec<String>, BuildError> {
    let bad = |reason| BuildError::Flag { flag: "EXPOSE", value: spec.to_owned(), reason };
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("protocol must be tcp, udp or sctp"));
    }
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a, b),
        None => (ports, ports),
    };
    let lo: u16 = lo.parse().map_err(|_| bad("not a port number"))?;
    let hi: u16 = hi.parse().map_err(|_| bad("not a port number"))?;
    if hi < lo {
        return Err(bad("the range ends before it starts"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// `CMD`/`ENTRYPOINT` arguments: the exec form as is, the shell form wrapped in `shell`.
pub(crate) fn command_args(cl: &CommandLine, shell: &[String]) -> Vec<String> {
    match cl {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => {
            let mut v = shell.to_vec();
            v.push(s.clone());
            v
        }
        _ => Vec::new(),
    }
}

/// The argv of a `RUN`: exec form as is; shell form through `shell`, with
/// heredocs: a lone heredoc is the script, others stay in the script text
/// for the shell to read.
pub(crate) fn run_args(run: &Run, shell: &[String]) -> Vec<String> {
    match &run.command {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => {
            let mut v = shell.to_vec();
            let script = match (lone_heredoc(run), run.heredocs.as_slice()) {
                (Some(only), _) => only.content(),
                (None, []) => s.clone(),
                (None, docs) => {
                    let mut text = s.clone();
                    for d in docs {
                        text.push('\n');
                        text.push_str(&d.raw_content);
                        if !text.ends_with('\n') {
                            text.push('\n');
                        }
                        text.push_str(&d.name);
                    }
                    text
                }
            };
            v.push(script);
            v
        }
        _ => Vec::new(),
    }
}

/// A `RUN` whose whole command is one heredoc starting with `#!`: its
/// name and text. BuildKit runs such a heredoc as a program of its own
/// (the kernel reads the `#!` line), not as shell input.
pub(crate) fn shebang_script(run: &Run) -> Option<(String, String)> {
    let only = lone_heredoc(run)?;
    let text = only.content();
    text.starts_with("#!").then(|| (only.name.clone(), text))
}

/// The heredoc of a shell-form `RUN` whose whole command is that one
/// heredoc (`RUN <<EOF`): its text is the script.
fn lone_heredoc(run: &Run) -> Option<&dockerfile_parse::Heredoc> {
    let CommandLine::Shell(s) = &run.command else { return None };
    match run.heredocs.as_slice() {
        [only] if s.trim_start().starts_with("<<") && s.split_whitespace().count() == 1 => Some(only),
        _ => None,
    }
}

fn nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The image config's health check for a `HEALTHCHECK`.
pub(crate) fn healthcheck(h: &Healthcheck) -> oci_image::Healthcheck {
    match h {
        Healthcheck::Cmd { command, interval, timeout, start_period, start_interval, retries } => {
            let test = match command {
                CommandLine::Exec(v) => {
                    let mut t = vec!["CMD".to_owned()];
                    t.extend(v.iter().cloned());
                    t
                }
                CommandLine::Shell(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
                _ => vec!["NONE".to_owned()],
            };
            oci_image::Healthcheck {
                test: Some(test),
                interval: nanos(*interval),
                timeout: nanos(*timeout),
                start_period: nanos(*start_period),
                start_interval: nanos(*start_interval),
                retries: retries.map(i64::from),
                extra: std::collections::BTreeMap::new(),
            }
        }
        _ => oci_image::Healthcheck {
            test: Some(vec!["NONE".to_owned()]),
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
            extra: std::collections::BTreeMap::new(),
        },
    }
}

/// Looks `name` up in a passwd- or group-style file: field 0 is the name, field 2 the id.
fn lookup(root: Option<&Path>, file: &'static str, name: &str) -> Option<(u32, Option<u32>)> {
    let text = std::fs::read_to_string(super::files::inside(root?, file)?).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&name) {
            let id = fields.get(2)?.parse().ok()?;
            let gid = fields.get(3).and_then(|g| g.parse().ok());
            Some((id, gid))
        } else {
            None
        }
    })
}

/// The primary group of the user with id `uid` in the image's `/etc/passwd`.
fn primary_gid(root: Option<&Path>, uid: u32) -> Option<u32> {
    passwd_field(root, uid, 3).and_then(|g| g.parse().ok())
}

/// Field `n` of the `/etc/passwd` line of the user with id `uid`.
fn passwd_field(root: Option<&Path>, uid: u32, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(super::files::inside(root?, "/etc/passwd")?).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.get(2).and_then(|id| id.parse::<u32>().ok()) == Some(uid)).then(|| f.get(n).map(|v| (*v).to_owned()))?
    })
}

/// `USER` / `--chown` `user[:group]` to ids, names resolved in the image's
/// `/etc/passwd` and `/etc/group` under `root`. An empty spec is root.
/// Without a group, `USER` runs with the user's primary group (root's when
/// the user has no entry), while `--chown` uses the uid as the gid, as
/// Docker documents.
pub(crate) fn resolve_user(root: Option<&Path>, spec: &str, chown: bool) -> Result<(u32, u32), BuildError> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = if let Ok(n) = user.parse::<u32>() {
        (n, primary_gid(root, n))
    } else {
        lookup(root, "/etc/passwd", user).ok_or_else(|| BuildError::UnknownUser {
            what: "user",
            name: user.to_owned(),
            file: "/etc/passwd",
        })?
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                lookup(root, "/etc/group", g)
                    .ok_or_else(|| BuildError::UnknownUser { what: "group", name: g.to_owned(), file: "/etc/group" })?
                    .0
            }
        },
        None if chown => uid,
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The owner of the directories `WORKDIR` creates under `USER spec`, by
/// BuildKit's rule for file operations: a user name from the image's
/// `/etc/passwd` with its primary group, or root when the image does not
/// know the name (only running a process as an unknown user fails); a
/// numeric user with the same number as group; a group by number, or by
/// name from `/etc/group` (ignored when unknown).
pub(crate) fn mkdir_owner(root: Option<&Path>, spec: &str) -> (u32, u32) {
    if spec.is_empty() {
        return (0, 0);
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup(root, "/etc/passwd", user).map_or((0, 0), |(u, g)| (u, g.unwrap_or(0))),
    };
    if let Some(g) = group {
        match g.parse::<u32>() {
            Ok(n) => gid = n,
            Err(_) => {
                if let Some((n, _)) = lookup(root, "/etc/group", g) {
                    gid = n;
                }
            }
        }
    }
    (uid, gid)
}

/// `HOME` for a process of `uid`: its home directory in the image's
/// `/etc/passwd`, else `/root` for root and `/` for others.
pub(crate) fn home_of(root: Option<&Path>, uid: u32) -> String {
    passwd_field(root, uid, 5)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(join_path("/", "a/b"), "/a/b");
        assert_eq!(join_path("/w", "sub"), "/w/sub");
        assert_eq!(join_path("/w", "/abs/./x/../y/"), "/abs/y");
        assert_eq!(join_path("/w", ".."), "/");
        assert_eq!(workdir_path("/w", "/tmp/"), "/tmp/");
        assert_eq!(workdir_path("/tmp/", "sub/../x/"), "/tmp/x");
    }

    #[test]
    fn ports() {
        assert_eq!(expand_ports("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(expand_ports("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(expand_ports("8000-8002").unwrap().len(), 3);
        assert!(expand_ports("x").is_err());
        assert!(expand_ports("80/icmp").is_err());
    }

    #[test]
    fn users() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let r = Some(d.path());
        assert_eq!(home_of(r, 1000), "/home/app");
        assert_eq!(home_of(r, 0), "/root");
        assert_eq!(home_of(r, 7), "/");
        assert_eq!(resolve_user(r, "", false).unwrap(), (0, 0));
        assert_eq!(resolve_user(r, "app", false).unwrap(), (1000, 1001));
        assert_eq!(resolve_user(r, "app:staff", false).unwrap(), (1000, 50));
        assert_eq!(resolve_user(r, "1000", false).unwrap(), (1000, 1001));
        assert_eq!(resolve_user(r, "42", false).unwrap(), (42, 0));
        assert_eq!(resolve_user(r, "42", true).unwrap(), (42, 42));
        assert_eq!(resolve_user(r, "app", true).unwrap(), (1000, 1000));
        assert_eq!(resolve_user(None, "5:6", true).unwrap(), (5, 6));
        assert!(matches!(resolve_user(r, "nobody", false), Err(BuildError::UnknownUser { what: "user", .. })));
        assert!(matches!(resolve_user(r, "app:nogroup", true), Err(BuildError::UnknownUser { what: "group", .. })));
    }

    #[test]
    fn env_replaces_in_place() {
        let mut env = vec!["A=1".to_owned(), "B=2".to_owned()];
        set_env(&mut env, "A", "3");
        set_env(&mut env, "C", "4");
        assert_eq!(env, vec!["A=3", "B=2", "C=4"]);
    }
}
