//! deepdiff's path strings (`root['objects'][3]`) turned into elements,
//! with the parser of each deepdiff version reproduced quirk for quirk:
//! which keys a version can address decides which edits it silently drops.

use std::sync::{Arc, LazyLock};

use crate::pickle::Value;

/// The three code points deepdiff 8 puts before each quote of a key that
/// holds both quote kinds.
const MARKER: &str = "\u{1D1BA}\u{1D165}\u{1D16F}";

/// Elements most paths of Blender data have, root included; more only
/// cost a reallocation.
const TYPICAL_DEPTH: usize = 6;
/// Digits an i64 always holds.
const I64_SAFE_DIGITS: usize = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// deepdiff 5.7.0 (upstream's pin; its deltas carry OrderedDictPlus).
    V5,
    /// deepdiff 8.1.1 (what the add-on's clients run).
    #[default]
    V8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Get,
    GetAttr,
}

pub type Element = (Value, Action);

fn add_element(elements: &mut Vec<Element>, elem: &str, inside: Option<char>, dialect: Dialect) {
    if elem.is_empty() || elem.starts_with("__") {
        return;
    }
    let action = if inside == Some('.') {
        Action::GetAttr
    } else {
        Action::Get
    };
    let value = match dialect {
        Dialect::V5 => literal_eval(elem).unwrap_or_else(|| Value::str(elem)),
        Dialect::V8 => {
            let evaluated = if elem.contains(MARKER) || elem.contains('\\') {
                None
            } else {
                literal_eval(elem)
            };
            match evaluated {
                Some(v) => v,
                None => {
                    let chars: Vec<char> = elem.chars().collect();
                    let first = chars[0];
                    if first == chars[chars.len() - 1] && (first == '"' || first == '\'') {
                        let inner: String = if chars.len() >= 2 {
                            chars[1..chars.len() - 1].iter().collect()
                        } else {
                            String::new()
                        };
                        Value::str(&inner)
                    } else {
                        Value::str(elem)
                    }
                }
            }
        }
    };
    elements.push((value, action));
}

static ROOT: LazyLock<Value> = LazyLock::new(|| Value::str("root"));

/// `_path_to_elements(path)`, root element included.
pub fn parse(path: &str, dialect: Dialect) -> Vec<Element> {
    parse_plain(path).unwrap_or_else(|| parse_general(path, dialect))
}

/// `root['key'][3]...`, the shape of nearly every path deepdiff writes for
/// Blender data, read in one pass over its bytes. None for anything else
/// (attributes, escapes, quotes inside keys, signs, leading zeros), which
/// the general parser reads; where this one answers, both dialects' parsers
/// give these same elements.
fn parse_plain(path: &str) -> Option<Vec<Element>> {
    let rest = path.strip_prefix("root")?;
    let b = rest.as_bytes();
    let mut elements = Vec::with_capacity(TYPICAL_DEPTH);
    elements.push((ROOT.clone(), Action::GetAttr));
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'[' {
            return None;
        }
        let start = i + 1;
        let quote = *b.get(start)?;
        if quote == b'\'' || quote == b'"' {
            let inner = start + 1;
            let len = b[inner..]
                .iter()
                .position(|c| matches!(c, b'\'' | b'"' | b'\\' | b'\n' | b'\r'))?;
            let end = inner + len;
            if b[end] != quote || b.get(end + 1) != Some(&b']') {
                return None;
            }
            elements.push((Value::str(&rest[inner..end]), Action::Get));
            i = end + 2;
        } else {
            let len = b[start..].iter().position(|&c| c == b']')?;
            let index @ Value::Int(_) = plain_literal(&rest[start..start + len])? else {
                return None;
            };
            elements.push((index, Action::Get));
            i = start + len + 1;
        }
    }
    Some(elements)
}

fn parse_general(path: &str, dialect: Dialect) -> Vec<Element> {
    let mut elements = Vec::with_capacity(TYPICAL_DEPTH);
    elements.push((ROOT.clone(), Action::GetAttr));
    // One buffer for every element: none is longer than the path.
    let mut elem = String::with_capacity(path.len());
    let mut inside: Option<char> = None;
    let mut prev: Option<char> = None;
    let mut brackets = 0usize;
    let mut in_quotes = false;
    let mut quote_used: Option<char> = None;
    for ch in path.chars().skip(4) {
        if dialect == Dialect::V5 && prev == Some('\\') {
            elem.push(ch);
        } else if ch == '"' || ch == '\'' {
            elem.push(ch);
            let toggle = match dialect {
                Dialect::V5 => true,
                Dialect::V8 => !(in_quotes && quote_used != Some(ch)),
            };
            if toggle {
                in_quotes = !in_quotes;
                if in_quotes {
                    quote_used = Some(ch);
                } else {
                    add_element(&mut elements, &elem, inside, dialect);
                    elem.clear();
                    quote_used = None;
                }
            }
        } else if in_quotes {
            elem.push(ch);
        } else if ch == '[' {
            match inside {
                Some('.') => {
                    add_element(&mut elements, &elem, inside, dialect);
                    inside = Some('[');
                    elem.clear();
                }
                Some('[') => elem.push(ch),
                _ => {
                    inside = Some('[');
                    brackets += 1;
                    elem.clear();
                }
            }
        } else if ch == '.' {
            match inside {
                Some('[') => elem.push(ch),
                Some('.') => {
                    add_element(&mut elements, &elem, inside, dialect);
                    elem.clear();
                }
                _ => {
                    inside = Some('.');
                    elem.clear();
                }
            }
        } else if ch == ']' {
            brackets = brackets.saturating_sub(1);
            if brackets > 0 {
                elem.push(ch);
            } else {
                add_element(&mut elements, &elem, inside, dialect);
                elem.clear();
                inside = None;
            }
        } else {
            elem.push(ch);
        }
        prev = Some(ch);
    }
    if !elem.is_empty() {
        add_element(&mut elements, &elem, inside, dialect);
    }
    elements
}

