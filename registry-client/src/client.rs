//! The client: configuration, repositories, scheme selection (HTTPS, plain
//! HTTP for loopback and the hosts allowed it), URLs, and authentication
//! (challenges, tokens, credentials). The send loop is in [`crate::transport`].

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, LOCATION};
use rustls::pki_types::pem::PemObject as _;
use url::Url;

use oci_image::Repository;

use crate::auth::{Anonymous, Challenge, Credential, CredentialProvider, TokenCache, TokenResponse, parse_challenge};
use crate::error::{Error, ErrorKind, Result, kind_for_status};
use crate::progress::{Progress, ProgressFn};
use crate::transport::read_capped_idle;

/// The default of [`ClientBuilder::max_download_size`]: 4 GiB.
pub const DEFAULT_MAX_DOWNLOAD: u64 = 4 << 30;

/// Request bodies larger than this go through the upload client, watched
/// for progress.
pub(crate) const LARGE_BODY: usize = 256 * 1024;

/// How often and how long to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The first backoff; doubled each retry, with jitter.
    pub base_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one fails as rate limited.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    credentials: Arc<dyn CredentialProvider>,
    insecure_hosts: BTreeSet<String>,
    ca_pems: Vec<Vec<u8>>,
    retry: RetryPolicy,
    concurrency: usize,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_download: u64,
    progress: Option<ProgressFn>,
    chunk_size: Option<u64>,
    single_request_uploads: bool,
    streamed_uploads: bool,
    proxy: Option<String>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("insecure_hosts", &self.insecure_hosts)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            credentials: Arc::new(Anonymous),
            insecure_hosts: BTreeSet::new(),
            ca_pems: Vec::new(),
            retry: RetryPolicy::default(),
            concurrency: 4,
            timeout: None,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_download: DEFAULT_MAX_DOWNLOAD,
            progress: None,
            chunk_size: None,
            single_request_uploads: false,
            streamed_uploads: false,
            proxy: None,
        }
    }
}

impl ClientBuilder {
    /// Where credentials come from (default: anonymous).
    #[must_use]
    pub fn credentials(mut self, provider: impl CredentialProvider + 'static) -> Self {
        self.credentials = Arc::new(provider);
        self
    }

    /// Allows plain HTTP (and falls back to it) for a non-loopback host
    /// (`host[:port]`). Loopback hosts are always allowed.
    #[must_use]
    pub fn insecure_host(mut self, host: impl Into<String>) -> Self {
        self.insecure_hosts.insert(host.into());
        self
    }

