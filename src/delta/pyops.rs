//! Python semantics on the value tree: equality, ordering, item access and
//! the conversions `int(x)`, `str(x)` ... that deepdiff's type changes call.
//! Each failure carries the Python exception it stands for, because which
//! exception is raised decides whether deepdiff logs and skips or aborts.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::pickle::{BuiltinType, Global, Value};

/// Longest `bytes(n)` a type change may build; larger would be a memory
/// attack rather than anything a Blender client sends.
pub const MAX_CONVERTED_LEN: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum PyErr {
    Key,
    Index,
    Type(&'static str),
    Value(&'static str),
    Attribute,
    Overflow,
}

impl std::fmt::Display for PyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PyErr::Key => write!(f, "KeyError"),
            PyErr::Index => write!(f, "IndexError"),
            PyErr::Type(m) => write!(f, "TypeError: {m}"),
            PyErr::Value(m) => write!(f, "ValueError: {m}"),
            PyErr::Attribute => write!(f, "AttributeError"),
            PyErr::Overflow => write!(f, "OverflowError"),
        }
    }
}

pub type PyResult<T> = Result<T, PyErr>;

/// A number as Python compares numbers.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn as_num(v: &Value) -> Option<Num> {
    match v {
        Value::Bool(b) => Some(Num::Int(i128::from(*b))),
        Value::Int(i) => Some(Num::Int(i128::from(*i))),
        Value::BigInt(raw) if raw.len() <= 16 => {
            let negative = raw[raw.len() - 1] & 0x80 != 0;
            let mut a = if negative { [0xffu8; 16] } else { [0u8; 16] };
            a[..raw.len()].copy_from_slice(raw);
            Some(Num::Int(i128::from_le_bytes(a)))
        }
        Value::Float(f) => Some(Num::Float(*f)),
        _ => None,
    }
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Bool(_) | Value::Int(_) | Value::BigInt(_) | Value::Float(_))
}

/// Exact comparison of an integer with a float, as CPython does it.
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f.is_infinite() {
        return Some(if f > 0.0 { Ordering::Less } else { Ordering::Greater });
    }
    let t = f.trunc();
    // Floats beyond i128 are beyond every i128.
    if t >= 1.7e38 {
        return Some(Ordering::Less);
    }
    if t <= -1.7e38 {
        return Some(Ordering::Greater);
    }
    let ti = t as i128;
    match i.cmp(&ti) {
        Ordering::Equal => {
            let frac = f - t;
            Some(if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        o => Some(o),
    }
}

fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).map(Ordering::reverse),
    }
}

/// Python `a == b` (no identity shortcut: NaN never equals NaN).
pub fn py_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (as_num(a), as_num(b)) {
        return num_cmp(x, y) == Some(Ordering::Equal);
    }
    match (a, b) {
        (Value::BigInt(x), Value::BigInt(y)) => x == y,
        (Value::None, Value::None) => true,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bytes(x), Value::Bytes(y)) => x == y,
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| match dict_find(y, k) {
                    Ok(Some(i)) => py_eq(v, &y[i].1),
                    _ => false,
                })
        }
        (Value::Global(x), Value::Global(y)) => x == y,
        (Value::Object(x), Value::Object(y)) => x == y,
        _ => false,
    }
}

pub fn is_hashable(v: &Value) -> bool {
    match v {
        Value::List(_) | Value::Dict(_) => false,
        Value::Tuple(items) => items.iter().all(is_hashable),
        _ => true,
    }
}

/// Index of `key` in a dict, by hash/eq. TypeError for unhashable keys.
pub fn dict_find(items: &[(Value, Value)], key: &Value) -> PyResult<Option<usize>> {
    if let Value::Str(key) = key {
        // Nearly every key of Blender data; a str only ever equals a str.
        return Ok(items.iter().position(|(k, _)| matches!(k, Value::Str(s) if s == key)));
    }
    if !is_hashable(key) {
        return Err(PyErr::Type("unhashable type"));
    }
    Ok(items.iter().position(|(k, _)| py_eq(k, key)))
}

/// Python `a < b`.
pub fn py_lt(a: &Value, b: &Value) -> PyResult<bool> {
    if let (Some(x), Some(y)) = (as_num(a), as_num(b)) {
        return Ok(num_cmp(x, y) == Some(Ordering::Less));
    }
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(x.chars().lt(y.chars())),
        (Value::Bytes(x), Value::Bytes(y)) => Ok(x < y),
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => seq_lt(x, y),
        _ if is_number(a) && is_number(b) => Err(PyErr::Type("big int comparison")),
        _ => Err(PyErr::Type("'<' not supported between these types")),
    }
}

