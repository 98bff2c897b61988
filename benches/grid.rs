//! Cost against grid size (issue 17): one qg2l member's forecast over a cycle and one LETKF
//! analysis (N = 32, stations+satellite, the tuned 100 km localisation and RTPS 0.5; exact and with
//! weights every 2nd point) at 64², 128² and 256² (`Testbed::qg2l`: the 1000 km box tiled, the
//! network at the same density). Threads as `RAYON_NUM_THREADS` says (docs/benchmarks.md runs it at
//! 1 and 2).
//!
//! The larger grids' truth and ensemble are the 64² ones tiled (`qg2l::tile`): a cycle's cost does
//! not depend on the values, and 256² climatological draws would take minutes to make.

use assimd_filter::enkf::{Inflation, Letkf};
use assimd_filter::obs::ObsBatch;
use assimd_filter::{Analysis, Ensemble};
use assimd_models::qg2l::tile;
use assimd_models::testbed::{NetworkKind, Testbed, TestbedKind, QG_RESOLUTIONS};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn grid(c: &mut Criterion) {
    let base = Testbed::new(TestbedKind::Qg2l);
    let truth = base.initial_truth(1);
    let draws = base.climatological_draws(32, 2);
    for n in QG_RESOLUTIONS {
        let tb = Testbed::qg2l(n).unwrap();
        let s = tb.qg2l_scale();
        let x = tile(&truth, 64, s);
        let ens = Ensemble::from_members(draws.iter().map(|d| tile(d, 64, s)).collect()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let network = tb.network(NetworkKind::StationsSatellite).unwrap();
        let (obs, _) = network.observe(&tb.space, &x, 1, &mut rng);
        let batch = ObsBatch::new(&tb.space, obs).unwrap();

        let mut group = c.benchmark_group("grid");
        group.sample_size(10);
        let mut member = x.clone();
        group.bench_function(format!("forecast-member/qg2l-{n}"), |b| {
            b.iter(|| tb.dynamics.forecast(black_box(&mut member)))
        });
        let rtps = Inflation::new(1.0, 0.5).unwrap();
        for stride in [1, 2] {
            let letkf = Letkf::new(&tb.space, 100.0, rtps)
                .unwrap()
                .with_stride(stride)
                .unwrap();
            group.bench_function(format!("letkf-N32-stride{stride}/qg2l-{n}"), |b| {
                b.iter_batched(
                    || ens.clone(),
                    |mut e| letkf.analyse(&mut e, &batch, &mut rng).unwrap(),
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, grid);
criterion_main!(benches);
