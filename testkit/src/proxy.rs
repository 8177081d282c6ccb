//! A small HTTP proxy on loopback: `CONNECT host:port` tunnels (for HTTPS
//! targets) and absolute-form requests (for plain HTTP targets), only to
//! loopback addresses. Counts what it carried.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Shared {
    tunnels: AtomicUsize,
    forwarded: AtomicUsize,
}

/// A running proxy; stops when dropped.
pub struct HttpProxy {
    shared: Arc<Shared>,
    server: crate::server::Server,
}

fn loopback_target(authority: &str) -> Option<String> {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ok.then(|| authority.to_owned())
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn handle(client: TcpStream, sh: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        headers.push(h);
    }
    let mut client_w = client;
    if method == "CONNECT" {
        let Some(authority) = loopback_target(&target) else {
            return write!(client_w, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        };
        let upstream = TcpStream::connect(authority)?;
        write!(client_w, "HTTP/1.1 200 Connection established\r\n\r\n")?;
        sh.tunnels.fetch_add(1, Ordering::SeqCst);
        // anything the client already sent after the head is in `reader`'s buffer
        let buffered = reader.buffer().to_vec();
        let mut up_w = upstream.try_clone()?;
        up_w.write_all(&buffered)?;
        let up_r = upstream;
        let t = std::thread::spawn({
            let client_r = client_w.try_clone()?;
            move || pipe(client_r, up_w)
        });
        pipe(up_r, client_w);
        let _ = t.join();
        return Ok(());
    }
    // absolute-form: http://host:port/path
    let Some(rest) = target.strip_prefix("http://") else {
        return write!(client_w, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    };
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let Some(authority) = loopback_target(authority) else {
        return write!(client_w, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    };
    let upstream = TcpStream::connect(&authority)?;
    let mut up_w = upstream.try_clone()?;
    write!(up_w, "{method} {path} HTTP/1.1\r\n")?;
    for h in &headers {
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("proxy-") {
            continue;
        }
        up_w.write_all(h.as_bytes())?;
    }
    write!(up_w, "Connection: close\r\n\r\n")?;
    sh.forwarded.fetch_add(1, Ordering::SeqCst);
    let buffered = reader.buffer().to_vec();
    up_w.write_all(&buffered)?;
    let t = std::thread::spawn({
        let client_r = client_w.try_clone()?;
        move || pipe(client_r, up_w)
    });
    pipe(upstream, client_w);
    let _ = t.join();
    Ok(())
}

impl HttpProxy {
    /// Starts a proxy on a free loopback port.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start() -> io::Result<HttpProxy> {
        let shared = Arc::new(Shared { tunnels: AtomicUsize::new(0), forwarded: AtomicUsize::new(0) });
        let sh = shared.clone();
        let server = crate::server::Server::start(move |s| {
            let _ = handle(s, &sh);
        })?;
        Ok(HttpProxy { shared, server })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port())
    }

    /// CONNECT tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.shared.tunnels.load(Ordering::SeqCst)
    }

    /// Plain-HTTP requests forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}
