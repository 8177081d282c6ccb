//! Credentials the way `docker login` and `podman login` store them:
//! docker's `config.json` (`$DOCKER_CONFIG`, `auths` with the
//! `https://index.docker.io/v1/` key for Docker Hub, `credHelpers`,
//! `credsStore` through `docker-credential-<name>`) and podman's
//! `auth.json` (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! keys scoped to a repository, the most specific winning).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::auth::{Credential, CredentialError, CredentialProvider};

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

/// How a credential helper's run ended.
struct HelperRun {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A helper's failure as an error naming it, with the start of what it
/// said on stderr (never its stdout, where a secret may be).
fn helper_failed(helper: String, status: std::process::ExitStatus, stderr: &[u8]) -> CredentialError {
    let mut output = String::from_utf8_lossy(stderr).trim().to_owned();
    if output.len() > 1000 {
        let cut = (0..=1000).rev().find(|i| output.is_char_boundary(*i)).unwrap_or(0);
        output.truncate(cut);
    }
    let status = status.code().map_or_else(|| status.to_string(), |c| format!("exit status {c}"));
    CredentialError::Helper { helper, status, output }
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

/// A helper's answer for one server, kept for the client's lifetime.
type HelperAnswers = Arc<Mutex<HashMap<(String, String), Result<Option<Credential>, CredentialError>>>>;

/// How long a credential helper may take by default: 30 s.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials from docker's and podman's files, read once. A credential
/// helper is asked at most once per server (its answer, an error too, is
/// kept for as long as this value, and the client holding it, lives), and
/// killed when it does not answer within [`DockerConfig::with_helper_timeout`].
#[derive(Clone)]
pub struct DockerConfig {
    files: Vec<ConfigFile>,
    helper_dirs: Option<Vec<PathBuf>>,
    helper_timeout: Duration,
    answers: HelperAnswers,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            files: Vec::new(),
            helper_dirs: None,
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
            answers: Arc::default(),
        }
    }
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
        Ok(DockerConfig { files, ..DockerConfig::default() })
    }

    /// Looks for `docker-credential-*` helpers only in these directories
    /// (instead of `PATH`); for tests and sandboxes.
    #[must_use]
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.helper_dirs = Some(dirs);
        self
    }

    /// How long a helper may take before it is killed and its registry's
    /// requests fail (default [`DEFAULT_HELPER_TIMEOUT`]).
    #[must_use]
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
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

    /// `docker-credential-<name> get` for `server`, asked once per server.
    fn run_helper(&self, name: &str, server: &str) -> Result<Option<Credential>, CredentialError> {
        let key = (name.to_owned(), server.to_owned());
        if let Some(a) = self.answers.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return a;
        }
        let answer = self.ask_helper(name, server);
        if let Ok(mut m) = self.answers.lock() {
            m.insert(key, answer.clone());
        }
        answer
    }

    /// Runs `docker-credential-<name> <action>` with `input` on stdin,
    /// reading at most 1 MiB of each output; killed when it does not end
    /// within the timeout.
    fn run_helper_process(&self, name: &str, action: &str, input: &str) -> Result<HelperRun, CredentialError> {
        let helper = name.to_owned();
        let Some(path) = self.helper_path(name) else {
            return Err(CredentialError::Start { helper, cause: "not found on PATH".into() });
        };
        let mut child = Command::new(path)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CredentialError::Start { helper: helper.clone(), cause: e.to_string() })?;
        if let Some(mut stdin) = child.stdin.take() {
            // a helper that does not read its input is found out by the timeout
            let _ = stdin.write_all(input.as_bytes());
        }
        let read_all = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    // a credential is small: at most 1 MiB is read
                    let _ = r.by_ref().take(1 << 20).read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = read_all(child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>));
        let err = read_all(child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>));
        let deadline = Instant::now() + self.helper_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CredentialError::Timeout { helper, timeout: self.helper_timeout });
                }
                Err(e) => return Err(CredentialError::Start { helper, cause: e.to_string() }),
            }
        };
        Ok(HelperRun { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
    }

    /// Runs `docker-credential-<name> get` with the server URL on stdin, as
    /// docker does: "credentials not found" is anonymous access; any other
    /// failure, a hang past the timeout, or an answer that is not a
    /// credential is an error naming the helper.
    fn ask_helper(&self, name: &str, server: &str) -> Result<Option<Credential>, CredentialError> {
        let helper = name.to_owned();
        let HelperRun { status, stdout, stderr } = self.run_helper_process(name, "get", server)?;
        if !status.success() {
            let said = |b: &[u8]| String::from_utf8_lossy(b).to_lowercase();
            if said(&stdout).contains("credentials not found") || said(&stderr).contains("credentials not found") {
                return Ok(None);
            }
            return Err(helper_failed(helper, status, &stderr));
        }
        let a: HelperAnswer = serde_json::from_slice(&stdout).map_err(|e| CredentialError::Invalid {
            helper: helper.clone(),
            why: format!(
                "not the JSON of a credential ({} bytes; {:?} error at line {} column {})",
                stdout.len(),
                e.classify(),
                e.line(),
                e.column()
            ),
        })?;
        if a.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if a.username == "<token>" {
            Credential::IdentityToken(a.secret)
        } else {
            Credential::basic(a.username, a.secret)
        }))
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
    fn credential(&self, registry: &str, repository: &str) -> Result<Option<Credential>, CredentialError> {
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
                return Ok(Some(c));
            }
            if let Some(store) = &file.creds_store
                && let Some(c) = self.run_helper(store, &server_url)?
            {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

/// Where `docker login` put a credential, or took it from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stored {
    /// A credential helper (`docker-credential-<name>`), from `credHelpers`
    /// or `credsStore`.
    Helper(String),
    /// The file's `auths`.
    File(PathBuf),
}