/// Lexicographic `<` of two sequences, as list comparison does it.
pub fn seq_lt(x: &[Value], y: &[Value]) -> PyResult<bool> {
    seq_lt_by(x, y, |v| v)
}

/// `seq_lt` of sequences whose items hold their values (`value` picks it).
pub fn seq_lt_by<T>(x: &[T], y: &[T], value: impl Fn(&T) -> &Value) -> PyResult<bool> {
    for (p, q) in x.iter().zip(y).map(|(p, q)| (value(p), value(q))) {
        if !py_eq(p, q) {
            return py_lt(p, q);
        }
    }
    Ok(x.len() < y.len())
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::None => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::BigInt(_) => true,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Bytes(b) => !b.is_empty(),
        Value::List(l) | Value::Tuple(l) => !l.is_empty(),
        Value::Dict(d) => !d.is_empty(),
        Value::Global(_) | Value::Object(_) => true,
    }
}

/// Resolves a sequence index the way `list[i]` does.
pub fn seq_index(len: usize, key: &Value) -> PyResult<usize> {
    let i = match key {
        Value::Int(i) => *i,
        Value::Bool(b) => i64::from(*b),
        Value::BigInt(_) => return Err(PyErr::Index),
        _ => return Err(PyErr::Type("indices must be integers")),
    };
    let len = len as i64;
    let j = if i < 0 { i + len } else { i };
    if j < 0 || j >= len {
        Err(PyErr::Index)
    } else {
        Ok(j as usize)
    }
}

/// `obj[key]`.
pub fn get_item(obj: &Value, key: &Value) -> PyResult<Value> {
    match obj {
        Value::Dict(items) => match dict_find(items, key)? {
            Some(i) => Ok(items[i].1.clone()),
            None => Err(PyErr::Key),
        },
        Value::List(items) | Value::Tuple(items) => Ok(items[seq_index(items.len(), key)?].clone()),
        Value::Str(s) => {
            let chars: Vec<char> = s.chars().collect();
            let c = chars[seq_index(chars.len(), key)?];
            Ok(Value::str(&c.to_string()))
        }
        Value::Bytes(b) => Ok(Value::Int(i64::from(b[seq_index(b.len(), key)?]))),
        _ => Err(PyErr::Type("object is not subscriptable")),
    }
}

/// Mutable access to `obj[key]` for containers that support it.
pub fn get_item_mut<'a>(obj: &'a mut Value, key: &Value) -> PyResult<&'a mut Value> {
    match obj {
        Value::Dict(items) => match dict_find(items, key)? {
            Some(i) => Ok(&mut items[i].1),
            None => Err(PyErr::Key),
        },
        Value::List(items) | Value::Tuple(items) => {
            let i = seq_index(items.len(), key)?;
            Ok(&mut items[i])
        }
        Value::Str(_) | Value::Bytes(_) => Err(PyErr::Type("nested writes below a str")),
        _ => Err(PyErr::Type("object is not subscriptable")),
    }
}

/// What `obj[key] = value` did, so that it can be taken back.
#[derive(Debug)]
pub enum Written {
    /// Entry or item `.0` held `.1`.
    Replaced(usize, Value),
    /// A new dict key went to the end.
    Appended,
}

/// `obj[key] = value`.
pub fn set_item(obj: &mut Value, key: &Value, value: Value) -> PyResult<Written> {
    match obj {
        Value::Dict(items) => match dict_find(items, key)? {
            Some(i) => Ok(Written::Replaced(i, std::mem::replace(&mut items[i].1, value))),
            None => {
                items.push((key.clone(), value));
                Ok(Written::Appended)
            }
        },
        Value::List(items) => {
            let i = seq_index(items.len(), key)?;
            Ok(Written::Replaced(i, std::mem::replace(&mut items[i], value)))
        }
        _ => Err(PyErr::Type("object does not support item assignment")),
    }
}

/// What `del obj[key]` removed, and from where.
#[derive(Debug)]
pub enum Removed {
    Entry(usize, Value, Value),
    Item(usize, Value),
}

