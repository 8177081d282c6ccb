//! A scripted registry: an in-memory OCI distribution registry that answers
//! as the spec says where distribution 2.8.2 does not (referrers API with
//! `artifactType` filtering, `Link` pagination, tag delete, 416 on bad
//! chunk ranges, `OCI-Chunk-Min-Length`, single-request monolithic upload),
//! plus switchable quirks of registries in the wild and hostile answers.
//! Every request is logged with whether it carried `Authorization`.

// serde_json's `Value` indexing yields `Null` for anything missing; it never panics
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};

/// Behaviours to switch on.
#[derive(Debug, Clone, Default)]
#[allow(clippy::struct_excessive_bools)] // a switchboard of independent quirks
pub struct Quirks {
    /// Require basic auth with this user and password (a `Basic` challenge).
    pub basic_auth: Option<(String, String)>,
    /// Send `OCI-Chunk-Min-Length` with this value on upload start.
    pub chunk_min: Option<u64>,
    /// ECR-like: intermediate PATCHes answer 201 and drop the bytes of every chunk after the first.
    pub ecr_chunks: bool,
    /// Harbor-like: a mount answers 401.
    pub mount_unauthorized: bool,
    /// Accept `POST ?digest=` with the body as a complete upload (201).
    pub single_post: bool,
    /// Tags are listed `n` per page with a `Link` to the next one.
    pub page_size: Option<usize>,
    /// The `Link` header always points at the first page (a loop).
    pub loop_pages: bool,
    /// Blob GETs answer 307 to this base URL (another server).
    pub redirect_blobs_to: Option<String>,
    /// Upload `Location`s point at this base URL (another host).
    pub foreign_location: Option<String>,
    /// Manifest GETs return a body over 4 MiB.
    pub oversized_manifest: bool,
    /// Manifest GETs return bytes that do not match `Docker-Content-Digest`.
    pub wrong_manifest_digest: bool,
    /// Tag lists page forever: every page has 50,000 new tags and a `Link`
    /// to the next page.
    pub endless_tags: bool,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The method.
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Whether an `Authorization` header was sent.
    pub authorized: bool,
}

#[derive(Default)]
struct Store {
    blobs: HashMap<String, Vec<u8>>,
    /// (repo, digest): which repositories a blob is linked into
    links: std::collections::HashSet<(String, String)>,
    /// chunk sizes per upload, checked against the minimum when it completes
    chunks: HashMap<u64, Vec<usize>>,
    /// (repo, reference) -> (media type, bytes)
    manifests: BTreeMap<(String, String), (String, Vec<u8>)>,
    uploads: HashMap<u64, Vec<u8>>,
    log: Vec<Logged>,
}

struct Shared {
    quirks: Mutex<Quirks>,
    store: Mutex<Store>,
    next_upload: AtomicU64,
}

/// A running scripted registry; stops when dropped.
pub struct ScriptedRegistry {
    shared: Arc<Shared>,
    server: crate::server::Server,
}

struct Req {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    target: String,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn new(status: u16) -> Self {
        Resp { status, headers: Vec::new(), body: Vec::new() }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
    fn body(mut self, b: Vec<u8>) -> Self {
        self.body = b;
        self
    }
    fn error(status: u16, code: &str) -> Self {
        Resp::new(status)
            .header("Content-Type", "application/json")
            .body(json!({"errors": [{"code": code, "message": code.to_lowercase()}]}).to_string().into_bytes())
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if c == b'+' { b' ' } else { c });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(r: &mut impl BufRead) -> io::Result<Option<Req>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(n);
            body.extend_from_slice(&chunk);
            if n == 0 {
                break;
            }
        }
    } else if let Some(len) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0u8; len];
        r.read_exact(&mut body)?;
    }
    let (path, query) =
        target.split_once('?').map_or((target.clone(), String::new()), |(p, q)| (p.to_owned(), q.to_owned()));
    Ok(Some(Req { method, path, query: parse_query(&query), headers, body, target }))
}

fn write_response(w: &mut impl Write, method: &str, resp: &Resp) -> io::Result<()> {
    write!(w, "HTTP/1.1 {} X\r\n", resp.status)?;
    let mut has_len = false;
    for (k, v) in &resp.headers {
        has_len |= k.eq_ignore_ascii_case("content-length");
        write!(w, "{k}: {v}\r\n")?;
    }
    if !has_len {
        write!(w, "Content-Length: {}\r\n", resp.body.len())?;
    }
    write!(w, "Connection: close\r\n\r\n")?;
    if method != "HEAD" {
        w.write_all(&resp.body)?;
    }
    w.flush()
}

