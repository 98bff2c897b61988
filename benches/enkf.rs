//! One LETKF analysis (and the global ETKF / stochastic EnKF on l96), with the tuned settings of
//! configs/experiments/.

use assimd_filter::enkf::{Adaptive, Etkf, Inflation, Letkf, StochasticEnkf};
use assimd_filter::obs::ObsBatch;
use assimd_filter::{Analysis, Ensemble};
use assimd_models::testbed::{NetworkKind, Testbed, TestbedKind};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn setup(kind: TestbedKind, net: NetworkKind, n: usize) -> (Testbed, Ensemble, ObsBatch) {
    let tb = Testbed::new(kind);
    let network = tb.network(net).unwrap();
    let truth = tb.initial_truth(1);
    let ens = Ensemble::from_members(tb.climatological_draws(n, 2)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (obs, _) = network.observe(&tb.space, &truth, 1, &mut rng);
    let batch = ObsBatch::new(&tb.space, obs).unwrap();
    (tb, ens, batch)
}

fn run(
    c: &mut Criterion,
    name: &str,
    f: &dyn Analysis,
    ens: &Ensemble,
    batch: &ObsBatch,
    samples: usize,
) {
    let mut group = c.benchmark_group("analysis");
    group.sample_size(samples);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    group.bench_function(name, |b| {
        b.iter_batched(
            || ens.clone(),
            |mut e| f.analyse(&mut e, batch, &mut rng).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn analyses(c: &mut Criterion) {
    let infl = Inflation::new(1.02, 0.0).unwrap();
    let (tb, ens, batch) = setup(TestbedKind::L96, NetworkKind::Full, 20);
    run(
        c,
        "letkf/l96-full-N20",
        &Letkf::new(&tb.space, 8500.0, infl).unwrap(),
        &ens,
        &batch,
        100,
    );
    run(
        c,
        "letkf-enkf-n/l96-full-N20",
        &Letkf::new(&tb.space, 8500.0, Inflation::default())
            .unwrap()
            .with_adaptive(Adaptive::FiniteSize { xn: 1.0 })
            .unwrap(),
        &ens,
        &batch,
        100,
    );
    run(
        c,
        "etkf/l96-full-N20",
        &Etkf { inflation: infl },
        &ens,
        &batch,
        100,
    );
    let (_, ens40, _) = setup(TestbedKind::L96, NetworkKind::Full, 40);
    run(
        c,
        "enkf/l96-full-N40",
        &StochasticEnkf { inflation: infl },
        &ens40,
        &batch,
        100,
    );
    let (tb, ens, batch) = setup(TestbedKind::Qg2l, NetworkKind::StationsSatellite, 32);
    let rtps = Inflation::new(1.0, 0.5).unwrap();
    let letkf = Letkf::new(&tb.space, 100.0, rtps).unwrap();
    run(
        c,
        "letkf/qg2l-stations+satellite-N32-stride1",
        &letkf,
        &ens,
        &batch,
        10,
    );
    run(
        c,
        "letkf/qg2l-stations+satellite-N32-stride2",
        &letkf.with_stride(2).unwrap(),
        &ens,
        &batch,
        10,
    );
}

criterion_group!(benches, analyses);
criterion_main!(benches);
