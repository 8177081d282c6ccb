//! A fault-injecting HTTP/1.1 proxy on loopback, in front of a real
//! registry. Each request is forwarded on a fresh upstream connection (the
//! client side is closed after each answer); with a seeded random choice it
//! instead drops the connection mid-body, answers 500/503, 429 with
//! `Retry-After`, or 401 with the registry's own challenge: to any request,
//! or as an expired token gets it (a token old enough, refused from then
//! on). Counts every request and fault.
//!
//! Hostile answers rewrite what the registry sent: bodies longer or shorter
//! than their `Content-Length`, a flipped byte, a body padded past 4 MiB or
//! one that never ends, a redirect or an upload `Location` pointing at
//! another host, and a `Link` header that pages forever. [`FaultProxy::only`]
//! narrows the faults to some requests, so a test can aim them (at manifest
//! GETs, say) and leave every other request untouched.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Close the connection halfway through the request or response body.
    Drop,
    /// Answer 500.
    Status500,
    /// Answer 503.
    Status503,
    /// Answer 429 with `Retry-After: 1`.
    TooManyRequests,
    /// Answer 401 with the registry's challenge, whatever the request
    /// carries (a registry that refuses every token, fresh ones too).
    Unauthorized,
    /// Expire the request's bearer token, as a token past its lifetime is:
    /// answer 401 with the registry's challenge, and to every later request
    /// with that token too. Only a token first seen [`TOKEN_LIFETIME`]
    /// requests ago or earlier can expire, so the fresh token a client
    /// fetches after a refusal is not refused on its first uses (lifetimes
    /// are counted in requests rather than seconds, to keep the faults
    /// independent of the machine's speed). A request without a bearer
    /// token is not faulted.
    ExpiredToken,
    /// Send the registry's `Content-Length` but only half the body, then
    /// close (a body shorter than its `Content-Length`).
    ShortBody,
    /// Announce half the body's length in `Content-Length` but send all of
    /// it, then close (a body longer than its `Content-Length`).
    LongBody,
    /// Flip one byte in the middle of the body (headers unchanged, so a
    /// `Docker-Content-Digest` no longer matches).
    CorruptBody,
    /// Pad the body with spaces to 5 MiB (over the spec's 4 MiB manifest limit).
    OversizedBody,
    /// Send the body chunked, without `Content-Length`, followed by spaces
    /// that never end (stopped after 256 MiB or when the client hangs up).
    EndlessBody,
    /// Answer `307` to the same path and query on the host set with
    /// [`FaultProxy::set_other_host`] (the request never reaches the registry).
    Redirect,
    /// Forward, then point the answer's `Location` at the host set with
    /// [`FaultProxy::set_other_host`] (same path and query).
    ForeignLocation,
    /// Forward, then add a `Link: <...>; rel="next"` to the same path with a
    /// new query every time (pagination that never ends).
    EndlessLink,
    /// Read the request, then answer nothing: the connection stays open,
    /// silent (a registry that froze), until the client hangs up or a
    /// minute passes.
    StallResponse,
    /// Forward, send the answer's head and half its body, then nothing more
    /// (a transfer that froze halfway).
    StallBody,
    /// Read the request's head, then stop reading its body: an upload
    /// stalls once the socket's buffers are full (a registry frozen
    /// mid-push).
    StallRequestBody,
}

impl Fault {
    /// Whether the fault rewrites the registry's answer (rather than
    /// answering in its place or dropping the connection).
    fn rewrites_response(self) -> bool {
        matches!(
            self,
            Fault::ShortBody
                | Fault::LongBody
                | Fault::CorruptBody
                | Fault::OversizedBody
                | Fault::EndlessBody
                | Fault::ForeignLocation
                | Fault::EndlessLink
        )
    }
}

/// How many proxied requests a bearer token lives at least before
/// [`Fault::ExpiredToken`] can expire it: more than a client has in flight
/// between fetching a token and sending it.
pub const TOKEN_LIFETIME: usize = 16;

