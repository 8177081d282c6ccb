//! The registry client's error: opaque, with a kind, the HTTP status, the
//! registry's error codes and whether a retry may help. It never exposes
//! reqwest types and never carries credentials.

use std::fmt;

use oci_image::Digest;

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Credentials are missing or were refused (401).
    Unauthorized,
    /// Authenticated but not allowed (403, `DENIED`).
    Denied,
    /// The repository, manifest, blob or upload does not exist (404).
    NotFound,
    /// Too many requests (429, `TOOMANYREQUESTS`).
    RateLimited,
    /// Content does not match its digest or size.
    DigestMismatch,
    /// The registry answered something the protocol does not allow, or
    /// refused the request as invalid (400, 405, 416, unexpected bodies).
    Protocol,
    /// The connection failed, timed out or broke.
    Transport,
    /// Local reading or writing failed.
    Io,
    /// The caller's input is unusable (a bad reference, an insecure host not allowed).
    Invalid,
    /// The registry failed (5xx).
    Server,
    /// The credential source could not answer (a `docker-credential-*`
    /// helper failed, hung or printed junk).
    Credentials,
}

/// One entry of the registry's error envelope (`{"errors":[{code,message}]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCode {
    /// `MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, `DENIED`, ...
    pub code: String,
    /// The registry's message.
    pub message: String,
}

/// A registry operation failed.
pub struct Error {
    kind: ErrorKind,
    status: Option<u16>,
    codes: Vec<ErrorCode>,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error { kind, status: None, codes: Vec::new(), context: context.into(), source: None }
    }

    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    pub(crate) fn with_codes(mut self, codes: Vec<ErrorCode>) -> Self {
        self.codes = codes;
        self
    }

    pub(crate) fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub(crate) fn transport(context: impl Into<String>, e: &reqwest::Error) -> Self {
        // reqwest's Display can include the URL; ours never carries credentials
        // (they travel in headers), so it is safe to keep as text.
        let mut context = context.into();
        if e.is_timeout() {
            // the connect or idle timeout: say so, not "error decoding the body"
            context.push_str(": timed out (nothing arrived within the client's timeout)");
        } else if e.is_connect() {
            context.push_str(": cannot connect");
        }
        Error::new(ErrorKind::Transport, context).with_source(SourceText(strip_url_userinfo(&format!("{e}"))))
    }

    /// The registry error a request body's source failed with (a blob
    /// streamed from another registry that broke its digest or size), when
    /// `e`'s chain carries one: that, not the transport, is what went wrong.
    pub(crate) fn from_body_source(context: &str, e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(inner) =
                err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|i| i.downcast_ref::<Error>())
            {
                return Some(Error {
                    kind: inner.kind,
                    status: inner.status,
                    codes: inner.codes.clone(),
                    context: format!("{context}: the blob's source failed: {}", inner.context),
                    source: None,
                });
            }
            cur = err.source();
        }
        None
    }

    pub(crate) fn io(context: impl Into<String>, e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, context).with_source(e)
    }

    pub(crate) fn digest_mismatch(expected: &Digest, actual: &Digest) -> Self {
        Error::new(ErrorKind::DigestMismatch, format!("content digest mismatch: expected {expected}, got {actual}"))
    }

    /// A digest mismatch between what was expected and what a registry reported.
    pub fn from_mismatch(expected: &Digest, actual: Option<&Digest>) -> Self {
        match actual {
            Some(a) => Error::digest_mismatch(expected, a),
            None => Error::new(ErrorKind::DigestMismatch, format!("expected {expected}, the registry reported none")),
        }
    }

    /// A "not found" error with a message (for callers composing operations).
    pub fn not_found(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, context)
    }

    /// The broad kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status, when the registry answered.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The registry's error codes, when it sent an error envelope.
    pub fn codes(&self) -> &[ErrorCode] {
        &self.codes
    }

    /// Whether repeating the operation may succeed (transport failures,
    /// 5xx, 429).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transport | ErrorKind::RateLimited | ErrorKind::Server)
    }
}

/// A sink's or source's I/O failure (for [`crate::BlobSink`] implementations).
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("writing the blob", e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(s) = self.status {
            write!(f, " (HTTP {s})")?;
        }
        for c in &self.codes {
            write!(f, "; {}: {}", c.code, c.message)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("codes", &self.codes)
            .field("context", &self.context)
            .field("source", &self.source.as_ref().map(ToString::to_string))
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A source error kept as text (so no foreign type leaks through).
#[derive(Debug)]
struct SourceText(String);

impl fmt::Display for SourceText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceText {}

/// Removes `user:password@` from any URL in `s`.
pub(crate) fn strip_url_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c.is_whitespace() || c == ')' || c == '"').unwrap_or(tail.len());
        let authority = tail.get(..end).unwrap_or_default();
        match authority.rfind('@') {
            Some(at) => out.push_str(authority.get(at + 1..).unwrap_or_default()),
            None => out.push_str(authority),
        }
        rest = tail.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// The kind for an HTTP status.
pub(crate) fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Denied,
        404 => ErrorKind::NotFound,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::Protocol,
    }
}

/// Parses an error envelope body into codes (best effort).
pub(crate) fn parse_codes(body: &[u8]) -> Vec<ErrorCode> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.errors.into_iter().map(|x| ErrorCode { code: x.code, message: x.message }).collect())
        .unwrap_or_default()
}

/// A result with the registry [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_stripped() {
        assert_eq!(
            strip_url_userinfo("error sending request for url (https://user:pw@host:5000/v2/) x"),
            "error sending request for url (https://host:5000/v2/) x"
        );
        assert_eq!(strip_url_userinfo("no url here"), "no url here");
    }

    #[test]
    fn envelope_codes() {
        let c = parse_codes(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#);
        assert_eq!(c, vec![ErrorCode { code: "MANIFEST_UNKNOWN".into(), message: "manifest unknown".into() }]);
        assert!(parse_codes(b"<html>").is_empty());
    }
}
