//! Release tags: from `v1.2.3` derive `v1.2.3`, `v1.2`, `v1` and `latest`.

use semver::Version;

use crate::Tag;

/// Why a release tag cannot be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseTagError {
    /// Not a semantic version (`vX.Y.Z` or `X.Y.Z`, optional pre-release).
    #[error("invalid release tag {input:?}: expected a semantic version like v1.2.3")]
    NotSemver {
        /// The rejected input.
        input: String,
        /// The semver parser's complaint.
        reason: String,
    },
    /// Build metadata (`+...`) cannot appear in a registry tag.
    #[error("invalid release tag {input:?}: build metadata ('+') is not allowed in a tag")]
    BuildMetadata {
        /// The rejected input.
        input: String,
    },
}

/// A parsed release version and the prefix style it was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    version: Version,
    prefix: &'static str,
}

impl Release {
    /// Parses `v1.2.3`, `1.2.3` or `v2.0.0-rc.1`.
    ///
    /// # Errors
    /// [`ReleaseTagError`] when it is not a version that can be a tag.
    pub fn parse(input: &str) -> Result<Self, ReleaseTagError> {
        let (prefix, rest) = match input.strip_prefix('v') {
            Some(rest) => ("v", rest),
            None => ("", input),
        };
        let version = Version::parse(rest)
            .map_err(|e| ReleaseTagError::NotSemver { input: input.to_owned(), reason: e.to_string() })?;
        if !version.build.is_empty() {
            return Err(ReleaseTagError::BuildMetadata { input: input.to_owned() });
        }
        Ok(Release { version, prefix })
    }

    /// The version.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Is this a pre-release (`-rc.1`)?
    pub fn is_prerelease(&self) -> bool {
        !self.version.pre.is_empty()
    }

    fn tag(s: &str) -> Option<Tag> {
        s.parse().ok()
    }

    /// Every tag this release derives, ignoring what a repository already has:
    /// `vX.Y.Z`, `vX.Y`, `vX` (not for major 0) and `latest`; a pre-release
    /// derives only itself.
    pub fn derived_tags(&self) -> Vec<Tag> {
        self.tags_given::<&str>(&[])
    }

    /// The tags to set given the tags a repository already has: a moving tag
    /// (`vX.Y`, `vX`, `latest`) is left out when a higher release it could
    /// cover already exists there, so that it is never moved backwards.
    pub fn tags_given<S: AsRef<str>>(&self, existing: &[S]) -> Vec<Tag> {
        let v = &self.version;
        let p = self.prefix;
        let mut out: Vec<Tag> = Self::tag(&format!("{p}{v}")).into_iter().collect();
        if self.is_prerelease() {
            return out;
        }
        let releases: Vec<Version> = existing
            .iter()
            .filter_map(|t| Release::parse(t.as_ref()).ok())
            .filter(|r| !r.is_prerelease())
            .map(|r| r.version)
            .collect();
        let higher_exists = |covers: &dyn Fn(&Version) -> bool| releases.iter().any(|o| covers(o) && o > v);
        if !higher_exists(&|o| o.major == v.major && o.minor == v.minor) {
            out.extend(Self::tag(&format!("{p}{}.{}", v.major, v.minor)));
        }
        if v.major > 0 && !higher_exists(&|o| o.major == v.major) {
            out.extend(Self::tag(&format!("{p}{}", v.major)));
        }
        if !higher_exists(&|_| true) {
            out.extend(Self::tag("latest"));
        }
        out
    }
}

/// Tags derived from a release version, given the tags already present.
///
/// ```
/// let tags = oci_image::release_tags("v1.2.3", &["v1.3.0"])?;
/// let names: Vec<_> = tags.iter().map(|t| t.as_str()).collect();
/// assert_eq!(names, ["v1.2.3", "v1.2"]);
/// # Ok::<(), oci_image::ReleaseTagError>(())
/// ```
///
/// # Errors
/// [`ReleaseTagError`] when `version` is not a usable semantic version.
pub fn release_tags<S: AsRef<str>>(version: &str, existing: &[S]) -> Result<Vec<Tag>, ReleaseTagError> {
    Ok(Release::parse(version)?.tags_given(existing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(version: &str, existing: &[&str]) -> Vec<String> {
        release_tags(version, existing).unwrap().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn derivation_rules() {
        assert_eq!(names("v1.2.3", &[]), ["v1.2.3", "v1.2", "v1", "latest"]);
        assert_eq!(names("1.2.3", &[]), ["1.2.3", "1.2", "1", "latest"]);
        assert_eq!(names("v2.0.0-rc.1", &[]), ["v2.0.0-rc.1"]);
        assert_eq!(names("v0.3.1", &[]), ["v0.3.1", "v0.3", "latest"]);
    }

    #[test]
    fn moving_tags_never_go_backwards() {
        // a patch to an older minor: v1.2 moves, v1 and latest stay on 1.3
        assert_eq!(names("v1.2.4", &["v1.2.3", "v1.3.0", "latest"]), ["v1.2.4", "v1.2"]);
        // a patch to an older major: only v1.x tags move
        assert_eq!(names("v1.4.1", &["v1.4.0", "v2.0.0"]), ["v1.4.1", "v1.4", "v1", "latest"][..3]);
        // pre-releases of a higher version do not hold moving tags back
        assert_eq!(names("v1.5.0", &["v2.0.0-rc.1"]), ["v1.5.0", "v1.5", "v1", "latest"]);
        // re-releasing the current highest keeps everything
        assert_eq!(names("v1.5.0", &["v1.5.0", "v1.4.9"]), ["v1.5.0", "v1.5", "v1", "latest"]);
    }

    #[test]
    fn rejects_non_versions() {
        assert!(matches!(release_tags::<&str>("v1.2", &[]), Err(ReleaseTagError::NotSemver { .. })));
        assert!(matches!(release_tags::<&str>("v1.2.3+build", &[]), Err(ReleaseTagError::BuildMetadata { .. })));
        assert!(release_tags::<&str>("latest", &[]).is_err());
    }
}
