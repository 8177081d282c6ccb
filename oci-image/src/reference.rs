//! Image references: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`.
//!
//! The grammar is the distribution reference grammar; normalisation follows
//! Docker (`nginx` is `docker.io/library/nginx:latest`).

use std::fmt;
use std::str::FromStr;

use crate::{Digest, DigestError};

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
/// The longest allowed name (domain and path), in bytes.
pub const NAME_MAX: usize = 255;

/// Why a string is not a valid reference or tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("invalid reference: empty string")]
    Empty,
    /// The repository path has uppercase letters.
    #[error("invalid reference {input:?}: repository name must be lowercase")]
    Uppercase {
        /// The rejected input.
        input: String,
    },
    /// Domain and path together are longer than 255 bytes.
    #[error("invalid reference {input:?}: repository name must not be more than 255 characters (it has {len})")]
    NameTooLong {
        /// The rejected input.
        input: String,
        /// The name's length.
        len: usize,
    },
    /// The registry host (or port) is malformed.
    #[error("invalid reference {input:?}: bad registry host {domain:?}")]
    InvalidDomain {
        /// The rejected input.
        input: String,
        /// The host part.
        domain: String,
    },
    /// A path component is malformed.
    #[error(
        "invalid reference {input:?}: bad path component {component:?} (lowercase letters and digits, separated by '.', '_', '__' or '-')"
    )]
    InvalidPath {
        /// The rejected input.
        input: String,
        /// The component.
        component: String,
    },
    /// The tag is malformed.
    #[error("invalid tag {tag:?} in {input:?}: expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    InvalidTag {
        /// The rejected input.
        input: String,
        /// The tag.
        tag: String,
    },
    /// The digest is malformed.
    #[error("invalid digest in reference {input:?}")]
    InvalidDigest {
        /// The rejected input.
        input: String,
        /// Why.
        #[source]
        source: DigestError,
    },
    /// A repository name was expected, but a tag or digest came with it,
    /// or the registry named apart is not the one the name resolves to.
    #[error("invalid repository {input:?}: a repository is a registry and a path, without tag or digest")]
    NotARepository {
        /// The rejected input.
        input: String,
    },
    /// A bare 64-character hex string, which Docker reserves for image ids.
    #[error("invalid reference {input:?}: cannot be a 64-character hexadecimal string")]
    HexName {
        /// The rejected input.
        input: String,
    },
}

/// A validated tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

fn valid_tag(t: &str) -> bool {
    let w = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = t.bytes();
    matches!(bytes.next(), Some(b) if w(b)) && t.len() <= 128 && bytes.all(|b| w(b) || b == b'.' || b == b'-')
}

