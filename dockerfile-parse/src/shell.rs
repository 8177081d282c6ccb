//! Word expansion: BuildKit's shell lexer.
//!
//! [`Lexer`] removes quotes, handles escapes and expands `$name`,
//! `${name}` and the `${name<op>word}` forms the way BuildKit's
//! `frontend/dockerfile/shell` package does, optionally splitting the result
//! into words. Every expansion reports the variables it looked up, split into
//! those that were set ([`Expansion::matched`]) and those that were not
//! ([`Expansion::unmatched`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use dockerfile_parse::shell::Lexer;
//!
//! let env = BTreeMap::from([("NAME".to_string(), "kiln".to_string())]);
//! let out = Lexer::new('\\').expand("${NAME:-x}-${MISSING:-y}", &env)?;
//! assert_eq!(out.value, "kiln-y");
//! assert!(out.matched.contains("NAME"));
//! assert!(out.unmatched.contains("MISSING"));
//! # Ok::<(), dockerfile_parse::shell::ExpandError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use crate::class::{CharClass, Dialect};

/// Deepest nesting of `${...}` expansions accepted before giving up.
const MAX_DEPTH: usize = 128;
/// The most bytes a `${name/pattern/replacement}` may produce: nested
/// replacements otherwise grow exponentially with the input's length
/// (found by fuzzing: four nested `//` on a 32-byte value took 8 s and
/// 488 MB).
pub const MAX_EXPANSION: usize = 1 << 20;
/// The most bytes all the expansions of one build may produce together
/// ([`Budget::for_build`]): 64 MiB, thousands of times what real
/// Dockerfiles expand to, while forty lines of `ENV V2=$V1$V1` would
/// otherwise ask for terabytes.
pub const MAX_BUILD_EXPANSION: usize = 64 << 20;

/// A budget of expansion output that every expansion through a lexer
/// holding it draws from ([`Lexer::with_budget`]); clones share it. Once
/// spent, expansions fail with [`ExpandError::OverBudget`]. Each variable
/// value an expansion copies is charged as it is copied, so no expansion
/// allocates more than the budget left (plus the one value being copied).
#[derive(Debug, Clone)]
pub struct Budget {
    left: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Budget {
        Budget { left: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(bytes)), total: bytes }
    }

    /// The budget of one build: [`MAX_BUILD_EXPANSION`].
    pub fn for_build() -> Budget {
        Budget::new(MAX_BUILD_EXPANSION)
    }

    /// The bytes left.
    pub fn left(&self) -> usize {
        self.left.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes `n` bytes; false (taking nothing) when fewer are left.
    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).is_ok()
    }
}

impl PartialEq for Budget {
    fn eq(&self, other: &Budget) -> bool {
        std::sync::Arc::ptr_eq(&self.left, &other.left)
    }
}

impl Eq for Budget {}

