//! Replays a directory of delta cases (`<id>.base.pkl`, `<id>.delta.pkl`,
//! `<id>.result.pkl`, or `<id>.abort` where Python aborted) through the
//! server's delta code and reports every disagreement.
//! Usage: cargo run --release --example delta_corpus -- DIR...

use replication_server::delta::apply_delta;
use replication_server::pickle::{self, Allow};

fn main() {
    let mut total = 0;
    let mut bad = 0;
    for dir in std::env::args().skip(1) {
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .expect("readable dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".delta.pkl").map(str::to_owned))
            .collect();
        ids.sort();
        for id in ids {
            let p = |ext: &str| format!("{dir}/{id}.{ext}");
            let base = pickle::decode(&std::fs::read(p("base.pkl")).unwrap(), Allow::Data).unwrap();
            let delta = std::fs::read(p("delta.pkl")).unwrap();
            let expected = std::fs::read(p("result.pkl"))
                .ok()
                .map(|r| pickle::decode(&r, Allow::Data).unwrap());
            total += 1;
            let mut log = Vec::new();
            let mut value = base.clone();
            let got = apply_delta(&mut value, &delta, &mut log).map(|()| value.clone());
            let ok = match (&got, &expected) {
                (Ok(v), Some(e)) => v == e,
                // An abort must leave the node as it was.
                (Err(_), None) => value == base,
                _ => false,
            };
            if !ok {
                bad += 1;
                if bad <= 40 {
                    println!("MISMATCH {dir}/{id}");
                    match &got {
                        Ok(v) => println!("  ours:     {}", short(&format!("{v:?}"))),
                        Err(e) => println!("  ours:     error {e}"),
                    }
                    match &expected {
                        Some(e) => println!("  expected: {}", short(&format!("{e:?}"))),
                        None => println!("  expected: abort"),
                    }
                    println!("  log: {log:?}");
                }
            }
        }
    }
    println!("{} cases, {} disagree", total, bad);
}

fn short(s: &str) -> String {
    if s.len() > 600 {
        format!("{}...", &s[..600])
    } else {
        s.to_string()
    }
}