/// `del obj[key]`.
pub fn del_item(obj: &mut Value, key: &Value) -> PyResult<Removed> {
    match obj {
        Value::Dict(items) => match dict_find(items, key)? {
            Some(i) => {
                let (k, v) = items.remove(i);
                Ok(Removed::Entry(i, k, v))
            }
            None => Err(PyErr::Key),
        },
        Value::List(items) => {
            let i = seq_index(items.len(), key)?;
            Ok(Removed::Item(i, items.remove(i)))
        }
        _ => Err(PyErr::Type("object doesn't support item deletion")),
    }
}

pub fn py_len(obj: &Value) -> PyResult<usize> {
    match obj {
        Value::Dict(d) => Ok(d.len()),
        Value::List(l) | Value::Tuple(l) => Ok(l.len()),
        Value::Str(s) => Ok(s.chars().count()),
        Value::Bytes(b) => Ok(b.len()),
        _ => Err(PyErr::Type("object has no len()")),
    }
}

/// Iterates like `list(x)` does.
pub fn iterate(v: &Value) -> PyResult<Vec<Value>> {
    match v {
        Value::List(l) | Value::Tuple(l) => Ok(l.clone()),
        Value::Dict(d) => Ok(d.iter().map(|(k, _)| k.clone()).collect()),
        Value::Str(s) => Ok(s.chars().map(|c| Value::str(&c.to_string())).collect()),
        Value::Bytes(b) => Ok(b.iter().map(|x| Value::Int(i64::from(*x))).collect()),
        _ => Err(PyErr::Type("object is not iterable")),
    }
}

fn int_value(i: i128) -> Value {
    match i64::try_from(i) {
        Ok(small) => Value::Int(small),
        Err(_) => {
            let raw = crate::pickle::minimal_twos_complement(&i.to_le_bytes());
            Value::BigInt(Arc::from(raw))
        }
    }
}

/// Python's int() parsing of str/bytes text.
fn parse_int_text(text: &str) -> PyResult<Value> {
    let t = text.trim_matches(|c: char| c.is_whitespace());
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let bytes = digits.as_bytes();
    if bytes.is_empty()
        || bytes[0] == b'_'
        || bytes[bytes.len() - 1] == b'_'
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return Err(PyErr::Value("invalid literal for int()"));
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let n: i128 = clean.parse().map_err(|_| PyErr::Overflow)?;
    Ok(int_value(if neg { -n } else { n }))
}

fn parse_float_text(text: &str) -> PyResult<f64> {
    let t = text.trim_matches(|c: char| c.is_whitespace());
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    let neg = lower.starts_with('-');
    let special = match unsigned {
        "inf" | "infinity" => Some(f64::INFINITY),
        "nan" => Some(f64::NAN),
        _ => None,
    };
    if let Some(v) = special {
        if lower.len() - unsigned.len() > 1 {
            return Err(PyErr::Value("could not convert string to float"));
        }
        return Ok(if neg { -v } else { v });
    }
    let ok_chars = t.chars().all(|c| c.is_ascii_digit() || "+-.eE_".contains(c));
    let bad_underscore =
        t.starts_with('_') || t.ends_with('_') || t.contains("__") || t.contains("_.") || t.contains("._");
    if t.is_empty() || !ok_chars || bad_underscore {
        return Err(PyErr::Value("could not convert string to float"));
    }
    let clean: String = t.chars().filter(|c| *c != '_').collect();
    clean
        .parse::<f64>()
        .map_err(|_| PyErr::Value("could not convert string to float"))
}

