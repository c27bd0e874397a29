//! Manifests read and written as kubectl reads them.
//!
//! kubectl splits a stream into documents on lines that start with `---` (apimachinery's
//! `YAMLReader`), then reads each with go-yaml v2 through `sigs.k8s.io/yaml`: **YAML 1.1**
//! scalars. A plain `0755` is the octal 493, `yes`, `on`, `y` are `true`, `no`, `off`, `n` are
//! `false`, `1_000` is 1000, `0x1F` is 31, and a key resolves the same way before it becomes a
//! JSON string (`on:` is the key `"true"`). A YAML 1.2 reader (serde_yaml) reads `0755` as a
//! string, and a StatefulSet with `defaultMode: 0755`, as Helm charts write it, does not
//! decode. [`read`] resolves plain scalars by go-yaml v2's rules; quoted and block scalars stay
//! strings. `tests/kubectl_parity.rs` holds it to `kubectl patch --local` on every document of
//! the repository's manifests and of the public charts' renders.
//!
//! [`write`] is the reverse: block YAML that a YAML 1.1 reader reads back as the same JSON,
//! with every string quoted that such a reader would take for something else (`no`, `0755`,
//! `12:30`, `2001-12-14`, ...).
use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// How deeply collections may nest in one document (kubectl's own decoder stops far earlier
/// than a stack would).
const MAX_DEPTH: usize = 256;
/// How many values aliases may expand a document to: a few "billion laughs" lines must not
/// take the machine's memory.
const MAX_NODES: usize = 1_000_000;

/// One document of a stream, as kubectl splits it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDocument<'a> {
    /// 1-based, counting every document a YAML reader sees (an explicit `---` starts one,
    /// even an empty one).
    pub index: usize,
    /// 1-based line of the document's first line of content in the stream.
    pub line: usize,
    /// 1-based line where the document's text starts (after its `---`).
    first_line: usize,
    text: &'a str,
}

/// Why a document does not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct YamlError {
    /// 1-based line in the stream.
    pub line: usize,
    pub message: String,
}

/// A document separator as apimachinery's `YAMLReader` sees one: a line starting with `---`
/// followed by nothing but spaces or a comment.
fn is_separator(line: &str) -> Option<Result<(), ()>> {
    let rest = line.strip_prefix("---")?;
    let rest = rest.trim();
    Some(if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(())
    })
}

/// Whether a document's text has anything but blank lines and comments.
fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

/// Splits a stream into its documents, as kubectl does. Documents with no content are left out
/// (kubectl skips them too), but counted when an explicit `---` started them.
pub fn split(text: &str) -> Result<Vec<RawDocument<'_>>, YamlError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut index = 0;
    let mut start = 0; // byte offset of the current document's text
    let mut start_line = 1;
    let mut explicit = false;
    let mut offset = 0;
    let mut push =
        |from: usize, to: usize, first_line: usize, explicit: bool, index: &mut usize| {
            let body = &text[from..to];
            let content = has_content(body);
            if content || explicit {
                *index += 1;
            }
            if content {
                let skipped = body
                    .lines()
                    .take_while(|l| {
                        let t = l.trim();
                        t.is_empty() || t.starts_with('#')
                    })
                    .count();
                out.push(RawDocument {
                    index: *index,
                    line: first_line + skipped,
                    first_line,
                    text: body,
                });
            }
        };
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let line_no = n + 1;
        match is_separator(line.trim_end_matches(['\n', '\r'])) {
            Some(Ok(())) => {
                push(start, offset, start_line, explicit, &mut index);
                start = offset + line.len();
                start_line = line_no + 1;
                explicit = true;
            }
            Some(Err(())) => {
                return Err(YamlError {
                    line: line_no,
                    message: format!(
                        "invalid document separator: {:?} (only a comment may follow ---)",
                        line.trim_end()
                    ),
                });
            }
            None => {}
        }
        offset += line.len();
    }
    push(start, text.len(), start_line, explicit, &mut index);
    Ok(out)
}

impl RawDocument<'_> {
    /// The document as JSON, as kubectl reads it.
    pub fn read(&self) -> Result<Value, YamlError> {
        let mut reader = Reader {
            parser: Parser::new_from_str(self.text),
            anchors: Vec::new(),
            nodes: 0,
            first_line: self.first_line,
        };
        reader.document()
    }
}

/// One document of a stream and its value, or why it does not read.
pub type Read<'a> = (RawDocument<'a>, Result<Value, YamlError>);

