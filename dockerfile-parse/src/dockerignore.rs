//! `.dockerignore` files with Docker's exact semantics.
//!
//! Follows `moby/patternmatcher` (which `docker build` and BuildKit use):
//! each line is trimmed, `#` lines and blank lines are skipped, a leading
//! `!` makes an exception, patterns are cleaned like Go's `filepath.Clean`
//! and a leading `/` is dropped. A path is excluded when the last pattern
//! that matches it (or one of its parent directories) is not an exception.
//! `*` and `?` never match `/`, `**` matches any number of directories,
//! `[...]` is a character class, `\` escapes the next character.
//!
//! Hand-written rather than built on a glob crate: Docker's rules differ from
//! gitignore and from shell globs (parent-directory matching, `**` at the
//! start or end, last match wins with exceptions, no anchoring to
//! directories), and the matcher must agree with Docker exactly.
//!
//! ```
//! use dockerfile_parse::dockerignore::DockerIgnore;
//!
//! let ignore = DockerIgnore::parse("# comment\n*.md\n!README.md\ntarget\n**/*.tmp\n")?;
//! assert!(ignore.is_excluded("CHANGELOG.md"));
//! assert!(!ignore.is_excluded("README.md"));
//! assert!(ignore.is_excluded("target/debug/app"));
//! assert!(ignore.is_excluded("a/b/c.tmp"));
//! assert!(!ignore.is_excluded("docs/guide.md"));
//! # Ok::<(), dockerfile_parse::dockerignore::IgnoreError>(())
//! ```

use crate::class::{CharClass, Dialect};

/// Why a `.dockerignore` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IgnoreError {
    /// A line that is only `!`.
    #[error("illegal exclusion pattern {pattern:?} on line {line}")]
    IllegalExclusion {
        /// The pattern.
        pattern: String,
        /// 1-based line number (0 when not read from a file).
        line: usize,
    },
    /// A pattern with a malformed character class.
    #[error("syntax error in pattern {pattern:?} on line {line}: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// 1-based line number (0 when not read from a file).
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The ignore files BuildKit looks for, in order, for a Dockerfile at
/// `dockerfile` (a path relative to the context): `<dockerfile>.dockerignore`
/// beside the Dockerfile first, then `.dockerignore` at the context root.
pub fn ignore_file_candidates(dockerfile: &str) -> [String; 2] {
    [format!("{dockerfile}.dockerignore"), ".dockerignore".to_string()]
}

/// Classes as Go's `filepath.Match` writes them.
const GO_CLASSES: Dialect = Dialect { escape: '\\', bang: false, strict_ranges: true };

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `*`: any run of non-`/` characters.
    Star,
    /// `?`: one non-`/` character.
    One,
    /// `**` followed by more pattern: `(.*/)?`.
    Dirs,
    /// `**` at the end after other characters: `.*`.
    Rest,
    /// `[...]`
    Class(CharClass),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    exclusion: bool,
    kind: Kind,
}

/// A compiled `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

