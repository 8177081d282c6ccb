//! Credentials never leak: push, pull and copy against real registries with
//! basic auth, token auth over TLS (rustls), token auth behind the fault
//! proxy (re-authentication after injected 401s, retries) and an OAuth2
//! refresh token, with every span, event and `log` record (reqwest,
//! hyper-util, rustls) captured at TRACE, and with refused credentials forced. No
//! password, refresh token, JWT, base64 basic credential or `Authorization`
//! value appears in any captured line, progress event, or error's
//! `Display`/`Debug` and source chain.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use oci_image::{Descriptor, Layout, Reference};
use registry_client::{Client, ClientBuilder, Credential, ErrorKind, Repository, RetryPolicy, StaticCredentials};
use testkit::{Fault, FaultPlan, FaultProxy, Registry, RegistryOptions, TokenAuth};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::image;

const BASIC_USER: &str = "leak-basic-user";
const BASIC_PASSWORD: &str = "Basic-S3cret-4d1f9e";
const TOKEN_USER: &str = "leak-token-user";
const TOKEN_PASSWORD: &str = "Token-S3cret-8b2c7a";
const REFRESH_TOKEN: &str = "Refresh-S3cret-5e0d31";
const WRONG_PASSWORD: &str = "Wrong-S3cret-0a9b8c";

/// Everything the fmt layer writes while recording is on, kept in memory.
#[derive(Clone, Default)]
struct Captured {
    text: Arc<Mutex<Vec<u8>>>,
    on: Arc<AtomicBool>,
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.on.load(Ordering::SeqCst) {
            self.text.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The process-wide capture: the global subscriber at TRACE, with
    /// `log` records bridged in. Global rather than scoped to this test's
    /// thread: tracing caches a callsite's interest for every thread when
    /// another test's thread (without a subscriber) reaches it first, which
    /// would silently hide those events from a scoped subscriber.
    fn global() -> &'static Captured {
        static CAPTURED: OnceLock<Captured> = OnceLock::new();
        CAPTURED.get_or_init(|| {
            let captured = Captured::default();
            let sink = captured.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_span_events(FmtSpan::FULL)
                .with_ansi(false)
                .with_writer(move || sink.clone())
                .finish()
                .try_init()
                .expect("no other global subscriber in this test binary");
            captured
        })
    }

    fn start(&self) {
        self.text.lock().unwrap().clear();
        self.on.store(true, Ordering::SeqCst);
    }

    /// Stops recording and returns what was written (other tests running
    /// meanwhile are in it too; their secrets are not ours).
    fn stop(&self) -> String {
        self.on.store(false, Ordering::SeqCst);
        String::from_utf8_lossy(&std::mem::take(&mut *self.text.lock().unwrap())).into_owned()
    }
}

/// What must never be seen: the secrets, their base64 basic form, and any
/// bearer token (a JWT's header always starts `eyJ`).
fn forbidden() -> Vec<String> {
    let b64 = |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    vec![
        BASIC_PASSWORD.to_owned(),
        TOKEN_PASSWORD.to_owned(),
        REFRESH_TOKEN.to_owned(),
        WRONG_PASSWORD.to_owned(),
        b64(BASIC_USER, BASIC_PASSWORD),
        b64(TOKEN_USER, TOKEN_PASSWORD),
        b64(BASIC_USER, WRONG_PASSWORD),
        b64(TOKEN_USER, WRONG_PASSWORD),
        "eyJ".to_owned(),
        "Bearer ".to_owned(),
        "Basic ".to_owned(),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for needle in forbidden() {
        if let Some(at) = text.find(&needle) {
            let line = text[..at].rsplit('\n').next().unwrap_or_default().to_owned()
                + text[at..].split('\n').next().unwrap_or_default();
            panic!("{what} leaks {needle:?}: {line}");
        }
    }
}

/// An error's `Display`, `Debug` and every source's `Display`/`Debug`.
fn error_text(e: &registry_client::Error) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{e}\n{e:?}\n");
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = cur {
        let _ = writeln!(out, "{s}\n{s:?}");
        cur = s.source();
    }
    out
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(50),
        max_retry_after: std::time::Duration::from_secs(2),
    }
}

/// A client whose progress events are kept too.
fn client_with(builder: ClientBuilder, progress: &Arc<Mutex<Vec<String>>>) -> Client {
    let p = progress.clone();
    builder.retry(quick()).progress(move |e| p.lock().unwrap().push(format!("{e:?}"))).build().unwrap()
}