/// What the proxy injects.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The seed of the random choices.
    pub seed: u64,
    /// Probability that a request is faulted.
    pub rate: f64,
    /// The faults to choose from (uniformly).
    pub faults: Vec<Fault>,
}

/// Counts of what the proxy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received.
    pub requests: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
}

impl FaultCounts {
    /// All faults injected.
    pub fn faulted(&self) -> usize {
        self.faults.values().sum()
    }
}

struct Shared {
    upstream: u16,
    plan: Mutex<FaultPlan>,
    rng: Mutex<StdRng>,
    counts: Mutex<FaultCounts>,
    challenge: Mutex<Option<String>>,
    /// `METHOD target` substring a request must contain to be faulted.
    only: Mutex<Option<String>>,
    /// `http://host:port` that redirects and foreign `Location`s point at.
    other_host: Mutex<Option<String>>,
    /// Counter making every endless `Link` unique.
    pages: std::sync::atomic::AtomicU64,
    /// `Authorization` values seen so far, and those expired ([`Fault::ExpiredToken`]).
    tokens: Mutex<Tokens>,
}

struct Tokens {
    /// Each token and the number of the request it was first seen in.
    seen: std::collections::HashMap<String, usize>,
    expired: std::collections::HashSet<String>,
    /// How many requests a token lives at least.
    lifetime: usize,
}

/// A running fault proxy; stops when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    server: crate::server::Server,
}

struct Head {
    lines: Vec<String>,
    content_length: Option<u64>,
    chunked: bool,
}

fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let trimmed = line.trim_end_matches(['\r', '\n']).to_owned();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.trim().parse().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        lines.push(trimmed);
    }
    Ok(Some(Head { lines, content_length, chunked }))
}

/// Copies a request body framed by Content-Length or chunked encoding; stops
/// after `limit` bytes when given (a dropped connection).
fn copy_body(r: &mut impl BufRead, w: &mut impl Write, head: &Head, limit: Option<u64>) -> io::Result<()> {
    if head.chunked {
        let mut sent = 0u64;
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            w.write_all(size_line.as_bytes())?;
            let size = u64::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = r.by_ref().take(size + 2);
            if let Some(l) = limit
                && sent + size > l
            {
                io::copy(&mut chunk.by_ref().take(l.saturating_sub(sent)), w)?;
                return Ok(());
            }
            io::copy(&mut chunk, w)?;
            sent += size;
            if size == 0 {
                return Ok(());
            }
        }
    }
    let len = head.content_length.unwrap_or(0);
    io::copy(&mut r.by_ref().take(limit.map_or(len, |l| l.min(len))), w)?;
    Ok(())
}

fn reply(client: &mut TcpStream, status: &str, extra: &str) -> io::Result<()> {
    let body = r#"{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}"#;
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// The fault for one request (or none), counted.
fn choose(head: &Head, sh: &Shared) -> io::Result<Option<Fault>> {
    let plan = sh.plan.lock().map_err(|_| io::Error::other("poisoned"))?.clone();
    let mut rng = sh.rng.lock().map_err(|_| io::Error::other("poisoned"))?;
    let hit = rng.random_bool(plan.rate.clamp(0.0, 1.0));
    let pick = rng.random_range(0..plan.faults.len().max(1));
    // a fault on the token-less ping would only test the ping; keep /v2/ clean
    let is_ping = head.lines.first().is_some_and(|l| l.split_whitespace().nth(1) == Some("/v2/"));
    let aimed = match &*sh.only.lock().map_err(|_| io::Error::other("poisoned"))? {
        Some(filter) => head.lines.first().is_some_and(|l| l.contains(filter.as_str())),
        None => true,
    };
    let f = if hit && !is_ping && aimed { plan.faults.get(pick).copied() } else { None };
    let mut counts = sh.counts.lock().map_err(|_| io::Error::other("poisoned"))?;
    counts.requests += 1;
    // a bearer token expires once it is old enough, and stays expired
    let bearer = head
        .lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| v.starts_with("Bearer "));
    let mut tokens = sh.tokens.lock().map_err(|_| io::Error::other("poisoned"))?;
    let now = counts.requests;
    let f = match f {
        _ if bearer.as_ref().is_some_and(|b| tokens.expired.contains(b)) => Some(Fault::ExpiredToken),
        Some(Fault::ExpiredToken) => {
            let first_seen = bearer.as_ref().and_then(|b| tokens.seen.get(b));
            first_seen.is_some_and(|&first| now - first >= tokens.lifetime).then_some(Fault::ExpiredToken)
        }
        other => other,
    };
    if let Some(b) = bearer {
        if f == Some(Fault::ExpiredToken) {
            tokens.expired.insert(b.clone());
        }
        tokens.seen.entry(b).or_insert(now);
    }
    drop(tokens);
    if let Some(f) = f {
        *counts.faults.entry(format!("{f:?}")).or_default() += 1;
    }
    Ok(f)
}

