//! A safe pickle codec: decodes into plain data, never executes anything,
//! and encodes with protocol 4 the way CPython does.

mod decode;
mod encode;
mod value;

pub use decode::{Allow, DecodeError, DecodeInfo, MAX_DEPTH, MAX_VALUES, decode, decode_with_info};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_execution_is_refused() {
        // pickle.dumps of os.system('true') via __reduce__, protocol 4.
        let evil = b"\x80\x04\x95\x1e\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94.";
        assert_eq!(
            decode(evil, Allow::Legacy),
            Err(DecodeError::ForbiddenGlobal("posix.system".into()))
        );
        // Text-protocol GLOBAL is checked the same way.
        assert!(matches!(
            decode(b"cos\nsystem\n(S'x'\ntR.", Allow::Delta),
            Err(DecodeError::ForbiddenGlobal(_))
        ));
    }

    #[test]
    fn deepdiff_globals_only_where_allowed() {
        let opcode =
            b"\x80\x04\x8c\x0fdeepdiff.helper\x8c\x06Opcode\x93(\x8c\x07replaceK\x00K\x01K\x00K\x01N]\x94K\x05at\x81.";
        assert!(matches!(
            decode(opcode, Allow::Data),
            Err(DecodeError::ForbiddenGlobal(_))
        ));
        let v = decode(opcode, Allow::Delta).unwrap();
        let Value::Object(obj) = v else { panic!("{v:?}") };
        assert_eq!(obj.class, Global::DeepdiffOpcode);
        assert_eq!(obj.args.len(), 7);
        assert_eq!(obj.args[6], Value::List(vec![Value::Int(5)]));
        let persid = b"\x80\x04\x8c\x0c<<NoneType>>Q.";
        assert_eq!(decode(persid, Allow::Delta), Ok(Value::Global(Global::NoneType)));
        assert!(decode(persid, Allow::Data).is_err());
        let other_pid = b"\x80\x04\x8c\x03abcQ.";
        assert!(matches!(
            decode(other_pid, Allow::Delta),
            Err(DecodeError::ForbiddenPersistentId(_))
        ));
    }

    #[test]
    fn ordered_dict_plus_becomes_a_dict() {
        let p = b"\x80\x04\x8c\x0fdeepdiff.helper\x8c\x0fOrderedDictPlus\x93)R(\x8c\x01aK\x01u.";
        assert_eq!(decode(p, Allow::Delta), Ok(dict([("a", Value::Int(1))])));
    }

    #[test]
    fn exponential_sharing_is_bounded() {
        // [x, x] nested 40 times through the memo: 2^40 values once copied.
        let mut p = vec![0x80, 4, b']', 0x94, b'0'];
        for i in 0..40u32 {
            p.extend_from_slice(&[b']', 0x94, b'(', b'j']);
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.extend_from_slice(b"e0");
        }
        p.push(b'j');
        p.extend_from_slice(&40u32.to_le_bytes());
        p.push(b'.');
        assert_eq!(decode(&p, Allow::Data), Err(DecodeError::Limit("value count")));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = vec![0x80, 4];
        p.extend(std::iter::repeat_n(b']', MAX_DEPTH + 5));
        p.extend(std::iter::repeat_n(b'a', MAX_DEPTH + 4));
        p.push(b'.');
        assert_eq!(decode(&p, Allow::Data), Err(DecodeError::Limit("nesting depth")));
    }

    #[test]
    fn broken_inputs_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80\x04",
            b"\x80\x04X\xff\xff\xff\xff",
            b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x04a.",
            b"\x80\x04h\x05.",
            b"\x80\x04(.",
            b"\x80\x04K\x01K\x02.",
            b"\x80\x04\x8c\x02\xff\xfe.",
            b"\x80\x04\x8b\xff\xff\xff\x7f.",
            b"\x80\x04}K\x01s.",
            b"\x80\x04]\x94h\x00a.",
            b"\x80\x04\x8f.",
        ];
        for c in cases {
            assert!(decode(c, Allow::Legacy).is_err(), "{c:?} should fail");
        }
    }

    #[test]
    fn memo_sees_containers_filled_after_memoize() {
        // x = [1, 2]; pickle.dumps([x, x], protocol=4)
        let p = b"\x80\x04]\x94(]\x94(K\x01K\x02eh\x01e.";
        let inner = Value::List(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(decode(p, Allow::Data), Ok(Value::List(vec![inner.clone(), inner])));
    }

    #[test]
    fn big_ints_round_trip() {
        for raw in [
            &[0u8, 0, 0, 0, 0, 0, 0, 0x80, 0][..],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff],
        ] {
            let mut p = vec![0x80, 4, 0x8a, raw.len() as u8];
            p.extend_from_slice(raw);
            p.push(b'.');
            let v = decode(&p, Allow::Data).unwrap();
            assert!(matches!(v, Value::BigInt(_)));
            let again = encode(&v);
            assert!(again.windows(raw.len()).any(|w| w == raw), "LONG1 payload kept");
            assert_eq!(decode(&again, Allow::Data), Ok(v));
        }
        assert_eq!(decode(b"\x80\x04\x8a\x02\xff\x7f.", Allow::Data), Ok(Value::Int(32767)));
    }
}
