//! Protocol 4 pickle encoder producing the bytes CPython's C pickler writes
//! for the same value, including framing and memo sharing of str/bytes.

use std::collections::HashMap;

use super::value::{Object, Value};

/// CPython commits a frame once it reaches this size (`FRAME_SIZE_TARGET`);
/// a str or bytes payload at least this large bypasses framing.
const FRAME_SIZE_TARGET: usize = 64 * 1024;
/// A frame shorter than this is written without a FRAME header.
const FRAME_SIZE_MIN: usize = 4;
const FRAME_HEADER_SIZE: usize = 9;
/// Items per MARK ... APPENDS/SETITEMS batch (`BATCHSIZE`).
const BATCH_SIZE: usize = 1000;

/// Encodes a value as `pickle.dumps(value, protocol=4)` does.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut enc = Encoder::default();
    enc.out.reserve(64);
    enc.out.extend_from_slice(&[0x80, 4]);
    enc.framing = true;
    enc.save(value);
    enc.write(b".");
    enc.commit_frame();
    enc.out
}

#[derive(Hash, PartialEq, Eq)]
enum MemoKey {
    /// Identity of a shared str/bytes buffer.
    Ptr(usize),
    /// CPython's singletons are the same object wherever they appear.
    SingletonStr(u32),
    SingletonBytes(u16),
    EmptyStr,
}

#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
    framing: bool,
    frame_start: Option<usize>,
    memo: HashMap<MemoKey, u32>,
    memo_len: u32,
}

impl Encoder {
    fn write(&mut self, data: &[u8]) {
        if self.framing && self.frame_start.is_none() {
            self.frame_start = Some(self.out.len());
            self.out.extend_from_slice(&[0; FRAME_HEADER_SIZE]);
        }
        self.out.extend_from_slice(data);
    }

    fn commit_frame(&mut self) {
        let Some(start) = self.frame_start.take() else {
            return;
        };
        let len = self.out.len() - start - FRAME_HEADER_SIZE;
        if len >= FRAME_SIZE_MIN {
            self.out[start] = 0x95;
            self.out[start + 1..start + FRAME_HEADER_SIZE].copy_from_slice(&(len as u64).to_le_bytes());
        } else {
            self.out.drain(start..start + FRAME_HEADER_SIZE);
        }
    }

    fn opcode_boundary(&mut self) {
        if let Some(start) = self.frame_start
            && self.out.len() - start - FRAME_HEADER_SIZE >= FRAME_SIZE_TARGET
        {
            self.commit_frame();
        }
    }

    fn write_payload(&mut self, header: &[u8], data: &[u8]) {
        if data.len() >= FRAME_SIZE_TARGET {
            self.commit_frame();
            self.out.extend_from_slice(header);
            self.out.extend_from_slice(data);
        } else {
            self.write(header);
            self.write(data);
        }
    }

    /// A str or bytes payload with the shortest length header: 1, 4 or 8
    /// bytes (`ops` are the opcodes for each).
    fn write_sized(&mut self, ops: [u8; 3], data: &[u8]) {
        let n = data.len();
        if n < 256 {
            self.write_payload(&[ops[0], n as u8], data);
        } else if let Ok(n32) = u32::try_from(n) {
            let mut h = [ops[1], 0, 0, 0, 0];
            h[1..].copy_from_slice(&n32.to_le_bytes());
            self.write_payload(&h, data);
        } else {
            let mut h = [ops[2], 0, 0, 0, 0, 0, 0, 0, 0];
            h[1..].copy_from_slice(&(n as u64).to_le_bytes());
            self.write_payload(&h, data);
        }
    }

    fn memoize(&mut self, key: Option<MemoKey>) {
        self.write(&[0x94]);
        if let Some(key) = key {
            self.memo.insert(key, self.memo_len);
        }
        self.memo_len += 1;
    }

    /// Writes BINGET when the object was already pickled; true if so.
    fn memo_get(&mut self, key: &MemoKey) -> bool {
        let Some(&idx) = self.memo.get(key) else {
            return false;
        };
        if idx < 256 {
            self.write(&[b'h', idx as u8]);
        } else {
            let mut op = [b'j', 0, 0, 0, 0];
            op[1..].copy_from_slice(&idx.to_le_bytes());
            self.write(&op);
        }
        true
    }

    /// Like CPython, a full frame is committed before the next object is
    /// saved, never in the middle of a container's opcodes.
    fn save(&mut self, v: &Value) {
        self.opcode_boundary();
        self.save_inner(v);
    }

