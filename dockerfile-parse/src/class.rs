//! `[...]` character classes, one parser for the two glob dialects that
//! have them: `.dockerignore` patterns (Go's `filepath.Match`: `^` negates,
//! `\` escapes, a reversed range is an error) and the shell's
//! `${v#pattern}` globs (`!` or `^` negates, the Dockerfile's escape
//! character escapes, reversed ranges match nothing).

/// A parsed class: ranges of characters, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CharClass {
    negated: bool,
    ranges: Vec<(char, char)>,
}

/// How a dialect writes classes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// The escape character inside the class.
    pub escape: char,
    /// `!` negates as well as `^`.
    pub bang: bool,
    /// A range whose end sorts before its start is invalid.
    pub strict_ranges: bool,
}

impl CharClass {
    /// Parses the class whose body starts at `chars[i]` (just after `[`):
    /// the class and the index after its `]`; `None` when it is unterminated
    /// or invalid in `dialect`.
    pub(crate) fn parse(chars: &[char], mut i: usize, dialect: Dialect) -> Option<(CharClass, usize)> {
        let mut negated = false;
        if chars.get(i) == Some(&'^') || (dialect.bang && chars.get(i) == Some(&'!')) {
            negated = true;
            i += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let mut c = *chars.get(i)?;
            if c == ']' && !first {
                return Some((CharClass { negated, ranges }, i + 1));
            }
            first = false;
            i += 1;
            if c == dialect.escape {
                c = *chars.get(i)?;
                i += 1;
            }
            if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&e| e != ']') {
                let mut end = *chars.get(i + 1)?;
                i += 2;
                if end == dialect.escape {
                    end = *chars.get(i)?;
                    i += 1;
                }
                if dialect.strict_ranges && end < c {
                    return None;
                }
                ranges.push((c, end));
            } else {
                ranges.push((c, c));
            }
        }
    }

    /// Whether `c` is in the class.
    pub(crate) fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= c && c <= b) != self.negated
    }
}
