//! Basic auth against a real htpasswd-protected registry: static
//! credentials, docker's config.json, refused credentials.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use oci_image::{Descriptor, MediaType};
use registry_client::{BytesSource, Client, Credential, DockerConfig, ErrorKind, Repository, StaticCredentials};
use testkit::{Registry, RegistryOptions};

use super::noise;

fn secured() -> Option<Registry> {
    testkit::tool("docker-registry")?;
    testkit::tool("htpasswd")?;
    Some(
        Registry::start_with(&RegistryOptions {
            basic_auth: Some(("kiln".into(), "correct horse".into())),
            ..RegistryOptions::default()
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn basic_auth_with_static_credentials() {
    let Some(reg) = secured() else { return };
    let repo = Repository::new(&reg.host(), "kiln/secure").unwrap();
    let anon = Client::builder().build().unwrap();
    let e = anon.ping(&repo).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let wrong = Client::builder()
        .credentials(StaticCredentials::new().with(reg.host(), Credential::basic("kiln", "wrong")))
        .build()
        .unwrap();
    let e = wrong.ping(&repo).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    assert!(!format!("{e} {e:?}").contains("wrong"), "no secret in errors: {e:?}");
    let good = Client::builder()
        .credentials(StaticCredentials::new().with(reg.host(), Credential::basic("kiln", "correct horse")))
        .build()
        .unwrap();
    good.ping(&repo).await.unwrap();
    let data = noise(9, 3000);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    good.push_blob(&repo, &desc, Arc::new(BytesSource(Bytes::from(data))), None).await.unwrap();
    assert_eq!(good.head_blob(&repo, &desc.digest).await.unwrap(), Some(3000));
}

#[tokio::test]
async fn basic_auth_from_docker_config() {
    let Some(reg) = secured() else { return };
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("kiln:correct horse");
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths": {{"http://{}": {{"auth": "{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let config = DockerConfig::from_paths(&[dir.path().join("config.json")]).unwrap();
    let c = Client::builder().credentials(config).build().unwrap();
    let repo = Repository::new(&reg.host(), "kiln/fromconfig").unwrap();
    c.ping(&repo).await.unwrap();
    assert_eq!(c.list_tags(&repo).await.unwrap_err().kind(), ErrorKind::NotFound);
}

fn token_registry(ttl_secs: u64) -> Option<Registry> {
    testkit::tool("docker-registry")?;
    Some(
        Registry::start_with(&RegistryOptions {
            token_auth: Some(testkit::TokenAuth {
                user: "tok-user".into(),
                password: "tok-pass".into(),
                refresh_token: Some("refresh-123".into()),
                ttl_secs,
            }),
            ..RegistryOptions::default()
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn bearer_tokens_from_a_token_server_the_registry_verifies() {
    let Some(reg) = token_registry(300) else { return };
    let tokens = reg.token_server().unwrap();
    let src = Repository::new(&reg.host(), "kiln/tok-src").unwrap();
    let dst = Repository::new(&reg.host(), "kiln/tok-dst").unwrap();
    let anon = Client::builder().build().unwrap();
    let e = anon.ping(&src).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let c = Client::builder()
        .credentials(StaticCredentials::new().with(reg.host(), Credential::basic("tok-user", "tok-pass")))
        .build()
        .unwrap();
    let data = noise(11, 8000);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    c.push_blob(&src, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), None).await.unwrap();
    let issued = tokens.issued();
    assert!(issued >= 1);
    // the token is cached per scope: more requests in the same scope need no new token
    assert_eq!(c.head_blob(&src, &desc.digest).await.unwrap(), Some(8000));
    c.push_blob(&src, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), None).await.unwrap();
    assert!(tokens.issued() <= issued + 1, "tokens are reused: {} then {}", issued, tokens.issued());
    // a mount asks for push on the target and pull on the source, push scope first
    let before = tokens.scopes().len();
    let r = c.push_blob(&dst, &desc, Arc::new(BytesSource(Bytes::from(data))), Some(&src)).await.unwrap();
    assert_eq!(r, registry_client::BlobPush::Mounted);
    let scopes = tokens.scopes()[before..].to_vec();
    let push = scopes.iter().position(|s| s == "repository:kiln/tok-dst:pull,push").expect("push scope requested");
    let pull = scopes.iter().position(|s| s == "repository:kiln/tok-src:pull").expect("source pull scope requested");
    assert!(push < pull, "push scope first: {scopes:?}");
    // wrong credentials: the token server refuses, the error says unauthorized
    let bad = Client::builder()
        .credentials(StaticCredentials::new().with(reg.host(), Credential::basic("tok-user", "nope")))
        .build()
        .unwrap();
    let e = bad.ping(&src).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    assert!(tokens.refused() >= 1);
    assert!(!format!("{e:?}").contains("nope"));
}

#[tokio::test]
async fn identity_tokens_use_the_refresh_token_grant() {
    let Some(reg) = token_registry(300) else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"identitytoken": "refresh-123"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let c = Client::builder()
        .credentials(DockerConfig::from_paths(&[dir.path().join("config.json")]).unwrap())
        .build()
        .unwrap();
    let repo = Repository::new(&reg.host(), "kiln/identity").unwrap();
    c.ping(&repo).await.unwrap();
    let data = noise(12, 100);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    c.push_blob(&repo, &desc, Arc::new(BytesSource(Bytes::from(data))), None).await.unwrap();
    assert!(reg.token_server().unwrap().issued() >= 1);
}

#[tokio::test]
async fn expired_tokens_are_fetched_again() {
    let Some(reg) = token_registry(2) else { return };
    let tokens = reg.token_server().unwrap();
    let c = Client::builder()
        .credentials(StaticCredentials::new().with(reg.host(), Credential::basic("tok-user", "tok-pass")))
        .build()
        .unwrap();
    let repo = Repository::new(&reg.host(), "kiln/expiry").unwrap();
    let data = noise(13, 100);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    c.push_blob(&repo, &desc, Arc::new(BytesSource(Bytes::from(data))), None).await.unwrap();
    let first = tokens.issued();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(c.head_blob(&repo, &desc.digest).await.unwrap(), Some(100));
    assert!(tokens.issued() > first, "a new token after expiry");
}

#[tokio::test]
async fn tls_with_a_ca_made_for_this_run() {
    let Some(_) = testkit::tool("docker-registry") else { return };
    let reg = Registry::start_with(&RegistryOptions { tls: true, ..RegistryOptions::default() }).unwrap();
    let repo = Repository::new(&reg.host(), "kiln/tls").unwrap();
    let c = Client::builder().ca_certificate_pem(reg.ca_pem().unwrap()).build().unwrap();
    c.ping(&repo).await.unwrap();
    let data = noise(14, 50_000);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    c.push_blob(&repo, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), None).await.unwrap();
    let mut out = Vec::new();
    c.fetch_blob(&repo, &desc, true, &mut out).await.unwrap();
    assert_eq!(out, data);
    // without the CA the registry cannot be trusted, and plain HTTP is no way around it
    let untrusting = Client::builder().build().unwrap();
    assert!(untrusting.ping(&repo).await.is_err());
    assert!(Client::builder().ca_certificate_pem("not a certificate").build().is_err());
}

#[tokio::test]
async fn through_a_proxy_both_https_tunnels_and_plain_http() {
    let Some(_) = testkit::tool("docker-registry") else { return };
    let proxy = testkit::HttpProxy::start().unwrap();
    // HTTPS: a CONNECT tunnel, TLS end to end with the registry
    let tls = Registry::start_with(&RegistryOptions { tls: true, ..RegistryOptions::default() }).unwrap();
    let c = Client::builder().ca_certificate_pem(tls.ca_pem().unwrap()).proxy(proxy.url()).build().unwrap();
    let repo = Repository::new(&tls.host(), "kiln/proxied").unwrap();
    let data = noise(21, 20_000);
    let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
    c.push_blob(&repo, &desc, Arc::new(BytesSource(Bytes::from(data.clone()))), None).await.unwrap();
    let mut out = Vec::new();
    c.fetch_blob(&repo, &desc, true, &mut out).await.unwrap();
    assert_eq!(out, data);
    assert!(proxy.tunnels() >= 1, "went through CONNECT");
    // plain HTTP on loopback: absolute-form requests through the proxy
    let plain = Registry::start().unwrap();
    let c = Client::builder().proxy(proxy.url()).build().unwrap();
    let repo = Repository::new(&plain.host(), "kiln/proxied").unwrap();
    c.push_blob(&repo, &desc, Arc::new(BytesSource(Bytes::from(data))), None).await.unwrap();
    assert!(proxy.forwarded() >= 3, "HEAD, POST and PUT were forwarded: {}", proxy.forwarded());
}

/// A `docker-credential-<name>` script in `dir`.
fn helper(dir: &std::path::Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn credential_helpers_that_hang_fail_or_print_junk_are_errors_not_anonymous_access() {
    let Some(reg) = secured() else { return };
    let Some(_) = testkit::tool("docker-registry") else { return };
    let open = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    helper(dir.path(), "hangs", "sleep 60");
    helper(dir.path(), "fails", "echo 'the keychain is locked' >&2; exit 1");
    helper(dir.path(), "junk", "echo '<html>surprise</html>'");
    let repo = Repository::new(&reg.host(), "kiln/helped").unwrap();
    let timeout = std::time::Duration::from_millis(800);
    for (name, expect) in
        [("hangs", "gave no answer within"), ("fails", "the keychain is locked"), ("junk", "not a credential")]
    {
        // the helper named for this registry, and a credsStore for every registry
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"credHelpers": {{"{}": "{name}"}}, "credsStore": "hangs"}}"#, reg.host()),
        )
        .unwrap();
        let config = DockerConfig::from_paths(&[dir.path().join("config.json")])
            .unwrap()
            .with_helper_dirs(vec![dir.path().to_owned()])
            .with_helper_timeout(timeout);
        let c = Client::builder().credentials(config).build().unwrap();
        let started = std::time::Instant::now();
        let e = c.ping(&repo).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Credentials, "{name}: {e}");
        let text = format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default());
        assert!(text.contains(&format!("docker-credential-{name}")) && text.contains(expect), "{name}: {text}");
        assert!(!text.contains("<html>"), "{name}: the helper's answer was quoted: {text}");
        assert!(started.elapsed() < timeout * 4, "{name}: took {:?}", started.elapsed());
        // a registry that asks for no credentials never runs the (hanging) store
        let data = noise(5, 1000);
        let desc = Descriptor::of_bytes(MediaType::OciLayer, &data);
        let started = std::time::Instant::now();
        c.push_blob(
            &Repository::new(&open.host(), "kiln/open").unwrap(),
            &desc,
            Arc::new(BytesSource(Bytes::from(data))),
            None,
        )
        .await
        .unwrap();
        assert!(started.elapsed() < timeout, "{name}: a registry without auth waited for a helper");
    }
}

/// `docker login`'s check: the credentials are tried against the registry
/// itself (basic auth, or a token from its token server); refused ones are
/// an error that names no secret.
#[tokio::test]
async fn logins_are_checked_against_the_registry_and_its_token_server() {
    let client = |host: &str, user: &str, pass: &str| {
        Client::builder()
            .credentials(StaticCredentials::new().with(host, Credential::basic(user, pass)))
            .build()
            .unwrap()
    };
    if let Some(reg) = secured() {
        client(&reg.host(), "kiln", "correct horse").check_login(&reg.host()).await.unwrap();
        let e = client(&reg.host(), "kiln", "wrong-horse").check_login(&reg.host()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
        assert!(!format!("{e} {e:?}").contains("wrong-horse"), "{e:?}");
    }
    if let Some(reg) = token_registry(300) {
        client(&reg.host(), "tok-user", "tok-pass").check_login(&reg.host()).await.unwrap();
        let e = client(&reg.host(), "tok-user", "not-it").check_login(&reg.host()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
        let e = Client::builder().build().unwrap().check_login(&reg.host()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "anonymous: {e}");
    }
}

/// `check_login` asks the token server for an identity token as `docker
/// login` does (`offline_token=true`): a server that returns a
/// `refresh_token` gives one, and that token alone then authenticates.
/// A basic-auth registry, or a token server with none to give, gives none.
#[tokio::test]
async fn login_keeps_the_identity_token_a_token_server_returns() {
    let Some(reg) = token_registry(300) else { return };
    let c = Client::builder()
        .credentials(StaticCredentials::new().with(reg.host(), Credential::basic("tok-user", "tok-pass")))
        .build()
        .unwrap();
    let login = c.check_login(&reg.host()).await.unwrap();
    assert_eq!(login.identity_token(), Some("refresh-123"));
    assert!(!format!("{login:?}").contains("refresh-123"), "no secret in Debug: {login:?}");
    let with_token = Client::builder()
        .credentials(
            StaticCredentials::new()
                .with(reg.host(), Credential::IdentityToken(login.identity_token().unwrap().into())),
        )
        .build()
        .unwrap();
    with_token.ping(&Repository::new(&reg.host(), "kiln/after-login").unwrap()).await.unwrap();
    // wrong password: refused, no token
    let bad = Client::builder()
        .credentials(StaticCredentials::new().with(reg.host(), Credential::basic("tok-user", "nope")))
        .build()
        .unwrap();
    assert_eq!(bad.check_login(&reg.host()).await.unwrap_err().kind(), ErrorKind::Unauthorized);

    let Some(basic) = secured() else { return };
    let c = Client::builder()
        .credentials(StaticCredentials::new().with(basic.host(), Credential::basic("kiln", "correct horse")))
        .build()
        .unwrap();
    assert_eq!(c.check_login(&basic.host()).await.unwrap().identity_token(), None);
}