    fn save_inner(&mut self, v: &Value) {
        match v {
            Value::None => self.write(b"N"),
            Value::Bool(true) => self.write(&[0x88]),
            Value::Bool(false) => self.write(&[0x89]),
            Value::Int(i) => self.save_int(*i),
            Value::BigInt(raw) => self.save_long_bytes(raw),
            Value::Float(f) => {
                let mut op = [b'G', 0, 0, 0, 0, 0, 0, 0, 0];
                op[1..].copy_from_slice(&f.to_be_bytes());
                self.write(&op);
            }
            Value::Str(s) => {
                let key = str_key(s);
                if !self.memo_get(&key) {
                    self.write_sized([0x8c, b'X', 0x8d], s.as_bytes());
                    self.memoize(Some(key));
                }
            }
            Value::Bytes(b) => {
                let key = bytes_key(b);
                if !self.memo_get(&key) {
                    self.write_sized([b'C', b'B', 0x8e], b);
                    self.memoize(Some(key));
                }
            }
            Value::List(items) => {
                self.write(b"]");
                self.memoize(None);
                self.save_batched(items.len(), false, |enc, i| enc.save(&items[i]), b"a", b"e");
            }
            Value::Dict(items) => {
                self.write(b"}");
                self.memoize(None);
                self.save_batched(
                    items.len(),
                    true,
                    |enc, i| {
                        enc.save(&items[i].0);
                        enc.save(&items[i].1);
                    },
                    b"s",
                    b"u",
                );
            }
            Value::Tuple(items) => self.save_tuple(items),
            Value::Global(g) => {
                let (module, name) = g.module_and_name();
                self.save(&Value::str(module));
                self.save(&Value::str(name));
                self.write(&[0x93]);
                self.memoize(None);
            }
            Value::Object(obj) => self.save_object(obj),
        }
    }

    fn save_tuple(&mut self, items: &[Value]) {
        if items.is_empty() {
            self.write(b")");
            return;
        }
        if items.len() <= 3 {
            for item in items {
                self.save(item);
            }
            self.write(&[0x84 + items.len() as u8]);
        } else {
            self.write(b"(");
            for item in items {
                self.save(item);
            }
            self.write(b"t");
        }
        self.memoize(None);
    }

    fn save_object(&mut self, obj: &Object) {
        self.save(&Value::Global(obj.class));
        self.save_tuple(&obj.args);
        self.write(&[0x81]);
        self.memoize(None);
        if let Some(state) = &obj.state {
            self.save(state);
            self.write(b"b");
        }
    }

    /// CPython's batch_list_exact / batch_dict_exact.
    fn save_batched(
        &mut self,
        len: usize,
        is_dict: bool,
        mut save_item: impl FnMut(&mut Self, usize),
        single_op: &[u8],
        batch_op: &[u8],
    ) {
        if len == 0 {
            return;
        }
        if len == 1 {
            save_item(self, 0);
            self.write(single_op);
            return;
        }
        let mut done = 0;
        loop {
            self.write(b"(");
            let batch_end = (done + BATCH_SIZE).min(len);
            let full_batch = batch_end - done == BATCH_SIZE;
            for i in done..batch_end {
                save_item(self, i);
            }
            done = batch_end;
            self.write(batch_op);
            // A dict loop only stops after a batch shorter than BATCH_SIZE,
            // so a multiple of 1000 items ends with an empty batch.
            let more = if is_dict { full_batch } else { done < len };
            if !more {
                break;
            }
        }
    }

    fn save_int(&mut self, i: i64) {
        if (0..=0xff).contains(&i) {
            self.write(&[b'K', i as u8]);
        } else if (0..=0xffff).contains(&i) {
            let b = (i as u16).to_le_bytes();
            self.write(&[b'M', b[0], b[1]]);
        } else if i32::try_from(i).is_ok() {
            let b = (i as i32).to_le_bytes();
            self.write(&[b'J', b[0], b[1], b[2], b[3]]);
        } else {
            let raw = super::minimal_twos_complement(&i.to_le_bytes());
            self.save_long_bytes(&raw);
        }
    }

    fn save_long_bytes(&mut self, raw: &[u8]) {
        if raw.len() < 256 {
            self.write(&[0x8a, raw.len() as u8]);
        } else {
            let mut h = [0x8b, 0, 0, 0, 0];
            h[1..].copy_from_slice(&(raw.len() as u32).to_le_bytes());
            self.write(&h);
        }
        self.write(raw);
    }
}

fn str_key(s: &std::sync::Arc<str>) -> MemoKey {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (None, _) => MemoKey::EmptyStr,
        (Some(c), None) if (c as u32) < 256 => MemoKey::SingletonStr(c as u32),
        _ => MemoKey::Ptr(std::sync::Arc::as_ptr(s) as *const u8 as usize),
    }
}

fn bytes_key(b: &std::sync::Arc<[u8]>) -> MemoKey {
    match b.len() {
        0 => MemoKey::SingletonBytes(256),
        1 => MemoKey::SingletonBytes(u16::from(b[0])),
        _ => MemoKey::Ptr(std::sync::Arc::as_ptr(b) as *const u8 as usize),
    }
}
