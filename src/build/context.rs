//! Named build contexts: what the invoker (never the Dockerfile) lets a
//! build read besides its main context, as BuildKit's `--build-context
//! NAME=VALUE` does. A Dockerfile refers to one by name, `FROM NAME`,
//! `COPY --from=NAME` or `RUN --mount=from=NAME`; a stage of the same name
//! is replaced by it.
//!
//! A Dockerfile is input, not the invoker: it cannot name a host path
//! itself (kiln refuses `oci:` in a Dockerfile), so the host layouts and
//! directories a build reads are exactly those its caller named.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_image::{Digest, Reference, Tag};

/// What a named context is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildContext {
    /// An image in a local OCI layout (`oci-layout://PATH[:TAG][@DIGEST]`):
    /// by tag, by digest, or the layout's only image.
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`).
        tag: Option<Tag>,
        /// The manifest or index digest.
        digest: Option<Digest>,
    },
    /// A registry image (`docker-image://REF`; `docker-image://scratch` is
    /// the empty image).
    Image(Reference),
    /// The empty image (`docker-image://scratch`).
    Scratch,
    /// A local directory (a plain path): its files for `COPY --from` and
    /// `RUN --mount from=`, with its own `.dockerignore`; as a `FROM`, an
    /// image of one layer holding them.
    Dir(PathBuf),
}

/// Why a `--build-context` value is invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid build context {input:?}: {reason}")]
pub struct BuildContextError {
    input: String,
    reason: String,
}

impl BuildContextError {
    fn new(input: &str, reason: impl Into<String>) -> BuildContextError {
        BuildContextError { input: input.to_owned(), reason: reason.into() }
    }
}

impl BuildContext {
    /// The image tagged `tag` in the OCI layout at `dir`.
    pub fn oci_layout(dir: impl Into<PathBuf>, tag: Option<Tag>) -> BuildContext {
        BuildContext::OciLayout { dir: dir.into(), tag, digest: None }
    }
}

impl FromStr for BuildContext {
    type Err = BuildContextError;

    /// `oci-layout://PATH[:TAG][@DIGEST]`, `docker-image://REF` (or
    /// podman's `container-image://REF`), or a local directory's path.
    /// Git repositories and URLs (`https://`, `git@`) are not supported.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("oci-layout://") {
            let (rest, digest) = match rest.rsplit_once('@') {
                Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|e| BuildContextError::new(s, e.to_string()))?)),
                None => (rest, None),
            };
            // the tag follows the last ':' after the last '/'
            let name_start = rest.rfind('/').map_or(0, |i| i + 1);
            let (dir, tag) = match rest.get(name_start..).and_then(|n| n.rfind(':')) {
                Some(i) => {
                    let (d, t) = rest.split_at(name_start + i);
                    let t = t.trim_start_matches(':');
                    (d, Some(t.parse::<Tag>().map_err(|e| BuildContextError::new(s, e.to_string()))?))
                }
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(BuildContextError::new(s, "no layout path after oci-layout://"));
            }
            return Ok(BuildContext::OciLayout { dir: PathBuf::from(dir), tag, digest });
        }
        if let Some(r) = s.strip_prefix("docker-image://").or_else(|| s.strip_prefix("container-image://")) {
            if r.eq_ignore_ascii_case("scratch") {
                return Ok(BuildContext::Scratch);
            }
            return r
                .parse::<Reference>()
                .map(BuildContext::Image)
                .map_err(|e| BuildContextError::new(s, e.to_string()));
        }
        if s.contains("://") || s.starts_with("git@") {
            return Err(BuildContextError::new(
                s,
                "only oci-layout://, docker-image:// and local directories are supported (not git or URL contexts)",
            ));
        }
        if s.is_empty() {
            return Err(BuildContextError::new(s, "empty"));
        }
        Ok(BuildContext::Dir(PathBuf::from(s)))
    }
}

impl fmt::Display for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildContext::OciLayout { dir, tag, digest } => {
                write!(f, "oci-layout://{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            BuildContext::Image(r) => write!(f, "docker-image://{r}"),
            BuildContext::Scratch => f.write_str("docker-image://scratch"),
            BuildContext::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// The key a context name is looked up by: image names in their familiar
/// form without `:latest` (`docker.io/library/alpine:latest` and `alpine`
/// are one name, as in BuildKit), anything else lowercased.
pub(crate) fn context_key(name: &str) -> String {
    match name.parse::<Reference>() {
        Ok(r) => {
            let familiar = r.familiar();
            familiar.strip_suffix(":latest").unwrap_or(&familiar).to_owned()
        }
        Err(_) => name.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_buildkit_spells_them() {
        let c: BuildContext = "oci-layout:///srv/layouts/base:v1".parse().unwrap();
        assert_eq!(c, BuildContext::oci_layout("/srv/layouts/base", Some("v1".parse().unwrap())));
        assert_eq!(c.to_string(), "oci-layout:///srv/layouts/base:v1");
        let d = Digest::sha256(b"x");
        let c: BuildContext = format!("oci-layout://rel/dir@{d}").parse().unwrap();
        assert_eq!(c, BuildContext::OciLayout { dir: "rel/dir".into(), tag: None, digest: Some(d) });
        let c: BuildContext = "oci-layout:///a:b/layout".parse().unwrap();
        assert_eq!(c, BuildContext::oci_layout("/a:b/layout", None));
        assert_eq!(
            "docker-image://alpine:3".parse::<BuildContext>().unwrap().to_string(),
            "docker-image://docker.io/library/alpine:3"
        );
        assert_eq!("docker-image://scratch".parse::<BuildContext>().unwrap(), BuildContext::Scratch);
        assert_eq!("../deps".parse::<BuildContext>().unwrap(), BuildContext::Dir("../deps".into()));
        for bad in [
            "oci-layout://",
            "oci-layout:///x:Bad Tag",
            "docker-image://UPPER",
            "https://example.com/x.tar",
            "git@host:r.git",
            "",
        ] {
            assert!(bad.parse::<BuildContext>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_match_as_image_names_do() {
        assert_eq!(context_key("alpine"), "alpine");
        assert_eq!(context_key("docker.io/library/alpine:latest"), "alpine");
        assert_eq!(context_key("alpine:3"), "alpine:3");
        assert_eq!(context_key("Build"), "build");
        assert_eq!(context_key("localhost:5000/x"), "localhost:5000/x");
    }
}