/// `new_type(value)` for the types deepdiff writes in type_changes.
pub fn convert(target: &Value, v: &Value) -> PyResult<Value> {
    let ty = match target {
        Value::Global(Global::Builtin(b)) => *b,
        Value::Global(Global::NoneType) => return Err(PyErr::Type("NoneType takes no arguments")),
        _ => return Err(PyErr::Type("not a type")),
    };
    match ty {
        BuiltinType::Int => match v {
            Value::Bool(b) => Ok(Value::Int(i64::from(*b))),
            Value::Int(_) | Value::BigInt(_) => Ok(v.clone()),
            Value::Float(f) => {
                if f.is_nan() {
                    Err(PyErr::Value("cannot convert float NaN to integer"))
                } else if f.is_infinite() {
                    Err(PyErr::Overflow)
                } else if f.abs() < 1.7e38 {
                    Ok(int_value(f.trunc() as i128))
                } else {
                    Err(PyErr::Overflow)
                }
            }
            Value::Str(s) => parse_int_text(s),
            Value::Bytes(b) => parse_int_text(std::str::from_utf8(b).map_err(|_| PyErr::Value("invalid literal"))?),
            _ => Err(PyErr::Type(
                "int() argument must be a string, a bytes-like object or a real number",
            )),
        },
        BuiltinType::Float => match v {
            Value::Float(_) => Ok(v.clone()),
            Value::Bool(_) | Value::Int(_) | Value::BigInt(_) => match as_num(v) {
                Some(Num::Int(i)) => Ok(Value::Float(i as f64)),
                _ => Err(PyErr::Overflow),
            },
            Value::Str(s) => parse_float_text(s).map(Value::Float),
            Value::Bytes(b) => parse_float_text(std::str::from_utf8(b).map_err(|_| PyErr::Value("could not convert"))?)
                .map(Value::Float),
            _ => Err(PyErr::Type("float() argument must be a string or a real number")),
        },
        BuiltinType::Bool => Ok(Value::Bool(truthy(v))),
        BuiltinType::Str => Ok(match v {
            Value::Str(_) => v.clone(),
            other => Value::str(&super::repr::py_str(other)),
        }),
        BuiltinType::Bytes => match v {
            Value::Bytes(_) => Ok(v.clone()),
            Value::Bool(_) | Value::Int(_) => {
                let n = match as_num(v) {
                    Some(Num::Int(n)) => n,
                    _ => 0,
                };
                if n < 0 {
                    Err(PyErr::Value("negative count"))
                } else if n as usize > MAX_CONVERTED_LEN {
                    Err(PyErr::Overflow)
                } else {
                    Ok(Value::Bytes(Arc::from(vec![0u8; n as usize])))
                }
            }
            Value::Str(_) => Err(PyErr::Type("string argument without an encoding")),
            Value::List(_) | Value::Tuple(_) => {
                let mut out = Vec::new();
                for item in iterate(v)? {
                    match as_num(&item) {
                        Some(Num::Int(n)) if (0..256).contains(&n) && !matches!(item, Value::Float(_)) => {
                            out.push(n as u8)
                        }
                        Some(Num::Int(_)) => return Err(PyErr::Value("bytes must be in range(0, 256)")),
                        _ => return Err(PyErr::Type("an integer is required")),
                    }
                }
                Ok(Value::Bytes(Arc::from(out)))
            }
            Value::Dict(d) if d.is_empty() => Ok(Value::bytes(b"")),
            _ => Err(PyErr::Type("cannot convert object to bytes")),
        },
        BuiltinType::List => Ok(Value::List(iterate(v)?)),
        BuiltinType::Tuple => Ok(Value::Tuple(iterate(v)?)),
        BuiltinType::Dict => match v {
            Value::Dict(d) => Ok(Value::Dict(d.clone())),
            _ => {
                let mut out: Vec<(Value, Value)> = Vec::new();
                for item in iterate(v)? {
                    let pair = iterate(&item).map_err(|_| PyErr::Type("cannot convert dictionary update sequence"))?;
                    if pair.len() != 2 {
                        return Err(PyErr::Value("dictionary update sequence element has wrong length"));
                    }
                    let mut it = pair.into_iter();
                    let (Some(k), Some(val)) = (it.next(), it.next()) else {
                        unreachable!("length checked")
                    };
                    match dict_find(&out, &k)? {
                        Some(i) => out[i].1 = val,
                        None => out.push((k, val)),
                    }
                }
                Ok(Value::Dict(out))
            }
        },
    }
}

/// The canonical string DeepHash gives a value (default options: order and
/// repetition of iterables ignored), used where deepdiff compares
/// unhashable items with DeepHash.
pub fn deep_hash_key(v: &Value) -> String {
    match v {
        Value::List(items) | Value::Tuple(items) => {
            let mut keys: Vec<String> = items.iter().map(deep_hash_key).collect();
            keys.sort();
            keys.dedup();
            format!("{}:{}", v.type_name(), keys.join(","))
        }
        Value::Dict(items) => {
            let mut keys: Vec<String> = items
                .iter()
                .map(|(k, x)| format!("{}:{}", deep_hash_key(k), deep_hash_key(x)))
                .collect();
            keys.sort();
            format!("dict:{{{}}}", keys.join(";"))
        }
        Value::Bool(b) => format!("bool:{b}"),
        Value::Float(f) => format!("float:{}", super::repr::float_repr(*f)),
        other => format!("{}:{}", other.type_name(), super::repr::py_repr(other)),
    }
}
