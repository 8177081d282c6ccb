//! Content digests (`algorithm:encoded`) and hashing adapters.
//!
//! The grammar follows the OCI image spec:
//! `algorithm ":" encoded`, `algorithm = component (separator component)*`,
//! `component = [a-z0-9]+`, `separator = [+._-]`, `encoded = [a-zA-Z0-9=_-]+`.
//! `sha256` and `sha512` are registered: their encoded part must be lowercase
//! hex of the right length, and content can be verified against them. Other
//! algorithms are accepted as the spec requires but are not verifiable.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A registered or unknown digest algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Algorithm {
    /// SHA-256, the default everywhere.
    Sha256,
    /// SHA-512.
    Sha512,
    /// Any other algorithm allowed by the grammar; content cannot be verified.
    Other(String),
}

impl Algorithm {
    /// The algorithm's name as it appears before the `:`.
    pub fn as_str(&self) -> &str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Other(s) => s,
        }
    }

    /// Length in hex characters of a digest of this algorithm, when registered.
    pub fn hex_len(&self) -> Option<usize> {
        match self {
            Algorithm::Sha256 => Some(64),
            Algorithm::Sha512 => Some(128),
            Algorithm::Other(_) => None,
        }
    }

    /// Whether kiln can compute (and so verify) this algorithm.
    pub fn is_verifiable(&self) -> bool {
        !matches!(self, Algorithm::Other(_))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// No `:` between algorithm and encoded part.
    #[error("invalid digest {input:?}: missing ':' between algorithm and encoded part")]
    MissingSeparator {
        /// The rejected input.
        input: String,
    },
    /// The algorithm part does not match the grammar (lowercase components).
    #[error("invalid digest {input:?}: bad algorithm {algorithm:?}")]
    InvalidAlgorithm {
        /// The rejected input.
        input: String,
        /// The algorithm part.
        algorithm: String,
    },
    /// The encoded part is empty or has characters outside `[a-zA-Z0-9=_-]`.
    #[error("invalid digest {input:?}: bad encoded part")]
    InvalidEncoded {
        /// The rejected input.
        input: String,
    },
    /// A registered algorithm whose encoded part is not lowercase hex of the right length.
    #[error("invalid digest {input:?}: {algorithm} needs {expected} lowercase hex characters")]
    InvalidHex {
        /// The rejected input.
        input: String,
        /// The registered algorithm.
        algorithm: Algorithm,
        /// The required number of hex characters.
        expected: usize,
    },
}

/// A validated content digest such as `sha256:e3b0c442…`.
///
/// ```
/// use oci_image::Digest;
/// let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse()?;
/// assert_eq!(d, Digest::sha256(b""));
/// assert_eq!(d.algorithm().as_str(), "sha256");
/// # Ok::<(), oci_image::DigestError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    encoded: String,
}

