//! The small part of JSON the Dockerfile exec form needs: "is this text one
//! JSON array, and are all its elements strings?", with Go's
//! `encoding/json` rules (whole input, surrogates, control characters).
//!
//! Hand-written because the crate keeps no runtime dependencies beyond
//! `thiserror`, and the answer must distinguish "not JSON" (fall back to the
//! shell form) from "JSON but not all strings" (an error), which a generic
//! deserializer does not report directly.

/// Go's `encoding/json` nesting limit.
const MAX_NESTING: usize = 10_000;

/// What the text turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// A JSON array of strings.
    Strings(Vec<String>),
    /// Valid JSON array with an element that is not a string.
    NotStrings,
    /// Not a JSON array.
    Invalid,
}

/// Classify `text` (leading white space allowed).
pub(crate) fn parse_array(text: &str) -> JsonArray {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return JsonArray::Invalid;
    }
    let mut p = Cursor { s: text.as_bytes(), src: text, i: 0 };
    match p.top_array() {
        Some((items, all_strings)) => {
            p.ws();
            if p.i != p.s.len() {
                JsonArray::Invalid
            } else if all_strings {
                JsonArray::Strings(items)
            } else {
                JsonArray::NotStrings
            }
        }
        None => JsonArray::Invalid,
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        if self.peek() == Some(b) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    fn top_array(&mut self) -> Option<(Vec<String>, bool)> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        let mut all = true;
        self.ws();
        if self.eat(b']').is_some() {
            return Some((items, all));
        }
        loop {
            self.ws();
            if self.peek() == Some(b'"') {
                items.push(self.string()?);
            } else {
                all = false;
                self.value()?;
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some((items, all));
                }
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.src.get(self.i..self.i + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let rest = self.src.get(self.i..)?;
            let c = rest.chars().next()?;
            self.i += c.len_utf8();
            match c {
                '"' => return Some(out),
                '\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                let save = self.i;
                                let lo = if self.src.get(self.i..self.i + 2) == Some("\\u") {
                                    self.i += 2;
                                    self.hex4()
                                } else {
                                    None
                                };
                                match lo {
                                    Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                        out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                                    }
                                    _ => {
                                        self.i = save;
                                        out.push('\u{FFFD}');
                                    }
                                }
                            } else {
                                out.push(char::from_u32(hi).unwrap_or('\u{FFFD}'));
                            }
                        }
                        _ => return None,
                    }
                }
                c if (c as u32) < 0x20 => return None,
                c => out.push(c),
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        if self.src.get(self.i..)?.starts_with(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return None;
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return None;
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
        }
        Some(())
    }

    fn key(&mut self) -> Option<()> {
        self.ws();
        self.string()?;
        self.ws();
        self.eat(b':')
    }

    /// Skip one value of any kind, without recursion.
    fn value(&mut self) -> Option<()> {
        let mut stack: Vec<u8> = Vec::new();
        loop {
            self.ws();
            let mut closed = false;
            match self.peek()? {
                b'{' => {
                    self.i += 1;
                    self.ws();
                    if self.eat(b'}').is_some() {
                        closed = true;
                    } else {
                        stack.push(b'{');
                        self.key()?;
                    }
                }
                b'[' => {
                    self.i += 1;
                    self.ws();
                    if self.eat(b']').is_some() {
                        closed = true;
                    } else {
                        stack.push(b'[');
                    }
                }
                b'"' => {
                    self.string()?;
                    closed = true;
                }
                b't' => {
                    self.literal("true")?;
                    closed = true;
                }
                b'f' => {
                    self.literal("false")?;
                    closed = true;
                }
                b'n' => {
                    self.literal("null")?;
                    closed = true;
                }
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                    closed = true;
                }
                _ => return None,
            }
            if stack.len() + 1 > MAX_NESTING {
                return None;
            }
            if !closed {
                continue;
            }
            // After a complete value: close containers or move to the next element.
            loop {
                let Some(&top) = stack.last() else {
                    return Some(());
                };
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if top == b'{' {
                            self.key()?;
                        }
                        break;
                    }
                    b']' if top == b'[' => {
                        self.i += 1;
                        stack.pop();
                    }
                    b'}' if top == b'{' => {
                        self.i += 1;
                        stack.pop();
                    }
                    _ => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> JsonArray {
        JsonArray::Strings(v.iter().map(|x| (*x).to_string()).collect())
    }

    #[test]
    fn classifies() {
        assert_eq!(parse_array("[]"), s(&[]));
        assert_eq!(parse_array(" [ \"a\" , \"b\" ] \t"), s(&["a", "b"]));
        assert_eq!(parse_array(r#"["\u0041\ud83d\ude00\/"]"#), s(&["A😀/"]));
        assert_eq!(parse_array(r#"["a", ["b"]]"#), JsonArray::NotStrings);
        assert_eq!(parse_array(r#"[1, {"a": [true, null, -1.5e3]}]"#), JsonArray::NotStrings);
        assert_eq!(parse_array(r#"["a""#), JsonArray::Invalid);
        assert_eq!(parse_array(r"['a']"), JsonArray::Invalid);
        assert_eq!(parse_array(r#"["a"] x"#), JsonArray::Invalid);
        assert_eq!(parse_array(r"[01]"), JsonArray::Invalid);
        assert_eq!(parse_array("[\"a\nb\"]"), JsonArray::Invalid);
        assert_eq!(parse_array(&format!("[{}", "[".repeat(100_000))), JsonArray::Invalid);
    }
}