/// Reads a whole stream: each document's value, or why it does not read.
pub fn read(text: &str) -> Result<Vec<Read<'_>>, YamlError> {
    Ok(split(text)?
        .into_iter()
        .map(|doc| {
            let value = doc.read();
            (doc, value)
        })
        .collect())
}

struct Reader<'a> {
    parser: Parser<std::str::Chars<'a>>,
    /// Anchored values by anchor id (yaml-rust2 numbers them from 1).
    anchors: Vec<(usize, Value, usize)>,
    nodes: usize,
    first_line: usize,
}

impl Reader<'_> {
    fn error(&self, mark: Marker, message: impl Into<String>) -> YamlError {
        YamlError {
            line: self.first_line + mark.line().saturating_sub(1),
            message: message.into(),
        }
    }

    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        self.parser.next_token().map_err(|e| YamlError {
            line: self.first_line + e.marker().line().saturating_sub(1),
            message: format!("invalid YAML: {}", e.info()),
        })
    }

    fn document(&mut self) -> Result<Value, YamlError> {
        let mut value = Value::Null;
        let mut seen = false;
        loop {
            let (event, mark) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentStart | Event::DocumentEnd | Event::Nothing => {
                }
                Event::StreamEnd => return Ok(value),
                event => {
                    if seen {
                        return Err(self.error(mark, "more than one document without a --- line"));
                    }
                    seen = true;
                    value = self.node(event, mark, 0)?;
                }
            }
        }
    }

    fn count(&mut self, n: usize, mark: Marker) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(self.error(
                mark,
                format!("the document expands to more than {MAX_NODES} values (aliases)"),
            ));
        }
        Ok(())
    }

    fn anchor(&mut self, id: usize, value: &Value) {
        if id > 0 {
            self.anchors.push((id, value.clone(), size(value)));
        }
    }

    fn node(&mut self, event: Event, mark: Marker, depth: usize) -> Result<Value, YamlError> {
        if depth > MAX_DEPTH {
            return Err(self.error(mark, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.count(1, mark)?;
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref()).map_err(|m| self.error(mark, m))?;
                self.anchor(anchor, &value);
                Ok(value)
            }
            Event::Alias(id) => {
                let Some((_, value, n)) = self.anchors.iter().rev().find(|(a, ..)| *a == id) else {
                    return Err(self.error(mark, "alias to an unknown anchor"));
                };
                let (value, n) = (value.clone(), *n);
                self.count(n, mark)?;
                Ok(value)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, mark) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, mark, depth + 1)?);
                }
                let value = Value::Array(items);
                self.anchor(anchor, &value);
                Ok(value)
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                loop {
                    let (event, key_mark) = self.next()?;
                    if event == Event::MappingEnd {
                        break;
                    }
                    let merge = matches!(&event, Event::Scalar(k, TScalarStyle::Plain, _, None) if k == "<<");
                    let key = self.node(event, key_mark, depth + 1)?;
                    let (event, mark) = self.next()?;
                    let value = self.node(event, mark, depth + 1)?;
                    if merge {
                        merge_into(&mut map, value).map_err(|m| self.error(key_mark, m))?;
                        continue;
                    }
                    let key = key_string(key).map_err(|m| self.error(key_mark, m))?;
                    // go-yaml v2 keeps the last of duplicate keys, as kubectl shows.
                    map.insert(key, value);
                }
                let value = Value::Object(map);
                self.anchor(anchor, &value);
                Ok(value)
            }
            other => Err(self.error(mark, format!("unexpected YAML event {other:?}"))),
        }
    }
}

/// How many values `value` holds (for the alias bound).
fn size(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(size).sum::<usize>(),
        _ => 1,
    }
}

/// `<<: *base` (or a list of them): the mappings' keys, earlier ones first, as go-yaml v2 merges.
fn merge_into(map: &mut Map<String, Value>, value: Value) -> Result<(), String> {
    match value {
        Value::Object(merged) => {
            map.extend(merged);
            Ok(())
        }
        Value::Array(items) => {
            for item in items.into_iter().rev() {
                let Value::Object(merged) = item else {
                    return Err("map merge requires a map or a sequence of maps".into());
                };
                map.extend(merged);
            }
            Ok(())
        }
        _ => Err("map merge requires a map or a sequence of maps".into()),
    }
}

/// A key as `sigs.k8s.io/yaml` turns a resolved YAML key into a JSON one.
fn key_string(key: Value) -> Result<String, String> {
    match key {
        Value::String(s) => Ok(s),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok("null".into()),
        Value::Array(_) | Value::Object(_) => {
            Err("a mapping key is a collection, which JSON cannot hold".into())
        }
    }
}

