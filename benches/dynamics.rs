//! One model step of each testbed's dynamics.

use assimd_models::testbed::{Testbed, TestbedKind};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("model_step");
    for kind in [TestbedKind::L96, TestbedKind::Qg2l] {
        let tb = Testbed::new(kind);
        let mut x = tb.initial_truth(1);
        group.bench_function(kind.to_string(), |b| {
            b.iter(|| tb.dynamics.advance(black_box(&mut x), 1))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("model_cycle");
    group.sample_size(20);
    let tb = Testbed::new(TestbedKind::Qg2l);
    let mut x = tb.initial_truth(1);
    group.bench_function("qg2l", |b| {
        b.iter(|| tb.dynamics.forecast(black_box(&mut x)))
    });
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