/// Push, pull and copy (mounted within the registry), then list tags.
async fn flows(c: &Client, host: &str, src: &Layout, img: &Descriptor, out: &std::path::Path) {
    let a: Reference = format!("{host}/kiln/leak-a:v1").parse().unwrap();
    let b: Reference = format!("{host}/kiln/leak-b:v1").parse().unwrap();
    let pushed = c.push_from_layout(src, img, &a, None).await.unwrap();
    assert_eq!(pushed.digest.as_ref(), Some(&img.digest));
    let layout = Layout::create(out).unwrap();
    assert_eq!(c.pull_to_layout(&a, &layout, None, None).await.unwrap().digest, img.digest);
    layout.verify().unwrap();
    let copied = c.copy_between(&a, &b).await.unwrap();
    assert_eq!(copied.digest.as_ref(), Some(&img.digest));
    assert_eq!(c.list_tags(&Repository::of(&b)).await.unwrap(), vec!["v1".to_owned()]);
}

fn token_registry(tls: bool) -> Registry {
    Registry::start_with(&RegistryOptions {
        token_auth: Some(TokenAuth {
            user: TOKEN_USER.into(),
            password: TOKEN_PASSWORD.into(),
            refresh_token: Some(REFRESH_TOKEN.into()),
            ttl_secs: 300,
        }),
        tls,
        ..RegistryOptions::default()
    })
    .unwrap()
}

/// The source image, a scratch folder, and what the flows leave behind.
struct Fixture {
    dir: tempfile::TempDir,
    src: Layout,
    img: Descriptor,
    progress: Arc<Mutex<Vec<String>>>,
    errors: Vec<registry_client::Error>,
}

impl Fixture {
    fn client(&self, builder: ClientBuilder) -> Client {
        client_with(builder, &self.progress)
    }

    fn layout(&self, name: &str) -> Layout {
        Layout::create(self.dir.path().join(name)).unwrap()
    }

    /// Keeps a refusal, which must be `Unauthorized`.
    fn refused(&mut self, result: registry_client::Result<impl std::fmt::Debug>) {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        self.errors.push(err);
    }

    /// Basic auth over plain HTTP; then a wrong password. Returns the host.
    async fn basic_auth(&mut self) -> String {
        let basic = Registry::start_with(&RegistryOptions {
            basic_auth: Some((BASIC_USER.into(), BASIC_PASSWORD.into())),
            ..RegistryOptions::default()
        })
        .unwrap();
        let creds = StaticCredentials::new().with(basic.host(), Credential::basic(BASIC_USER, BASIC_PASSWORD));
        let client = self.client(Client::builder().credentials(creds));
        flows(&client, &basic.host(), &self.src, &self.img, &self.dir.path().join("basic")).await;
        let wrong = StaticCredentials::new().with(basic.host(), Credential::basic(BASIC_USER, WRONG_PASSWORD));
        let refused = self.client(Client::builder().credentials(wrong));
        let target: Reference = format!("{}/kiln/refused:v1", basic.host()).parse().unwrap();
        let result = refused.push_from_layout(&self.src, &self.img, &target, None).await;
        self.refused(result);
        let result = refused.pull_to_layout(&target, &self.layout("refused-basic"), None, None).await;
        self.refused(result);
        basic.host()
    }

    /// Token auth over TLS (rustls logs too), with a password and with a
    /// refresh token; then a wrong password and a wrong refresh token.
    async fn token_auth_over_tls(&mut self) -> String {
        let tls = token_registry(true);
        let ca = tls.ca_pem().unwrap().to_owned();
        let creds = StaticCredentials::new().with(tls.host(), Credential::basic(TOKEN_USER, TOKEN_PASSWORD));
        let client = self.client(Client::builder().credentials(creds).ca_certificate_pem(ca.clone()));
        flows(&client, &tls.host(), &self.src, &self.img, &self.dir.path().join("tls")).await;
        assert!(tls.token_server().unwrap().issued() > 0, "tokens were issued");
        let creds = StaticCredentials::new().with(tls.host(), Credential::IdentityToken(REFRESH_TOKEN.into()));
        let refreshing = self.client(Client::builder().credentials(creds).ca_certificate_pem(ca.clone()));
        let source: Reference = format!("{}/kiln/leak-a:v1", tls.host()).parse().unwrap();
        let pulled = refreshing.pull_to_layout(&source, &self.layout("refreshed"), None, None).await.unwrap();
        assert_eq!(pulled.digest, self.img.digest);
        for credential in
            [Credential::basic(TOKEN_USER, WRONG_PASSWORD), Credential::IdentityToken(WRONG_PASSWORD.into())]
        {
            let creds = StaticCredentials::new().with(tls.host(), credential);
            let refused = self.client(Client::builder().credentials(creds).ca_certificate_pem(ca.clone()));
            let result = refused.pull_to_layout(&source, &self.layout("refused-tls"), None, None).await;
            self.refused(result);
            let target: Reference = format!("{}/kiln/refused:v1", tls.host()).parse().unwrap();
            let result = refused.copy_between(&source, &target).await;
            self.refused(result);
        }
        tls.host()
    }