/// Why a credential could not be stored or erased.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The config file exists but cannot be read.
    #[error(transparent)]
    Read(#[from] AuthFileError),
    /// The config file is not a JSON object.
    #[error("{path} is not a JSON object")]
    NotAnObject {
        /// The file.
        path: PathBuf,
    },
    /// The config file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The credential helper failed.
    #[error(transparent)]
    Helper(#[from] CredentialError),
}

/// docker's key for `registry` in `config.json` and its helpers' server
/// URL: `https://index.docker.io/v1/` for Docker Hub (any of its names),
/// else the host as given.
pub fn config_key(registry: &str) -> String {
    match normalise_key(registry).as_str() {
        "docker.io" => DOCKER_HUB_KEY.to_owned(),
        other => other.to_owned(),
    }
}

/// The file `docker login` writes: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json` (`None` without either variable).
pub fn docker_config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => Some(PathBuf::from(d).join("config.json")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    }
}

/// The config file, as a JSON object (a missing file is an empty one).
fn read_object(path: &std::path::Path) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(serde_json::Map::new()),
        Err(source) => return Err(AuthFileError::Io { path: path.to_owned(), source }.into()),
    };
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(StoreError::NotAnObject { path: path.to_owned() }),
        Err(source) => Err(AuthFileError::Json { path: path.to_owned(), source }.into()),
    }
}

/// Writes the config file whole or not at all, mode 0600 (its directory
/// made 0700 when missing), as docker writes it.
fn write_object(path: &std::path::Path, m: &serde_json::Map<String, serde_json::Value>) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |source| StoreError::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| std::path::Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    let bytes = serde_json::to_vec_pretty(m).map_err(|e| fail(e.into()))?;
    tmp.write_all(&bytes).and_then(|()| tmp.as_file().sync_all()).map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// The helper that keeps `key`'s credential in this config, if any.