fn valid_algorithm(s: &str) -> bool {
    // component (separator component)*, components non-empty [a-z0-9]+
    !s.is_empty()
        && s.split(['+', '.', '_', '-'])
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Digest {
    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        Digest::from_hasher(Hasher::new(&Algorithm::Sha256), data)
    }

    /// The sha512 digest of `data`.
    pub fn sha512(data: &[u8]) -> Digest {
        Digest::from_hasher(Hasher::new(&Algorithm::Sha512), data)
    }

    fn from_hasher(mut h: Hasher, data: &[u8]) -> Digest {
        h.update(data);
        h.finish()
    }

    /// The digest of `data` with the same algorithm as `self`, when verifiable.
    pub fn compute_like(&self, data: &[u8]) -> Option<Digest> {
        Hasher::try_new(&self.algorithm).map(|h| Digest::from_hasher(h, data))
    }

    /// The algorithm part.
    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// The encoded part (lowercase hex for registered algorithms).
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// Whether content can be checked against this digest.
    pub fn is_verifiable(&self) -> bool {
        self.algorithm.is_verifiable()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((alg, enc)) = input.split_once(':') else {
            return Err(DigestError::MissingSeparator { input: input.to_owned() });
        };
        if !valid_algorithm(alg) {
            return Err(DigestError::InvalidAlgorithm { input: input.to_owned(), algorithm: alg.to_owned() });
        }
        if enc.is_empty() || !enc.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-')) {
            return Err(DigestError::InvalidEncoded { input: input.to_owned() });
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => Algorithm::Other(other.to_owned()),
        };
        if let Some(expected) = algorithm.hex_len()
            && (enc.len() != expected || !is_lower_hex(enc))
        {
            return Err(DigestError::InvalidHex { input: input.to_owned(), algorithm, expected });
        }
        Ok(Digest { algorithm, encoded: enc.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.encoded)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for a verifiable algorithm.
#[derive(Clone)]
pub struct Hasher(HasherInner);

#[derive(Clone)]
enum HasherInner {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    /// A sha256 hasher, or the given algorithm's when verifiable.
    fn new(algorithm: &Algorithm) -> Hasher {
        Hasher::try_new(algorithm).unwrap_or_else(Hasher::sha256)
    }

    /// A sha256 hasher.
    pub fn sha256() -> Hasher {
        Hasher(HasherInner::Sha256(Sha256::new()))
    }

    /// A hasher for `algorithm`, or `None` when kiln cannot compute it.
    pub fn try_new(algorithm: &Algorithm) -> Option<Hasher> {
        match algorithm {
            Algorithm::Sha256 => Some(Hasher::sha256()),
            Algorithm::Sha512 => Some(Hasher(HasherInner::Sha512(Box::default()))),
            Algorithm::Other(_) => None,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let (algorithm, bytes) = match self.0 {
            HasherInner::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            HasherInner::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        Digest { algorithm, encoded: hex(&bytes) }
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A [`Write`] adapter that hashes and counts every byte written through it.
///
/// ```
/// use std::io::Write;
/// use oci_image::{Digest, DigestWriter};
/// let mut w = DigestWriter::new(Vec::new());
/// w.write_all(b"hello")?;
/// let (bytes, digest, size) = w.finish();
/// assert_eq!((digest, size), (Digest::sha256(b"hello"), 5));
/// assert_eq!(bytes, b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct DigestWriter<W> {
    inner: W,
    hasher: Hasher,
    size: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`, hashing with sha256.
    pub fn new(inner: W) -> Self {
        DigestWriter { inner, hasher: Hasher::sha256(), size: 0 }
    }

    /// Wraps `inner`, hashing with the given hasher.
    pub fn with_hasher(inner: W, hasher: Hasher) -> Self {
        DigestWriter { inner, hasher, size: 0 }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A reference to the wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.size)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.hasher.update(written);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Read`] adapter that hashes and counts every byte read through it.
pub struct DigestReader<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
}

impl<R: Read> DigestReader<R> {
    /// Wraps `inner`, hashing with sha256.
    pub fn new(inner: R) -> Self {
        DigestReader { inner, hasher: Hasher::sha256(), size: 0 }
    }

    /// Wraps `inner`, hashing with the given hasher.
    pub fn with_hasher(inner: R, hasher: Hasher) -> Self {
        DigestReader { inner, hasher, size: 0 }
    }

    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns the inner reader, the digest and the byte count.
    pub fn finish(self) -> (R, Digest, u64) {
        (self.inner, self.hasher.finish(), self.size)
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(read) = buf.get(..n) {
            self.hasher.update(read);
        }
        self.size += n as u64;
        Ok(n)
    }
}

/// Why content did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The digest's algorithm cannot be computed here.
    #[error("cannot verify {digest}: algorithm {} is not supported", digest.algorithm())]
    Unverifiable {
        /// The expected digest.
        digest: Digest,
    },
    /// More bytes than the expected size arrived.
    #[error("content for {digest} is larger than the expected {expected} bytes")]
    SizeOverrun {
        /// The expected digest.
        digest: Digest,
        /// The expected size.
        expected: u64,
    },
    /// Fewer bytes than expected arrived.
    #[error("content for {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The expected digest.
        digest: Digest,
        /// The expected size.
        expected: u64,
        /// The size seen.
        actual: u64,
    },
    /// The content hashes to another digest.
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The expected digest.
        expected: Digest,
        /// The digest of the content.
        actual: Digest,
    },
    /// Reading failed.
    #[error("reading content for {digest}")]
    Io {
        /// The expected digest.
        digest: Digest,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
}

/// A reader that passes content through while checking it against an expected
/// digest and size; it fails with [`VerifyError`] (wrapped in an
/// [`io::Error`]) as soon as the size is exceeded, on the read that reaches
/// `size` bytes when the digest differs (so a consumer that stops at the
/// size, as a chunked upload does, still sees the failure), and at end of
/// input when fewer bytes came. Nothing past `size` bytes is ever returned.
pub struct VerifyingReader<R> {
    inner: DigestReader<io::Take<R>>,
    expected: Digest,
    size: u64,
    done: bool,
    /// The digest was checked when `size` bytes had passed.
    checked: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner` to check it against `expected` and `size`.
    ///
    /// # Errors
    /// [`VerifyError::Unverifiable`] when the algorithm is not sha256/sha512.
    pub fn new(inner: R, expected: &Digest, size: u64) -> Result<Self, VerifyError> {
        let hasher = Hasher::try_new(expected.algorithm())
            .ok_or_else(|| VerifyError::Unverifiable { digest: expected.clone() })?;
        Ok(VerifyingReader {
            // one extra byte lets us notice an overrun
            inner: DigestReader::with_hasher(inner.take(size.saturating_add(1)), hasher),
            expected: expected.clone(),
            size,
            done: false,
            checked: false,
        })
    }

    fn check_end(&mut self) -> Result<(), VerifyError> {
        let actual_size = self.inner.size();
        if actual_size != self.size {
            return Err(VerifyError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                actual: actual_size,
            });
        }
        let actual = self.inner.hasher.clone().finish();
        if actual != self.expected {
            return Err(VerifyError::DigestMismatch { expected: self.expected.clone(), actual });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if self.inner.size() > self.size {
            self.done = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                VerifyError::SizeOverrun { digest: self.expected.clone(), expected: self.size },
            ));
        }
        if n == 0 || (!self.checked && self.inner.size() == self.size) {
            // at the size (or the end): the digest must match now
            self.checked = true;
            self.done = n == 0;
            self.check_end().map_err(|e| {
                self.done = true;
                io::Error::new(io::ErrorKind::InvalidData, e)
            })?;
        }
        Ok(n)
    }
}

/// Reads `reader` to its end and checks that it has exactly `size` bytes with
/// digest `expected`. Memory use is a fixed buffer whatever the size.
///
/// # Errors
/// [`VerifyError`] naming the mismatch, or the I/O failure.
pub fn verify<R: Read>(reader: R, expected: &Digest, size: u64) -> Result<(), VerifyError> {
    let mut v = VerifyingReader::new(reader, expected, size)?;
    match io::copy(&mut v, &mut io::sink()) {
        Ok(_) => Ok(()),
        Err(e) => Err(into_verify_error(e, expected)),
    }
}

/// Recovers a [`VerifyError`] carried inside an [`io::Error`] from a [`VerifyingReader`].
pub fn into_verify_error(e: io::Error, digest: &Digest) -> VerifyError {
    if e.get_ref().is_some_and(|inner| inner.is::<VerifyError>()) {
        match e.into_inner().map(|b| b.downcast::<VerifyError>()) {
            Some(Ok(v)) => *v,
            Some(Err(other)) => VerifyError::Io { digest: digest.clone(), source: io::Error::other(other) },
            None => VerifyError::Io { digest: digest.clone(), source: io::Error::other("unknown") },
        }
    } else {
        VerifyError::Io { digest: digest.clone(), source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn a_reader_that_stops_at_the_size_still_sees_a_wrong_digest() {
        let expected = Digest::sha256(b"right bytes");
        let mut buf = [0u8; 11];
        let mut good = VerifyingReader::new(&b"right bytes"[..], &expected, 11).unwrap();
        good.read_exact(&mut buf).unwrap();
        let mut bad = VerifyingReader::new(&b"wrong bytes"[..], &expected, 11).unwrap();
        let e = bad.read_exact(&mut buf).unwrap_err();
        assert!(matches!(into_verify_error(e, &expected), VerifyError::DigestMismatch { .. }));
        // short and long inputs still fail at the end
        assert!(verify(&b"right"[..], &expected, 11).is_err());
        assert!(verify(&b"right bytes!"[..], &expected, 11).is_err());
        assert!(verify(&b"right bytes"[..], &expected, 11).is_ok());
    }

    #[test]
    fn parses_registered_and_other_algorithms() {
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), Digest::sha256(b""));
        for ok in [
            "sha256+b64:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
            "sha256+foo-bar:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7",
            "sha256.foo-bar:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
            "sha256+b64u.unknownlength:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564=",
        ] {
            let d: Digest = ok.parse().unwrap();
            assert!(!d.is_verifiable(), "{ok}");
            assert_eq!(d.to_string(), ok);
        }
        let sha512 = Digest::sha512(b"x");
        assert_eq!(sha512.encoded().len(), 128);
        assert_eq!(sha512.to_string().parse::<Digest>().unwrap(), sha512);
    }

    #[test]
    fn rejects_bad_digests() {
        let upper = EMPTY.to_uppercase();
        let upper_hex = format!("sha256:{}", &EMPTY[7..].to_uppercase());
        for (bad, want) in [
            (":abc", "bad algorithm"),
            ("sha256", "missing ':'"),
            ("sha256:", "bad encoded"),
            (upper.as_str(), "bad algorithm"),
            (upper_hex.as_str(), "lowercase hex"),
            ("sha256+foo+-b:abc", "bad algorithm"),
            ("sha256:abc", "lowercase hex"),
            ("sha256:e3b0 c44", "bad encoded"),
        ] {
            let err = bad.parse::<Digest>().unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "error names the input: {err}");
        }
    }

    #[test]
    fn verify_detects_mismatch_and_overrun() {
        let d = Digest::sha256(b"hello");
        verify(&b"hello"[..], &d, 5).unwrap();
        assert!(matches!(verify(&b"hellp"[..], &d, 5), Err(VerifyError::DigestMismatch { .. })));
        assert!(matches!(verify(&b"hello!"[..], &d, 5), Err(VerifyError::SizeOverrun { .. })));
        assert!(matches!(verify(&b"hell"[..], &d, 5), Err(VerifyError::SizeMismatch { actual: 4, .. })));
        let other: Digest = "multihash+base58:QmRZ".parse().unwrap();
        assert!(matches!(verify(&b""[..], &other, 0), Err(VerifyError::Unverifiable { .. })));
    }

    #[test]
    fn digest_reader_counts() {
        let mut r = DigestReader::new(&b"abc"[..]);
        let mut s = Vec::new();
        r.read_to_end(&mut s).unwrap();
        let (_, d, n) = r.finish();
        assert_eq!((d, n), (Digest::sha256(b"abc"), 3));
    }
}