impl Tag {
    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if valid_tag(s) {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ReferenceError::InvalidTag { input: s.to_owned(), tag: s.to_owned() })
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// A reference to an image: registry domain, repository path, and an
/// optional tag and/or digest.
///
/// ```
/// use oci_image::Reference;
/// let r: Reference = "nginx".parse()?;
/// assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
/// assert_eq!(r.familiar(), "nginx:latest");
/// let r: Reference = "localhost:5000/team/app:v1".parse()?;
/// assert_eq!((r.domain(), r.path(), r.tag().map(|t| t.as_str())), ("localhost:5000", "team/app", Some("v1")));
/// # Ok::<(), oci_image::ReferenceError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut need_alnum = true;
    while let Some(&b) = bytes.get(i) {
        if alnum(b) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        // a separator: '.', '_', '__' or one or more '-'
        let start = i;
        match b {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > start);
        need_alnum = true;
    }
    !need_alnum
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => return !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

impl Reference {
    /// Parses a reference, normalising the Docker Hub short forms, and adding
    /// the `latest` tag when neither a tag nor a digest is given.
    ///
    /// # Errors
    /// [`ReferenceError`] naming the bad part.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let mut r = Reference::parse_name_only(input)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(Tag("latest".to_owned()));
        }
        Ok(r)
    }

    /// Parses a reference without adding a default tag (a repository name
    /// like `docker.io/library/nginx` stays tagless).
    ///
    /// # Errors
    /// [`ReferenceError`] naming the bad part.
    pub fn parse_name_only(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ReferenceError::HexName { input: input.to_owned() });
        }
        let err_input = || input.to_owned();
        // digest: everything after the first '@'
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::InvalidDigest { input: err_input(), source })?;
                (n, Some(digest))
            }
            None => (input, None),
        };
        // tag: after the last ':' that follows the last '/'
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                let (n, t) = (name_tag.get(..colon).unwrap_or_default(), name_tag.get(colon + 1..).unwrap_or_default());
                if !valid_tag(t) {
                    return Err(ReferenceError::InvalidTag { input: err_input(), tag: t.to_owned() });
                }
                (n, Some(Tag(t.to_owned())))
            }
            _ => (name_tag, None),
        };
        // domain: the first component when it looks like a host
        let (domain, remainder) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let domain = if domain == LEGACY_DOCKER_HUB { DOCKER_HUB.to_owned() } else { domain };
        let path = if domain == DOCKER_HUB && !remainder.contains('/') {
            format!("{OFFICIAL_PREFIX}{remainder}")
        } else {
            remainder
        };
        if !valid_domain(&domain) {
            return Err(ReferenceError::InvalidDomain { input: err_input(), domain });
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase { input: err_input() });
        }
        if let Some(bad) = path.split('/').find(|c| !valid_path_component(c)) {
            return Err(ReferenceError::InvalidPath { input: err_input(), component: bad.to_owned() });
        }
        let len = domain.len() + 1 + path.len();
        if len > NAME_MAX {
            return Err(ReferenceError::NameTooLong { input: err_input(), len });
        }
        Ok(Reference { domain, path, tag, digest })
    }

    /// The registry domain, with port (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry (`library/nginx`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, the full repository name.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The tag if present, else the digest: what to ask a registry's
    /// manifest endpoint for (digest wins when both are present).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// A copy with `tag` (the digest is dropped: a new tag names new content).
    #[must_use]
    pub fn with_tag(&self, tag: Tag) -> Self {
        Reference { domain: self.domain.clone(), path: self.path.clone(), tag: Some(tag), digest: None }
    }

    /// A copy pinned to `digest` (the tag is kept for display).
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference { digest: Some(digest), ..self.clone() }
    }

    /// A copy with neither tag nor digest.
    #[must_use]
    pub fn repository_only(&self) -> Self {
        Reference { domain: self.domain.clone(), path: self.path.clone(), tag: None, digest: None }
    }

    /// The short form Docker shows (`nginx:latest`, `user/app:v1`,
    /// `localhost:5000/app:v1`).
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t.as_str());
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }

    /// The short repository name Docker shows (`nginx`, `user/app`).
    pub fn familiar_name(&self) -> String {
        if self.domain == DOCKER_HUB {
            match self.path.strip_prefix(OFFICIAL_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_owned(),
                // a first component that looks like a host would re-parse as one
                _ if self.path.split('/').next().is_some_and(|c| c.contains(['.', ':']) || c == "localhost") => {
                    self.repository()
                }
                _ => self.path.clone(),
            }
        } else {
            self.repository()
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Reference::parse_name_only(&s).map_err(serde::de::Error::custom)
    }
}

/// A repository on a registry (`docker.io/library/nginx`,
/// `localhost:5000/team/app`): where a registry client's requests go and
/// which token scope they need. Parsed as a [`Reference`] without tag or
/// digest, Docker Hub's short forms normalised (`nginx` is
/// `docker.io/library/nginx`).
///
/// ```
/// use oci_image::Repository;
/// let r: Repository = "localhost:5000/team/app".parse()?;
/// assert_eq!((r.registry(), r.path()), ("localhost:5000", "team/app"));
/// assert_eq!("nginx".parse::<Repository>()?.to_string(), "docker.io/library/nginx");
/// assert!("nginx:1.25".parse::<Repository>().is_err());
/// # Ok::<(), oci_image::ReferenceError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    domain: String,
    path: String,
}

impl Repository {
    /// Parses a repository name (no tag, no digest).
    ///
    /// # Errors
    /// [`ReferenceError`] naming the bad part; [`ReferenceError::NotARepository`]
    /// with a tag or digest.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let r = Reference::parse_name_only(input)?;
        if r.tag.is_some() || r.digest.is_some() {
            return Err(ReferenceError::NotARepository { input: input.to_owned() });
        }
        Ok(Repository { domain: r.domain, path: r.path })
    }

    /// The repository `path` on `registry` (`localhost:5000`, `docker.io`).
    ///
    /// # Errors
    /// As [`Repository::parse`]; [`ReferenceError::NotARepository`] when
    /// `registry` is not a registry host (`path` would be read as part of
    /// a Docker Hub name).
    pub fn new(registry: &str, path: &str) -> Result<Self, ReferenceError> {
        let input = format!("{registry}/{path}");
        let r = Repository::parse(&input)?;
        let same = r.domain == registry || (registry == "index.docker.io" && r.domain == DOCKER_HUB);
        if !same {
            return Err(ReferenceError::NotARepository { input });
        }
        Ok(r)
    }

    /// The repository of a reference.
    pub fn of(r: &Reference) -> Repository {
        Repository { domain: r.domain.clone(), path: r.path.clone() }
    }

    /// The registry as references name it (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.domain
    }

    /// The path within the registry (`library/nginx`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The host to talk to: Docker Hub's API lives on `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB { "registry-1.docker.io" } else { &self.domain }
    }

    /// The repository as a reference without tag or digest.
    pub fn reference(&self) -> Reference {
        Reference { domain: self.domain.clone(), path: self.path.clone(), tag: None, digest: None }
    }
}

impl From<&Reference> for Repository {
    fn from(r: &Reference) -> Self {
        Repository::of(r)
    }
}