    /// Trusts an extra CA certificate (PEM) besides the system roots.
    #[must_use]
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// The retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Blobs transferred at once in a push or pull (default 4).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// A total timeout per request (default none: blobs can be large).
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The connect timeout (default 30 s).
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long a request may make no progress (default 30 s): no byte of
    /// an answer arriving, or of an upload leaving, for this long fails it
    /// ([`ErrorKind::Transport`], retried where the request is
    /// idempotent; an upload restarts). Transfers of any length go on as
    /// long as bytes move.
    #[must_use]
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t.max(Duration::from_millis(1));
        self
    }

    /// The most bytes [`Client::download`] accepts from one URL (default
    /// [`DEFAULT_MAX_DOWNLOAD`]): a body without a size the protocol fixes
    /// must not fill the disk.
    #[must_use]
    pub fn max_download_size(mut self, bytes: u64) -> Self {
        self.max_download = bytes;
        self
    }

    /// Receives progress events.
    #[must_use]
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Uploads blobs in `PATCH` chunks of this size (raised to the
    /// registry's `OCI-Chunk-Min-Length`) instead of one monolithic `PUT`.
    #[must_use]
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = Some(bytes.max(1));
        self
    }

    /// Tries a single-request monolithic upload (`POST ?digest=` with the
    /// body) first; a registry that answers 202 gets the body by `PUT`.
    #[must_use]
    pub fn single_request_uploads(mut self, yes: bool) -> Self {
        self.single_request_uploads = yes;
        self
    }

    /// Uploads each blob as one streamed `PATCH` (chunked transfer
    /// encoding) followed by `PUT ?digest=`, instead of a monolithic `PUT`.
    #[must_use]
    pub fn streamed_uploads(mut self, yes: bool) -> Self {
        self.streamed_uploads = yes;
        self
    }

    /// Sends every request through this proxy URL (otherwise the
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` environment applies).
    #[must_use]
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`ErrorKind::Invalid`] for an unusable CA certificate or proxy URL.
    pub fn build(self) -> Result<Client> {
        // extra CAs are checked now, so a bad PEM fails the build, not the first request
        let mut extra = Vec::new();
        for pem in &self.ca_pems {
            let before = extra.len();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                extra.push(
                    cert.map_err(|e| Error::new(ErrorKind::Invalid, format!("invalid CA certificate PEM: {e}")))?,
                );
            }
            if extra.len() == before {
                return Err(Error::new(ErrorKind::Invalid, "CA certificate PEM holds no certificate"));
            }
        }
        let mut check = rustls::RootCertStore::empty();
        for cert in &extra {
            check
                .add(cert.clone())
                .map_err(|e| Error::new(ErrorKind::Invalid, format!("unusable CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // the system roots are read on the first certificate to check (see tls.rs);
        // the verifier itself is rustls's WebPKI verifier
        let verifier = Arc::new(crate::tls::LazyRoots::new(extra, provider.clone()));
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("TLS set-up: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // two clients on one configuration: reqwest's read timeout restarts
        // on every byte read, but until the answer's head it is a deadline
        // from the request's start, which a long upload would miss; uploads
        // go through a client without it, watched by `send` instead
        let make = |read_timeout: Option<Duration>| -> Result<reqwest::Client> {
            let mut http = reqwest::Client::builder()
                .tls_backend_preconfigured(tls.clone())
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(self.connect_timeout)
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
            if let Some(t) = read_timeout {
                http = http.read_timeout(t);
            }
            if let Some(t) = self.timeout {
                http = http.timeout(t);
            }
            if let Some(p) = &self.proxy {
                let proxy = reqwest::Proxy::all(p).map_err(|_| Error::new(ErrorKind::Invalid, "invalid proxy URL"))?;
                http = http.proxy(proxy);
            }
            http.build().map_err(|e| Error::transport("building the HTTP client", &e))
        };
        let http = make(Some(self.idle_timeout))?;
        let upload_http = make(None)?;
        Ok(Client {
            progress: self.progress,
            inner: Arc::new(Inner {
                http,
                upload_http,
                idle: self.idle_timeout,
                max_download: self.max_download,
                credentials: self.credentials,
                tokens: TokenCache::default(),
                basic_hosts: Mutex::new(BTreeSet::new()),
                schemes: Mutex::new(HashMap::new()),
                insecure_hosts: self.insecure_hosts,
                retry: self.retry,
                concurrency: self.concurrency,
                chunk_size: self.chunk_size,
                single_request_uploads: self.single_request_uploads,
                streamed_uploads: self.streamed_uploads,
            }),
        })
    }
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    /// The same client without a read timeout, for requests with large
    /// bodies (watched for progress by [`Client::send`]).
    pub(crate) upload_http: reqwest::Client,
    /// [`ClientBuilder::idle_timeout`].
    pub(crate) idle: Duration,
    /// [`ClientBuilder::max_download_size`].
    pub(crate) max_download: u64,
    credentials: Arc<dyn CredentialProvider>,
    pub(crate) tokens: TokenCache,
    basic_hosts: Mutex<BTreeSet<String>>,
    schemes: Mutex<HashMap<String, &'static str>>,
    insecure_hosts: BTreeSet<String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) concurrency: usize,
    pub(crate) chunk_size: Option<u64>,
    pub(crate) single_request_uploads: bool,
    pub(crate) streamed_uploads: bool,
}

/// An OCI distribution client. Cheap to clone; clones share connections
/// and the token cache.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// [`ClientBuilder::progress`], or [`Client::with_progress`]'s.
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("insecure_hosts", &self.inner.insecure_hosts).finish_non_exhaustive()
    }
}

/// Where a request goes, for its scheme, credentials and token scope: a
/// repository, or a registry as a whole (the catalog).
pub(crate) trait Endpoint: Send + Sync {
    /// The registry as references name it.
    fn registry(&self) -> &str;
    /// The repository path; empty for the registry as a whole.
    fn path(&self) -> &str;
    /// The host to talk to.
    fn api_host(&self) -> &str;
}

impl Endpoint for Repository {
    fn registry(&self) -> &str {
        Repository::registry(self)
    }

    fn path(&self) -> &str {
        Repository::path(self)
    }

    fn api_host(&self) -> &str {
        Repository::api_host(self)
    }
}

/// A registry as a whole, for requests that name no repository.
pub(crate) struct RegistryRoot(pub(crate) String);

impl Endpoint for RegistryRoot {
    fn registry(&self) -> &str {
        &self.0
    }

    fn path(&self) -> &'static str {
        ""
    }

    fn api_host(&self) -> &str {
        if self.0 == oci_image::DOCKER_HUB { "registry-1.docker.io" } else { &self.0 }
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.strip_prefix('[').and_then(|h| h.split_once(']')).map_or_else(
        || host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host }),
        |(h, _)| h,
    );
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// A client with default settings (anonymous).
    ///
    /// # Errors
    /// See [`ClientBuilder::build`].
    pub fn new() -> Result<Client> {
        ClientBuilder::default().build()
    }

    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// This client (sharing its connections and token cache) with its
    /// progress events going to `f` as well (after the callback it had, if
    /// any): one client, each transfer reporting to its own observer.
    #[must_use]
    pub fn with_progress(&self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Client {
        let before = self.progress.clone();
        let both = move |p: &Progress| {
            if let Some(b) = &before {
                b(p);
            }
            f(p);
        };
        Client { inner: Arc::clone(&self.inner), progress: Some(Arc::new(both)) }
    }

    pub(crate) fn emit(&self, p: &Progress) {
        if let Some(f) = &self.progress {
            f(p);
        }
    }

    fn allows_http(&self, host: &str) -> bool {
        is_loopback(host) || self.inner.insecure_hosts.contains(host)
    }

    /// Whether plain HTTP to `url` (whose host is `host`) is allowed.
    pub(crate) fn allows_http_url(&self, url: &Url, host: &str) -> bool {
        self.allows_http(&authority(url, host))
    }

    /// `scheme://host/v2/` for a repository's registry: HTTPS, except that a
    /// loopback or insecure host that does not speak TLS is used over HTTP.
    pub(crate) async fn base_url(&self, repo: &dyn Endpoint) -> Result<Url> {
        let host = repo.api_host().to_owned();
        let cached = self.inner.schemes.lock().ok().and_then(|m| m.get(&host).copied());
        let scheme = match cached {
            Some(s) => s,
            None if !self.allows_http(&host) => "https",
            None => {
                let https = Url::parse(&format!("https://{host}/v2/"))
                    .map_err(|_| Error::new(ErrorKind::Invalid, format!("invalid registry host {host:?}")))?;
                let s = match self.inner.http.get(https).send().await {
                    Ok(_) => "https",
                    Err(_) => "http",
                };
                if let Ok(mut m) = self.inner.schemes.lock() {
                    m.insert(host.clone(), s);
                }
                s
            }
        };
        Url::parse(&format!("{scheme}://{host}/v2/"))
            .map_err(|_| Error::new(ErrorKind::Invalid, format!("invalid registry host {host:?}")))
    }

    pub(crate) async fn url(&self, repo: &dyn Endpoint, tail: &str) -> Result<Url> {
        let base = self.base_url(repo).await?;
        base.join(&format!("{}/{tail}", repo.path()))
            .map_err(|_| Error::new(ErrorKind::Invalid, format!("invalid repository path {:?}", repo.path())))
    }

    /// Resolves a `Location` header against the request URL, refusing a
    /// plain-HTTP target the caller did not allow.
    pub(crate) fn resolve_location(&self, base: &Url, headers: &HeaderMap) -> Result<Url> {
        let loc = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "registry answered without a Location header"))?;
        let url = base
            .join(loc)
            .map_err(|_| Error::new(ErrorKind::Protocol, format!("registry sent an invalid Location {loc:?}")))?;
        if url.scheme() == "http" && !url.host_str().is_some_and(|h| self.allows_http(&authority(&url, h))) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("refusing plain-HTTP location on host {:?}", url.host_str()),
            ));
        }
        Ok(url)
    }

    /// Resolves the `Location` of an upload session, which must stay on the
    /// host (scheme, name and port) the session was opened on: the blob's
    /// bytes never go to a host the caller did not name.
    pub(crate) fn resolve_upload_location(&self, base: &Url, headers: &HeaderMap) -> Result<Url> {
        let url = self.resolve_location(base, headers)?;
        if url.origin() != base.origin() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "registry {} moved an upload session to another host ({}); refusing to send the blob there",
                    base.origin().ascii_serialization(),
                    url.origin().ascii_serialization()
                ),
            ));
        }
        Ok(url)
    }

    pub(crate) fn scope_key(scopes: &[String]) -> String {
        scopes.join(" ")
    }

    /// The credential for `repo`, asked of the provider only when a
    /// request needs one (a registry that never challenges never makes a
    /// credential helper run).
    fn credential(&self, repo: &dyn Endpoint) -> Result<Option<Credential>> {
        self.inner.credentials.credential(repo.registry(), repo.path()).map_err(|e| {
            Error::new(ErrorKind::Credentials, format!("credentials for {}: {e}", repo.registry())).with_source(e)
        })
    }

    pub(crate) fn auth_header(&self, repo: &dyn Endpoint, scopes: &[String]) -> Result<Option<HeaderValue>> {
        let registry = repo.registry();
        if let Some(t) = self.inner.tokens.get(registry, &Self::scope_key(scopes)) {
            return Ok(bearer(&t));
        }
        let is_basic = self.inner.basic_hosts.lock().is_ok_and(|h| h.contains(registry));
        if !is_basic {
            return Ok(None);
        }
        Ok(match self.credential(repo)? {
            Some(Credential::Basic { username, password }) => basic(&username, &password),
            _ => None,
        })
    }

    /// Handles a 401: learns the scheme, fetches a token when needed.
    /// Returns the `Authorization` value to send next, or `None` when the
    /// challenge cannot be answered.
    pub(crate) async fn authenticate(
        &self,
        repo: &dyn Endpoint,
        scopes: &[String],
        challenge: Option<&str>,
        login: Option<&crate::transport::IdentitySlot>,
    ) -> Result<Option<HeaderValue>> {
        let registry = repo.registry();
        let Some(challenge) = challenge.and_then(parse_challenge) else { return Ok(None) };
        let credential = self.credential(repo)?;
        match challenge {
            Challenge::Basic => {
                if let Ok(mut h) = self.inner.basic_hosts.lock() {
                    h.insert(registry.to_owned());
                }
                Ok(match credential {
                    Some(Credential::Basic { username, password }) => basic(&username, &password),
                    _ => None,
                })
            }
            Challenge::Bearer { realm, service, scope, error } => {
                let mut wanted: Vec<String> = scopes.to_vec();
                if let Some(s) = scope {
                    for part in s.split(' ') {
                        if !wanted.iter().any(|w| w == part) {
                            wanted.push(part.to_owned());
                        }
                    }
                }
                let key = Self::scope_key(scopes);
                if error.as_deref() == Some("insufficient_scope") {
                    self.inner.tokens.forget(registry, &key);
                }
                let offline = login.is_some();
                let (token, lifetime, identity) =
                    self.fetch_token(&realm, service.as_deref(), &wanted, credential.as_ref(), offline).await?;
                if let (Some(slot), Some(identity)) = (login, identity)
                    && let Ok(mut slot) = slot.lock()
                {
                    *slot = Some(identity);
                }
                let header = bearer(&token);
                self.inner.tokens.put(registry, &key, token, lifetime);
                Ok(header)
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        credential: Option<&Credential>,
        offline: bool,
    ) -> Result<(String, Duration, Option<String>)> {
        let mut url = Url::parse(realm)
            .map_err(|_| Error::new(ErrorKind::Protocol, format!("registry sent an invalid token realm {realm:?}")))?;
        if url.scheme() == "http" && !url.host_str().is_some_and(|h| self.allows_http(&authority(&url, h))) {
            return Err(Error::new(ErrorKind::Invalid, "refusing a plain-HTTP token realm on a non-loopback host"));
        }
        let resp = match credential {
            Some(Credential::IdentityToken(refresh)) => {
                let mut form: Vec<(&str, String)> = vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", refresh.clone()),
                    ("client_id", "kiln".into()),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_owned()));
                }
                for s in scopes {
                    form.push(("scope", s.clone()));
                }
                let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
                self.inner
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
            }
            Some(Credential::RegistryToken(t)) => return Ok((t.clone(), Duration::from_secs(3600), None)),
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                    // `docker login`: an identity token to keep instead of the password
                    if offline && matches!(other, Some(Credential::Basic { .. })) {
                        q.append_pair("offline_token", "true");
                        q.append_pair("client_id", "kiln");
                    }
                }
                let mut req = self.inner.http.get(url);
                if let Some(Credential::Basic { username, password }) = other {
                    req = req.basic_auth(username, Some(password));
                }
                req.send().await
            }
        }
        .map_err(|e| Error::transport("requesting a token", &e))?;
        let status = resp.status();
        if !status.is_success() {
            let kind = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                ErrorKind::Unauthorized
            } else {
                kind_for_status(status.as_u16())
            };
            return Err(Error::new(kind, "the token server refused the credentials").with_status(status.as_u16()));
        }
        let body = read_capped_idle(resp, 1024 * 1024, self.inner.idle, "reading a token").await?;
        let answer = serde_json::from_slice::<TokenResponse>(&body).map_err(|_| {
            Error::new(ErrorKind::Protocol, "the token server answered with something that is not JSON")
        })?;
        let identity = answer.refresh_token.clone().filter(|t| offline && !t.is_empty());
        let (token, lifetime) = answer
            .into_token()
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "the token server answered without a token"))?;
        Ok((token, lifetime, identity))
    }
}

