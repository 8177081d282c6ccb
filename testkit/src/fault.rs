//! A fault-injecting HTTP/1.1 proxy on loopback, in front of a real
//! registry. Each request is forwarded on a fresh upstream connection (the
//! client side is closed after each answer); with a seeded random choice it
//! instead drops the connection mid-body, answers 500/503, 429 with
//! `Retry-After`, or 401 with the registry's own challenge (as an expired
//! token would). Counts every request and fault.

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
    /// Answer 401 with the registry's challenge.
    Unauthorized,
}

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

fn handle(client: TcpStream, sh: &Shared) -> io::Result<()> {
    let mut client_r = BufReader::new(client.try_clone()?);
    let mut client_w = client;
    let Some(head) = read_head(&mut client_r)? else { return Ok(()) };
    let fault = {
        let plan = sh.plan.lock().map_err(|_| io::Error::other("poisoned"))?.clone();
        let mut rng = sh.rng.lock().map_err(|_| io::Error::other("poisoned"))?;
        let hit = rng.random_bool(plan.rate.clamp(0.0, 1.0));
        let pick = rng.random_range(0..plan.faults.len().max(1));
        let f = if hit { plan.faults.get(pick).copied() } else { None };
        // a fault on the token-less ping would only test the ping; keep /v2/ clean
        let is_ping = head.lines.first().is_some_and(|l| l.split_whitespace().nth(1) == Some("/v2/"));
        let mut counts = sh.counts.lock().map_err(|_| io::Error::other("poisoned"))?;
        counts.requests += 1;
        let f = f.filter(|_| !is_ping);
        if let Some(f) = f {
            *counts.faults.entry(format!("{f:?}")).or_default() += 1;
        }
        f
    };
    if let Some(Fault::Status500 | Fault::Status503 | Fault::TooManyRequests | Fault::Unauthorized) = fault {
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
    io::copy(&mut up_r, &mut client_w)?;
    client_w.flush()?;
    let _ = client_w.shutdown(Shutdown::Write);
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

    /// Replaces the plan (the random sequence continues).
    pub fn set_plan(&self, plan: FaultPlan) {
        if let Ok(mut p) = self.shared.plan.lock() {
            *p = plan;
        }
    }

    /// What happened so far.
    pub fn counts(&self) -> FaultCounts {
        self.shared.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}
