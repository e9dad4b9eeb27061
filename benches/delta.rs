//! A commit's delta applied to a node as each server does it, on
//! Blender-shaped cases: ours decodes the delta and patches the stored value
//! in place (all or nothing); Python's replication computes
//! `node.data + Delta(raw)` (deepdiff 8.1.1 copies the data, then patches
//! the copy), measured through the add-on venv when it is there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use replication_server::delta::apply_delta;
use replication_server::pickle::{self, Allow, Value};

const CASES: usize = 300;
/// Turns of the ratio measurement, and rounds over all cases per turn.
const RATIO_TURNS: usize = 3;
const PY_ROUNDS: usize = 10;
const OUR_ROUNDS: usize = 100;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_cases(dir: &Path) -> Vec<(Value, Vec<u8>)> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".delta.pkl").map(str::to_owned))
        .collect();
    ids.sort();
    ids.iter()
        .filter(|id| dir.join(format!("{id}.result.pkl")).exists())
        .map(|id| {
            let base = std::fs::read(dir.join(format!("{id}.base.pkl"))).unwrap();
            let delta = std::fs::read(dir.join(format!("{id}.delta.pkl"))).unwrap();
            (pickle::decode(&base, Allow::Data).unwrap(), delta)
        })
        .collect()
}

const PY_TIMER: &str = r#"
import glob, pickle, sys, time
from deepdiff import Delta
cases = []
for d in sorted(glob.glob(sys.argv[1] + '/*.delta.pkl')):
    r = d[:-len('.delta.pkl')] + '.result.pkl'
    try:
        open(r, 'rb').close()
    except OSError:
        continue
    cases.append((pickle.loads(open(d[:-len('.delta.pkl')] + '.base.pkl', 'rb').read()), open(d, 'rb').read()))
best = None
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    for base, raw in cases:
        base + Delta(raw)
    el = time.perf_counter() - t
    best = el if best is None or el < best else best
print(best / len(cases) * 1e6)
"#;

fn bench_delta(c: &mut Criterion) {
    let python = root().join(".venv/addon/bin/python");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-delta-cases");
    if !python.exists() {
        eprintln!("skipping: {} missing (run scripts/setup-venvs.sh)", python.display());
        return;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new(&python)
        .arg(root().join("tests/support/delta_cases.py"))
        .arg(&dir)
        .arg(CASES.to_string())
        .arg("5")
        .arg("blender")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "case generator failed");
    let cases = load_cases(&dir);
    let n = cases.len();
    let mut group = c.benchmark_group("delta");
    group.measurement_time(Duration::from_secs(5));
    let fresh = || cases.iter().map(|(base, _)| base.clone()).collect::<Vec<_>>();
    group.bench_function(format!("decode+apply {n} blender-shaped cases"), |b| {
        b.iter_batched_ref(
            fresh,
            |values| {
                for (value, (_, raw)) in values.iter_mut().zip(&cases) {
                    let mut log = Vec::new();
                    let _ = std::hint::black_box(apply_delta(value, raw, &mut log));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    // Both sides take their best round, in alternating turns: this shared
    // machine's noise comes and goes, and the best round is the one it
    // disturbed least.
    let mut py_us = f64::INFINITY;
    let mut best = Duration::MAX;
    for _ in 0..RATIO_TURNS {
        let py = Command::new(&python)
            .arg("-c")
            .arg(PY_TIMER)
            .arg(&dir)
            .arg(PY_ROUNDS.to_string())
            .output()
            .unwrap();
        let turn: f64 = String::from_utf8_lossy(&py.stdout).trim().parse().unwrap_or(f64::NAN);
        py_us = py_us.min(turn);
        for _ in 0..OUR_ROUNDS {
            let mut values = fresh();
            let start = std::time::Instant::now();
            for (value, (_, raw)) in values.iter_mut().zip(&cases) {
                let mut log = Vec::new();
                let _ = std::hint::black_box(apply_delta(value, raw, &mut log));
            }
            best = best.min(start.elapsed());
        }
    }
    let ours_us = best.as_secs_f64() * 1e6 / n as f64;
    println!(
        "delta decode+apply per case: ours {ours_us:.1} us, Python deepdiff 8.1.1 {py_us:.1} us, ratio {:.1}x",
        py_us / ours_us
    );
}

criterion_group!(benches, bench_delta);
criterion_main!(benches);