/// A source of variable values for expansion.
pub trait Lookup {
    /// The value of `name`, or `None` when it is unset.
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Lookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: BuildHasher> Lookup for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// Later entries win over earlier ones with the same name.
impl Lookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Later entries win over earlier ones with the same name.
impl Lookup for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl<T: Lookup + ?Sized> Lookup for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// An environment with no variables set.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoVars;

impl Lookup for NoVars {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// Why a word could not be expanded. `word` is the whole input, `offset` the
/// byte offset in it where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpandError {
    /// A `${` without its closing `}`.
    #[error("failed to process {word:?}: syntax error: missing '}}' (at byte {offset})")]
    MissingBrace {
        /// The input.
        word: String,
        /// Where the problem was found.
        offset: usize,
    },
    /// `${}`, `${:...}`, `${{...}` and similar.
    #[error("failed to process {word:?}: syntax error: bad substitution (at byte {offset})")]
    BadSubstitution {
        /// The input.
        word: String,
        /// Where the problem was found.
        offset: usize,
    },
    /// An operator BuildKit does not support, such as `${v:=w}` or `${v:x}`.
    #[error("failed to process {word:?}: unsupported modifier ({modifier}) in substitution (at byte {offset})")]
    UnsupportedModifier {
        /// The input.
        word: String,
        /// The operator as written.
        modifier: String,
        /// Where the problem was found.
        offset: usize,
    },
    /// A quote or `${...}` that the input ends inside of.
    #[error(
        "failed to process {word:?}: unexpected end of statement while looking for matching {expected} (at byte {offset})"
    )]
    Unterminated {
        /// The input.
        word: String,
        /// What was expected: `single-quote`, `double-quote`, `}` or `/`.
        expected: String,
        /// Where the problem was found.
        offset: usize,
    },
    /// `${name?message}` or `${name:?message}` with `name` unset (or empty).
    #[error("failed to process {word:?}: {name}: {message}")]
    Required {
        /// The input.
        word: String,
        /// The variable that must be set.
        name: String,
        /// The message from the input, or a default one.
        message: String,
    },
    /// `${...}` nested deeper than the lexer accepts.
    #[error("failed to process {word:?}: expansions nested deeper than {MAX_DEPTH} (at byte {offset})")]
    TooDeep {
        /// The input.
        word: String,
        /// Where the problem was found.
        offset: usize,
    },
    /// A replacement that would produce more than [`MAX_EXPANSION`] bytes.
    #[error("failed to process {word:?}: the replacement grows past {MAX_EXPANSION} bytes (at byte {offset})")]
    TooLong {
        /// The input.
        word: String,
        /// Where the problem was found.
        offset: usize,
    },
    /// The expansions of the build together would produce more than its
    /// [`Budget`] allows.
    #[error("failed to process {word:?}: the build's variable expansions grow past {limit} bytes (at byte {offset})")]
    OverBudget {
        /// The input (its first bytes).
        word: String,
        /// The budget, in bytes.
        limit: usize,
        /// Where the problem was found.
        offset: usize,
    },
}

/// The result of expanding one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expansion {
    /// The whole input expanded, quotes removed, no word splitting
    /// (BuildKit's `ProcessWord`).
    pub value: String,
    /// The input expanded and split into words (BuildKit's `ProcessWords`):
    /// quoted text stays in one word, unquoted white space and white space
    /// produced by unquoted expansions separate words.
    pub words: Vec<String>,
    /// Variables that were looked up and set.
    pub matched: BTreeSet<String>,
    /// Variables that were looked up and unset.
    pub unmatched: BTreeSet<String>,
}

impl Expansion {
    /// Every variable the expansion looked up, set or not.
    pub fn used(&self) -> BTreeSet<String> {
        self.matched.union(&self.unmatched).cloned().collect()
    }
}

/// BuildKit's shell lexer, configured with an escape character and options.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // BuildKit's Lex options, one switch each
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset: bool,
    skip_quotes: bool,
    budget: Option<Budget>,
}

impl Default for Lexer {
    fn default() -> Self {
        Self::new('\\')
    }
}

impl Lexer {
    /// A lexer using `escape` (`\` or `` ` ``) as the escape character.
    pub fn new(escape: char) -> Self {
        Self { escape, raw_quotes: false, raw_escapes: false, skip_unset: false, skip_quotes: false, budget: None }
    }