/// What a YAML 1.1 reader (go-yaml v2) makes of a plain scalar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved {
    Null,
    Bool(bool),
    Int(i64),
    /// Above `i64::MAX`.
    Uint(u64),
    Float(f64),
    Str,
}

/// go-yaml v2's `resolve` for a plain scalar without a tag.
pub fn resolve(s: &str) -> Resolved {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Resolved::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Resolved::Bool(false);
        }
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        _ => {}
    }
    match s.as_bytes()[0] {
        b'.' => {
            // Go's ParseFloat on the text as written.
            if is_float_syntax(s)
                && let Ok(f) = s.parse::<f64>()
                && f.is_finite()
            {
                return Resolved::Float(f);
            }
            Resolved::Str
        }
        b'+' | b'-' | b'0'..=b'9' => {
            let plain: String = s.chars().filter(|&c| c != '_').collect();
            if let Some(i) = go_parse_int(&plain) {
                return Resolved::Int(i);
            }
            if let Some(u) = go_parse_uint(&plain) {
                return Resolved::Uint(u);
            }
            if is_float_syntax(&plain)
                && let Ok(f) = plain.parse::<f64>()
                && f.is_finite()
            {
                return Resolved::Float(f);
            }
            Resolved::Str
        }
        _ => Resolved::Str,
    }
}

/// go-yaml v2's float pattern: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_float_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let from = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - from
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// The base and digits of an integer literal as Go's `strconv.ParseInt(s, 0, 64)` reads it:
/// `0x`, `0o`, `0b` prefixes, and a leading `0` for octal.
fn go_digits(s: &str) -> Option<(u32, &str)> {
    // Bytes, not `str` slices: the text is any scalar, and its second character may be
    // multi-byte (`1\u{feff}`); once two ASCII bytes match, `s[2..]` is on a boundary.
    let lower = |p: &str| s.len() > 2 && s.as_bytes()[..2].eq_ignore_ascii_case(p.as_bytes());
    let (radix, digits) = if lower("0x") {
        (16, &s[2..])
    } else if lower("0o") {
        (8, &s[2..])
    } else if lower("0b") {
        (2, &s[2..])
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    (!digits.is_empty() && digits.chars().all(|c| c.is_digit(radix))).then_some((radix, digits))
}

fn go_parse_uint(s: &str) -> Option<u64> {
    let (radix, digits) = go_digits(s)?;
    u64::from_str_radix(digits, radix).ok()
}

fn go_parse_int(s: &str) -> Option<i64> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = go_parse_uint(rest)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// A number as kubectl ends up holding it: JSON written by Go's encoder, read back as
/// unstructured (an integral value is an int64, anything else a float64).
fn number(resolved: Resolved) -> Result<Value, String> {
    match resolved {
        Resolved::Int(i) => Ok(i.into()),
        Resolved::Uint(u) => float(u as f64),
        Resolved::Float(f) => float(f),
        _ => unreachable!("only numbers"),
    }
}

fn float(f: f64) -> Result<Value, String> {
    if !f.is_finite() {
        return Err(format!(
            "json: unsupported value: {f} (JSON has no NaN or infinity)"
        ));
    }
    // Go writes a float below 1e21 without an exponent, and kubectl reads an integral one back
    // as an integer.
    if f.fract() == 0.0 && f.abs() < 9.2e18 {
        return Ok((f as i64).into());
    }
    Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
}

fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let core = tag.and_then(|t| {
        (t.handle == "tag:yaml.org,2002:" || t.handle == "!!").then_some(t.suffix.as_str())
    });
    match (core, style) {
        (Some("str" | "binary"), _) => Ok(Value::String(text)),
        (None, TScalarStyle::Plain) if tag.is_none() => to_json(&text, resolve(&text)),
        (None, _) => Ok(Value::String(text)),
        (Some(kind), _) => {
            let resolved = resolve(&text);
            let fits = match (kind, resolved) {
                ("null", Resolved::Null) | ("bool", Resolved::Bool(_)) => true,
                ("int", Resolved::Int(_) | Resolved::Uint(_)) => true,
                ("float", Resolved::Float(_) | Resolved::Int(_) | Resolved::Uint(_)) => true,
                ("timestamp", _) | ("map" | "seq", _) => return Ok(Value::String(text)),
                _ => false,
            };
            if !fits {
                return Err(format!("cannot decode !!{kind} `{text}`"));
            }
            to_json(&text, resolved)
        }
    }
}

