//! The pickle codec against CPython: values CPython pickles must decode to
//! the same typed value and re-encode to the same bytes.

use std::path::PathBuf;
use std::process::Command;

use replication_server::pickle::{self, Allow, Value};

const RANDOM_CASES: usize = 3_000;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The same canonical rendering the generator writes.
fn typed(v: &Value) -> String {
    match v {
        Value::None => "N".into(),
        Value::Bool(true) => "T".into(),
        Value::Bool(false) => "F".into(),
        Value::Int(i) => format!("i{i}"),
        Value::BigInt(raw) => format!("I{}", hex(raw)),
        Value::Float(f) => format!("f{}", hex(&f.to_be_bytes())),
        Value::Str(s) => format!("s{}", hex(s.as_bytes())),
        Value::Bytes(b) => format!("b{}", hex(b)),
        Value::List(items) => format!("[{}]", items.iter().map(typed).collect::<Vec<_>>().join(",")),
        Value::Tuple(items) => format!("({})", items.iter().map(typed).collect::<Vec<_>>().join(",")),
        Value::Dict(items) => format!(
            "{{{}}}",
            items
                .iter()
                .map(|(k, v)| format!("{}:{}", typed(k), typed(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => panic!("unexpected {other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn cpython_pickles_decode_and_reencode_byte_for_byte() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pickle-cases");
    let _ = std::fs::remove_dir_all(&dir);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/pickle_cases.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&dir)
        .arg(RANDOM_CASES.to_string())
        .arg("7")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(n > RANDOM_CASES);
    let (mut exact, mut value_only) = (0, 0);
    for i in 0..n {
        let raw = std::fs::read(dir.join(format!("{i}.pkl"))).unwrap();
        let want = std::fs::read_to_string(dir.join(format!("{i}.typed"))).unwrap();
        let must_be_exact = std::fs::read_to_string(dir.join(format!("{i}.exact"))).unwrap() == "1";
        let v = pickle::decode(&raw, Allow::Data).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(typed(&v), want, "case {i}: decoded value differs");
        let again = pickle::encode(&v);
        if must_be_exact {
            if again != raw {
                let at = again
                    .iter()
                    .zip(&raw)
                    .position(|(a, b)| a != b)
                    .unwrap_or(again.len().min(raw.len()));
                panic!(
                    "case {i}: re-encoded bytes differ at byte {at} (ours {} bytes, CPython {}): ours {:?} vs {:?}",
                    again.len(),
                    raw.len(),
                    &again[at.saturating_sub(8)..(at + 8).min(again.len())],
                    &raw[at.saturating_sub(8)..(at + 8).min(raw.len())]
                );
            }
            exact += 1;
        } else {
            let back = pickle::decode(&again, Allow::Data).unwrap();
            assert_eq!(typed(&back), want, "case {i}: value round trip differs");
            value_only += 1;
        }
    }
    eprintln!("{exact} byte-exact and {value_only} value-exact round trips against CPython");
}

#[test]
fn our_pickles_load_in_cpython() {
    let v = pickle::dict([
        ("STATE", Value::str("SET")),
        (
            "DATA",
            Value::List(vec![Value::bytes(b"\x80\x04K\x02."), Value::bytes(&[7u8; 70_000])]),
        ),
        (
            "big",
            Value::BigInt(std::sync::Arc::from(&[0u8, 0, 0, 0, 0, 0, 0, 0, 1][..])),
        ),
        (
            "t",
            Value::Tuple(vec![Value::Float(1.5), Value::None, Value::Bool(true)]),
        ),
    ]);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ours.pkl");
    std::fs::write(&path, pickle::encode(&v)).unwrap();
    let check = "import pickle,sys; v=pickle.load(open(sys.argv[1],'rb')); \
                 assert v['STATE']=='SET' and v['DATA'][1]==b'\\x07'*70000 and v['big']==2**64 and v['t']==(1.5,None,True), v; \
                 assert pickle.dumps(v, protocol=4)==open(sys.argv[1],'rb').read(); print('ok')";
    let out = Command::new(python()).arg("-c").arg(check).arg(&path).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn float_text_matches_cpython_repr() {
    // str(float) is what a type change to str writes into node data.
    let script = r#"
import random, struct
r = random.Random(5)
for i in range(20000):
    k = i % 4
    if k == 0: f = struct.unpack('<f', struct.pack('<f', r.uniform(-1000, 1000)))[0]
    elif k == 1: f = r.uniform(-1e20, 1e20)
    elif k == 2: f = struct.unpack('<d', struct.pack('<Q', r.getrandbits(64)))[0]
    else: f = r.choice([1e16, 1e-5, 1e-4, 123456789012345678.0, 0.1, -0.0, 5e-324]) * r.choice([1, -1, 3])
    print(struct.pack('>d', f).hex(), repr(f))
"#;
    let out = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for line in text.lines() {
        let (hexbits, want) = line.split_once(' ').unwrap();
        let bits = u64::from_str_radix(hexbits, 16).unwrap();
        let f = f64::from_bits(bits);
        assert_eq!(replication_server::delta::repr::float_repr(f), want, "bits {hexbits}");
        n += 1;
    }
    assert_eq!(n, 20000);
}
