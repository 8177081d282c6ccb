//! A token server for the registry's `auth: token` mode: it checks basic
//! credentials (or an OAuth2 refresh token), then issues ES256 JWTs with an
//! `x5c` header that the real registry verifies against its root bundle.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::pki::CertPair;

/// The `service` the registry is configured with.
pub const SERVICE: &str = "kiln-test-registry";
/// The `issuer` the registry is configured with.
pub const ISSUER: &str = "kiln-test-token-server";

struct State {
    user: String,
    password: String,
    refresh_token: Option<String>,
    ttl_secs: u64,
    key: EncodingKey,
    x5c: String,
    issued: AtomicUsize,
    refused: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    state: Arc<State>,
    signer: CertPair,
    server: crate::server::Server,
}

fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &str) -> io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b);
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A body of `length` bytes (at most 64 KiB are kept).
fn read_body(reader: &mut impl BufRead, length: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; length.min(64 * 1024)];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// A `Transfer-Encoding: chunked` body (at most 64 KiB).
fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let hex = size.trim().split(';').next().unwrap_or_default();
        let n = usize::from_str_radix(hex, 16).map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
        if n == 0 || body.len() + n > 64 * 1024 {
            // the trailer section ends with an empty line
            let mut end = String::new();
            while reader.read_line(&mut end)? > 2 {
                end.clear();
            }
            return Ok(body);
        }
        body.extend(read_body(reader, n)?);
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

fn handle(mut s: TcpStream, st: &State) -> io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
    let mut auth = None;
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => auth = Some(v.trim().to_owned()),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
    }
    // Go's clients (skopeo's OAuth2 grant) send form bodies chunked
    let body = if chunked { read_chunked(&mut reader)? } else { read_body(&mut reader, length)? };
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut pairs = query_pairs(query);
    if method == "POST" {
        pairs.extend(query_pairs(&String::from_utf8_lossy(&body)));
    }
    let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let refreshing = method == "POST" && get("grant_type").as_deref() == Some("refresh_token");
    let authorised = if refreshing {
        st.refresh_token.is_some() && get("refresh_token") == st.refresh_token
    } else {
        let expected = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", st.user, st.password));
        auth.as_deref() == Some(&format!("Basic {expected}"))
    };
    if !authorised {
        st.refused.fetch_add(1, Ordering::SeqCst);
        return respond(&mut s, "401 Unauthorized", "", r#"{"details":"bad credentials"}"#);
    }
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if let Ok(mut all) = st.scopes.lock() {
        all.extend(scopes.iter().cloned());
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut it = s.splitn(3, ':');
            let (kind, name, actions) = (it.next()?, it.next()?, it.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": st.user, "aud": get("service").unwrap_or_else(|| SERVICE.to_owned()),
        "exp": now + st.ttl_secs, "nbf": now.saturating_sub(10), "iat": now,
        "jti": format!("{:016x}", rand::random::<u64>()), "access": access,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.x5c = Some(vec![st.x5c.clone()]);
    let token = jsonwebtoken::encode(&header, &claims, &st.key).map_err(io::Error::other)?;
    st.issued.fetch_add(1, Ordering::SeqCst);
    let mut body = serde_json::Map::new();
    body.insert("token".into(), token.clone().into());
    body.insert("access_token".into(), token.into());
    body.insert("expires_in".into(), st.ttl_secs.into());
    // the token spec: a refresh token only when asked for (`docker login`'s
    // offline_token=true) by a client that gave its credentials
    if !refreshing
        && get("offline_token").as_deref() == Some("true")
        && let Some(r) = &st.refresh_token
    {
        body.insert("refresh_token".into(), r.clone().into());
    }
    respond(&mut s, "200 OK", "", &serde_json::Value::Object(body).to_string())
}

impl TokenServer {
    /// Starts a token server that accepts `user`/`password` (and, when
    /// given, an OAuth2 refresh token) and issues tokens valid `ttl_secs`.
    ///
    /// # Errors
    /// When the key is unusable or the port cannot be bound.
    pub fn start(user: &str, password: &str, refresh_token: Option<&str>, ttl_secs: u64) -> io::Result<TokenServer> {
        let signer = crate::pki::token_signer()?;
        let key = EncodingKey::from_ec_pem(signer.key_pem.as_bytes()).map_err(io::Error::other)?;
        let state = Arc::new(State {
            user: user.to_owned(),
            password: password.to_owned(),
            refresh_token: refresh_token.map(str::to_owned),
            ttl_secs,
            key,
            x5c: base64::engine::general_purpose::STANDARD.encode(&signer.cert_der),
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let server = crate::server::Server::start(move |s| {
            let _ = handle(s, &st);
        })?;
        Ok(TokenServer { state, signer, server })
    }

    /// The realm URL to configure in the registry.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.server.port())
    }

    /// The certificate the registry must trust (`rootcertbundle`), PEM.
    pub fn root_pem(&self) -> &str {
        &self.signer.cert_pem
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Requests refused for bad credentials so far.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Every scope requested so far, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.state.scopes.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
