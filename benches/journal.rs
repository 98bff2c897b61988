//! The journal's cost per batch: [`Store::journal_batch`] of 1,024 station reports with new ids
//! (one sled transaction) and the flush that precedes their acknowledgement, on a store that grows
//! as under a flood. `docs/benchmarks.md` ("The journal without its id tree") gives the figures and
//! the layout before (an `ids` tree read and written per message) measured the same way.

use assimd::service::store::{JournalEntry, Store};
use assimd_filter::obs::{Footprint, Modality, Observation};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};

const BATCH: usize = 1024;

fn entry(i: usize) -> JournalEntry {
    JournalEntry {
        time_ms: 1_767_247_200_000,
        station: Some(format!("B{i:07}")),
        obs: vec![Observation {
            modality: Modality::Station,
            var: 0,
            lat: 45.0,
            lon: 9.0,
            footprint: Footprint::Point,
            value: (i as f64 * 0.37).sin() * 4.0,
            sigma: 1.0,
        }],
    }
}

fn journal(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut next = 0usize;
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("1024 new station reports, transaction + flush", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let msgs: Vec<(u64, String, JournalEntry)> = (next..next + BATCH)
                    .map(|i| (1, format!("B{i:07}/2026-01-01T06:00:00Z"), entry(i)))
                    .collect();
                next += BATCH;
                let t0 = Instant::now();
                let out = store.journal_batch(&msgs, &[]).unwrap();
                store.flush().unwrap();
                spent += t0.elapsed();
                assert_eq!(out.len(), BATCH);
            }
            spent
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = journal
}
criterion_main!(benches);