    /// Charge every expansion through this lexer (and its clones) to
    /// `budget` (none by default).
    #[must_use]
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Keep quote characters in the output (BuildKit's `RawQuotes`).
    #[must_use]
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (BuildKit's `RawEscapes`).
    #[must_use]
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written (BuildKit's
    /// `SkipUnsetEnv`).
    #[must_use]
    pub fn skip_unset(mut self, on: bool) -> Self {
        self.skip_unset = on;
        self
    }

    /// Treat quotes as ordinary characters (BuildKit's `SkipProcessQuotes`).
    #[must_use]
    pub fn skip_quotes(mut self, on: bool) -> Self {
        self.skip_quotes = on;
        self
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expand `word` with the variables in `env`.
    ///
    /// # Errors
    ///
    /// [`ExpandError`] for unterminated quotes or `${`, unsupported
    /// operators, `${name?message}` on an unset variable, and nesting deeper
    /// than the lexer accepts.
    pub fn expand<L: Lookup + ?Sized>(&self, word: &str, env: &L) -> Result<Expansion, ExpandError> {
        self.expand_keeping(word, env, keep_all)
    }

    /// [`Lexer::expand`], keeping only the split words for which `keep` is
    /// true (saves allocating words nobody looks at).
    pub(crate) fn expand_keeping<L: Lookup + ?Sized>(
        &self,
        word: &str,
        env: &L,
        keep: fn(&str) -> bool,
    ) -> Result<Expansion, ExpandError> {
        let mut state = State {
            keep,
            src: word,
            pos: 0,
            lexer: self,
            raw_escapes: self.raw_escapes,
            env,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            depth: 0,
        };
        let (value, words) = state.process_until(None, self.raw_escapes)?;
        Ok(Expansion { value, words, matched: state.matched, unmatched: state.unmatched })
    }

    /// Expand `word` and return only the resulting string.
    ///
    /// # Errors
    ///
    /// As [`Lexer::expand`].
    pub fn expand_word<L: Lookup + ?Sized>(&self, word: &str, env: &L) -> Result<String, ExpandError> {
        self.expand(word, env).map(|e| e.value)
    }

    /// Expand `word` and split it into words.
    ///
    /// # Errors
    ///
    /// As [`Lexer::expand`].
    pub fn expand_words<L: Lookup + ?Sized>(&self, word: &str, env: &L) -> Result<Vec<String>, ExpandError> {
        self.expand(word, env).map(|e| e.words)
    }
}

fn keep_all(_: &str) -> bool {
    true
}

struct Splitter {
    word: String,
    done: Vec<String>,
    in_word: bool,
    keep: fn(&str) -> bool,
}

impl Splitter {
    fn new(keep: fn(&str) -> bool) -> Self {
        Self { word: String::new(), done: Vec::new(), in_word: false, keep }
    }

    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                if (self.keep)(&self.word) {
                    self.done.push(std::mem::take(&mut self.word));
                } else {
                    self.word.clear();
                }
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() && (self.keep)(&self.word) {
            self.done.push(self.word);
        }
        self.done
    }
}

struct State<'a, L: ?Sized> {
    keep: fn(&str) -> bool,
    src: &'a str,
    pos: usize,
    lexer: &'a Lexer,
    raw_escapes: bool,
    env: &'a L,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    depth: usize,
}

impl<L: Lookup + ?Sized> State<'_, L> {
    /// Charges `n` bytes of expansion output to the lexer's budget.
    fn charge(&self, n: usize) -> Result<(), ExpandError> {
        match &self.lexer.budget {
            Some(b) if !b.take(n) => Err(ExpandError::OverBudget {
                word: self.src.chars().take(80).collect(),
                limit: b.total,
                offset: self.pos,
            }),
            _ => Ok(()),
        }
    }

    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    fn word(&self) -> String {
        self.src.to_string()
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let value = self.env.lookup(name).map(str::to_string);
        if value.is_some() {
            self.matched.insert(name.to_string());
        } else {
            self.unmatched.insert(name.to_string());
        }
        value
    }

    fn process_until(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<(String, Vec<String>), ExpandError> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let out = self.process_until_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn process_until_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut words = Splitter::new(if self.depth == 0 && stop.is_none() { self.keep } else { keep_all });
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    self.charge(tmp.len())?;
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                '\'' if !self.lexer.skip_quotes => {
                    let tmp = self.process_single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '"' if !self.lexer.skip_quotes => {
                    let tmp = self.process_double_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                _ => {
                    self.next();
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            words.add_raw_string(&ch.to_string());
                            result.push(ch);
                        }
                        let Some(escaped) = self.next() else {
                            break;
                        };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(ExpandError::Unterminated { word: self.word(), expected: stop.to_string(), offset: self.pos });
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        let mut result = String::new();
        let start = self.pos;
        self.next();
        if self.lexer.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(ExpandError::Unterminated {
                        word: self.word(),
                        expected: "single-quote".into(),
                        offset: start,
                    });
                }
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        let mut result = String::new();
        let start = self.pos;
        self.next();
        if self.lexer.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(ExpandError::Unterminated {
                        word: self.word(),
                        expected: "double-quote".into(),
                        offset: start,
                    });
                }
                Some('"') => {
                    self.next();
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    self.charge(v.len())?;
                    result.push_str(&v);
                }
                Some(ch) => {
                    self.next();
                    if ch == self.lexer.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lexer.escape => {
                                if self.raw_escapes {
                                    result.push(ch);
                                }
                                self.next();
                                result.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|c| c.is_numeric()) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        let start = self.pos;
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lexer.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => {
                return Err(ExpandError::MissingBrace { word: self.word(), offset: start });
            }
            Some('{' | '}' | ':') => {
                return Err(ExpandError::BadSubstitution { word: self.word(), offset: start });
            }
            Some(_) => {}
        }
        if self.depth >= MAX_DEPTH {
            return Err(ExpandError::TooDeep { word: self.word(), offset: start });
        }
        self.depth += 1;
        let out = self.process_braced(start);
        self.depth -= 1;
        out
    }

    fn unsupported(&self, modifier: String, offset: usize) -> ExpandError {
        ExpandError::UnsupportedModifier { word: self.word(), modifier, offset }
    }

    fn stop_on(&mut self, stop: char, raw: bool, start: usize) -> Result<String, ExpandError> {
        match self.process_until(Some(stop), raw) {
            Ok((w, _)) => Ok(w),
            Err(e) => {
                if self.peek().is_none() {
                    if stop == '}' {
                        Err(ExpandError::MissingBrace { word: self.word(), offset: start })
                    } else {
                        Err(ExpandError::Unterminated { word: self.word(), expected: stop.to_string(), offset: start })
                    }
                } else {
                    Err(e)
                }
            }
        }
    }

    fn process_braced(&mut self, start: usize) -> Result<String, ExpandError> {
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return Err(ExpandError::MissingBrace { word: self.word(), offset: start });
        };
        let mut modifier = ch.to_string();
        let mut null_is_unset = false;
        match ch {
            '}' => {
                return Ok(match self.get_env(&name) {
                    Some(v) => v,
                    None if self.lexer.skip_unset => format!("${{{name}}}"),
                    None => String::new(),
                });
            }
            '/' => return self.process_replace(&name, start),
            ':' | '+' | '-' | '?' | '#' | '%' => {}
            _ => {
                if self.lexer.skip_unset {
                    return Ok(format!("${{{name}}}"));
                }
                return Err(self.unsupported(modifier, start));
            }
        }
        if ch == ':' {
            null_is_unset = true;
            let Some(m) = self.next() else {
                return Err(ExpandError::MissingBrace { word: self.word(), offset: start });
            };
            ch = m;
            modifier.push(m);
        }
        let trims = ch == '#' || ch == '%';
        if null_is_unset && trims {
            return Err(self.unsupported(modifier, start));
        }
        let word = self.stop_on('}', trims, start)?;
        let value = self.get_env(&name);
        if self.lexer.skip_unset && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let empty = value.as_deref().is_none_or(str::is_empty);
        match ch {
            '-' => {
                if value.is_none() || (null_is_unset && empty) {
                    Ok(word)
                } else {
                    Ok(value.unwrap_or_default())
                }
            }
            '+' => {
                if value.is_none() || (null_is_unset && empty) {
                    Ok(String::new())
                } else {
                    Ok(word)
                }
            }
            '?' => match value {
                None => Err(ExpandError::Required {
                    word: self.word(),
                    name,
                    message: if word.is_empty() { "is not allowed to be unset".into() } else { word },
                }),
                Some(v) if null_is_unset && v.is_empty() => Err(ExpandError::Required {
                    word: self.word(),
                    name,
                    message: if word.is_empty() { "is not allowed to be empty".into() } else { word },
                }),
                Some(v) => Ok(v),
            },
            '#' | '%' => {
                let value = value.unwrap_or_default();
                let (greedy, pat) = match word.strip_prefix(ch) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let pattern = Glob::new(pat, self.lexer.escape);
                Ok(if ch == '#' { pattern.trim_prefix(&value, greedy) } else { pattern.trim_suffix(&value, greedy) })
            }
            _ => Err(self.unsupported(modifier, start)),
        }
    }