impl FromStr for Repository {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Repository::parse(s)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Repository({self})")
    }
}

impl serde::Serialize for Repository {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Repository {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Repository::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        let r = Repository::new("localhost:5000", "kiln/app").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/kiln/app");
        assert_eq!(r, "localhost:5000/kiln/app".parse().unwrap());
        assert_eq!(Repository::new("docker.io", "nginx").unwrap().path(), "library/nginx");
        assert_eq!(Repository::new("docker.io", "nginx").unwrap().api_host(), "registry-1.docker.io");
        // not a registry host: "team" would be read as a Docker Hub namespace
        assert!(matches!(Repository::new("team", "app"), Err(ReferenceError::NotARepository { .. })));
        assert!(matches!(
            Repository::parse("a/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            Err(ReferenceError::NotARepository { .. })
        ));
        assert!(Repository::new("localhost:5000", "Bad").is_err());
        assert!(Repository::new("localhost:5000", "").is_err());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Repository>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Repository>("\"a/b:c\"").is_err());
    }

    fn r(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalisation() {
        assert_eq!(r("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(r("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(r("user/app"), "docker.io/user/app:latest");
        assert_eq!(r("index.docker.io/library/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(r("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(r("localhost/app"), "localhost/app:latest");
        assert_eq!(r("localhost:5000/a/b/c:t"), "localhost:5000/a/b/c:t");
        assert_eq!(r("[::1]:5000/app:v1"), "[::1]:5000/app:v1");
        assert_eq!(r("[fe80::1]/app"), "[fe80::1]/app:latest");
        assert_eq!(r("Example.COM/app"), "Example.COM/app:latest");
        assert_eq!(r(&format!("nginx@{D}")), format!("docker.io/library/nginx@{D}"));
        assert_eq!(r(&format!("nginx:1@{D}")), format!("docker.io/library/nginx:1@{D}"));
        assert_eq!(r("a__b-c---e/f_g.h"), "docker.io/a__b-c---e/f_g.h:latest");
        assert!(Reference::parse("a__b.c/f").is_err(), "a first component with a dot is a host");
        assert_eq!(r("app:5000"), "docker.io/library/app:5000");
    }

    #[test]
    fn familiar_forms() {
        let f = |s: &str| Reference::parse(s).unwrap().familiar();
        assert_eq!(f("docker.io/library/nginx"), "nginx:latest");
        assert_eq!(f("docker.io/user/app:v1"), "user/app:v1");
        assert_eq!(f("docker.io/library/a/b:v1"), "library/a/b:v1");
        assert_eq!(f("ghcr.io/o/app:v1"), "ghcr.io/o/app:v1");
        // Docker would print `a.b/c`, which re-parses with `a.b` as the host
        assert_eq!(f("docker.io/a.b/c:v1"), "docker.io/a.b/c:v1");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |s: &str| Reference::parse(s).unwrap_err();
        assert!(matches!(e(""), ReferenceError::Empty));
        assert!(matches!(e("Nginx"), ReferenceError::Uppercase { .. }));
        assert!(matches!(e("docker.io/Library/nginx"), ReferenceError::Uppercase { .. }));
        assert!(matches!(e("nginx:-bad"), ReferenceError::InvalidTag { .. }));
        assert!(matches!(e(&format!("nginx:{}", "a".repeat(129))), ReferenceError::InvalidTag { .. }));
        assert!(matches!(e("nginx@sha256:abc"), ReferenceError::InvalidDigest { .. }));
        assert!(matches!(e("a//b"), ReferenceError::InvalidPath { .. }));
        assert!(matches!(e("a/b_"), ReferenceError::InvalidPath { .. }));
        assert!(matches!(e("a/_b"), ReferenceError::InvalidPath { .. }));
        assert!(matches!(e("a/b___c"), ReferenceError::InvalidPath { .. }));
        assert!(matches!(e("host:port/app"), ReferenceError::InvalidDomain { .. }));
        assert!(matches!(e("-host.com/app"), ReferenceError::InvalidDomain { .. }));
        assert!(matches!(e("[::1/app"), ReferenceError::InvalidDomain { .. }));
        assert!(matches!(e(&"a".repeat(64).replace('a', "f")), ReferenceError::HexName { .. }));
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(matches!(e(&long), ReferenceError::NameTooLong { .. }));
        assert!(e("nginx:-bad").to_string().contains("nginx:-bad"));
    }

    #[test]
    fn with_tag_and_digest() {
        let base = Reference::parse("ghcr.io/o/app:v1").unwrap();
        let pinned = base.with_digest(D.parse().unwrap());
        assert_eq!(pinned.manifest_reference(), D);
        assert_eq!(base.with_tag("v2".parse().unwrap()).to_string(), "ghcr.io/o/app:v2");
        assert_eq!(Reference::parse_name_only("ghcr.io/o/app").unwrap().tag(), None);
    }
}
