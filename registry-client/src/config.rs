//! Credentials the way `docker login` and `podman login` store them:
//! docker's `config.json` (`$DOCKER_CONFIG`, `auths` with the
//! `https://index.docker.io/v1/` key for Docker Hub, `credHelpers`,
//! `credsStore` through `docker-credential-<name>`) and podman's
//! `auth.json` (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! keys scoped to a repository, the most specific winning).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::auth::{Credential, CredentialProvider};

const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Clone, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// What `docker-credential-<name> get` prints.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// Why an auth file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFileError {
    /// The file exists but cannot be read.
    #[error("reading auth file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("invalid auth file {path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why (no secret is ever part of this message).
        #[source]
        source: serde_json::Error,
    },
}

/// Credentials from docker's and podman's files, read once.
#[derive(Clone, Default)]
pub struct DockerConfig {
    files: Vec<ConfigFile>,
    helper_dirs: Option<Vec<PathBuf>>,
}

impl std::fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerConfig").field("files", &self.files.len()).finish_non_exhaustive()
    }
}

/// Normalises an `auths` key to `host[/path]`: drops the scheme, the
/// legacy `/v1/` suffix, and maps Docker Hub's keys to `docker.io`.
fn normalise_key(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let k = k.trim_end_matches('/');
    let k = k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
        other => other.strip_prefix("index.docker.io/").map_or_else(|| other.to_owned(), |p| format!("docker.io/{p}")),
    }
}

impl DockerConfig {
    /// Reads the files docker and podman would: `$REGISTRY_AUTH_FILE`,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, then
    /// `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
    /// Missing files are skipped; the first file with an entry wins.
    ///
    /// # Errors
    /// [`AuthFileError`] for a file that exists but is unreadable or malformed.
    pub fn from_env() -> Result<Self, AuthFileError> {
        let mut paths = Vec::new();
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
            paths.push(PathBuf::from(p));
        }
        if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
            paths.push(PathBuf::from(p).join("containers/auth.json"));
        }
        match std::env::var_os("DOCKER_CONFIG") {
            Some(d) => paths.push(PathBuf::from(d).join("config.json")),
            None => {
                if let Some(home) = std::env::var_os("HOME") {
                    paths.push(PathBuf::from(home).join(".docker/config.json"));
                }
            }
        }
        DockerConfig::from_paths(&paths)
    }

    /// Reads the given files in order (missing ones are skipped).
    ///
    /// # Errors
    /// [`AuthFileError`] for a file that exists but is unreadable or malformed.
    pub fn from_paths(paths: &[PathBuf]) -> Result<Self, AuthFileError> {
        let mut files = Vec::new();
        for path in paths {
            match std::fs::read(path) {
                Ok(bytes) => files.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|source| AuthFileError::Json { path: path.clone(), source })?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(AuthFileError::Io { path: path.clone(), source }),
            }
        }
        Ok(DockerConfig { files, helper_dirs: None })
    }

    /// Looks for `docker-credential-*` helpers only in these directories
    /// (instead of `PATH`); for tests and sandboxes.
    #[must_use]
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.helper_dirs = Some(dirs);
        self
    }

    fn helper_path(&self, name: &str) -> Option<PathBuf> {
        let exe = format!("docker-credential-{name}");
        let dirs: Vec<PathBuf> = match &self.helper_dirs {
            Some(d) => d.clone(),
            None => std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        };
        dirs.into_iter().map(|d| d.join(&exe)).find(|p| p.is_file())
    }

    /// Runs `docker-credential-<name> get` with the server URL on stdin.
    fn run_helper(&self, name: &str, server: &str) -> Option<Credential> {
        let path = self.helper_path(name)?;
        let mut child = Command::new(path)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(server.as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        if !out.status.success() {
            return None;
        }
        let a: HelperAnswer = serde_json::from_slice(&out.stdout).ok()?;
        if a.secret.is_empty() {
            return None;
        }
        Some(if a.username == "<token>" {
            Credential::IdentityToken(a.secret)
        } else {
            Credential::basic(a.username, a.secret)
        })
    }

    fn entry_credential(e: &AuthEntry) -> Option<Credential> {
        if let Some(t) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Some(Credential::IdentityToken(t.clone()));
        }
        if let Some(t) = e.registrytoken.as_ref().filter(|t| !t.is_empty()) {
            return Some(Credential::RegistryToken(t.clone()));
        }
        if let Some(auth) = e.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, pass) = text.split_once(':')?;
            return Some(Credential::basic(user, pass));
        }
        match (&e.username, &e.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(Credential::basic(u.clone(), p.clone())),
            _ => None,
        }
    }
}

