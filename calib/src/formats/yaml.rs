//! The YAML subset of the module docs: a tree of maps, scalars and flow sequences of scalars.

use super::{at, format_error, snippet};
use crate::error::Result;

/// Maps nested deeper than this are rejected (bounds the recursion on hostile input).
const MAX_DEPTH: usize = 16;

/// A scalar and its 1-based line.
#[derive(Debug)]
pub(super) struct Scalar {
    /// The text, unquoted.
    pub text: String,
    /// 1-based line number.
    pub line: usize,
}

/// The value of a key.
#[derive(Debug)]
pub(super) enum Value {
    /// `key: scalar`.
    Scalar(Scalar),
    /// `key: [a, b, ...]`.
    Seq(Vec<Scalar>),
    /// `key:` and a nested block map (empty when nothing is nested: YAML's null).
    Map(Vec<Entry>),
}

/// `key: value` of a block map.
#[derive(Debug)]
pub(super) struct Entry {
    /// The key, unquoted.
    pub key: String,
    /// The value.
    pub value: Value,
    /// 1-based line number of the key.
    pub line: usize,
}

/// A non-blank line, comment removed.
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// Tracks whether characters lie inside quotes. A quote opens only at the start of a token
/// (after whitespace, `[`, `,`, `{` or at the start), so `it's` is plain text.
struct QuoteScan {
    quote: Option<char>,
    escaped: bool,
    just_closed_single: bool,
    prev: char,
}

impl QuoteScan {
    fn new() -> Self {
        Self { quote: None, escaped: false, just_closed_single: false, prev: ' ' }
    }

    /// Feeds `c`; true when it lies outside quotes and is not a quote mark.
    fn outside(&mut self, c: char) -> bool {
        let prev = std::mem::replace(&mut self.prev, c);
        let just_closed_single = std::mem::take(&mut self.just_closed_single);
        match self.quote {
            Some('"') => {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == '"' {
                    self.quote = None;
                }
                false
            }
            Some(_) => {
                if c == '\'' {
                    self.quote = None;
                    self.just_closed_single = true;
                }
                false
            }
            None => {
                let token_start = prev.is_whitespace() || matches!(prev, '[' | ',' | '{');
                if ((c == '"' || c == '\'') && token_start) || (c == '\'' && just_closed_single) {
                    self.quote = Some(c);
                    false
                } else {
                    true
                }
            }
        }
    }
}

/// `s` up to its comment (a `#` outside quotes at the start or after whitespace).
fn strip_comment(s: &str) -> &str {
    let mut scan = QuoteScan::new();
    for (i, c) in s.char_indices() {
        let prev = scan.prev;
        if scan.outside(c) && c == '#' && prev.is_whitespace() {
            return s.get(..i).unwrap_or(s);
        }
    }
    s
}

/// The decoded text of the quoted token `s` (quotes included), `None` when it is not exactly
/// one well-formed quoted string.
fn unquote(s: &str) -> Option<String> {
    let mut chars = s.chars();
    let quote = chars.next().filter(|q| *q == '"' || *q == '\'')?;
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match (quote, c) {
            ('"', '\\') => out.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                other => other, // \\ \" \/ and lenient for the rest
            }),
            ('\'', '\'') if chars.clone().next() == Some('\'') => {
                chars.next();
                out.push('\'');
            }
            (q, c) if c == q => return chars.next().is_none().then_some(out),
            (_, c) => out.push(c),
        }
    }
    None // no closing quote
}

/// A scalar token: quoted (decoded) or plain (trimmed).
fn scalar_text(token: &str, field: &str, line: usize, source_name: &str) -> Result<String> {
    let token = token.trim();
    if token.starts_with(['"', '\'']) {
        unquote(token).ok_or_else(|| {
            format_error(
                source_name,
                at(field, line),
                format!("one quoted string closed on the same line, got {}", snippet(token)),
            )
        })
    } else {
        Ok(token.to_owned())
    }
}