impl DockerIgnore {
    /// Read `.dockerignore` text.
    ///
    /// # Errors
    ///
    /// [`IgnoreError`] for a lone `!` or a malformed `[...]` class.
    pub fn parse(text: &str) -> Result<Self, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (invert, mut p) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim().to_string()),
                None => (false, line.to_string()),
            };
            if !p.is_empty() {
                p = clean_path(&p);
                if p.len() > 1
                    && let Some(rest) = p.strip_prefix('/')
                {
                    p = rest.to_string();
                }
            }
            if invert {
                p.insert(0, '!');
            }
            if let Some(pat) = compile(&p, n + 1)? {
                patterns.push(pat);
            }
        }
        Ok(Self { patterns })
    }

    /// Compile patterns given directly (as `--exclude` or an API would).
    ///
    /// # Errors
    ///
    /// As [`DockerIgnore::parse`].
    pub fn from_patterns<I, S>(patterns: I) -> Result<Self, IgnoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for p in patterns {
            if let Some(pat) = compile(p.as_ref(), 0)? {
                out.push(pat);
            }
        }
        Ok(Self { patterns: out })
    }

    /// The cleaned patterns, `!` kept on exceptions.
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.patterns.iter().map(|p| if p.exclusion { format!("!{}", p.text) } else { p.text.clone() })
    }

    /// Whether any pattern is an exception (`!`), which means excluded
    /// directories still have to be walked.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (relative to the context, `/`-separated, clean) is
    /// excluded: the last pattern matching it or one of its parent
    /// directories decides.
    pub fn is_excluded(&self, path: &str) -> bool {
        let parent = match path.rfind('/') {
            Some(i) => path.get(..i).unwrap_or_default(),
            None => ".",
        };
        let parent = if parent.is_empty() { "/" } else { parent };
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(path);
            if !hit && parent != "." {
                let mut end = 0;
                for (i, part) in parent.split('/').enumerate() {
                    end += part.len() + usize::from(i > 0);
                    if parent.get(..end).is_some_and(|prefix| pattern.matches(prefix)) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }
}

fn compile(raw: &str, line: usize) -> Result<Option<Pattern>, IgnoreError> {
    let p = raw.trim();
    if p.is_empty() {
        return Ok(None);
    }
    let mut p = clean_path(p);
    let mut exclusion = false;
    if let Some(rest) = p.strip_prefix('!') {
        if rest.is_empty() {
            return Err(IgnoreError::IllegalExclusion { pattern: p, line });
        }
        exclusion = true;
        p = rest.to_string();
    }
    let kind = classify(&p, line)?;
    Ok(Some(Pattern { text: p, exclusion, kind }))
}

fn classify(pattern: &str, line: usize) -> Result<Kind, IgnoreError> {
    #[derive(PartialEq)]
    enum Ty {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut ty = Ty::Exact;
    let mut i = 0;
    let mut first = true;
    while let Some(&ch) = chars.get(i) {
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if ty == Ty::Exact {
                        ty = Ty::Prefix;
                    } else {
                        tokens.push(Token::Rest);
                        ty = Ty::Regex;
                    }
                } else {
                    tokens.push(Token::Dirs);
                    ty = Ty::Regex;
                }
                if first {
                    ty = Ty::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                ty = Ty::Regex;
            }
            '?' => {
                tokens.push(Token::One);
                ty = Ty::Regex;
            }
            '\\' => {
                if let Some(&n) = chars.get(i) {
                    i += 1;
                    tokens.push(Token::Lit(n));
                    ty = Ty::Regex;
                } else {
                    tokens.push(Token::Lit('\\'));
                }
            }
            '[' => {
                let (class, next) = CharClass::parse(&chars, i, GO_CLASSES).ok_or_else(|| IgnoreError::BadPattern {
                    pattern: pattern.to_string(),
                    line,
                    reason: "unterminated or invalid character class",
                })?;
                tokens.push(Token::Class(class));
                i = next;
                ty = Ty::Regex;
            }
            ']' => {
                tokens.push(Token::Lit(']'));
                ty = Ty::Regex;
            }
            c => tokens.push(Token::Lit(c)),
        }
        first = false;
    }
    Ok(match ty {
        Ty::Exact => Kind::Exact,
        Ty::Prefix => Kind::Prefix,
        Ty::Suffix => Kind::Suffix,
        Ty::Regex => Kind::Regex(tokens),
    })
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix => path.starts_with(self.text.get(..self.text.len().saturating_sub(2)).unwrap_or_default()),
            Kind::Suffix => {
                let suffix = self.text.get(2..).unwrap_or_default();
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Regex(tokens) => {
                let text: Vec<char> = path.chars().collect();
                regex_match(tokens, &text)
            }
        }
    }
}