    fn process_replace(&mut self, name: &str, start: usize) -> Result<String, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = self.stop_on('/', true, start)?;
        let replacement = self.stop_on('}', true, start)?;
        let value = self.get_env(name);
        let Some(value) = value else {
            if self.lexer.skip_unset {
                let slash = if all { "//" } else { "/" };
                return Ok(format!("${{{name}{slash}{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let glob = Glob::new(&pattern, self.lexer.escape);
        glob.replace(&value, &replacement, all).ok_or_else(|| ExpandError::TooLong { word: self.word(), offset: start })
    }
}

#[derive(Debug, Clone)]
enum GlobToken {
    Star,
    Any,
    Class(CharClass),
    Lit(char),
}

/// A shell pattern as used by `${v#p}`, `${v%p}` and `${v/p/r}`.
#[derive(Debug, Clone)]
struct Glob {
    tokens: Vec<GlobToken>,
}

impl Glob {
    fn new(pattern: &str, escape: char) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            if c == escape {
                if let Some(&n) = chars.get(i) {
                    tokens.push(GlobToken::Lit(n));
                    i += 1;
                } else {
                    tokens.push(GlobToken::Lit(c));
                }
                continue;
            }
            match c {
                '*' => tokens.push(GlobToken::Star),
                '?' => tokens.push(GlobToken::Any),
                '[' => {
                    let dialect = Dialect { escape, bang: true, strict_ranges: false };
                    if let Some((class, next)) = CharClass::parse(&chars, i, dialect) {
                        tokens.push(GlobToken::Class(class));
                        i = next;
                    } else {
                        tokens.push(GlobToken::Lit('['));
                    }
                }
                _ => tokens.push(GlobToken::Lit(c)),
            }
        }
        Self { tokens }
    }

    /// For lengths `l` of prefixes of `text`, whether the pattern matches
    /// `text[..l]` (the vector stops early once nothing longer can match). One pass of an NFA over the tokens, so
    /// O(text × pattern).
    fn prefix_matches(tokens: &[GlobToken], text: &[char]) -> Vec<bool> {
        let m = tokens.len();
        let close = |states: &mut Vec<bool>| {
            for p in 0..m {
                if states.get(p) == Some(&true)
                    && matches!(tokens.get(p), Some(GlobToken::Star))
                    && let Some(next) = states.get_mut(p + 1)
                {
                    *next = true;
                }
            }
        };
        let mut states = vec![false; m + 1];
        if let Some(first) = states.first_mut() {
            *first = true;
        }
        close(&mut states);
        let mut out = Vec::with_capacity(text.len() + 1);
        out.push(states.get(m) == Some(&true));
        for &c in text {
            let mut next = vec![false; m + 1];
            for (p, tok) in tokens.iter().enumerate() {
                if states.get(p) != Some(&true) {
                    continue;
                }
                let target = match tok {
                    GlobToken::Star => p,
                    tok if token_matches(tok, c) => p + 1,
                    _ => continue,
                };
                if let Some(slot) = next.get_mut(target) {
                    *slot = true;
                }
            }
            close(&mut next);
            let any = next.iter().any(|&b| b);
            out.push(next.get(m) == Some(&true));
            states = next;
            if !any {
                // No state left: no longer prefix can match (missing entries
                // read as `false`).
                break;
            }
        }
        out
    }

    fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let fits = Self::prefix_matches(&self.tokens, &chars);
        let found = if greedy { fits.iter().rposition(|&b| b) } else { fits.iter().position(|&b| b) };
        match found {
            Some(l) => chars.get(l..).unwrap_or_default().iter().collect(),
            None => value.to_string(),
        }
    }

    fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        let mut chars: Vec<char> = value.chars().collect();
        chars.reverse();
        let reversed: Vec<GlobToken> = self.tokens.iter().rev().cloned().collect();
        let fits = Self::prefix_matches(&reversed, &chars);
        let found = if greedy { fits.iter().rposition(|&b| b) } else { fits.iter().position(|&b| b) };
        match found {
            Some(l) => {
                let mut kept: Vec<char> = chars.get(l..).unwrap_or_default().to_vec();
                kept.reverse();
                kept.into_iter().collect()
            }
            None => value.to_string(),
        }
    }

    /// Longest match starting at `start`, if any.
    fn longest_at(&self, chars: &[char], start: usize) -> Option<usize> {
        let rest = chars.get(start..)?;
        Self::prefix_matches(&self.tokens, rest).iter().rposition(|&b| b)
    }

    /// `value` with the first (or every) match replaced; `None` past [`MAX_EXPANSION`] bytes.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> Option<String> {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut last_match_end: Option<usize> = None;
        while i <= chars.len() {
            if out.len() > MAX_EXPANSION {
                return None;
            }
            match self.longest_at(&chars, i) {
                Some(0) if last_match_end == Some(i) => {}
                Some(l) => {
                    out.push_str(replacement);
                    if !all {
                        if let Some(rest) = chars.get(i + l..) {
                            out.extend(rest.iter());
                        }
                        return (out.len() <= MAX_EXPANSION).then_some(out);
                    }
                    if l > 0 {
                        i += l;
                        last_match_end = Some(i);
                        continue;
                    }
                }
                None => {}
            }
            if let Some(&c) = chars.get(i) {
                out.push(c);
            }
            i += 1;
        }
        (out.len() <= MAX_EXPANSION).then_some(out)
    }
}