fn to_json(text: &str, resolved: Resolved) -> Result<Value, String> {
    match resolved {
        Resolved::Null => Ok(Value::Null),
        Resolved::Bool(b) => Ok(Value::Bool(b)),
        Resolved::Str => Ok(Value::String(text.to_owned())),
        number => self::number(number),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// `value` as block YAML that kubectl reads back as the same JSON.
pub fn write(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0, false),
        other => {
            write_scalar(&mut out, other, 0);
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// The longest key written as `key: value`, in characters as written (quotes and escapes
/// included), with room below YAML's limit of 1024 for the `:`.
const MAX_IMPLICIT_KEY: usize = 1000;

/// A map's entries at `indent`; with `inline`, the first one continues the current line
/// (after `- `).
fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize, inline: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        let at = out.len();
        write_string(out, key, indent, true);
        // A key YAML reads implicitly (`key: value`) may be at most 1024 characters long, in
        // go-yaml as in the YAML spec; a longer one is written as an explicit key
        // (`? key` then `: value` on the next line).
        let explicit = out[at..].chars().count() > MAX_IMPLICIT_KEY;
        if explicit {
            out.insert_str(at, "? ");
            out.push('\n');
            pad(out, indent);
        }
        out.push(':');
        match value {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                write_map(out, m, indent + 2, false);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                // After an explicit key, the sequence is indented under its `:`.
                write_seq(
                    out,
                    items,
                    if explicit { indent + 2 } else { indent },
                    false,
                );
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize, inline: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map(out, m, indent + 2, true),
            Value::Array(items) if !items.is_empty() => write_seq(out, items, indent + 2, true),
            scalar => {
                write_scalar(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection; a block scalar's lines go at `indent`.
fn write_scalar(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s, indent, false),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn write_string(out: &mut String, s: &str, indent: usize, key: bool) {
    if plain_is_safe(s) {
        out.push_str(s);
    } else if !key && literal_is_safe(s) {
        let body = s.strip_suffix('\n');
        out.push_str(if body.is_some() { "|" } else { "|-" });
        for line in body.unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                pad(out, indent);
                out.push_str(line);
            }
        }
    } else {
        double_quoted(out, s);
    }
}

/// Whether `s` written plain reads back as the same string in any YAML 1.1 or 1.2 reader:
/// conservative, so that anything that looks like a number, a date, a time, a boolean or a
/// null, or starts with an indicator, is quoted.
pub fn plain_is_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_' || first == '$') {
        return false;
    }
    if resolve(s) != Resolved::Str || s.ends_with([' ', ':']) {
        return false;
    }
    // Every YAML 1.1 boolean and null spelling, in any case (readers differ on which cases).
    const WORDS: [&str; 12] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf", "<<",
    ];
    if WORDS.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return false;
    }
    let bytes = s.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => true,
        b'.' | b'_' | b'/' | b'=' | b'+' | b'@' | b',' | b'(' | b')' | b'$' | b'~' | b'-' => true,
        // `: ` starts a value; `:` before anything else is text (`image: redis:7`).
        b':' => bytes.get(i + 1).is_some_and(|&n| n != b' '),
        b' ' => bytes.get(i + 1).is_some_and(|&n| n != b'#' && n != b' '),
        _ => false,
    })
}

/// Whether `s` can be a literal block (`|` or `|-`): several lines, none with a character a
/// reader would fold or drop, the first not indented, at most one final newline.
fn literal_is_safe(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    body.contains('\n')
        && !body.ends_with('\n')
        && !body.starts_with([' ', '\t'])
        && !body.lines().any(|l| l.ends_with([' ', '\t']))
        && !s.chars().any(|c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
        })
}