fn logical_lines<'a>(text: &'a str, source_name: &str) -> Result<Vec<Line<'a>>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Vec::new();
    let mut document_started = false;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        if raw.starts_with('%') {
            if !lines.is_empty() || document_started {
                return Err(format_error(
                    source_name,
                    format!("line {no}"),
                    "a directive ('%...') only before the document",
                ));
            }
            continue;
        }
        let content = strip_comment(raw).trim_end();
        let trimmed = content.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if content == "---" || content.starts_with("--- ") {
            if !lines.is_empty() || document_started {
                return Err(format_error(source_name, format!("line {no}"), "a single YAML document"));
            }
            document_started = true;
            continue;
        }
        if content == "..." {
            break;
        }
        let indent = content.len() - trimmed.len();
        if content.get(..indent).is_some_and(|ws| ws.contains('\t')) {
            return Err(format_error(
                source_name,
                format!("line {no}"),
                "indentation by spaces (YAML forbids tabs)",
            ));
        }
        lines.push(Line { no, indent, text: trimmed });
    }
    Ok(lines)
}

/// Parses the text into its top-level map.
pub(super) fn parse(text: &str, source_name: &str) -> Result<Vec<Entry>> {
    let lines = logical_lines(text, source_name)?;
    let mut pos = 0;
    let indent = lines.first().map_or(0, |l| l.indent);
    let entries = parse_map(&lines, &mut pos, indent, "", 0, source_name)?;
    match lines.get(pos) {
        None => Ok(entries),
        Some(l) => Err(format_error(
            source_name,
            format!("line {}", l.no),
            format!("a key indented by {indent} spaces like the first one, got {}", l.indent),
        )),
    }
}

/// `(key, rest)` of a `key: rest` line.
fn split_key<'a>(line: &Line<'a>, source_name: &str) -> Result<(String, &'a str)> {
    let text = line.text;
    let bad = || {
        let what = if text == "-" || text.starts_with("- ") {
            "a 'key: value' line (block sequences '- item' are not supported)".to_owned()
        } else {
            format!("a 'key: value' line, got '{}'", snippet(text))
        };
        format_error(source_name, format!("line {}", line.no), what)
    };
    let mut scan = QuoteScan::new();
    let mut colon = None;
    for (i, c) in text.char_indices() {
        if scan.outside(c)
            && c == ':'
            && text.get(i + 1..).is_some_and(|r| r.is_empty() || r.starts_with(char::is_whitespace))
        {
            colon = Some(i);
            break;
        }
    }
    let i = colon.ok_or_else(bad)?;
    let (raw_key, rest) = (text.get(..i).unwrap_or(""), text.get(i + 1..).unwrap_or(""));
    if raw_key.trim().is_empty() || raw_key.starts_with("- ") || raw_key.starts_with(['{', '[', '?']) {
        return Err(bad());
    }
    let key = scalar_text(raw_key, &format!("line {}", line.no), line.no, source_name).map_err(|_| bad())?;
    Ok((key, rest.trim()))
}