fn token_matches(tok: &GlobToken, c: char) -> bool {
    match tok {
        GlobToken::Star | GlobToken::Any => true,
        GlobToken::Lit(l) => *l == c,
        GlobToken::Class(class) => class.matches(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("PWD".to_string(), "/home".to_string()),
            ("V".to_string(), "abc.tar.gz".to_string()),
            ("EMPTY".to_string(), String::new()),
        ])
    }

    fn x(s: &str) -> Result<String, ExpandError> {
        Lexer::new('\\').expand_word(s, &env())
    }

    #[test]
    fn simple_forms() {
        assert_eq!(x("$PWD").unwrap(), "/home");
        assert_eq!(x("${PWD}x").unwrap(), "/homex");
        assert_eq!(x("${X-d}").unwrap(), "d");
        assert_eq!(x("${EMPTY-d}").unwrap(), "");
        assert_eq!(x("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(x("${EMPTY+s}").unwrap(), "s");
        assert_eq!(x("${EMPTY:+s}").unwrap(), "");
        assert_eq!(x("${X+s}").unwrap(), "");
    }

    #[test]
    fn trims_and_replace() {
        assert_eq!(x("${V#*.}").unwrap(), "tar.gz");
        assert_eq!(x("${V##*.}").unwrap(), "gz");
        assert_eq!(x("${V%.*}").unwrap(), "abc.tar");
        assert_eq!(x("${V%%.*}").unwrap(), "abc");
        assert_eq!(x("${V/./-}").unwrap(), "abc-tar.gz");
        assert_eq!(x("${V//./-}").unwrap(), "abc-tar-gz");
        assert_eq!(x("${V/[a-b]/X}").unwrap(), "Xbc.tar.gz");
        assert_eq!(x("${V#\\*}").unwrap(), "abc.tar.gz");
        assert!(x("${V:#x}").is_err());
    }

    #[test]
    fn long_values_stay_fast() {
        let mut env = env();
        env.insert("L".into(), "ab".repeat(50_000));
        let l = Lexer::new('\\');
        assert_eq!(l.expand_word("${L##*a}", &env).unwrap(), "b");
        assert_eq!(l.expand_word("${L%%b*}", &env).unwrap(), "a");
        assert_eq!(l.expand_word("${L#*b}", &env).unwrap().len(), 99_998);
        assert_eq!(l.expand_word("${L/x*/y}", &env).unwrap().len(), 100_000);
    }

    #[test]
    fn required() {
        let e = x("${NOPE?need it}").unwrap_err();
        assert!(e.to_string().contains("NOPE: need it"), "{e}");
        assert!(x("${EMPTY:?}").is_err());
        assert_eq!(x("${EMPTY?}").unwrap(), "");
    }

    #[test]
    fn reports_used_variables() {
        let out = Lexer::new('\\').expand("$PWD ${NOPE:-$V} '$SKIP'", &env()).unwrap();
        assert_eq!(out.matched, BTreeSet::from(["PWD".into(), "V".into()]));
        assert_eq!(out.unmatched, BTreeSet::from(["NOPE".into()]));
    }

    #[test]
    fn skip_unset_and_raw() {
        let l = Lexer::new('\\').skip_unset(true).raw_quotes(true);
        assert_eq!(l.expand_word("'a' $NOPE ${NOPE:-x}", &env()).unwrap(), "'a' $NOPE ${NOPE:-x}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let s = "${a:-".repeat(10_000);
        assert!(matches!(x(&s), Err(ExpandError::TooDeep { .. })));
    }

    #[test]
    fn backtick_escape() {
        let l = Lexer::new('`');
        assert_eq!(l.expand_word("a`$PWD\\x", &env()).unwrap(), "a$PWD\\x");
    }
}