    /// Token auth behind the fault proxy: injected 401s force
    /// re-authentication mid-flow, 503s force (logged) retries; then a
    /// registry that refuses every fresh token. Returns the proxy's host.
    async fn token_auth_behind_faults(&mut self) -> String {
        let plain = token_registry(false);
        // one request at a time, so a token may expire from its second use
        // on: over a third of those expire it, whatever the order
        let faults = vec![Fault::ExpiredToken, Fault::ExpiredToken, Fault::ExpiredToken, Fault::Status503];
        let plan = FaultPlan { seed: 5, rate: 0.5, faults };
        let proxy = FaultProxy::start(plain.port(), plan).unwrap();
        proxy.set_token_lifetime(1);
        let creds = StaticCredentials::new().with(proxy.host(), Credential::basic(TOKEN_USER, TOKEN_PASSWORD));
        let client = self.client(Client::builder().credentials(creds).concurrency(1));
        flows(&client, &proxy.host(), &self.src, &self.img, &self.dir.path().join("faulty")).await;
        let counts = proxy.counts();
        assert!(counts.faults.get("ExpiredToken").copied().unwrap_or(0) > 0, "{counts:?}");
        proxy.set_plan(FaultPlan { seed: 6, rate: 1.0, faults: vec![Fault::Unauthorized] });
        let source: Reference = format!("{}/kiln/leak-a:v1", proxy.host()).parse().unwrap();
        let result = client.pull_to_layout(&source, &self.layout("refused-faulty"), None, None).await;
        self.refused(result);
        proxy.host()
    }
}

#[tokio::test]
async fn credentials_never_appear_in_logs_progress_or_errors() {
    let Some(_) = testkit::tool("docker-registry") else { return };
    let Some(_) = testkit::tool("htpasswd") else { return };
    let captured = Captured::global();
    captured.start();
    let dir = tempfile::tempdir().unwrap();
    let src = Layout::create(dir.path().join("src")).unwrap();
    let img = image(&src, "v1", 900, &[40_000, 9_000], "linux/amd64");
    let mut fx = Fixture { dir, src, img, progress: Arc::new(Mutex::new(Vec::new())), errors: Vec::new() };
    let basic = fx.basic_auth().await;
    let tls = fx.token_auth_over_tls().await;
    let faulty = fx.token_auth_behind_faults().await;
    let text = captured.stop();
    // the capture saw what it is meant to see: our spans with their fields,
    // reqwest's, hyper-util's and rustls's records, retries, every registry
    for expected in ["reqwest", "hyper_util", "rustls"] {
        assert!(text.contains(expected), "the capture has no {expected:?} lines; it is not capturing everything");
    }
    for host in [&basic, &tls, &faulty] {
        for span in ["push_from_layout", "pull_to_layout", "copy_between"] {
            let opened = format!("{span}{{target={host}/kiln/leak-");
            let opened_source = format!("{span}{{source={host}/kiln/leak-");
            assert!(text.contains(&opened) || text.contains(&opened_source), "no {span} span for {host} captured");
        }
    }
    assert!(
        text.lines().any(|l| l.contains("retrying") && l.contains(&format!("http://{faulty}/v2/"))),
        "the retries after injected faults were captured"
    );
    let lines = text.lines().count();
    assert!(lines > 200, "only {lines} lines captured");
    assert_clean("the TRACE log", &text);
    let progress = fx.progress.lock().unwrap().join("\n");
    assert!(!progress.is_empty());
    assert_clean("a progress event", &progress);
    assert_eq!(fx.errors.len(), 7);
    for err in &fx.errors {
        assert_clean("an error", &error_text(err));
    }
    // the credential types themselves
    let creds = StaticCredentials::new()
        .with("a", Credential::basic(BASIC_USER, BASIC_PASSWORD))
        .with("b", Credential::IdentityToken(REFRESH_TOKEN.into()))
        .with("c", Credential::RegistryToken(TOKEN_PASSWORD.into()));
    assert_clean("StaticCredentials' Debug", &format!("{creds:?}"));
    assert_clean("Client's Debug", &format!("{:?}", Client::builder().credentials(creds).build().unwrap()));
    println!(
        "credential leak check: {lines} TRACE lines, {} progress events, {} errors: clean",
        progress.lines().count(),
        fx.errors.len()
    );
}
