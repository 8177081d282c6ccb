//! The transport: requests described so they can be sent again, and the
//! loop that sends them (auth challenges answered, retries with backoff and
//! `Retry-After`, stalled bodies cut off), with the body readers and the
//! status check every endpoint uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::client::{Client, Endpoint, LARGE_BODY, redact, same_host};
use crate::error::{Error, ErrorKind, Result, kind_for_status, parse_codes};
use crate::progress::Progress;

/// The body of a request, re-creatable for retries and re-authentication.
#[derive(Clone)]
pub(crate) enum Body {
    Empty,
    Bytes(Bytes),
    /// Opens a fresh stream of exactly `len` bytes each time it is called.
    Stream {
        len: Option<u64>,
        open: Arc<dyn Fn() -> BoxFuture<'static, Result<BodyStream>> + Send + Sync>,
    },
}

/// The chunks of a streamed request body.
pub(crate) type BodyStream = futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// When a request last made progress (a body chunk sent), in milliseconds
/// since it started, and whether its body is all sent.
#[derive(Clone)]
struct Activity {
    start: std::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: std::time::Instant::now(), last: Arc::new(std::sync::atomic::AtomicU64::new(0)) }
    }

    fn tick(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Completes once nothing happened for `idle`.
    async fn stalled(&self, idle: Duration) {
        loop {
            let quiet = self.idle();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle.saturating_sub(quiet)).await;
        }
    }

    /// `stream` with every chunk counted as progress.
    fn watch(&self, stream: BodyStream) -> reqwest::Body {
        use futures_util::StreamExt as _;
        let me = self.clone();
        reqwest::Body::wrap_stream(stream.map(move |chunk| {
            me.tick();
            chunk
        }))
    }
}

/// One request, described so it can be sent again.
#[derive(Clone)]
pub(crate) struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Body,
    /// Token scopes (`repository:x:pull,push`), push scope first for mounts.
    pub scopes: Vec<String>,
    /// Whether a transport failure may be retried by resending.
    pub idempotent: bool,
    /// At login: where a token server's identity token goes (`docker
    /// login` asks for one with `offline_token=true`).
    pub login: Option<IdentitySlot>,
}

/// Where [`Client::check_login`] collects the identity token a token
/// server returns.
pub(crate) type IdentitySlot = std::sync::Arc<std::sync::Mutex<Option<String>>>;

impl Request {
    /// An idempotent request without headers or body.
    pub(crate) fn new(method: Method, url: Url, scopes: Vec<String>) -> Self {
        Request { method, url, headers: HeaderMap::new(), body: Body::Empty, scopes, idempotent: true, login: None }
    }

    /// With these headers.
    pub(crate) fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }
}

fn jitter(d: Duration) -> Duration {
    let factor = rand::random_range(0.5..1.0);
    d.mul_f64(factor)
}

fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(s)?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// Parses an HTTP-date (RFC 9110, section 5.6.7): the IMF-fixdate senders
/// write (`Sun, 06 Nov 1994 08:49:37 GMT`) and the two obsolete forms a
/// recipient still accepts, RFC 850's (`Sunday, 06-Nov-94 08:49:37 GMT`)
/// and asctime's (`Sun Nov  6 08:49:37 1994`, UTC).
pub(crate) fn httpdate_parse(s: &str) -> Option<SystemTime> {
    use jiff::fmt::strtime;
    // one space between words, as the obsolete forms pad with two
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let utc = |t: strtime::BrokenDownTime| jiff::tz::Offset::UTC.to_timestamp(t.to_datetime().ok()?).ok();
    let when = if s.ends_with(" GMT") && s.contains(", ") && !s.contains('-') {
        utc(strtime::parse("%a, %d %b %Y %H:%M:%S GMT", &s).ok()?)?
    } else if s.ends_with(" GMT") {
        utc(strtime::parse("%A, %d-%b-%y %H:%M:%S GMT", &s).ok()?)?
    } else {
        utc(strtime::parse("%a %b %d %H:%M:%S %Y", &s).ok()?)?
    };
    Some(SystemTime::from(when))
}

