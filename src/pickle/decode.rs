//! A bounded pickle decoder that never executes anything.
//!
//! Containers are built in an arena while the opcodes run, so a memo entry
//! that refers to a list still being filled sees its final contents, exactly
//! as Python's shared objects do. The tree is materialised at STOP; a
//! container referenced twice is copied, within a budget, so a "billion
//! laughs" pickle is refused instead of exhausting memory.

use std::sync::Arc;

use super::value::{BuiltinType, Global, Object, Value};

/// Deepest container nesting accepted. Blender node data nests about ten
/// levels; the encoder, comparison and drop recurse, so this also bounds
/// stack use.
pub const MAX_DEPTH: usize = 200;

/// Most values one pickle may materialise (after shared objects are copied).
/// Bulk Blender data travels as bytes blobs, so real nodes hold far fewer;
/// this bounds the memory a hostile pickle can claim to about 150 MB.
pub const MAX_VALUES: usize = 4_000_000;

/// Most memo entries. Each costs one opcode byte of input at least, so this
/// only matters for inputs far larger than real nodes.
pub const MAX_MEMO: usize = 8_000_000;

/// Stack slots reserved up front: deltas and node data rarely need more.
const INITIAL_STACK: usize = 32;
/// Open marks reserved up front (one per nesting level being built).
const INITIAL_MARKS: usize = 16;
/// Input bytes per memo slot reserved up front. Protocol 4 memoizes every
/// str and container: a small delta (a path and a float) holds one per
/// 20-odd bytes, Blender data with float lists one per 70 on average, so
/// this errs towards reserving too much, up to a cap so that a large node
/// does not reserve megabytes it may not use.
const MEMO_BYTES_PER_SLOT: usize = 16;
const INITIAL_MEMO_CAP: usize = 1024;

/// Which globals a decode may resolve. Anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Plain data only: node data, command payloads.
    Data,
    /// Plain data plus what deepdiff deltas carry.
    Delta,
    /// Delta plus the replication classes of the Python server's snapshot.
    Legacy,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("pickle truncated at byte {0}")]
    Truncated(usize),
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnsupportedOpcode { opcode: u8, offset: usize },
    #[error("refused global {0}")]
    ForbiddenGlobal(String),
    #[error("refused persistent id {0}")]
    ForbiddenPersistentId(String),
    #[error("refused call at byte {0}: only allowed classes may be instantiated")]
    ForbiddenCall(usize),
    #[error("malformed pickle at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
    #[error("pickle exceeds the {0} limit")]
    Limit(&'static str),
    #[error("invalid utf-8 in a pickled string at byte {0}")]
    InvalidUtf8(usize),
    #[error("pickle has no STOP opcode")]
    NoStop,
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Decodes one pickle into a value tree.
pub fn decode(input: &[u8], allow: Allow) -> Result<Value> {
    decode_with_info(input, allow).map(|(v, _)| v)
}

/// What a decode saw besides the value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeInfo {
    /// An `OrderedDictPlus` was built: the pickle comes from deepdiff 5.
    pub ordered_dict_plus: bool,
}

pub fn decode_with_info(input: &[u8], allow: Allow) -> Result<(Value, DecodeInfo)> {
    let mut machine = Machine::new(input, allow);
    if let Some(value) = machine.run_direct() {
        return Ok((value, DecodeInfo::default()));
    }
    machine.pos = 0;
    let top = machine.run()?;
    let info = machine.info;
    Ok((machine.materialize(top, 0)?, info))
}

#[derive(Clone)]
enum Item {
    Atom(Value),
    Ref(usize),
}

enum Container {
    List(Vec<Item>),
    Tuple(Vec<Item>),
    Dict(Vec<(Item, Item)>),
    Object {
        class: Global,
        args: Vec<Item>,
        state: Option<Item>,
    },
}

enum Slot {
    Pending(Container),
    Building,
    Built(Value),
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    allow: Allow,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: Vec<Option<Item>>,
    arena: Vec<Slot>,
    /// How many places hold each arena entry; the last one moves it out.
    refs: Vec<u32>,
    budget: usize,
    info: DecodeInfo,
}