fn parse_map(
    lines: &[Line<'_>],
    pos: &mut usize,
    indent: usize,
    prefix: &str,
    depth: usize,
    source_name: &str,
) -> Result<Vec<Entry>> {
    if depth > MAX_DEPTH {
        let no = lines.get(*pos).map_or(0, |l| l.no);
        return Err(format_error(
            source_name,
            format!("line {no}"),
            format!("maps nested at most {MAX_DEPTH} deep"),
        ));
    }
    let mut entries: Vec<Entry> = Vec::new();
    while let Some(line) = lines.get(*pos) {
        if line.indent < indent {
            break;
        }
        if line.indent > indent {
            return Err(format_error(
                source_name,
                format!("line {}", line.no),
                format!("a key indented by {indent} spaces like its siblings, got {}", line.indent),
            ));
        }
        let (key, rest) = split_key(line, source_name)?;
        let field = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        *pos += 1;
        // An optional tag (`!!opencv-matrix`); its meaning is implied by the key.
        let rest = if rest.starts_with('!') {
            rest.split_once(char::is_whitespace).map_or("", |(_, r)| r.trim_start())
        } else {
            rest
        };
        let value = if rest.is_empty() {
            match lines.get(*pos) {
                Some(next) if next.indent > indent => {
                    Value::Map(parse_map(lines, pos, next.indent, &field, depth + 1, source_name)?)
                }
                _ => Value::Map(Vec::new()),
            }
        } else if rest.starts_with('[') {
            Value::Seq(parse_flow_seq(lines, pos, rest, line.no, &field, source_name)?)
        } else if rest.starts_with(['{', '|', '>', '&', '*']) || rest == "-" || rest.starts_with("- ") {
            return Err(format_error(
                source_name,
                at(&field, line.no),
                format!(
                    "a scalar, a [..] sequence or a nested map (flow maps, block scalars, anchors and \
                     block sequences are not supported), got '{}'",
                    snippet(rest)
                ),
            ));
        } else {
            Value::Scalar(Scalar { text: scalar_text(rest, &field, line.no, source_name)?, line: line.no })
        };
        if entries.iter().any(|e| e.key == key) {
            return Err(format_error(source_name, at(&field, line.no), "each key once in its map"));
        }
        entries.push(Entry { key, value, line: line.no });
    }
    Ok(entries)
}

/// The items of the flow sequence starting with `first` (its `[`), taking following lines until
/// its `]`.
fn parse_flow_seq(
    lines: &[Line<'_>],
    pos: &mut usize,
    first: &str,
    first_no: usize,
    key: &str,
    source_name: &str,
) -> Result<Vec<Scalar>> {
    // Text of the sequence after `[`, with the line each byte offset starts on.
    let mut body = String::new();
    let mut starts: Vec<(usize, usize)> = Vec::new();
    let mut scan = QuoteScan::new();
    scan.prev = '[';
    let mut segment = first.get(1..).unwrap_or("");
    let mut no = first_no;
    let close = loop {
        let offset = body.len();
        starts.push((offset, no));
        let mut found = None;
        for (i, c) in segment.char_indices() {
            if scan.outside(c) {
                match c {
                    ']' => {
                        found = Some(offset + i);
                        break;
                    }
                    '[' | '{' | '}' => {
                        let expected = if no == first_no {
                            "scalars in the sequence (nested sequences and maps are not supported)".to_owned()
                        } else {
                            format!(
                                "the ']' closing the '[' of line {first_no} before this '{c}' \
                                 (nested sequences and maps are not supported)"
                            )
                        };
                        return Err(format_error(source_name, at(&format!("{key}[..]"), no), expected));
                    }
                    _ => {}
                }
            }
        }
        body.push_str(segment);
        if let Some(close) = found {
            let after = body.get(close + 1..).unwrap_or("").trim();
            if !after.is_empty() {
                return Err(format_error(
                    source_name,
                    at(key, no),
                    format!("nothing after the closing ']', got '{}'", snippet(after)),
                ));
            }
            break close;
        }
        let Some(next) = lines.get(*pos) else {
            return Err(format_error(source_name, at(key, first_no), "a closing ']' for the '['"));
        };
        *pos += 1;
        body.push(' ');
        scan.outside(' ');
        segment = next.text;
        no = next.no;
    };
    let inner = body.get(..close).unwrap_or("");
    let line_of = |offset: usize| starts.iter().rev().find(|(o, _)| *o <= offset).map_or(first_no, |s| s.1);

    // Split at commas outside quotes.
    let mut items = Vec::new();
    let mut scan = QuoteScan::new();
    let mut start = 0;
    let mut bounds = Vec::new();
    for (i, c) in inner.char_indices() {
        if scan.outside(c) && c == ',' {
            bounds.push((start, i));
            start = i + 1;
        }
    }
    bounds.push((start, inner.len()));
    let last = bounds.len() - 1;
    for (n, (s, e)) in bounds.into_iter().enumerate() {
        let token = inner.get(s..e).unwrap_or("");
        let no = line_of(s + (token.len() - token.trim_start().len()));
        if token.trim().is_empty() {
            // `[]` and a trailing comma are fine; an empty item elsewhere is not.
            if n == last && (n == 0 || !items.is_empty()) {
                continue;
            }
            return Err(format_error(
                source_name,
                at(&format!("{key}[{n}]"), no),
                "a value between the commas",
            ));
        }
        let text = scalar_text(token, &format!("{key}[{n}]"), no, source_name)?;
        items.push(Scalar { text, line: no });
    }
    Ok(items)
}