impl Client {
    /// Sends a request with auth and retries; returns the response whatever
    /// its status once it is final (not 401 after re-auth, not retryable).
    pub(crate) async fn send(&self, repo: &dyn Endpoint, req: &Request) -> Result<reqwest::Response> {
        let policy = &self.inner.retry;
        let mut attempt = 0u32;
        // refusals of credentials this call had just obtained
        let mut fresh_refused = 0u32;
        // credentials this call obtained after a 401, sent on the next attempt
        let mut fresh: Option<HeaderValue> = None;
        loop {
            attempt += 1;
            // credentials go only to the registry itself, never to another host
            let (sent, sent_fresh) = if same_host(&req.url, repo.api_host()) {
                match fresh.take() {
                    Some(h) => (Some(h), true),
                    None => (self.auth_header(repo, &req.scopes)?, false),
                }
            } else {
                (None, false)
            };
            let idle = self.inner.idle;
            let result = self.transmit(req, sent.as_ref()).await?;
            let result = match result {
                Err(Sent::Stalled) => {
                    let err = Error::new(
                        ErrorKind::Transport,
                        format!("{} {}: no progress for {}s", req.method, redact(&req.url), idle.as_secs_f32()),
                    );
                    if !req.idempotent || attempt >= policy.max_attempts {
                        return Err(err);
                    }
                    tracing::debug!(error = %err, "stalled; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
                Err(Sent::Failed(e)) => Err(e),
                Ok(r) => Ok(r),
            };
            let delay = match result {
                Err(e) => {
                    let context = format!("{} {}", req.method, redact(&req.url));
                    if let Some(cause) = Error::from_body_source(&context, &e) {
                        return Err(cause);
                    }
                    let err = Error::transport(context, &e);
                    if !req.idempotent || attempt >= policy.max_attempts {
                        return Err(err);
                    }
                    self.backoff(attempt)
                }
                Ok(resp) => {
                    let status = resp.status();
                    // A 401 without credentials is the registry's challenge, and one
                    // for credentials obtained earlier (a cached token, perhaps
                    // expired mid-push) asks for new ones; neither is a verdict. A
                    // refusal of credentials this call had just obtained is, the
                    // second time. Every 401 answered here is followed by an
                    // attempt with fresh credentials, so the loop ends: in a
                    // verdict, or in an attempt that counts.
                    let verdict = sent_fresh && fresh_refused >= 1;
                    if status == StatusCode::UNAUTHORIZED && !verdict {
                        fresh_refused += u32::from(sent_fresh);
                        let challenge =
                            resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                        // the refused token is stale, unless another request has replaced it already
                        if let Some(token) = sent.as_ref().and_then(|h| h.to_str().ok()?.strip_prefix("Bearer ")) {
                            self.inner.tokens.forget_token(repo.registry(), &Self::scope_key(&req.scopes), token);
                        }
                        let Some(next) =
                            self.authenticate(repo, &req.scopes, challenge.as_deref(), req.login.as_ref()).await?
                        else {
                            return Ok(resp);
                        };
                        fresh = Some(next);
                        // answering a challenge is not a retry
                        attempt -= 1;
                        continue;
                    }
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !retryable || attempt >= policy.max_attempts {
                        return Ok(resp);
                    }
                    match resp.headers().get(RETRY_AFTER).and_then(parse_retry_after) {
                        Some(d) if d > policy.max_retry_after => return Ok(resp),
                        Some(d) => d,
                        None => self.backoff(attempt),
                    }
                }
            };
            self.emit(&Progress::RetryWaiting { url: redact(&req.url), attempt, delay });
            tracing::debug!(attempt, ?delay, url = %redact(&req.url), "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends `req` once with `auth`. A large body goes through the upload
    /// client and is watched: no progress for the idle timeout (the
    /// registry stopped taking the body or, after the last byte, answering)
    /// is [`Sent::Stalled`].
    async fn transmit(
        &self,
        req: &Request,
        auth: Option<&HeaderValue>,
    ) -> Result<std::result::Result<reqwest::Response, Sent>> {
        let large = match &req.body {
            Body::Empty => false,
            Body::Bytes(b) => b.len() > LARGE_BODY,
            Body::Stream { .. } => true,
        };
        let http = if large { &self.inner.upload_http } else { &self.inner.http };
        let activity = Activity::new();
        let mut builder = http.request(req.method.clone(), req.url.clone()).headers(req.headers.clone());
        if let Some(h) = auth {
            builder = builder.header(AUTHORIZATION, h.clone());
        }
        builder = match &req.body {
            Body::Empty => builder,
            Body::Bytes(b) if !large => builder.body(b.clone()),
            Body::Bytes(b) => {
                let chunks: Vec<std::io::Result<Bytes>> =
                    (0..b.len()).step_by(LARGE_BODY).map(|i| Ok(b.slice(i..b.len().min(i + LARGE_BODY)))).collect();
                builder
                    .body(activity.watch(Box::pin(futures_util::stream::iter(chunks))))
                    .header(reqwest::header::CONTENT_LENGTH, b.len())
            }
            Body::Stream { len, open } => {
                let body = activity.watch(open().await?);
                let b = builder.body(body);
                match len {
                    Some(n) => b.header(reqwest::header::CONTENT_LENGTH, *n),
                    None => b,
                }
            }
        };
        Ok(if large {
            tokio::select! {
                r = builder.send() => r.map_err(Sent::Failed),
                () = activity.stalled(self.inner.idle) => Err(Sent::Stalled),
            }
        } else {
            builder.send().await.map_err(Sent::Failed)
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let p = &self.inner.retry;
        let exp = p.base_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        jitter(exp.min(p.max_delay))
    }

    /// Sends and turns a non-success status into an [`Error`].
    pub(crate) async fn send_ok(&self, repo: &dyn Endpoint, req: &Request, what: &str) -> Result<reqwest::Response> {
        let resp = self.send(repo, req).await?;
        check(resp, what).await
    }
}

/// How a request send ended, when it did not answer.
enum Sent {
    Failed(reqwest::Error),
    Stalled,
}

/// Reads a response body of at most `cap` bytes (an error past it, nothing
/// buffered beyond it); a body that stalls for `idle` fails too.
pub(crate) async fn read_capped_idle(resp: reqwest::Response, cap: u64, idle: Duration, what: &str) -> Result<Bytes> {
    use futures_util::StreamExt as _;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    loop {
        let next = tokio::time::timeout(idle, stream.next()).await.map_err(|_| {
            Error::new(ErrorKind::Transport, format!("{what}: no progress for {}s", idle.as_secs_f32()))
        })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Error::transport(what.to_owned(), &e))?;
        if buf.len() as u64 + chunk.len() as u64 > cap {
            return Err(Error::new(ErrorKind::Protocol, format!("{what}: the answer is over {cap} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Turns a non-2xx response into an error carrying status and codes.
pub(crate) async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // an error envelope is small; a bigger or stalled body is cut off
    let body = read_capped_idle(resp, 64 * 1024, Duration::from_secs(30), what).await.unwrap_or_default();
    Err(Error::new(kind_for_status(status.as_u16()), what.to_owned())
        .with_status(status.as_u16())
        .with_codes(parse_codes(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(&HeaderValue::from_static("7")), Some(Duration::from_secs(7)));
        // RFC 9110's IMF-fixdate, and the two obsolete forms recipients accept
        let when = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777));
        for s in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(httpdate_parse(s), when, "{s}");
        }
        assert_eq!(
            httpdate_parse("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        for bad in
            ["Sun, 31 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 PST", ""]
        {
            assert_eq!(httpdate_parse(bad), None, "{bad}");
        }
        let past = parse_retry_after(&HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(past, Some(Duration::ZERO));
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
