//! Word expansion of a typed command, as BuildKit's dispatcher expands
//! each instruction's arguments before running it.

use std::collections::BTreeSet;

use super::{ArgDef, Command, From};
use crate::shell::{ExpandError, Lexer, Lookup};

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