/// Whether `url` points at `host` (`name[:port]`, `[v6][:port]`).
pub(crate) fn same_host(url: &Url, host: &str) -> bool {
    url.host_str().is_some_and(|h| {
        let a = authority(url, h);
        a == host || (url.port().is_none() && url.port_or_known_default().is_some_and(|p| format!("{a}:{p}") == host))
    })
}

fn authority(url: &Url, host: &str) -> String {
    match url.port() {
        Some(p) if host.contains(':') && !host.starts_with('[') => format!("[{host}]:{p}"),
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// A URL without user info or query (uploads carry state tokens there).
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn basic(user: &str, pass: &str) -> Option<HeaderValue> {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v = HeaderValue::from_str(&format!("Basic {enc}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for h in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "[::1]"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "[fe80::1]:5000", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn hosts_compare_with_ports() {
        let u = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert!(same_host(&u, "127.0.0.1:5000"));
        assert!(!same_host(&u, "127.0.0.1:5001"));
        assert!(same_host(&Url::parse("http://[::1]:5000/v2/").unwrap(), "[::1]:5000"));
        assert!(same_host(&Url::parse("https://registry-1.docker.io/v2/").unwrap(), "registry-1.docker.io"));
        assert!(!same_host(&Url::parse("https://cdn.example.com/blob").unwrap(), "registry-1.docker.io"));
    }

    #[test]
    fn redaction() {
        let u = Url::parse("https://u:p@host/v2/a/blobs/uploads/x?_state=secret").unwrap();
        assert_eq!(redact(&u), "https://host/v2/a/blobs/uploads/x");
    }
}
