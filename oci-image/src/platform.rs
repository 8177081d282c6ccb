//! Platforms (`os/arch[/variant]`) and Docker-style platform matching.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The platform a manifest runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, ...), Go's `GOARCH` values.
    pub architecture: String,
    /// Operating system (`linux`, `windows`, ...), Go's `GOOS` values.
    pub os: String,
    /// OS version, used by Windows images (`10.0.17763.1234`).
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// Required OS features (`win32k`).
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    /// CPU variant (`v7`, `v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Reserved `features` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Fields this version of kiln does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Why a platform string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// Not `os/arch[/variant]` with non-empty lowercase parts.
    #[error("invalid platform {input:?}: expected os/arch[/variant]")]
    Invalid {
        /// The rejected input.
        input: String,
    },
}

impl Platform {
    /// A platform with only os and architecture.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Platform {
            architecture: architecture.into(),
            os: os.into(),
            os_version: None,
            os_features: None,
            variant: None,
            features: None,
            extra: BTreeMap::new(),
        }
    }

    /// Sets the variant.
    #[must_use]
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = Some(variant.into());
        self
    }

    /// The platform of the machine running this code (linux/amd64 style).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch).normalized()
    }

    /// Normalises as containerd does: architecture aliases (`x86_64`,
    /// `aarch64`, `armhf`, ...), lowercase os, and default variants
    /// (`arm64` -> `v8`, `arm` -> `v7`, `amd64` `v1` dropped).
    #[must_use]
    pub fn normalized(&self) -> Self {
        let mut p = self.clone();
        p.os = p.os.to_ascii_lowercase();
        let arch = p.architecture.to_ascii_lowercase();
        let variant = p.variant.as_deref().map(str::to_ascii_lowercase);
        let (arch, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386" | "x86", v) => ("386".to_owned(), v.map(str::to_owned)),
            ("x86_64" | "x86-64" | "amd64", Some("v1") | None) => ("amd64".to_owned(), None),
            ("x86_64" | "x86-64", v) => ("amd64".to_owned(), v.map(str::to_owned)),
            ("aarch64" | "arm64", Some("8" | "v8") | None) => ("arm64".to_owned(), Some("v8".to_owned())),
            ("aarch64", v) => ("arm64".to_owned(), v.map(str::to_owned)),
            ("armhf", _) | ("arm", None) => ("arm".to_owned(), Some("v7".to_owned())),
            ("armel", _) => ("arm".to_owned(), Some("v6".to_owned())),
            ("arm", Some(v)) if v.len() == 1 && v.bytes().all(|b| b.is_ascii_digit()) => {
                ("arm".to_owned(), Some(format!("v{v}")))
            }
            (a, v) => (a.to_owned(), v.map(str::to_owned)),
        };
        p.architecture = arch;
        p.variant = variant;
        p
    }

    /// The platforms this one can run, most preferred first (containerd's
    /// "only" matcher): `arm64` also runs `arm/v8`..`arm/v5`, `arm/v7` runs
    /// `v6` and `v5`, `amd64` runs `386`.
    fn compatible(&self) -> Vec<(String, String, Option<String>)> {
        let p = self.normalized();
        let mut out = vec![(p.os.clone(), p.architecture.clone(), p.variant.clone())];
        let arm_down = |from: u8, out: &mut Vec<_>| {
            for v in (5..=from).rev() {
                out.push((p.os.clone(), "arm".to_owned(), Some(format!("v{v}"))));
            }
        };
        match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8")) if p.os == "linux" => arm_down(8, &mut out),
            ("arm", Some(v)) => {
                if let Some(n) = v.strip_prefix('v').and_then(|n| n.parse::<u8>().ok()) {
                    arm_down(n.saturating_sub(1), &mut out);
                }
            }
            ("amd64", None) => out.push((p.os.clone(), "386".to_owned(), None)),
            _ => {}
        }
        out
    }

    /// Does a manifest for `candidate` run on this (wanted) platform, the way
    /// `docker pull --platform` decides? Compares normalised os, architecture
    /// and variant (with default variants); when this platform names an
    /// `os.version` (Windows), the candidate's must share its
    /// `major.minor.build` prefix.
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.rank(candidate).is_some()
    }

    /// Lower is better; `None` when the candidate cannot run here.
    fn rank(&self, candidate: &Platform) -> Option<usize> {
        let c = candidate.normalized();
        if let Some(want) = &self.os_version {
            let prefix = |v: &str| v.split('.').take(3).collect::<Vec<_>>().join(".");
            match &c.os_version {
                Some(have) if prefix(have) == prefix(want) => {}
                Some(_) => return None,
                None => {}
            }
        }
        self.compatible().iter().position(|(os, arch, variant)| {
            *os == c.os && *arch == c.architecture && (variant.is_none() || *variant == c.variant)
        })
    }

    /// Picks the best match for this platform among candidates, as Docker
    /// does: the exact normalised platform first, then compatible ones in
    /// order of preference; ties go to the earliest candidate.
    pub fn best_match<'a, T>(
        &self,
        candidates: impl IntoIterator<Item = &'a T>,
        platform_of: impl Fn(&T) -> Option<&Platform>,
    ) -> Option<&'a T>
    where
        T: 'a,
    {
        candidates
            .into_iter()
            .filter_map(|c| platform_of(c).and_then(|p| self.rank(p)).map(|r| (r, c)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, c)| c)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/arch[/variant]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &&str| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok_part) {
            return Err(PlatformError::Invalid { input: s.to_owned() });
        }
        let mut p =
            Platform::new(parts.first().copied().unwrap_or_default(), parts.get(1).copied().unwrap_or_default());
        p.variant = parts.get(2).map(|v| (*v).to_owned());
        Ok(p)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_normalise() {
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/aarch64").normalized().to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/x86_64").normalized().to_string(), "linux/amd64");
        assert_eq!(p("linux/armhf").normalized().to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/7").normalized().to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn matching_like_docker() {
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64").matches(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        let cands = [p("linux/arm/v7"), p("linux/arm64/v8"), p("linux/amd64")];
        let best = p("linux/arm64").best_match(cands.iter(), |c| Some(c)).unwrap();
        assert_eq!(best.to_string(), "linux/arm64/v8");
        let mut win = p("windows/amd64");
        win.os_version = Some("10.0.17763.1234".into());
        let mut cand = p("windows/amd64");
        cand.os_version = Some("10.0.17763.5000".into());
        assert!(win.matches(&cand));
        cand.os_version = Some("10.0.20348.1".into());
        assert!(!win.matches(&cand));
    }
}
