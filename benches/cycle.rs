//! Whole cycles of `assimd experiment` (truth step, the network's messages encoded and decoded as
//! the daemon would, ensemble forecast, analysis, scores): the assimd side of the comparison with
//! DAPPER's LETKF in `docs/benchmarks.md` (`scripts/bench-dapper` runs both side by side). Run
//! with `RAYON_NUM_THREADS=1` for the single-threaded figure.

use assimd::experiment::{run, ExperimentFile};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::Path;

/// Cycles per measured run.
const CYCLES: usize = 200;

fn cycles(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let file = ExperimentFile::load(&root.join("configs/experiments/l96-full-letkf.toml")).unwrap();
    let mut group = c.benchmark_group("cycle");
    group.throughput(Throughput::Elements(CYCLES as u64));
    group.sample_size(20);
    for stride in [1, 2, 4] {
        let mut spec = file.spec().unwrap();
        spec.cycles = CYCLES;
        spec.burn_in = Some(0);
        spec.filters.letkf.weight_stride = stride;
        group.bench_function(format!("l96-full-N20-letkf-stride{stride}"), |b| {
            b.iter(|| run(&spec).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, cycles);
criterion_main!(benches);
