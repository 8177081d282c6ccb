//! Credentials, the `CredentialProvider` trait, `WWW-Authenticate`
//! challenges and the bearer-token cache.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A credential for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// User name and password (or a personal access token).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An `OAuth2` refresh token (docker's `identitytoken`), exchanged with
    /// the `refresh_token` grant.
    IdentityToken(String),
    /// A ready bearer token sent as is (docker's `registrytoken`).
    RegistryToken(String),
}

impl Credential {
    /// A user name and password.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential::Basic { username: username.into(), password: password.into() }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// A source of credentials: docker's config, podman's auth file, a vault...
pub trait CredentialProvider: Send + Sync {
    /// The credential for `repository` (a path like `team/app`) on
    /// `registry` (a host like `ghcr.io` or `localhost:5000`, `docker.io`
    /// for Docker Hub), or `None` for anonymous access.
    ///
    /// # Errors
    /// [`CredentialError`] when the source could not answer (a credential
    /// helper that failed, hung or printed junk): the request fails with it
    /// rather than going on anonymously.
    fn credential(&self, registry: &str, repository: &str) -> Result<Option<Credential>, CredentialError>;
}

/// Why a credential source could not answer. Never carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// A `docker-credential-<helper>` exited with an error (docker's own
    /// wording, with what the helper printed on stderr).
    #[error("error getting credentials from docker-credential-{helper} - err: {status}, out: `{output}`")]
    Helper {
        /// The helper's name.
        helper: String,
        /// How it ended (`exit status 1`).
        status: String,
        /// What it printed on stderr (trimmed, cut off at 1000 bytes).
        output: String,
    },
    /// A helper gave no answer in time; it was killed.
    #[error("docker-credential-{helper} gave no answer within {}s", timeout.as_secs_f32())]
    Timeout {
        /// The helper's name.
        helper: String,
        /// The time it had.
        timeout: Duration,
    },
    /// A helper answered with something that is not a credential.
    #[error("docker-credential-{helper} answered with something that is not a credential: {why}")]
    Invalid {
        /// The helper's name.
        helper: String,
        /// What was wrong with it (never its content).
        why: String,
    },
    /// A helper could not be run.
    #[error("cannot run docker-credential-{helper}: {cause}")]
    Start {
        /// The helper's name.
        helper: String,
        /// Why.
        cause: String,
    },
    /// Another credential source failed.
    #[error("credential source failed")]
    Source(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
}

/// No credentials: anonymous access only.
#[derive(Debug, Default, Clone, Copy)]
pub struct Anonymous;

impl CredentialProvider for Anonymous {
    fn credential(&self, _: &str, _: &str) -> Result<Option<Credential>, CredentialError> {
        Ok(None)
    }
}

/// Fixed credentials per registry host.
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials {
    by_registry: BTreeMap<String, Credential>,
}

impl StaticCredentials {
    /// An empty set.
    pub fn new() -> Self {
        StaticCredentials::default()
    }

    /// Adds a credential for a registry host.
    #[must_use]
    pub fn with(mut self, registry: impl Into<String>, credential: Credential) -> Self {
        self.by_registry.insert(registry.into(), credential);
        self
    }
}

impl CredentialProvider for StaticCredentials {
    fn credential(&self, registry: &str, _: &str) -> Result<Option<Credential>, CredentialError> {
        Ok(self.by_registry.get(registry).cloned())
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String>, error: Option<String> },
}

/// Parses the first usable challenge of a `WWW-Authenticate` header.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
                error: params.get("error").cloned(),
            })
        }
        _ => None,
    }
}

/// `key="quoted, value",key2=token` pairs.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
    out
}

/// Bearer tokens cached per registry and scope set, until shortly before expiry.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl TokenCache {
    pub(crate) fn get(&self, registry: &str, scopes: &str) -> Option<String> {
        let map = self.tokens.lock().ok()?;
        let (token, expires) = map.get(&(registry.to_owned(), scopes.to_owned()))?;
        (Instant::now() < *expires).then(|| token.clone())
    }

    pub(crate) fn put(&self, registry: &str, scopes: &str, token: String, lifetime: Duration) {
        // refresh a little early so a token never expires mid-request
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        if let Ok(mut map) = self.tokens.lock() {
            map.insert(
                (registry.to_owned(), scopes.to_owned()),
                (token, Instant::now() + lifetime.saturating_sub(margin)),
            );
        }
    }

    pub(crate) fn forget(&self, registry: &str, scopes: &str) {
        if let Ok(mut map) = self.tokens.lock() {
            map.remove(&(registry.to_owned(), scopes.to_owned()));
        }
    }

    /// Forgets `token` if it is still the one cached: a request refused
    /// with an old token must not throw away the fresh one another
    /// request has fetched meanwhile.
    pub(crate) fn forget_token(&self, registry: &str, scopes: &str, token: &str) {
        if let Ok(mut map) = self.tokens.lock() {
            let key = (registry.to_owned(), scopes.to_owned());
            if map.get(&key).is_some_and(|(cached, _)| cached == token) {
                map.remove(&key);
            }
        }
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCache(<redacted>)")
    }
}

/// A token endpoint's answer.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// An identity token, given when `offline_token=true` was asked.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl TokenResponse {
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.filter(|t| !t.is_empty()).or(self.access_token)?;
        // the distribution spec: 60 seconds when unspecified
        Some((token, Duration::from_secs(self.expires_in.unwrap_or(60).max(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push",error="insufficient_scope""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
                error: Some("insufficient_scope".into()),
            })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "a realm is required");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::basic("me", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::IdentityToken("tok-123".into())).contains("tok-123"));
    }

    #[test]
    fn token_cache_expires() {
        let cache = TokenCache::default();
        cache.put("r", "s", "t".into(), Duration::from_secs(60));
        assert_eq!(cache.get("r", "s").as_deref(), Some("t"));
        cache.put("r", "s2", "t2".into(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get("r", "s2"), None);
        // a refused token that is no longer the cached one leaves the cache alone
        cache.forget_token("r", "s", "old");
        assert_eq!(cache.get("r", "s").as_deref(), Some("t"));
        cache.forget_token("r", "s", "t");
        assert_eq!(cache.get("r", "s"), None);
        cache.put("r", "s", "t".into(), Duration::from_secs(60));
        cache.forget("r", "s");
        assert_eq!(cache.get("r", "s"), None);
    }
}
