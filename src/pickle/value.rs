//! The value tree a pickle decodes into.
//!
//! It keeps apart what Python keeps apart: str and bytes, list and tuple,
//! int and float, and it keeps dict insertion order. Strings and bytes are
//! reference counted so that a decode -> encode round trip can reproduce
//! CPython's memo sharing (interned dict keys travel as BINGET).

use std::sync::Arc;

/// A global reference that the decoder accepted from its allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Global {
    /// `builtins.<name>` for the plain types deltas carry in `type_changes`.
    Builtin(BuiltinType),
    /// `type(None)`, carried by deepdiff as the persistent id `'<<NoneType>>'`.
    NoneType,
    /// `deepdiff.helper.Opcode` (8.1.1 `_iterable_opcodes`).
    DeepdiffOpcode,
    /// `deepdiff.helper.OrderedDictPlus` (5.7.0 report dicts).
    DeepdiffOrderedDictPlus,
    /// `replication.repository.GraphObjectStore` (legacy snapshot import only).
    GraphObjectStore,
    /// `replication.objects.Node` (legacy snapshot import only).
    ReplicationNode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinType {
    Int,
    Float,
    Bool,
    Str,
    Bytes,
    List,
    Tuple,
    Dict,
}

impl BuiltinType {
    pub fn name(self) -> &'static str {
        match self {
            BuiltinType::Int => "int",
            BuiltinType::Float => "float",
            BuiltinType::Bool => "bool",
            BuiltinType::Str => "str",
            BuiltinType::Bytes => "bytes",
            BuiltinType::List => "list",
            BuiltinType::Tuple => "tuple",
            BuiltinType::Dict => "dict",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "int" => BuiltinType::Int,
            "float" => BuiltinType::Float,
            "bool" => BuiltinType::Bool,
            "str" => BuiltinType::Str,
            "bytes" => BuiltinType::Bytes,
            "list" => BuiltinType::List,
            "tuple" => BuiltinType::Tuple,
            "dict" => BuiltinType::Dict,
            _ => return None,
        })
    }
}

impl Global {
    pub fn module_and_name(self) -> (&'static str, &'static str) {
        match self {
            Global::Builtin(b) => ("builtins", b.name()),
            Global::NoneType => ("builtins", "NoneType"),
            Global::DeepdiffOpcode => ("deepdiff.helper", "Opcode"),
            Global::DeepdiffOrderedDictPlus => ("deepdiff.helper", "OrderedDictPlus"),
            Global::GraphObjectStore => ("replication.repository", "GraphObjectStore"),
            Global::ReplicationNode => ("replication.objects", "Node"),
        }
    }
}

/// An instance of an allowed class, built with NEWOBJ (and maybe BUILD).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub class: Global,
    pub args: Vec<Value>,
    /// The BUILD state, if any.
    pub state: Option<Value>,
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An int outside i64, as pickle's LONG1/LONG4 carry it: little-endian
    /// two's complement, minimal length.
    BigInt(Arc<[u8]>),
    Float(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Object(Box<Object>),
}

impl PartialEq for Value {
    /// Structural equality that keeps types apart (1 != 1.0 != True) and
    /// compares floats bit for bit, so NaN round trips compare equal.
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (None, None) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (BigInt(a), BigInt(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Str(a), Str(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (List(a), List(b)) | (Tuple(a), Tuple(b)) => a == b,
            (Dict(a), Dict(b)) => a == b,
            (Global(a), Global(b)) => a == b,
            (Object(a), Object(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    pub fn bytes(b: &[u8]) -> Value {
        Value::Bytes(Arc::from(b))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Looks a str key up in a dict value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of the Python type, for log lines.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "type",
            Value::Object(_) => "object",
        }
    }
}

/// Builds a dict with str keys, in the given order.
pub fn dict<const N: usize>(items: [(&str, Value); N]) -> Value {
    Value::Dict(items.into_iter().map(|(k, v)| (Value::str(k), v)).collect())
}