impl CredentialProvider for DockerConfig {
    fn credential(&self, registry: &str, repository: &str) -> Option<Credential> {
        let registry = normalise_key(registry);
        let full = format!("{registry}/{repository}");
        let server_url = if registry == "docker.io" { DOCKER_HUB_KEY.to_owned() } else { registry.clone() };
        for file in &self.files {
            // a credential helper for this registry takes precedence
            if let Some(helper) = file.cred_helpers.iter().find(|(k, _)| normalise_key(k) == registry).map(|(_, v)| v) {
                return self.run_helper(helper, &server_url);
            }
            // most specific key first: registry/ns/repo, registry/ns, registry
            let mut best: Option<(usize, &AuthEntry)> = None;
            for (key, entry) in &file.auths {
                let k = normalise_key(key);
                let matches = k == registry || full == k || full.starts_with(&format!("{k}/"));
                if matches && best.is_none_or(|(len, _)| k.len() > len) {
                    best = Some((k.len(), entry));
                }
            }
            if let Some(c) = best.and_then(|(_, e)| Self::entry_credential(e)) {
                return Some(c);
            }
            if let Some(c) = file.creds_store.as_ref().and_then(|store| self.run_helper(store, &server_url)) {
                return Some(c);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn keys_normalise() {
        assert_eq!(normalise_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalise_key("registry-1.docker.io"), "docker.io");
        assert_eq!(normalise_key("http://localhost:5000"), "localhost:5000");
        assert_eq!(normalise_key("quay.io/team/app"), "quay.io/team/app");
    }

    #[test]
    fn auths_and_scoped_keys() {
        let d = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("hub-user:hub-pass");
        let p = write(
            d.path(),
            "config.json",
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                    "quay.io": {{"username": "q", "password": "general"}},
                    "quay.io/team": {{"username": "q", "password": "team-only"}},
                    "ghcr.io": {{"identitytoken": "refresh-me"}}
                }}}}"#
            ),
        );
        let c = DockerConfig::from_paths(&[p]).unwrap();
        assert_eq!(c.credential("docker.io", "library/nginx"), Some(Credential::basic("hub-user", "hub-pass")));
        assert_eq!(c.credential("quay.io", "team/app"), Some(Credential::basic("q", "team-only")));
        assert_eq!(c.credential("quay.io", "other/app"), Some(Credential::basic("q", "general")));
        assert_eq!(c.credential("ghcr.io", "x/y"), Some(Credential::IdentityToken("refresh-me".into())));
        assert_eq!(c.credential("example.com", "x"), None);
    }

    #[test]
    fn helpers_are_run() {
        let d = tempfile::tempdir().unwrap();
        let helper = d.path().join("docker-credential-kilntest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\nif [ \"$server\" = \"registry.example.com\" ]; then\n  printf '{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}' \"$server\"\nelse\n  echo 'credentials not found in native keychain' >&2; exit 1\nfi\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = write(
            d.path(),
            "config.json",
            r#"{"credHelpers": {"registry.example.com": "kilntest"}, "credsStore": "kilntest"}"#,
        );
        let c = DockerConfig::from_paths(&[p]).unwrap().with_helper_dirs(vec![d.path().to_owned()]);
        assert_eq!(c.credential("registry.example.com", "a"), Some(Credential::basic("helper-user", "helper-secret")));
        assert_eq!(c.credential("other.example.com", "a"), None, "the store answers not found");
    }

    #[test]
    fn malformed_file_names_the_path_not_the_secret() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "config.json", r#"{"auths": {"x": {"auth": "c2VjcmV0"}"#);
        let e = DockerConfig::from_paths(std::slice::from_ref(&p)).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()));
        assert!(!format!("{e:?}").contains("c2VjcmV0"));
    }
}