impl Shared {
    #[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one route table, read top to bottom
    fn route(&self, req: &Req) -> Resp {
        let q = self.quirks.lock().map(|q| q.clone()).unwrap_or_default();
        if let Some((user, pass)) = &q.basic_auth {
            let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")));
            if req.headers.get("authorization") != Some(&want) {
                return Resp::error(401, "UNAUTHORIZED").header("WWW-Authenticate", "Basic realm=\"scripted\"");
            }
        }
        let Some(rest) = req.path.strip_prefix("/v2/") else { return Resp::error(404, "NOT_FOUND") };
        if rest.is_empty() {
            return Resp::new(200).body(b"{}".to_vec());
        }
        let get = |k: &str| req.query.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let Ok(mut store) = self.store.lock() else { return Resp::error(500, "UNKNOWN") };
        // /v2/<name>/blobs/uploads/[<id>]
        if let Some((name, id)) = rest.split_once("/blobs/uploads/") {
            let name = name.to_owned();
            if req.method == "POST" && id.is_empty() {
                if let Some(d) = get("mount") {
                    if q.mount_unauthorized {
                        return Resp::error(401, "UNAUTHORIZED");
                    }
                    if let Some(from) = get("from")
                        && store.links.contains(&(from, d.clone()))
                    {
                        store.links.insert((name.clone(), d.clone()));
                        return Resp::new(201)
                            .header("Location", format!("/v2/{name}/blobs/{d}"))
                            .header("Docker-Content-Digest", d);
                    }
                }
                if let Some(d) = get("digest")
                    && q.single_post
                {
                    if format!("sha256:{}", sha256_hex(&req.body)) != d {
                        return Resp::error(400, "DIGEST_INVALID");
                    }
                    store.blobs.insert(d.clone(), req.body.clone());
                    store.links.insert((name.clone(), d.clone()));
                    return Resp::new(201)
                        .header("Location", format!("/v2/{name}/blobs/{d}"))
                        .header("Docker-Content-Digest", d);
                }
                let id = self.next_upload.fetch_add(1, Ordering::SeqCst);
                store.uploads.insert(id, Vec::new());
                let base = q.foreign_location.clone().unwrap_or_default();
                let mut r = Resp::new(202)
                    .header("Location", format!("{base}/v2/{name}/blobs/uploads/{id}?_state=s{id}"))
                    .header("Range", "0-0");
                if let Some(m) = q.chunk_min {
                    r = r.header("OCI-Chunk-Min-Length", m.to_string());
                }
                return r;
            }
            let Ok(id) = id.parse::<u64>() else { return Resp::error(404, "BLOB_UPLOAD_UNKNOWN") };
            if !store.uploads.contains_key(&id) {
                return Resp::error(404, "BLOB_UPLOAD_UNKNOWN");
            }
            if req.method == "PATCH" {
                store.chunks.entry(id).or_default().push(req.body.len());
            }
            let sizes = store.chunks.get(&id).cloned().unwrap_or_default();
            let Some(data) = store.uploads.get_mut(&id) else { return Resp::error(404, "BLOB_UPLOAD_UNKNOWN") };
            let location = format!("/v2/{name}/blobs/uploads/{id}?_state=s{id}");
            match req.method.as_str() {
                "PATCH" => {
                    if let Some(range) = req.headers.get("content-range") {
                        let start =
                            range.trim_start_matches("bytes ").split('-').next().and_then(|s| s.parse::<usize>().ok());
                        if start != Some(data.len()) && (!q.ecr_chunks || data.is_empty()) {
                            return Resp::error(416, "BLOB_UPLOAD_INVALID");
                        }
                    }
                    if q.ecr_chunks && !data.is_empty() {
                        // bytes after the first chunk are dropped; Range stays where it was
                        let end = data.len().saturating_sub(1);
                        return Resp::new(201).header("Location", location).header("Range", format!("0-{end}"));
                    }
                    data.extend_from_slice(&req.body);
                    let end = data.len().saturating_sub(1);
                    Resp::new(if q.ecr_chunks { 201 } else { 202 })
                        .header("Location", location)
                        .header("Range", format!("0-{end}"))
                }
                "GET" => {
                    let end = data.len().saturating_sub(1);
                    Resp::new(204).header("Location", location).header("Range", format!("0-{end}"))
                }
                "PUT" => {
                    // every chunk but the last must reach the advertised minimum
                    if let Some(m) = q.chunk_min
                        && sizes.iter().rev().skip(usize::from(req.body.is_empty())).any(|&n| (n as u64) < m)
                    {
                        return Resp::error(416, "SIZE_INVALID");
                    }
                    data.extend_from_slice(&req.body);
                    let d = get("digest").unwrap_or_default();
                    let actual = format!("sha256:{}", sha256_hex(data));
                    if actual != d {
                        return Resp::error(400, "DIGEST_INVALID");
                    }
                    let data = store.uploads.remove(&id).unwrap_or_default();
                    store.blobs.insert(d.clone(), data);
                    store.links.insert((name.clone(), d.clone()));
                    Resp::new(201)
                        .header("Location", format!("/v2/{name}/blobs/{d}"))
                        .header("Docker-Content-Digest", d)
                }
                "DELETE" => {
                    store.uploads.remove(&id);
                    Resp::new(204)
                }
                _ => Resp::error(405, "UNSUPPORTED"),
            }
        } else if let Some((name, d)) = rest.split_once("/blobs/") {
            let link = (name.to_owned(), d.to_owned());
            let Some(data) = store.blobs.get(d).cloned().filter(|_| store.links.contains(&link)) else {
                return Resp::error(404, "BLOB_UNKNOWN");
            };
            match req.method.as_str() {
                "DELETE" => {
                    store.links.remove(&link);
                    Resp::new(202)
                }
                "GET" if q.redirect_blobs_to.is_some() && !req.target.contains("redirected=1") => {
                    let to = q.redirect_blobs_to.clone().unwrap_or_default();
                    Resp::new(307).header("Location", format!("{to}{}?redirected=1", req.path))
                }
                _ => match req.headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
                    Some(r) => {
                        let (a, b) = r.split_once('-').unwrap_or((r, ""));
                        let len = data.len();
                        let (start, end) = match (a.parse::<usize>().ok(), b.parse::<usize>().ok()) {
                            (Some(s), Some(e)) => (s, e.min(len.saturating_sub(1))),
                            (Some(s), None) => (s, len.saturating_sub(1)),
                            (None, Some(n)) => (len.saturating_sub(n), len.saturating_sub(1)),
                            (None, None) => return Resp::error(416, "RANGE_INVALID"),
                        };
                        if start >= len || start > end {
                            return Resp::error(416, "RANGE_INVALID");
                        }
                        Resp::new(206)
                            .header("Content-Range", format!("bytes {start}-{end}/{len}"))
                            .body(data.get(start..=end).unwrap_or_default().to_vec())
                    }
                    None => Resp::new(200).header("Docker-Content-Digest", d).body(data),
                },
            }
        } else if let Some((name, reference)) = rest.split_once("/manifests/") {
            let key = (name.to_owned(), reference.to_owned());
            match req.method.as_str() {
                "PUT" => {
                    let mt = req.headers.get("content-type").cloned().unwrap_or_default();
                    let digest = format!("sha256:{}", sha256_hex(&req.body));
                    if reference.starts_with("sha256:") && reference != digest {
                        return Resp::error(400, "DIGEST_INVALID");
                    }
                    store.manifests.insert((name.to_owned(), digest.clone()), (mt.clone(), req.body.clone()));
                    store.manifests.insert(key, (mt, req.body.clone()));
                    let subject = serde_json::from_slice::<Value>(&req.body)
                        .ok()
                        .and_then(|v| v["subject"]["digest"].as_str().map(str::to_owned));
                    let mut r = Resp::new(201)
                        .header("Location", format!("/v2/{name}/manifests/{digest}"))
                        .header("Docker-Content-Digest", digest);
                    if let Some(s) = subject {
                        r = r.header("OCI-Subject", s);
                    }
                    r
                }
                "DELETE" => match store.manifests.remove(&key) {
                    Some(_) => Resp::new(202),
                    None => Resp::error(404, "MANIFEST_UNKNOWN"),
                },
                _ => {
                    let Some((mt, bytes)) = store.manifests.get(&key).cloned() else {
                        return Resp::error(404, "MANIFEST_UNKNOWN");
                    };
                    let digest = format!("sha256:{}", sha256_hex(&bytes));
                    let body = if q.oversized_manifest {
                        let mut big = bytes.clone();
                        big.resize(5 * 1024 * 1024, b' ');
                        big
                    } else if q.wrong_manifest_digest {
                        let mut other = bytes.clone();
                        other.push(b' ');
                        other
                    } else {
                        bytes
                    };
                    Resp::new(200).header("Content-Type", mt).header("Docker-Content-Digest", digest).body(body)
                }
            }
        } else if let Some(name) = rest.strip_suffix("/tags/list")
            && q.endless_tags
        {
            let page = get("page").and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
            let tags: Vec<String> = (0..50_000).map(|i| format!("p{page:07}-{i:05}")).collect();
            Resp::new(200)
                .header("Content-Type", "application/json")
                .header("Link", format!("</v2/{name}/tags/list?page={}>; rel=\"next\"", page + 1))
                .body(json!({"name": name, "tags": tags}).to_string().into_bytes())
        } else if let Some(name) = rest.strip_suffix("/tags/list") {
            let mut tags: Vec<String> = store
                .manifests
                .keys()
                .filter(|(n, r)| n == name && !r.starts_with("sha256:"))
                .map(|(_, r)| r.clone())
                .collect();
            tags.sort();
            tags.dedup();
            if tags.is_empty() {
                return Resp::error(404, "NAME_UNKNOWN");
            }
            if let Some(last) = get("last") {
                tags.retain(|t| *t > last);
            }
            let n = get("n").and_then(|n| n.parse::<usize>().ok()).or(q.page_size);
            let mut r = Resp::new(200).header("Content-Type", "application/json");
            if let Some(n) = n
                && tags.len() > n
            {
                tags.truncate(n);
                let last = tags.last().cloned().unwrap_or_default();
                let link = if q.loop_pages {
                    format!("/v2/{name}/tags/list?n={n}")
                } else {
                    format!("/v2/{name}/tags/list?n={n}&last={last}")
                };
                r = r.header("Link", format!("<{link}>; rel=\"next\""));
            }
            r.body(json!({"name": name, "tags": tags}).to_string().into_bytes())
        } else if let Some((name, subject)) = rest.split_once("/referrers/") {
            let filter = get("artifactType");
            let mut manifests = Vec::new();
            for ((n, r), (mt, bytes)) in &store.manifests {
                if n != name || !r.starts_with("sha256:") {
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(bytes) else { continue };
                if v["subject"]["digest"].as_str() != Some(subject) {
                    continue;
                }
                let artifact_type = v["artifactType"]
                    .as_str()
                    .or_else(|| v["config"]["mediaType"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                if filter.as_ref().is_some_and(|f| *f != artifact_type) {
                    continue;
                }
                manifests.push(json!({"mediaType": mt, "digest": r, "size": bytes.len(), "artifactType": artifact_type, "annotations": v["annotations"]}));
            }
            let mut r = Resp::new(200).header("Content-Type", "application/vnd.oci.image.index.v1+json");
            if filter.is_some() {
                r = r.header("OCI-Filters-Applied", "artifactType");
            }
            r.body(json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}).to_string().into_bytes())
        } else {
            Resp::error(404, "NOT_FOUND")
        }
    }
}