impl<'a> Machine<'a> {
    fn new(input: &'a [u8], allow: Allow) -> Self {
        Machine {
            input,
            pos: 0,
            allow,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Vec::new(),
            arena: Vec::new(),
            refs: Vec::new(),
            budget: MAX_VALUES,
            info: DecodeInfo::default(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated(self.pos))?;
        let bytes = self.input.get(self.pos..end).ok_or(DecodeError::Truncated(self.pos))?;
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len64(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| DecodeError::Truncated(self.pos))
    }

    fn malformed(&self, what: &'static str) -> DecodeError {
        DecodeError::Malformed { offset: self.pos, what }
    }

    fn pop(&mut self) -> Result<Item> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("missing MARK"))?;
        Ok(self.stack.split_off(mark))
    }

    fn new_container(&mut self, c: Container) -> Result<Item> {
        if self.arena.len() >= MAX_VALUES {
            return Err(DecodeError::Limit("value count"));
        }
        self.arena.push(Slot::Pending(c));
        self.refs.push(1);
        Ok(Item::Ref(self.arena.len() - 1))
    }

    fn container_mut(&mut self, item: &Item) -> Result<&mut Container> {
        let pos = self.pos;
        match item {
            Item::Ref(id) => match self.arena.get_mut(*id) {
                Some(Slot::Pending(c)) => Ok(c),
                _ => Err(DecodeError::Malformed {
                    offset: pos,
                    what: "bad container reference",
                }),
            },
            Item::Atom(_) => Err(DecodeError::Malformed {
                offset: pos,
                what: "item added to a non-container",
            }),
        }
    }

    fn top(&self) -> Result<Item> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .last()
            .cloned()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn append(&mut self, target: &Item, items: Vec<Item>) -> Result<()> {
        match self.container_mut(target)? {
            // Usually one APPENDS fills a new list: take its buffer whole.
            Container::List(list) if list.is_empty() => {
                *list = items;
                Ok(())
            }
            Container::List(list) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.malformed("APPEND on a non-list")),
        }
    }

    fn set_items(&mut self, target: &Item, items: Vec<Item>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of dict items"));
        }
        match self.container_mut(target)? {
            Container::Dict(dict) => {
                dict.reserve(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.push((k, v));
                }
                Ok(())
            }
            _ => Err(self.malformed("SETITEM on a non-dict")),
        }
    }

    fn memo_put(&mut self, idx: usize) -> Result<()> {
        let item = self.top()?;
        if idx >= MAX_MEMO {
            return Err(DecodeError::Limit("memo size"));
        }
        // The memo is not a structural reference: only BINGET, which puts the
        // object in a second place, counts.
        if idx == self.memo.len() {
            // MEMOIZE, and BINPUT as CPython numbers it: the next slot.
            self.memo.push(Some(item));
            return Ok(());
        }
        if idx > self.memo.len() {
            self.memo.resize(idx + 1, None);
        }
        self.memo[idx] = Some(item);
        Ok(())
    }

    fn memo_get(&mut self, idx: usize) -> Result<()> {
        let item = self
            .memo
            .get(idx)
            .cloned()
            .flatten()
            .ok_or_else(|| self.malformed("memo key missing"))?;
        if let Item::Ref(id) = item {
            self.refs[id] += 1;
        }
        self.stack.push(item);
        Ok(())
    }

    fn string(&mut self, n: usize) -> Result<Value> {
        let start = self.pos;
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8(start))?;
        Ok(Value::Str(Arc::from(s)))
    }

    fn resolve_global(&self, module: &str, name: &str) -> Result<Global> {
        let found = match (module, name) {
            ("builtins", n) if self.allow != Allow::Data => BuiltinType::from_name(n).map(Global::Builtin),
            ("deepdiff.helper", "Opcode") if self.allow != Allow::Data => Some(Global::DeepdiffOpcode),
            ("deepdiff.helper", "OrderedDictPlus") if self.allow != Allow::Data => {
                Some(Global::DeepdiffOrderedDictPlus)
            }
            ("replication.repository", "GraphObjectStore") if self.allow == Allow::Legacy => {
                Some(Global::GraphObjectStore)
            }
            ("replication.objects", "Node") if self.allow == Allow::Legacy => Some(Global::ReplicationNode),
            _ => None,
        };
        found.ok_or_else(|| DecodeError::ForbiddenGlobal(format!("{module}.{name}")))
    }

    fn atom_str(&self, item: &Item) -> Option<Arc<str>> {
        match item {
            Item::Atom(Value::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// The common case in one pass: plain data in which no container is
    /// fetched from the memo a second time (node data and most deltas), so
    /// values are built in place on the stack, without the arena. None
    /// sends the input to `run`, which also gives every error; so this may
    /// refuse more than `run` does, never accept more.
    fn run_direct(&mut self) -> Option<Value> {
        fn is_container(v: &Value) -> bool {
            matches!(v, Value::List(_) | Value::Tuple(_) | Value::Dict(_))
        }
        // Each entry: a value and the containers nested in it, itself
        // included (MAX_DEPTH bounds that, as `materialize` does).
        let mut stack: Vec<(Value, usize)> = Vec::with_capacity(INITIAL_STACK);
        let mut marks: Vec<usize> = Vec::with_capacity(INITIAL_MARKS);
        // None: unset; Some(None): a container, not fetched here.
        let mut memo: Vec<Option<Option<Value>>> =
            Vec::with_capacity((self.input.len() / MEMO_BYTES_PER_SLOT).min(INITIAL_MEMO_CAP));
        let mut values = 0usize;
        loop {
            let floor = marks.last().copied().unwrap_or(0);
            let op = self.byte().ok()?;
            let atom = match self.atom(op).ok()? {
                Some(v) => v,
                None => match op {
                    0x80 => {
                        if self.byte().ok()? > 5 {
                            return None;
                        }
                        continue;
                    }
                    0x95 => {
                        let n = self.len64().ok()?;
                        if n > self.input.len() - self.pos {
                            return None;
                        }
                        continue;
                    }
                    b'.' => {
                        return match (stack.pop(), stack.is_empty() && marks.is_empty()) {
                            (Some((v, _)), true) => Some(v),
                            _ => None,
                        };
                    }
                    b'}' => Value::Dict(Vec::new()),
                    b']' => Value::List(Vec::new()),
                    b')' => Value::Tuple(Vec::new()),
                    b'(' => {
                        if marks.len() >= MAX_DEPTH * 4 {
                            return None;
                        }
                        marks.push(stack.len());
                        continue;
                    }
                    b't' | 0x85..=0x87 => {
                        let from = if op == b't' {
                            marks.pop()?
                        } else {
                            let n = usize::from(op - 0x84);
                            stack.len().checked_sub(n).filter(|&f| f >= floor)?
                        };
                        let height = 1 + stack[from..].iter().map(|(_, h)| *h).max().unwrap_or(0);
                        let tuple = Value::Tuple(stack.drain(from..).map(|(v, _)| v).collect());
                        values += 1;
                        stack.push((tuple, height));
                        if height > MAX_DEPTH {
                            return None;
                        }
                        continue;
                    }
                    b'a' | b'e' | b's' | b'u' => {
                        let from = match op {
                            b'a' => stack.len().checked_sub(1).filter(|&f| f > floor)?,
                            b's' => stack.len().checked_sub(2).filter(|&f| f > floor)?,
                            _ => {
                                let from = marks.pop()?;
                                if from <= marks.last().copied().unwrap_or(0) {
                                    return None;
                                }
                                from
                            }
                        };
                        // The items move out in place: no buffer of their own.
                        let (head, items) = stack.split_at_mut(from);
                        let (target, height) = head.last_mut()?;
                        for (_, h) in items.iter() {
                            *height = (*height).max(h + 1);
                        }
                        if *height > MAX_DEPTH {
                            return None;
                        }
                        let take = |v: &mut Value| std::mem::replace(v, Value::None);
                        match (op, target) {
                            (b'a' | b'e', Value::List(list)) => list.extend(items.iter_mut().map(|(v, _)| take(v))),
                            (b's' | b'u', Value::Dict(dict)) if items.len().is_multiple_of(2) => {
                                dict.reserve(items.len() / 2);
                                for pair in items.chunks_exact_mut(2) {
                                    if let [(k, _), (v, _)] = pair {
                                        dict.push((take(k), take(v)));
                                    }
                                }
                            }
                            _ => return None,
                        }
                        stack.truncate(from);
                        continue;
                    }
                    0x94 | b'q' | b'r' => {
                        let idx = match op {
                            0x94 => memo.len(),
                            b'q' => usize::from(self.byte().ok()?),
                            _ => self.u32().ok()? as usize,
                        };
                        if idx >= MAX_MEMO || stack.len() <= floor {
                            return None;
                        }
                        let (top, _) = stack.last()?;
                        let entry = if is_container(top) { None } else { Some(top.clone()) };
                        // CPython numbers its memo in order: the next slot.
                        if idx == memo.len() {
                            memo.push(Some(entry));
                        } else {
                            if idx > memo.len() {
                                memo.resize(idx + 1, None);
                            }
                            memo[idx] = Some(entry);
                        }
                        continue;
                    }
                    b'h' | b'j' => {
                        let idx = if op == b'h' {
                            usize::from(self.byte().ok()?)
                        } else {
                            self.u32().ok()? as usize
                        };
                        // A container fetched twice is shared: `run` copies it.
                        memo.get(idx)?.clone()??
                    }
                    b'0' => {
                        if stack.len() <= floor {
                            return None;
                        }
                        stack.pop();
                        continue;
                    }
                    b'1' => {
                        let from = marks.pop()?;
                        stack.truncate(from);
                        continue;
                    }
                    b'2' => {
                        let (top, _) = stack.last().filter(|_| stack.len() > floor)?;
                        if is_container(top) {
                            return None;
                        }
                        top.clone()
                    }
                    _ => return None,
                },
            };
            values += 1;
            if values > MAX_VALUES {
                return None;
            }
            let height = usize::from(is_container(&atom));
            stack.push((atom, height));
        }
    }

    /// The value of an opcode that pushes a plain value read from its
    /// operand (None, bools, ints, floats, str, bytes); None for others.
    /// Inlined: it runs once per opcode of both decoders.
    #[inline(always)]
    fn atom(&mut self, op: u8) -> Result<Option<Value>> {
        Ok(Some(match op {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'K' => Value::Int(i64::from(self.byte()?)),
            b'M' => Value::Int(i64::from(self.u16()?)),
            b'J' => Value::Int(i64::from(self.u32()? as i32)),
            0x8a => {
                let n = usize::from(self.byte()?);
                int_from_le(self.take(n)?)
            }
            0x8b => {
                let n = self.u32()? as usize;
                int_from_le(self.take(n)?)
            }
            b'G' => {
                let mut a = [0u8; 8];
                a.copy_from_slice(self.take(8)?);
                Value::Float(f64::from_be_bytes(a))
            }
            0x8c => {
                let n = usize::from(self.byte()?);
                self.string(n)?
            }
            b'X' => {
                let n = self.u32()? as usize;
                self.string(n)?
            }
            0x8d => {
                let n = self.len64()?;
                self.string(n)?
            }
            b'C' => {
                let n = usize::from(self.byte()?);
                Value::Bytes(Arc::from(self.take(n)?))
            }
            b'B' => {
                let n = self.u32()? as usize;
                Value::Bytes(Arc::from(self.take(n)?))
            }
            0x8e => {
                let n = self.len64()?;
                Value::Bytes(Arc::from(self.take(n)?))
            }
            _ => return Ok(None),
        }))
    }

    fn run(&mut self) -> Result<Item> {
        loop {
            let offset = self.pos;
            let op = self.byte().map_err(|_| DecodeError::NoStop)?;
            if let Some(v) = self.atom(op)? {
                self.stack.push(Item::Atom(v));
                continue;
            }
            match op {
                0x80 => {
                    // PROTO: any version up to 5 reads the same opcodes we support.
                    let v = self.byte()?;
                    if v > 5 {
                        return Err(self.malformed("unknown protocol version"));
                    }
                }
                0x95 => {
                    // FRAME: the length only helps buffered readers.
                    let n = self.len64()?;
                    if n > self.input.len() - self.pos {
                        return Err(DecodeError::Truncated(self.pos));
                    }
                }
                b'.' => {
                    let top = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.malformed("data left on the stack at STOP"));
                    }
                    return Ok(top);
                }
                b'}' => {
                    let c = self.new_container(Container::Dict(Vec::new()))?;
                    self.stack.push(c);
                }
                b']' => {
                    let c = self.new_container(Container::List(Vec::new()))?;
                    self.stack.push(c);
                }
                b')' => {
                    let c = self.new_container(Container::Tuple(Vec::new()))?;
                    self.stack.push(c);
                }
                b'(' => {
                    if self.marks.len() >= MAX_DEPTH * 4 {
                        return Err(DecodeError::Limit("mark depth"));
                    }
                    self.marks.push(self.stack.len());
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let c = self.new_container(Container::Tuple(items))?;
                    self.stack.push(c);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let c = self.new_container(Container::Tuple(items))?;
                    self.stack.push(c);
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?;
                    self.append(&target, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.append(&target, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?;
                    match self.container_mut(&target)? {
                        Container::Dict(dict) => dict.push((k, v)),
                        _ => return Err(self.malformed("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.set_items(&target, items)?;
                }
                0x94 => {
                    let idx = self.memo.len();
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let idx = usize::from(self.byte()?);
                    self.memo_put(idx)?;
                }
                b'r' => {
                    let idx = self.u32()? as usize;
                    self.memo_put(idx)?;
                }
                b'h' => {
                    let idx = usize::from(self.byte()?);
                    self.memo_get(idx)?;
                }
                b'j' => {
                    let idx = self.u32()? as usize;
                    self.memo_get(idx)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    if let Item::Ref(id) = top {
                        self.refs[id] += 1;
                    }
                    self.stack.push(top);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.atom_str(&module), self.atom_str(&name)) else {
                        return Err(self.malformed("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.resolve_global(&module, &name)?;
                    self.stack.push(Item::Atom(Value::Global(g)));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.resolve_global(&module, &name)?;
                    self.stack.push(Item::Atom(Value::Global(g)));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    match self.atom_str(&pid) {
                        Some(s) if &*s == "<<NoneType>>" && self.allow != Allow::Data => {
                            self.stack.push(Item::Atom(Value::Global(Global::NoneType)));
                        }
                        Some(s) => return Err(DecodeError::ForbiddenPersistentId(s.to_string())),
                        None => {
                            return Err(DecodeError::ForbiddenPersistentId("(not a str)".into()));
                        }
                    }
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let class = match cls {
                        Item::Atom(Value::Global(
                            g @ (Global::DeepdiffOpcode | Global::GraphObjectStore | Global::ReplicationNode),
                        )) => g,
                        _ => return Err(DecodeError::ForbiddenCall(offset)),
                    };
                    let args = self.tuple_items(args)?;
                    let c = self.new_container(Container::Object {
                        class,
                        args,
                        state: None,
                    })?;
                    self.stack.push(c);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    match callable {
                        Item::Atom(Value::Global(Global::DeepdiffOrderedDictPlus)) => {
                            if !self.tuple_items(args)?.is_empty() {
                                return Err(DecodeError::ForbiddenCall(offset));
                            }
                            let c = self.new_container(Container::Dict(Vec::new()))?;
                            self.stack.push(c);
                            self.info.ordered_dict_plus = true;
                        }
                        _ => return Err(DecodeError::ForbiddenCall(offset)),
                    }
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    match self.container_mut(&target)? {
                        Container::Object { state: s @ None, .. } => *s = Some(state),
                        _ => {
                            return Err(self.malformed("BUILD on something that is not an allowed object"));
                        }
                    }
                }
                other => {
                    return Err(DecodeError::UnsupportedOpcode { opcode: other, offset });
                }
            }
        }
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.input[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::InvalidUtf8(self.pos))?;
        self.pos += end + 1;
        Ok(s.to_owned())
    }

    /// The items of a tuple that is only consumed as call arguments.
    fn tuple_items(&mut self, item: Item) -> Result<Vec<Item>> {
        let pos = self.pos;
        match item {
            Item::Ref(id) => {
                let shared = self.refs[id] > 1;
                match self.arena.get(id) {
                    Some(Slot::Pending(Container::Tuple(items))) if !shared => {
                        let items = items.clone();
                        self.refs[id] -= 1;
                        Ok(items)
                    }
                    Some(Slot::Pending(Container::Tuple(items))) => {
                        let items = items.clone();
                        for i in &items {
                            if let Item::Ref(child) = i {
                                self.refs[*child] += 1;
                            }
                        }
                        self.refs[id] -= 1;
                        Ok(items)
                    }
                    _ => Err(DecodeError::Malformed {
                        offset: pos,
                        what: "call arguments must be a tuple",
                    }),
                }
            }
            Item::Atom(_) => Err(DecodeError::Malformed {
                offset: pos,
                what: "call arguments must be a tuple",
            }),
        }
    }

    fn charge(&mut self) -> Result<()> {
        if self.budget == 0 {
            return Err(DecodeError::Limit("value count"));
        }
        self.budget -= 1;
        Ok(())
    }

    fn materialize(&mut self, item: Item, depth: usize) -> Result<Value> {
        self.charge()?;
        let id = match item {
            Item::Atom(v) => return Ok(v),
            Item::Ref(id) => id,
        };
        if depth >= MAX_DEPTH {
            return Err(DecodeError::Limit("nesting depth"));
        }
        self.refs[id] = self.refs[id].saturating_sub(1);
        let last = self.refs[id] == 0;
        let slot = std::mem::replace(&mut self.arena[id], Slot::Building);
        let value = match slot {
            Slot::Built(v) => v,
            Slot::Building => return Err(self.malformed("recursive structure")),
            Slot::Pending(container) => self.materialize_container(container, depth)?,
        };
        if last {
            Ok(value)
        } else {
            self.charge_tree(&value)?;
            self.arena[id] = Slot::Built(value.clone());
            Ok(value)
        }
    }

    /// Charges the budget for a copy of a shared container.
    fn charge_tree(&mut self, v: &Value) -> Result<()> {
        let Some(n) = count_values(v, self.budget) else {
            return Err(DecodeError::Limit("value count"));
        };
        self.budget -= n;
        Ok(())
    }

    fn materialize_all(&mut self, items: Vec<Item>, depth: usize) -> Result<Vec<Value>> {
        items.into_iter().map(|i| self.materialize(i, depth + 1)).collect()
    }

    fn materialize_container(&mut self, c: Container, depth: usize) -> Result<Value> {
        Ok(match c {
            Container::List(items) => Value::List(self.materialize_all(items, depth)?),
            Container::Tuple(items) => Value::Tuple(self.materialize_all(items, depth)?),
            Container::Dict(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (k, v) in items {
                    let k = self.materialize(k, depth + 1)?;
                    let v = self.materialize(v, depth + 1)?;
                    out.push((k, v));
                }
                Value::Dict(out)
            }
            Container::Object { class, args, state } => {
                let args = self.materialize_all(args, depth)?;
                let state = match state {
                    Some(s) => Some(self.materialize(s, depth + 1)?),
                    None => None,
                };
                Value::Object(Box::new(Object { class, args, state }))
            }
        })
    }
}

/// Counts the values in a tree, giving up once past `limit` so that a
/// hostile tree is not walked in full.
fn count_values(v: &Value, limit: usize) -> Option<usize> {
    let mut n = 1usize;
    let add = |child: &Value, n: &mut usize| -> Option<()> {
        *n += count_values(child, limit.checked_sub(*n)?)?;
        (*n <= limit).then_some(())
    };
    match v {
        Value::List(items) | Value::Tuple(items) => items.iter().try_for_each(|c| add(c, &mut n))?,
        Value::Dict(items) => items.iter().try_for_each(|(k, c)| {
            add(k, &mut n)?;
            add(c, &mut n)
        })?,
        Value::Object(o) => {
            o.args.iter().try_for_each(|c| add(c, &mut n))?;
            if let Some(state) = &o.state {
                add(state, &mut n)?;
            }
        }
        _ => {}
    }
    (n <= limit).then_some(n)
}

/// Turns LONG1/LONG4 payload bytes into an int, small when it fits.
fn int_from_le(raw: &[u8]) -> Value {
    if raw.is_empty() {
        return Value::Int(0);
    }
    if raw.len() <= 8 {
        let negative = raw[raw.len() - 1] & 0x80 != 0;
        let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
        a[..raw.len()].copy_from_slice(raw);
        return Value::Int(i64::from_le_bytes(a));
    }
    let trimmed = super::minimal_twos_complement(raw);
    if trimmed.len() <= 8 {
        return int_from_le(&trimmed);
    }
    Value::BigInt(Arc::from(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::{dict, encode};

    /// `run` alone, without the one-pass path in front of it.
    fn decode_general(input: &[u8]) -> Result<Value> {
        let mut machine = Machine::new(input, Allow::Data);
        let top = machine.run()?;
        machine.materialize(top, 0)
    }

    fn direct(input: &[u8]) -> Option<Value> {
        Machine::new(input, Allow::Data).run_direct()
    }

    #[test]
    fn one_pass_and_general_decoders_agree() {
        let node = dict([
            ("name", Value::str("Cube")),
            (
                "location",
                Value::List(vec![Value::Float(1.5), Value::Float(-0.0), Value::Int(-7)]),
            ),
            ("vertices", dict([("co", Value::bytes(&[1, 2, 3, 4, 5]))])),
            (
                "slots",
                Value::List(vec![
                    Value::Tuple(vec![Value::str("uuid"), Value::str("name")]),
                    Value::Tuple(vec![Value::str("uuid"), Value::None]),
                ]),
            ),
            (
                "flags",
                Value::Tuple(vec![Value::Bool(true), Value::Bool(false), Value::Int(70_000)]),
            ),
            ("big", Value::Int(i64::MAX)),
            ("empty", Value::Tuple(Vec::new())),
        ]);
        let raw = encode(&node);
        assert_eq!(direct(&raw).as_ref(), Some(&node), "the one-pass path takes plain data");
        assert_eq!(decode_general(&raw), Ok(node));
        // DUP, POP and POP_MARK on atoms, by hand: [1, 1] with debris popped.
        let p = b"\x80\x04]\x94(K\x012K\x09K\x08\x30(K\x05\x31e.";
        let want = Value::List(vec![Value::Int(1), Value::Int(1), Value::Int(9)]);
        assert_eq!(direct(p), Some(want.clone()));
        assert_eq!(decode_general(p), Ok(want));
    }

    #[test]
    fn shared_containers_and_classes_go_to_the_general_decoder() {
        // x = [1, 2]; pickle.dumps([x, x], protocol=4): x is fetched twice.
        let shared = b"\x80\x04]\x94(]\x94(K\x01K\x02eh\x01e.";
        assert_eq!(direct(shared), None);
        let opcode =
            b"\x80\x04\x8c\x0fdeepdiff.helper\x8c\x06Opcode\x93(\x8c\x07replaceK\x00K\x01K\x00K\x01N]\x94K\x05at\x81.";
        assert_eq!(direct(opcode), None);
    }
}