/// Match a whole path against tokens: dynamic programming from the end of
/// the pattern, two rows of `path + 1` cells, O(tokens × path) time.
fn regex_match(tokens: &[Token], text: &[char]) -> bool {
    let width = text.len() + 1;
    // `next[x]`: can tokens[ti + 1..] match text[x..]? Starts as "no tokens".
    let mut next: Vec<bool> = (0..width).map(|x| x == text.len()).collect();
    for tok in tokens.iter().rev() {
        let mut cur = vec![false; width];
        // For `**/`: is there a `/` at some j >= x with next[j + 1]?
        let mut slash_ahead = false;
        for x in (0..width).rev() {
            let c = text.get(x).copied();
            let at_next = |i: usize| next.get(i).copied().unwrap_or(false);
            let at_cur = |i: usize, cur: &Vec<bool>| cur.get(i).copied().unwrap_or(false);
            if c == Some('/') && at_next(x + 1) {
                slash_ahead = true;
            }
            let v = match tok {
                Token::Lit(l) => c == Some(*l) && at_next(x + 1),
                Token::One => c.is_some_and(|c| c != '/') && at_next(x + 1),
                Token::Class(class) => c.is_some_and(|c| class.matches(c)) && at_next(x + 1),
                Token::Star => at_next(x) || (c.is_some_and(|c| c != '/') && at_cur(x + 1, &cur)),
                Token::Rest => at_next(x) || (c.is_some() && at_cur(x + 1, &cur)),
                Token::Dirs => at_next(x) || slash_ahead,
            };
            if let Some(slot) = cur.get_mut(x) {
                *slot = v;
            }
        }
        next = cur;
    }
    next.first().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn clean() {
        assert_eq!(clean_path("a//b/./c/.."), "a/b");
        assert_eq!(clean_path("/../a/"), "/a");
        assert_eq!(clean_path("../a"), "../a");
        assert_eq!(clean_path("./"), ".");
    }

    #[test]
    fn docs_examples() {
        // From the Dockerfile reference's .dockerignore section.
        let i = ig("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(i.is_excluded("somedir/temporary.txt"));
        assert!(i.is_excluded("somedir/temp"));
        assert!(i.is_excluded("somedir/subdir/temporary.txt"));
        assert!(i.is_excluded("tempa"));
        assert!(i.is_excluded("tempb"));
        assert!(!i.is_excluded("temporary.txt"));
        assert!(!i.is_excluded("a/b/c/temp"));

        let i = ig("*.md\n!README.md\n");
        assert!(i.is_excluded("CHANGES.md"));
        assert!(!i.is_excluded("README.md"));

        let i = ig("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(i.is_excluded("README-secret.md"));
        assert!(!i.is_excluded("README-public.md"));

        let i = ig("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!i.is_excluded("README-secret.md"));

        let i = ig("**/*.go\n");
        assert!(i.is_excluded("main.go"));
        assert!(i.is_excluded("a/b/c.go"));
        assert!(!i.is_excluded("a/b/c.rs"));
    }

    #[test]
    fn parents_and_dirs() {
        let i = ig("target\n/build/\n");
        assert!(i.is_excluded("target"));
        assert!(i.is_excluded("target/debug/x"));
        assert!(i.is_excluded("build/a"));
        assert!(!i.is_excluded("src/target"));
        assert_eq!(i.patterns().collect::<Vec<_>>(), vec!["target", "build"]);
    }

    #[test]
    fn double_star_forms() {
        let i = ig("foo/**\n");
        assert!(i.is_excluded("foo/a/b"));
        assert!(!i.is_excluded("foobar"));
        let i = ig("**/foo\n");
        assert!(i.is_excluded("foo"));
        assert!(i.is_excluded("a/b/foo"));
        assert!(i.is_excluded("a/foo/x"));
        let i = ig("a/**/b\n");
        assert!(i.is_excluded("a/b"));
        assert!(i.is_excluded("a/x/y/b"));
        assert!(!i.is_excluded("a/xb"));
        let i = ig("**\n!keep\n");
        assert!(i.is_excluded("anything/at/all"));
        assert!(!i.is_excluded("keep"));
        assert!(i.has_exceptions());
    }

    #[test]
    fn classes_escapes_and_errors() {
        let i = ig("file[0-9].txt\n[^a]x\nlit\\*\n");
        assert!(i.is_excluded("file3.txt"));
        assert!(!i.is_excluded("filex.txt"));
        assert!(i.is_excluded("bx"));
        assert!(!i.is_excluded("ax"));
        assert!(i.is_excluded("lit*"));
        assert!(!i.is_excluded("litx"));
        assert!(matches!(DockerIgnore::parse("!\n"), Err(IgnoreError::IllegalExclusion { line: 1, .. })));
        assert!(matches!(DockerIgnore::parse("a\n[ab\n"), Err(IgnoreError::BadPattern { line: 2, .. })));
    }

    #[test]
    fn whitespace_bom_and_candidates() {
        let i = ig("\u{feff}  foo  \n\n   # not a pattern\n! bar\n");
        assert!(i.is_excluded("foo"));
        assert_eq!(i.patterns().collect::<Vec<_>>(), vec!["foo", "!bar"]);
        assert_eq!(
            ignore_file_candidates("build/Dockerfile.dev"),
            ["build/Dockerfile.dev.dockerignore".to_string(), ".dockerignore".to_string()]
        );
    }

    #[test]
    fn long_paths_stay_fast() {
        let i = ig("**/a*b*c*d*e\nx/**/y/**/z\n");
        let path = "a".repeat(2000);
        assert!(!i.is_excluded(&path));
        let deep = format!("x/{}z", "y/".repeat(500));
        assert!(i.is_excluded(&deep));
    }
}