fn serve(s: TcpStream, sh: &Shared) -> io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let Some(req) = read_request(&mut r)? else { return Ok(()) };
    if let Ok(mut st) = sh.store.lock() {
        st.log.push(Logged {
            method: req.method.clone(),
            target: req.target.clone(),
            authorized: req.headers.contains_key("authorization"),
        });
    }
    let resp = sh.route(&req);
    write_response(&mut w, &req.method, &resp)
}

impl ScriptedRegistry {
    /// Starts a scripted registry on a free loopback port.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start(quirks: Quirks) -> io::Result<ScriptedRegistry> {
        let shared = Arc::new(Shared {
            quirks: Mutex::new(quirks),
            store: Mutex::new(Store::default()),
            next_upload: AtomicU64::new(1),
        });
        let sh = shared.clone();
        let server = crate::server::Server::start(move |s| {
            let _ = serve(s, &sh);
        })?;
        Ok(ScriptedRegistry { shared, server })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port())
    }

    /// Replaces the quirks.
    pub fn set_quirks(&self, quirks: Quirks) {
        if let Ok(mut q) = self.shared.quirks.lock() {
            *q = quirks;
        }
    }

    /// The requests seen so far.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.store.lock().map(|s| s.log.clone()).unwrap_or_default()
    }

    /// The stored bytes of a blob.
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        self.shared.store.lock().ok()?.blobs.get(digest).cloned()
    }
}