/// Keeps a stalled connection open (sending nothing) until the client
/// hangs up, or a minute passes; reads and discards what the client still
/// sends unless `read` is false.
fn hold(conn: &mut (impl Read + ?Sized), stream: &TcpStream, read: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    while std::time::Instant::now() < deadline {
        if !read {
            std::thread::sleep(std::time::Duration::from_millis(100));
            // a client that gave up closed its end: peek sees the end
            let mut one = [0u8; 1];
            if matches!(stream.peek(&mut one), Ok(0)) {
                return;
            }
            continue;
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn handle(client: TcpStream, sh: &Shared) -> io::Result<()> {
    let mut client_r = BufReader::new(client.try_clone()?);
    let mut client_w = client;
    let Some(head) = read_head(&mut client_r)? else { return Ok(()) };
    let fault = choose(&head, sh)?;
    match fault {
        Some(Fault::StallRequestBody) => {
            hold(&mut client_r, &client_w, false);
            return Ok(());
        }
        Some(Fault::StallResponse) => {
            copy_body(&mut client_r, &mut io::sink(), &head, None)?;
            hold(&mut client_r, &client_w, true);
            return Ok(());
        }
        _ => {}
    }
    if let Some(
        Fault::Status500 | Fault::Status503 | Fault::TooManyRequests | Fault::Unauthorized | Fault::ExpiredToken,
    ) = fault
    {
        copy_body(&mut client_r, &mut io::sink(), &head, None)?;
        let challenge = sh.challenge.lock().ok().and_then(|c| c.clone()).unwrap_or_default();
        match fault {
            Some(Fault::Status500) => reply(&mut client_w, "500 Internal Server Error", "")?,
            Some(Fault::Status503) => reply(&mut client_w, "503 Service Unavailable", "")?,
            Some(Fault::TooManyRequests) => reply(&mut client_w, "429 Too Many Requests", "Retry-After: 1\r\n")?,
            _ => reply(&mut client_w, "401 Unauthorized", &challenge)?,
        }
        return Ok(());
    }
    if fault == Some(Fault::Redirect) {
        copy_body(&mut client_r, &mut io::sink(), &head, None)?;
        let other = sh.other_host.lock().ok().and_then(|o| o.clone()).unwrap_or_default();
        let target = head.lines.first().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/");
        write!(
            client_w,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {other}{target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let upstream = TcpStream::connect(("127.0.0.1", sh.upstream))?;
    let mut up_w = upstream.try_clone()?;
    let mut up_r = BufReader::new(upstream);
    for line in &head.lines {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        write!(up_w, "{line}\r\n")?;
    }
    write!(up_w, "Connection: close\r\n\r\n")?;
    let has_body = head.chunked || head.content_length.is_some_and(|l| l > 0);
    if fault == Some(Fault::Drop) && has_body {
        // drop mid-request: half the body, then both connections go away
        let half = head.content_length.map_or(4096, |l| l / 2);
        copy_body(&mut client_r, &mut up_w, &head, Some(half))?;
        let _ = up_w.shutdown(Shutdown::Both);
        let _ = client_w.shutdown(Shutdown::Both);
        return Ok(());
    }
    copy_body(&mut client_r, &mut up_w, &head, None)?;
    up_w.flush()?;
    // the response: head rewritten to close, then the body until upstream closes
    let Some(resp) = read_head(&mut up_r)? else { return Ok(()) };
    if let Some(f) = fault.filter(|f| f.rewrites_response()) {
        let is_head = head.lines.first().is_some_and(|l| l.starts_with("HEAD "));
        let body = if is_head { Vec::new() } else { read_response_body(&mut up_r, &resp)? };
        return rewrite(&mut client_w, f, &head, &resp, body, sh);
    }
    for line in &resp.lines {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        write!(client_w, "{line}\r\n")?;
    }
    write!(client_w, "Connection: close\r\n\r\n")?;
    if fault == Some(Fault::Drop) {
        let half = resp.content_length.map_or(1024, |l| l / 2);
        io::copy(&mut up_r.take(half), &mut client_w)?;
        let _ = client_w.shutdown(Shutdown::Both);
        return Ok(());
    }
    if fault == Some(Fault::StallBody) {
        let half = resp.content_length.map_or(1024, |l| l / 2);
        io::copy(&mut (&mut up_r).take(half), &mut client_w)?;
        client_w.flush()?;
        let stream = client_w.try_clone()?;
        hold(&mut client_r, &stream, true);
        return Ok(());
    }
    io::copy(&mut up_r, &mut client_w)?;
    client_w.flush()?;
    let _ = client_w.shutdown(Shutdown::Write);
    Ok(())
}

/// Reads a response body framed by `Content-Length`, chunked encoding, or
/// the end of the connection.
fn read_response_body(r: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked {
        loop {
            let mut size_line = String::new();
            if r.read_line(&mut size_line)? == 0 {
                return Ok(body);
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
            if size == 0 {
                return Ok(body);
            }
        }
    }
    match head.content_length {
        Some(len) => {
            r.take(len).read_to_end(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(body)
}

/// Sends the registry's answer to the client, rewritten by a hostile fault.
fn rewrite(
    client: &mut TcpStream,
    fault: Fault,
    req: &Head,
    resp: &Head,
    mut body: Vec<u8>,
    sh: &Shared,
) -> io::Result<()> {
    let other = sh.other_host.lock().ok().and_then(|o| o.clone()).unwrap_or_default();
    let mut out = Vec::new();
    let mut lines = resp.lines.iter();
    if let Some(status) = lines.next() {
        write!(out, "{status}\r\n")?;
    }
    let mut extra_lines = Vec::new();
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:")
            || lower.starts_with("content-length:")
            || lower.starts_with("transfer-encoding:")
        {
            continue;
        }
        if fault == Fault::ForeignLocation && lower.starts_with("location:") {
            let loc = line.split_once(':').map_or("", |(_, v)| v.trim());
            // keep the path and query, change the host
            let path = loc
                .find("://")
                .and_then(|i| loc.get(i + 3..))
                .map_or(loc, |rest| rest.find('/').and_then(|j| rest.get(j..)).unwrap_or("/"));
            extra_lines.push(format!("Location: {other}{path}"));
            continue;
        }
        extra_lines.push(line.clone());
    }
    if fault == Fault::EndlessLink {
        let path = req.lines.first().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/");
        let path = path.split('?').next().unwrap_or(path);
        let page = sh.pages.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        extra_lines.push(format!("Link: <{path}?n=100&last=page{page}>; rel=\"next\""));
    }
    for l in &extra_lines {
        write!(out, "{l}\r\n")?;
    }
    let real = body.len();
    match fault {
        Fault::ShortBody => {
            write!(out, "Content-Length: {real}\r\n")?;
            body.truncate(real / 2);
        }
        Fault::LongBody => write!(out, "Content-Length: {}\r\n", real / 2)?,
        Fault::CorruptBody => {
            if let Some(b) = body.get_mut(real / 2) {
                *b ^= 0x20;
            }
            write!(out, "Content-Length: {real}\r\n")?;
        }
        Fault::OversizedBody => {
            body.resize(real.max(5 * 1024 * 1024), b' ');
            write!(out, "Content-Length: {}\r\n", body.len())?;
        }
        Fault::EndlessBody => write!(out, "Transfer-Encoding: chunked\r\n")?,
        _ => write!(out, "Content-Length: {real}\r\n")?,
    }
    write!(out, "Connection: close\r\n\r\n")?;
    client.write_all(&out)?;
    if fault == Fault::EndlessBody {
        if !body.is_empty() {
            write!(client, "{:x}\r\n", body.len())?;
            client.write_all(&body)?;
            client.write_all(b"\r\n")?;
        }
        // bounded, so a client that never stops reading cannot keep it going forever
        let spaces = vec![b' '; 64 * 1024];
        for _ in 0..4096 {
            write!(client, "{:x}\r\n", spaces.len())?;
            client.write_all(&spaces)?;
            client.write_all(b"\r\n")?;
        }
        client.write_all(b"0\r\n\r\n")?;
    } else {
        client.write_all(&body)?;
    }
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream_port` with a plan.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start(upstream_port: u16, plan: FaultPlan) -> io::Result<FaultProxy> {
        let shared = Arc::new(Shared {
            upstream: upstream_port,
            rng: Mutex::new(StdRng::seed_from_u64(plan.seed)),
            plan: Mutex::new(plan),
            counts: Mutex::new(FaultCounts::default()),
            challenge: Mutex::new(None),
            only: Mutex::new(None),
            other_host: Mutex::new(None),
            pages: std::sync::atomic::AtomicU64::new(0),
            tokens: Mutex::new(Tokens {
                seen: std::collections::HashMap::new(),
                expired: std::collections::HashSet::new(),
                lifetime: TOKEN_LIFETIME,
            }),
        });
        // learn the registry's challenge so an injected 401 looks like its own
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", upstream_port)) {
            let _ = write!(s, "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{upstream_port}\r\nConnection: close\r\n\r\n");
            let mut r = BufReader::new(s);
            if let Ok(Some(head)) = read_head(&mut r) {
                let ch = head.lines.iter().find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"));
                if let (Some(ch), Ok(mut slot)) = (ch, shared.challenge.lock()) {
                    *slot = Some(format!("{ch}\r\n"));
                }
            }
        }
        let sh = shared.clone();
        let server = crate::server::Server::start(move |s| {
            let _ = handle(s, &sh);
        })?;
        Ok(FaultProxy { shared, server })
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// Sets how many requests a bearer token lives at least before
    /// [`Fault::ExpiredToken`] can expire it ([`TOKEN_LIFETIME`] unless set).
    /// Safe as long as it exceeds the requests a client has in flight.
    pub fn set_token_lifetime(&self, requests: usize) {
        if let Ok(mut t) = self.shared.tokens.lock() {
            t.lifetime = requests;
        }
    }

    /// Replaces the plan (the random sequence continues).
    pub fn set_plan(&self, plan: FaultPlan) {
        if let Ok(mut p) = self.shared.plan.lock() {
            *p = plan;
        }
    }

    /// Faults only requests whose request line (`METHOD /path?query`)
    /// contains `filter`; `None` makes every request eligible again.
    pub fn only(&self, filter: Option<&str>) {
        if let Ok(mut o) = self.shared.only.lock() {
            *o = filter.map(str::to_owned);
        }
    }

    /// The `http://host:port` that [`Fault::Redirect`] and
    /// [`Fault::ForeignLocation`] point at.
    pub fn set_other_host(&self, base_url: impl Into<String>) {
        if let Ok(mut o) = self.shared.other_host.lock() {
            *o = Some(base_url.into());
        }
    }

    /// What happened so far.
    pub fn counts(&self) -> FaultCounts {
        self.shared.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}