fn helper_for(m: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    let wanted = normalise_key(key);
    let by_registry = m
        .get("credHelpers")
        .and_then(serde_json::Value::as_object)
        .and_then(|h| h.iter().find(|(k, _)| normalise_key(k) == wanted))
        .and_then(|(_, v)| v.as_str());
    by_registry.or_else(|| m.get("credsStore").and_then(serde_json::Value::as_str)).map(str::to_owned)
}

impl DockerConfig {
    /// Stores a credential for `registry` the way `docker login` does:
    /// through the helper the config file at `path` names for it
    /// (`credHelpers`, else `credsStore`), else base64 in its `auths`, the
    /// file rewritten atomically with mode 0600 and every other key kept.
    /// An identity token is kept as docker keeps it (`identitytoken`, or
    /// the user `<token>` for a helper).
    ///
    /// # Errors
    /// [`StoreError`]: an unreadable or unwritable file, a failing helper.
    pub fn store(&self, path: &std::path::Path, registry: &str, credential: &Credential) -> Result<Stored, StoreError> {
        match credential {
            Credential::Basic { username, password } => self.store_entry(path, registry, username, password, None),
            Credential::IdentityToken(t) => self.store_entry(path, registry, "<token>", t, Some("identitytoken")),
            Credential::RegistryToken(t) => self.store_entry(path, registry, "<token>", t, Some("registrytoken")),
        }
    }

    /// Stores the identity token a login gave ([`crate::Login`]) for
    /// `username` as `docker login` does: the helper gets the user
    /// `<token>` and the token as its secret; the file keeps `auth` as
    /// `username:` (no password) beside `identitytoken`, the form docker
    /// writes and skopeo and podman read.
    ///
    /// # Errors
    /// [`StoreError`]: an unreadable or unwritable file, a failing helper.
    pub fn store_identity_token(
        &self,
        path: &std::path::Path,
        registry: &str,
        username: &str,
        token: &str,
    ) -> Result<Stored, StoreError> {
        self.store_entry(path, registry, username, token, Some("identitytoken"))
    }

    /// `user` and `secret` (a password, or a token kept in `token_field`).
    fn store_entry(
        &self,
        path: &std::path::Path,
        registry: &str,
        user: &str,
        secret: &str,
        token_field: Option<&str>,
    ) -> Result<Stored, StoreError> {
        let key = config_key(registry);
        let mut m = read_object(path)?;
        if let Some(helper) = helper_for(&m, &key) {
            let user = if token_field.is_some() { "<token>" } else { user };
            let input = serde_json::json!({"ServerURL": key, "Username": user, "Secret": secret}).to_string();
            self.helper_command(&helper, "store", &input)?;
            return Ok(Stored::Helper(helper));
        }
        let mut entry = serde_json::Map::new();
        // a token's entry keeps the user without a password, as docker writes it
        let pair = if token_field.is_some() { format!("{user}:") } else { format!("{user}:{secret}") };
        entry.insert("auth".into(), base64::engine::general_purpose::STANDARD.encode(pair).into());
        if let Some(field) = token_field {
            entry.insert(field.into(), secret.into());
        }
        let auths = m.entry("auths").or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if !auths.is_object() {
            *auths = serde_json::Value::Object(serde_json::Map::new());
        }
        if let Some(a) = auths.as_object_mut() {
            // one entry per registry: other spellings of its key go
            a.retain(|k, _| normalise_key(k) != normalise_key(&key));
            a.insert(key, serde_json::Value::Object(entry));
        }
        write_object(path, &m)?;
        Ok(Stored::File(path.to_owned()))
    }

    /// Erases `registry`'s credential the way `docker logout` does: from
    /// its helper, else from the file's `auths` (every spelling of its
    /// key). Returns where it was, `None` when nothing was stored.
    ///
    /// # Errors
    /// [`StoreError`]: an unreadable or unwritable file, a failing helper.
    pub fn erase(&self, path: &std::path::Path, registry: &str) -> Result<Option<Stored>, StoreError> {
        let key = config_key(registry);
        let mut m = read_object(path)?;
        if let Some(helper) = helper_for(&m, &key) {
            self.helper_command(&helper, "erase", &key)?;
            return Ok(Some(Stored::Helper(helper)));
        }
        let Some(auths) = m.get_mut("auths").and_then(serde_json::Value::as_object_mut) else { return Ok(None) };
        let before = auths.len();
        auths.retain(|k, _| normalise_key(k) != normalise_key(&key));
        if auths.len() == before {
            return Ok(None);
        }
        write_object(path, &m)?;
        Ok(Some(Stored::File(path.to_owned())))
    }

