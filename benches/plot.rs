//! The pictures' cost: one qg2l per-cycle map (truth, observations, two filters' means and
//! spreads; the daemon draws it after the commit when `[maps]` is on) and one skill history of two
//! runs over 300 cycles (`assimd plot skill`), each rendered and PNG-encoded.

use assimd::plot::{maps, skill};
use assimd::simulate::Simulator;
use assimd_filter::Ensemble;
use assimd_models::testbed::{NetworkKind, Testbed, TestbedKind};
use criterion::{criterion_group, criterion_main, Criterion};

fn pictures(c: &mut Criterion) {
    let tb = Testbed::new(TestbedKind::Qg2l);
    let mut sim = Simulator::new(
        tb.clone(),
        tb.network(NetworkKind::StationsSatellite).unwrap(),
        1,
    );
    sim.step();
    let (assimilated, withheld) = sim.observations();
    let truth = sim.truth().to_vec();
    // 20 members: the truth plus smooth perturbations of growing size.
    let members: Vec<Vec<f64>> = (0..20)
        .map(|k| {
            truth
                .iter()
                .enumerate()
                .map(|(p, v)| v + 50.0 * k as f64 * ((p * (k + 1)) as f64 * 0.01).sin())
                .collect()
        })
        .collect();
    let ens = Ensemble::from_members(members).unwrap();
    let input = maps::MapInput {
        geometry: &tb.space.geometry,
        variables: &tb.space.variables,
        cycle: 1,
        time: "2026-01-01T06:00:00Z",
        truth: Some(&truth),
        filters: vec![("letkf", &ens), ("score", &ens)],
        assimilated: &assimilated,
        withheld: &withheld,
        rejected: &assimilated[..3],
        field: 0,
        field_title: "upper-layer streamfunction ψ1 (m²/s)",
        field_limit: 5000.0,
    };
    let runs: Vec<skill::SkillRun> = (0..2)
        .map(|r| skill::SkillRun {
            label: format!("run {r}"),
            points: (1..=300u64)
                .map(|k| {
                    let x = 0.2 + 0.1 * (k as f64 * 0.1 + r as f64).sin().abs();
                    skill::SkillPoint {
                        cycle: k,
                        rmse_a_truth: x,
                        rmse_f_truth: 1.2 * x,
                        spread_a: 0.9 * x,
                        rmse_a_withheld: 1.0 + x,
                        rmse_f_withheld: 1.1 + x,
                    }
                })
                .collect(),
        })
        .collect();
    let mut group = c.benchmark_group("plot");
    group.sample_size(20);
    group.bench_function("qg2l-map/render", |b| {
        b.iter(|| maps::render(&input).unwrap())
    });
    group.bench_function("qg2l-map/render+png", |b| {
        b.iter(|| maps::render(&input).unwrap().png_bytes().unwrap())
    });
    group.bench_function("skill-300x2/render+png", |b| {
        b.iter(|| {
            skill::render(&runs, "t", true)
                .unwrap()
                .png_bytes()
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, pictures);
criterion_main!(benches);