/// A double-quoted scalar; escapes every character a YAML reader treats as a break or cannot
/// hold raw.
fn double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Numbers as kubectl holds them after reading JSON: an integral value is an integer, and an
/// integer beyond `i64` a float.
pub fn as_kubectl_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() || n.as_u64().is_some_and(|u| u > i64::MAX as u64) => {
            if let Some(Ok(v)) = n.as_f64().map(float) {
                *value = v;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(as_kubectl_numbers),
        Value::Object(map) => map.values_mut().for_each(as_kubectl_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let docs = read(text).unwrap();
        assert_eq!(docs.len(), 1, "{text}");
        docs.into_iter().next().unwrap().1.unwrap()
    }

    #[test]
    fn plain_scalars_resolve_as_go_yaml_v2() {
        let v = one(
            "o: 0755\no8: 08\nt: 12:30\nu: 1_000\nd: 2001-12-14\nn: no\non: off\nf: 1.0\ne: 1e3\nh: 0x1F\nb: 0b101\nnul:\ntl: ~\npf: +.5\ns: !!str 0755\nq: '0755'\nm: -0o17\nneg: -8\n",
        );
        assert_eq!(
            v,
            json!({"o": 493, "o8": 8, "t": "12:30", "u": 1000, "d": "2001-12-14",
                   "false": false, "true": false, "f": 1, "e": 1000, "h": 31, "b": 5,
                   "nul": null, "tl": null, "pf": 0.5, "s": "0755", "q": "0755", "m": -15,
                   "neg": -8})
        );
    }

    /// Found by `scripts/fuzz 600 -1 manifests`: a key over YAML's 1024 characters for an
    /// implicit key was written as one, and did not read back.
    #[test]
    fn a_key_too_long_for_an_implicit_key_is_written_explicitly() {
        let long = "k\u{f}".repeat(400);
        let value = json!({
            "kind": "ConfigMap",
            "data": {long.clone(): "v", "short": 1},
            "list": [{long.clone(): [1, 2], "b": {long.clone(): {"x": "y"}}}],
        });
        let written = write(&value);
        assert!(written.contains("? \""), "{written}");
        let read = read(&written).unwrap();
        assert_eq!(read.len(), 1, "{written}");
        assert_eq!(read[0].1.as_ref().unwrap(), &value, "{written}");
    }

    /// Found by `scripts/fuzz 600 -1 manifests`: a scalar starting with a digit and a
    /// multi-byte character panicked on a `str` slice inside it.
    #[test]
    fn a_number_followed_by_a_multi_byte_character_is_a_string() {
        let v = one("age: 1\u{feff}Gd\nx: 0\u{e9}\nh: 0x\u{e9}\n");
        assert_eq!(
            v,
            json!({"age": "1\u{feff}Gd", "x": "0\u{e9}", "h": "0x\u{e9}"})
        );
    }

    #[test]
    fn documents_split_on_separator_lines_and_count_as_a_yaml_reader() {
        let text = "# Source: a\n---\n# only a comment\n---\na: 1\n--- # note\n\nb: 2\n";
        let docs = read(text).unwrap();
        let got: Vec<_> = docs
            .iter()
            .map(|(d, v)| (d.index, d.line, v.clone().unwrap()))
            .collect();
        assert_eq!(got, [(2, 5, json!({"a": 1})), (3, 8, json!({"b": 2}))]);
    }

    #[test]
    fn bad_documents_name_their_line_and_do_not_hide_the_others() {
        let docs = read("a: 1\n---\nb: [1,\n---\nc: .nan\n---\nd: 4\n").unwrap();
        let got: Vec<_> = docs.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(got[0], Ok(json!({"a": 1})));
        assert!(matches!(&got[1], Err(e) if e.line >= 3), "{:?}", got[1]);
        assert!(matches!(&got[2], Err(e) if e.line == 5 && e.message.contains("NaN")));
        assert_eq!(got[3], Ok(json!({"d": 4})));
    }

    #[test]
    fn anchors_merges_and_alias_bombs() {
        assert_eq!(
            one("base: &b {a: 1, b: 2}\nc:\n  <<: *b\n  b: 3\n"),
            json!({"base": {"a": 1, "b": 2}, "c": {"a": 1, "b": 3}})
        );
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, prev) in ('b'..='k').zip('a'..) {
            bomb.push_str(&format!("{i}: &{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let docs = read(&bomb).unwrap();
        assert!(docs[0].1.as_ref().unwrap_err().message.contains("expands"));
    }

    #[test]
    fn written_strings_read_back_as_strings() {
        let strings = [
            "no",
            "yes",
            "off",
            "On",
            "Y",
            "n",
            "12:30",
            "1_000",
            "2001-12-14",
            "0755",
            "08",
            "1e3",
            ".5",
            "+1",
            "-",
            "~",
            "null",
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "#x",
            "- x",
            "*x",
            "&x",
            "!x",
            "%x",
            "@x",
            "`x",
            "'x",
            "\"x",
            "{x}",
            "[x]",
            "a\nb",
            "a\nb\n",
            "a\nb\n\n",
            "\na",
            "tab\there",
            "x\u{2028}y",
            "redis:7",
            "$(POD_NAME)",
            "/data",
            "http://x:80/y",
            "<<",
            "plain text",
        ];
        for s in strings {
            let doc = json!({ s: s, "list": [s, {s: [s]}] });
            let text = write(&doc);
            assert_eq!(one(&text), doc, "{s:?} written as:\n{text}");
        }
    }
}