    /// `docker-credential-<name> <action>` (`store`, `erase`) with `input`.
    fn helper_command(&self, name: &str, action: &str, input: &str) -> Result<(), CredentialError> {
        let run = self.run_helper_process(name, action, input)?;
        if run.status.success() { Ok(()) } else { Err(helper_failed(name.to_owned(), run.status, &run.stderr)) }
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
    fn login_stores_in_auths_keeping_every_other_key_and_logout_erases() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "config.json",
            r#"{"psFormat": "table {{.ID}}", "auths": {"other.example": {"auth": "eDp5"}}}"#,
        );
        let c = DockerConfig::default();
        let stored = c.store(&p, "localhost:5000", &Credential::basic("u", "p:w")).unwrap();
        assert_eq!(stored, Stored::File(p.clone()));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("psFormat") && text.contains("other.example"), "{text}");
        let read = DockerConfig::from_paths(std::slice::from_ref(&p)).unwrap();
        assert_eq!(read.credential("localhost:5000", "a").unwrap(), Some(Credential::basic("u", "p:w")));
        // Docker Hub under docker's key, whatever name it is given by
        c.store(&p, "index.docker.io", &Credential::basic("hub", "pw")).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("\"https://index.docker.io/v1/\""));
        let read = DockerConfig::from_paths(std::slice::from_ref(&p)).unwrap();
        assert_eq!(read.credential("docker.io", "library/x").unwrap(), Some(Credential::basic("hub", "pw")));
        // an identity token as docker keeps it
        c.store(&p, "ghcr.io", &Credential::IdentityToken("refresh".into())).unwrap();
        let read = DockerConfig::from_paths(std::slice::from_ref(&p)).unwrap();
        assert_eq!(read.credential("ghcr.io", "x").unwrap(), Some(Credential::IdentityToken("refresh".into())));
        // logout takes it out, and only it
        assert_eq!(c.erase(&p, "docker.io").unwrap(), Some(Stored::File(p.clone())));
        assert_eq!(c.erase(&p, "docker.io").unwrap(), None);
        let read = DockerConfig::from_paths(std::slice::from_ref(&p)).unwrap();
        assert_eq!(read.credential("docker.io", "library/x").unwrap(), None);
        assert_eq!(read.credential("localhost:5000", "a").unwrap(), Some(Credential::basic("u", "p:w")));
        // a missing file is made, in a directory of the user's alone
        let fresh = d.path().join("new/config.json");
        c.store(&fresh, "localhost:5000", &Credential::basic("u", "p")).unwrap();
        assert_eq!(std::fs::metadata(d.path().join("new")).unwrap().permissions().mode() & 0o777, 0o700);
        // a file that is not a config is left alone
        let bad = write(d.path(), "bad.json", "[1]");
        assert!(matches!(
            c.store(&bad, "x.example", &Credential::basic("u", "p")),
            Err(StoreError::NotAnObject { .. })
        ));
        assert_eq!(std::fs::read_to_string(&bad).unwrap(), "[1]");
    }

    #[test]
    fn login_stores_through_the_configured_helper_and_leaves_auths_alone() {
        let d = tempfile::tempdir().unwrap();
        helper(d.path(), "keeps", "cat > \"$(dirname \"$0\")/$1.in\"");
        let config = r#"{"credHelpers": {"localhost:5000": "keeps"}, "auths": {"other.example": {"auth": "eDp5"}}}"#;
        let p = write(d.path(), "config.json", config);
        let c = DockerConfig::default().with_helper_dirs(vec![d.path().to_owned()]);
        assert_eq!(
            c.store(&p, "localhost:5000", &Credential::basic("u", "pw")).unwrap(),
            Stored::Helper("keeps".into())
        );
        let sent: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("store.in")).unwrap()).unwrap();
        assert_eq!(sent, serde_json::json!({"ServerURL": "localhost:5000", "Username": "u", "Secret": "pw"}));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), config, "the file is untouched");
        assert_eq!(c.erase(&p, "localhost:5000").unwrap(), Some(Stored::Helper("keeps".into())));
        assert_eq!(std::fs::read_to_string(d.path().join("erase.in")).unwrap(), "localhost:5000");
        // a helper that fails is an error naming it
        helper(d.path(), "broken", "echo 'keychain locked' >&2; exit 3");
        let p = write(d.path(), "broken.json", r#"{"credsStore": "broken"}"#);
        let e = c.store(&p, "x.example", &Credential::basic("u", "pw")).unwrap_err();
        assert!(e.to_string().contains("broken"), "{e}");
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
        assert_eq!(
            c.credential("docker.io", "library/nginx").unwrap(),
            Some(Credential::basic("hub-user", "hub-pass"))
        );
        assert_eq!(c.credential("quay.io", "team/app").unwrap(), Some(Credential::basic("q", "team-only")));
        assert_eq!(c.credential("quay.io", "other/app").unwrap(), Some(Credential::basic("q", "general")));
        assert_eq!(c.credential("ghcr.io", "x/y").unwrap(), Some(Credential::IdentityToken("refresh-me".into())));
        assert_eq!(c.credential("example.com", "x").unwrap(), None);
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
        assert_eq!(
            c.credential("registry.example.com", "a").unwrap(),
            Some(Credential::basic("helper-user", "helper-secret"))
        );
        assert_eq!(c.credential("other.example.com", "a").unwrap(), None, "the store answers not found");
    }

    fn helper(dir: &Path, name: &str, script: &str) {
        let p = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn failing_hanging_and_junk_helpers_are_errors_naming_the_helper() {
        let d = tempfile::tempdir().unwrap();
        helper(d.path(), "hangs", "sleep 60");
        helper(d.path(), "fails", "echo 'keychain locked: unlock it first' >&2; exit 1");
        helper(d.path(), "junk", "echo 'this is not json'");
        helper(
            d.path(),
            "counts",
            "echo run >> \"$(dirname \"$0\")/runs\"; printf '{\"Username\":\"u\",\"Secret\":\"s\"}'",
        );
        let p = write(
            d.path(),
            "config.json",
            r#"{"credHelpers": {"hang.example": "hangs", "fail.example": "fails", "junk.example": "junk", "count.example": "counts"}}"#,
        );
        let c = DockerConfig::from_paths(&[p])
            .unwrap()
            .with_helper_dirs(vec![d.path().to_owned()])
            .with_helper_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let e = c.credential("hang.example", "a").unwrap_err();
        assert!(matches!(e, CredentialError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let e = c.credential("fail.example", "a").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("docker-credential-fails") && msg.contains("exit status 1"), "{msg}");
        assert!(msg.contains("keychain locked: unlock it first"), "{msg}");
        let e = c.credential("junk.example", "a").unwrap_err();
        assert!(matches!(e, CredentialError::Invalid { .. }) && !e.to_string().contains("this is not json"), "{e}");
        // asked once per server for the client's lifetime, errors included
        for _ in 0..3 {
            assert_eq!(c.credential("count.example", "x").unwrap(), Some(Credential::basic("u", "s")));
        }
        assert_eq!(std::fs::read_to_string(d.path().join("runs")).unwrap(), "run\n");
        let again = Instant::now();
        assert!(c.credential("hang.example", "b").is_err());
        assert!(again.elapsed() < Duration::from_millis(100), "a hung helper is asked again");
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