/// The part of `ast.literal_eval` that can appear in a path element:
/// str and bytes literals, ints, floats, signs, None, True and False.
pub fn literal_eval(text: &str) -> Option<Value> {
    if let Some(v) = plain_literal(text) {
        return Some(v);
    }
    let t = text
        .trim_start_matches([' ', '\t'])
        .trim_end_matches([' ', '\t', '\n', '\r']);
    match t {
        "None" => return Some(Value::None),
        "True" => return Some(Value::Bool(true)),
        "False" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Some(v) = string_literal(t) {
        return Some(v);
    }
    let (neg, rest) = match t.as_bytes().first()? {
        b'-' => (true, t[1..].trim_start()),
        b'+' => (false, t[1..].trim_start()),
        _ => (false, t),
    };
    if rest.starts_with(['-', '+']) {
        // Repeated signs are still a literal for literal_eval.
        let inner = literal_eval(rest)?;
        return negate(inner, neg);
    }
    let num = number_literal(rest)?;
    negate(num, neg)
}

/// The keys nearly every path holds, `'name'` and `3`, without the general
/// parser's copies; None when anything needs the general one.
fn plain_literal(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    match *b.first()? {
        q @ (b'\'' | b'"') if b.len() >= 2 && b[b.len() - 1] == q => {
            let inner = &text[1..text.len() - 1];
            if inner.contains(['\'', '"', '\\', '\n', '\r']) {
                return None;
            }
            Some(Value::str(inner))
        }
        b'1'..=b'9' if b.len() <= I64_SAFE_DIGITS && b.iter().all(u8::is_ascii_digit) => {
            text.parse().ok().map(Value::Int)
        }
        b'0' if b.len() == 1 => Some(Value::Int(0)),
        _ => None,
    }
}

fn negate(v: Value, neg: bool) -> Option<Value> {
    if !neg {
        return match v {
            Value::Int(_) | Value::BigInt(_) | Value::Float(_) => Some(v),
            _ => None,
        };
    }
    match v {
        Value::Int(i) => Some(i.checked_neg().map(Value::Int).unwrap_or_else(|| {
            Value::BigInt(Arc::from(crate::pickle::minimal_twos_complement(
                &(-(i as i128)).to_le_bytes(),
            )))
        })),
        Value::Float(f) => Some(Value::Float(-f)),
        // Negating ints beyond i64 is not needed for paths deepdiff writes.
        _ => None,
    }
}

fn number_literal(t: &str) -> Option<Value> {
    if t.is_empty() || t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = lower.strip_prefix(prefix) {
            let clean: String = digits.trim_start_matches('_').chars().filter(|c| *c != '_').collect();
            return i64::from_str_radix(&clean, radix).ok().map(Value::Int);
        }
    }
    let is_float = lower.contains(['.', 'e']);
    if lower.ends_with('j') {
        return None;
    }
    if !lower.chars().all(|c| c.is_ascii_digit() || "._e+-".contains(c)) {
        return None;
    }
    if lower.contains("_.") || lower.contains("._") || lower.contains("_e") || lower.contains("e_") {
        return None;
    }
    let clean: String = lower.chars().filter(|c| *c != '_').collect();
    if is_float {
        if clean.contains(['+', '-']) && !clean.contains("e+") && !clean.contains("e-") {
            return None;
        }
        return clean.parse::<f64>().ok().map(Value::Float);
    }
    if clean.contains(['+', '-']) {
        return None;
    }
    // Python refuses leading zeros in a non-zero decimal literal.
    if clean.len() > 1 && clean.starts_with('0') && clean.chars().any(|c| c != '0') {
        return None;
    }
    match clean.parse::<i64>() {
        Ok(i) => Some(Value::Int(i)),
        Err(_) => {
            let big: i128 = clean.parse().ok()?;
            Some(Value::BigInt(Arc::from(crate::pickle::minimal_twos_complement(
                &big.to_le_bytes(),
            ))))
        }
    }
}

