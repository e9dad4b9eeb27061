//! Snapshot serialise+write and read+verify of sessions of 10,000 nodes
//! (2 KB each, Blender-like) and of 1 GB (1,000 nodes of 1 MB).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use replication_server::store::snapshot;
use replication_server::store::{NodeImage, SessionImage};
use serde_bytes::ByteBuf;

fn session(nodes: usize, node_bytes: usize) -> SessionImage {
    SessionImage {
        saved_at: 0.0,
        reason: "bench".into(),
        initialized: true,
        nodes: (0..nodes)
            .map(|i| NodeImage {
                uuid: format!("{i:08x}-0000-4000-8000-000000000000"),
                owner: "COMMON".into(),
                dependencies: Some(vec![format!("{:08x}-0000-4000-8000-000000000000", i / 2)]),
                raw_dependencies: ByteBuf::from(vec![0x80, 4, b']', 0x94, b'.']),
                raw_data: ByteBuf::from((0..node_bytes).map(|b| (b * 31 + i) as u8).collect::<Vec<u8>>()),
            })
            .collect(),
        retained: Vec::new(),
        journal_generation: 1,
    }
}

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-snapshot");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bench_snapshot(c: &mut Criterion) {
    let path = dir().join("session_snapshot.msgpack");
    let small = session(10_000, 2_048);
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    group.bench_function("write 10k nodes (20 MB)", |b| {
        b.iter(|| snapshot::write_atomic(&path, &small).unwrap())
    });
    snapshot::write_atomic(&path, &small).unwrap();
    group.bench_function("read 10k nodes (20 MB)", |b| b.iter(|| snapshot::read(&path).unwrap()));
    group.finish();

    // One measured round of a 1 GB session: criterion's repeated samples
    // would take minutes.
    let big = session(1_000, 1 << 20);
    let t = Instant::now();
    let bytes = snapshot::write_atomic(&path, &big).unwrap();
    let write = t.elapsed();
    drop(big);
    let t = Instant::now();
    let back = snapshot::read(&path).unwrap();
    let read = t.elapsed();
    assert_eq!(back.nodes.len(), 1_000);
    println!(
        "snapshot 1 GB session ({} MB on disk): write {:.2} s, read+verify {:.2} s",
        bytes >> 20,
        write.as_secs_f64(),
        read.as_secs_f64()
    );
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, bench_snapshot);
criterion_main!(benches);
