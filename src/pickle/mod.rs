//! A safe pickle codec: decodes into plain data, never executes anything,
//! and encodes with protocol 4 the way CPython does.

mod decode;
mod encode;
mod value;

pub use decode::{Allow, DecodeError, MAX_DEPTH, MAX_VALUES, decode};
pub use encode::encode;
pub use value::{BuiltinType, Global, Object, Value, dict};

/// Trims a little-endian two's complement integer to its shortest form, as
/// CPython's `encode_long` writes it.
pub(crate) fn minimal_twos_complement(raw: &[u8]) -> Vec<u8> {
    let mut v = raw.to_vec();
    while v.len() > 1 {
        let last = v[v.len() - 1];
        let prev_sign = v[v.len() - 2] & 0x80;
        if (last == 0 && prev_sign == 0) || (last == 0xff && prev_sign != 0) {
            v.pop();
        } else {
            break;
        }
    }
    v
}
