//! Where the build's epoch comes from (`SOURCE_DATE_EPOCH`, the
//! Dockerfile, git).

use super::{BTreeMap, BuildError, Path, Plan};

/// Where a build's epoch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EpochChoice {
    /// Not chosen by the invoker: a `SOURCE_DATE_EPOCH` build argument,
    /// else the Dockerfile's global `ARG` default, else 0.
    Unset,
    /// Chosen ([`Build::epoch`] or `SOURCE_DATE_EPOCH` in the environment);
    /// `None` is docker's times.
    Given(Option<u64>),
    /// The commit time of the context's git `HEAD` ([`Build::epoch_from_git`]).
    Git,
}

impl EpochChoice {
    /// The epoch of a build of `context` with build arguments `args` and `plan`.
    pub(super) fn resolve(
        self,
        args: &BTreeMap<String, String>,
        plan: &Plan,
        context: &Path,
    ) -> Result<Option<u64>, BuildError> {
        match self {
            EpochChoice::Given(e) => Ok(e),
            EpochChoice::Git => git_commit_time(context).map(Some),
            EpochChoice::Unset => {
                let given = args.get("SOURCE_DATE_EPOCH").or_else(|| plan.global_values.get("SOURCE_DATE_EPOCH"));
                match given.map(String::as_str) {
                    // BuildKit's opt-in: the context's git commit time, when
                    // the context is a git work tree (else none is set)
                    Some("context") => Ok(Some(git_commit_time(context).unwrap_or(0))),
                    Some(v) if !v.is_empty() => v.trim().parse().map(Some).map_err(|_| BuildError::Flag {
                        flag: "SOURCE_DATE_EPOCH",
                        value: v.to_owned(),
                        reason: "not a number of seconds since 1970",
                    }),
                    _ => Ok(Some(0)),
                }
            }
        }
    }
}

/// The commit time of the git `HEAD` of the work tree holding `context`.
pub(super) fn git_commit_time(context: &Path) -> Result<u64, BuildError> {
    let fail = |reason: String| BuildError::GitEpoch { context: context.to_owned(), reason };
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(context)
        .args(["log", "-1", "--format=%ct", "HEAD"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| fail(format!("git printed {:?}", text.trim())))
}