fn string_literal(t: &str) -> Option<Value> {
    let prefix_len = t.find(['\'', '"'])?;
    let prefix = t[..prefix_len].to_ascii_lowercase();
    let (raw, bytes) = match prefix.as_str() {
        "" | "u" => (false, false),
        "r" => (true, false),
        "b" => (false, true),
        "br" | "rb" => (true, true),
        _ => return None,
    };
    let body = &t[prefix_len..];
    let quote = body.chars().next()?;
    if body.len() < 2 || !body.ends_with(quote) || body.starts_with(&format!("{quote}{quote}{quote}")) {
        return None;
    }
    let inner = &body[1..body.len() - 1];
    let decoded = decode_escapes(inner, quote, raw)?;
    if bytes {
        if decoded.chars().any(|c| c as u32 > 0xff) || !inner.is_ascii() {
            return None;
        }
        let b: Vec<u8> = decoded.chars().map(|c| c as u32 as u8).collect();
        return Some(Value::Bytes(Arc::from(b)));
    }
    Some(Value::str(&decoded))
}

/// Decodes backslash escapes; None where Python would raise SyntaxError
/// (an unescaped quote or newline inside, a dangling backslash).
fn decode_escapes(inner: &str, quote: char, raw: bool) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == quote || c == '\n' {
            return None;
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let next = chars.next()?;
        if raw {
            out.push('\\');
            out.push(next);
            continue;
        }
        match next {
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            '"' => out.push('"'),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'v' => out.push('\x0b'),
            '\n' => {}
            '0'..='7' => {
                let mut n = next.to_digit(8)?;
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            n = n * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(n)?);
            }
            'x' | 'u' | 'U' => {
                let len = match next {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = (0..len).filter_map(|_| chars.next()).collect();
                if hex.len() != len {
                    return None;
                }
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(path: &str, d: Dialect) -> Vec<Value> {
        parse(path, d).into_iter().skip(1).map(|(v, _)| v).collect()
    }

    /// The one-pass reader answers only where it agrees with both dialects'
    /// general parsers, element for element, and leaves the rest to them.
    #[test]
    fn one_pass_paths_agree_with_the_general_parser() {
        let plain = [
            "root",
            "root['objects'][3]",
            "root['fcurves'][2]['keyframe_points'][0]['co'][1]",
            "root[\"name\"][0][10][123456789012345678]",
            "root['']['__k']['a.b']['a[b']['a]b']['\u{e9}t\u{e9}']['\u{1D1BA}\u{1D165}\u{1D16F}']",
        ];
        let general = [
            "root.attr",
            "root['a'].b",
            "root[-1]",
            "root[01]",
            "root[1.5]",
            "root[None]",
            "root[1234567890123456789012]",
            "root[\"it's\"]",
            "root['a\\b']",
            "root['a\nb']",
            "root['a'",
            "root['a']x",
            "root['a'b]",
            "root[__x]",
            "root[]",
            "rooT['a']",
            "xxxx['a']",
        ];
        for path in plain {
            let fast = parse_plain(path).unwrap_or_else(|| panic!("{path} should be read in one pass"));
            for d in [Dialect::V5, Dialect::V8] {
                assert_eq!(fast, parse_general(path, d), "{path} {d:?}");
            }
        }
        for path in general {
            assert_eq!(parse_plain(path), None, "{path} should go to the general parser");
        }
    }

    #[test]
    fn plain_paths() {
        for d in [Dialect::V5, Dialect::V8] {
            assert_eq!(
                keys("root['objects'][3]", d),
                vec![Value::str("objects"), Value::Int(3)]
            );
            assert_eq!(
                keys("root[-1][1.5][None][True]", d),
                vec![Value::Int(-1), Value::Float(1.5), Value::None, Value::Bool(true)]
            );
            assert_eq!(keys("root", d), vec![]);
            // Raw element text starting with `__` is dropped; a quoted key is not.
            assert_eq!(keys("root[__x]['k']", d), vec![Value::str("k")]);
            assert_eq!(keys("root['__k']", d), vec![Value::str("__k")]);
        }
    }

    #[test]
    fn quoted_keys_differ_between_versions() {
        assert_eq!(keys("root[\"it's\"]", Dialect::V8), vec![Value::str("it's")]);
        assert_ne!(keys("root[\"it's\"]", Dialect::V5), vec![Value::str("it's")]);
        assert_eq!(keys("root['a\\b']", Dialect::V8), vec![Value::str("a\\b")]);
        assert_eq!(keys("root['5']", Dialect::V8), vec![Value::str("5")]);
        assert_eq!(keys("root['1e+16']", Dialect::V8), vec![Value::str("1e+16")]);
    }

    #[test]
    fn literals() {
        assert_eq!(literal_eval("'a\\nb'"), Some(Value::str("a\nb")));
        assert_eq!(literal_eval("b'\\x00'"), Some(Value::bytes(b"\x00")));
        assert_eq!(literal_eval("007"), None);
        assert_eq!(literal_eval("1_000"), Some(Value::Int(1000)));
        assert_eq!(literal_eval("-2.5e-3"), Some(Value::Float(-2.5e-3)));
        assert_eq!(literal_eval("inf"), None);
        assert_eq!(literal_eval("'unterminated"), None);
    }
}
