//! Differential test of server-side delta application: cases made by the
//! real deepdiff (8.1.1 as the add-on's clients run it, 5.7.0 as upstream
//! pins it) by the project's generator, each checked against Python's own
//! `base + Delta(delta)`, value for value, types included; where Python
//! aborts, the server must abort too.

use std::path::{Path, PathBuf};
use std::process::Command;

use replication_server::delta::apply_delta;
use replication_server::pickle::{self, Allow};

/// Cases per deepdiff version and run: over 10,000 in all.
const CASES_PER_VERSION: usize = 5_500;

fn venv_python(stack: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv")
        .join(stack)
        .join("bin/python")
}

fn generate(stack: &str, out: &Path, seed: u64) -> String {
    let python = venv_python(stack);
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-venvs.sh (the test command does)",
        python.display()
    );
    let _ = std::fs::remove_dir_all(out);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/delta_cases.py");
    let output = Command::new(python)
        .arg(script)
        .arg(out)
        .arg(CASES_PER_VERSION.to_string())
        .arg(seed.to_string())
        .output()
        .expect("generator runs");
    assert!(
        output.status.success(),
        "generator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

struct Tally {
    cases: usize,
    aborts: usize,
    failures: Vec<String>,
}

fn check_dir(dir: &Path) -> Tally {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".delta.pkl").map(str::to_owned))
        .collect();
    ids.sort();
    let mut t = Tally {
        cases: 0,
        aborts: 0,
        failures: Vec::new(),
    };
    for id in ids {
        let read = |ext: &str| std::fs::read(dir.join(format!("{id}.{ext}")));
        let base = pickle::decode(&read("base.pkl").unwrap(), Allow::Data).unwrap();
        let delta = read("delta.pkl").unwrap();
        let expected = read("result.pkl")
            .ok()
            .map(|r| pickle::decode(&r, Allow::Data).unwrap());
        let mut log = Vec::new();
        let mut value = base.clone();
        let got = apply_delta(&mut value, &delta, &mut log).map(|()| value.clone());
        t.cases += 1;
        match (&got, &expected) {
            (Ok(v), Some(e)) if v == e => {}
            // An abort leaves the node exactly as it was.
            (Err(_), None) if value == base => t.aborts += 1,
            _ => t.failures.push(format!(
                "{}/{id}: ours {:?}{}, Python {}",
                dir.display(),
                got.as_ref().map(|_| "a value that differs").map_err(|e| e.to_string()),
                if got.is_err() && value != base {
                    " leaving the node changed"
                } else {
                    ""
                },
                if expected.is_some() { "applied it" } else { "aborted" }
            )),
        }
    }
    t
}

#[test]
fn server_applies_deltas_exactly_as_python_does() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("delta-cases");
    let seed = std::env::var("DELTA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122u64);
    let mut total = Tally {
        cases: 0,
        aborts: 0,
        failures: Vec::new(),
    };
    for (stack, offset) in [("addon", 0), ("upstream", 1)] {
        let dir = root.join(stack);
        let summary = generate(stack, &dir, seed + offset);
        let t = check_dir(&dir);
        eprintln!(
            "{stack}: {summary}; checked {} cases, {} aborts agreed",
            t.cases, t.aborts
        );
        total.cases += t.cases;
        total.aborts += t.aborts;
        total.failures.extend(t.failures);
    }
    assert!(total.cases >= 10_000, "only {} cases", total.cases);
    assert!(
        total.failures.is_empty(),
        "{} of {} cases disagree with Python:\n{}",
        total.failures.len(),
        total.cases,
        total.failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "{} passed, 0 failed: delta cases agreeing with Python (both deepdiff versions)",
        total.cases
    );
}
