//! Quality control's cost per cycle: the ingest checks of one station report (topic binding,
//! schema, values) against plain decoding, and a cycle's divergence guard plus screening
//! (background check, station monitor) on l96 `full` (N = 20) and qg2l stations+satellite
//! (N = 32), next to which the LETKF analysis of `benches/enkf.rs` is the scale.

use assimd::qc::{gather, Qc, QcSettings};
use assimd::simulate::Simulator;
use assimd::wire::{self, Checks, Limits};
use assimd_filter::obs::ObsBatch;
use assimd_filter::qc::MonitorState;
use assimd_filter::Ensemble;
use assimd_models::testbed::{NetworkKind, Testbed, TestbedKind};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn ingest(c: &mut Criterion) {
    let tb = Testbed::new(TestbedKind::L96);
    let mut sim = Simulator::new(
        tb.clone(),
        tb.network(NetworkKind::StationsSatellite).unwrap(),
        1,
    );
    sim.step();
    let m = sim
        .messages()
        .into_iter()
        .find(|m| m.topic.starts_with("obs/station/"))
        .unwrap();
    let bytes = serde_json::to_vec(&m.feature).unwrap();
    let checks = Checks::defaults(&tb.space);
    let mut group = c.benchmark_group("ingest");
    group.bench_function("decode/station-report", |b| {
        b.iter(|| wire::decode(&bytes, &tb.space, None, &Limits::default()).unwrap())
    });
    group.bench_function("checks/station-report", |b| {
        b.iter(|| {
            checks
                .decode(&bytes, Some(&m.topic), &tb.space, None)
                .unwrap()
        })
    });
    group.finish();
}

fn screening(c: &mut Criterion) {
    let mut group = c.benchmark_group("qc");
    for (kind, net, n, name) in [
        (TestbedKind::L96, NetworkKind::Full, 20, "l96-full-N20"),
        (
            TestbedKind::Qg2l,
            NetworkKind::StationsSatellite,
            32,
            "qg2l-s+s-N32",
        ),
    ] {
        let tb = Testbed::new(kind);
        let network = tb.network(net).unwrap();
        let mut sim = Simulator::new(tb.clone(), network, 1);
        sim.step();
        let checks = Checks::defaults(&tb.space);
        let decoded: Vec<_> = sim
            .messages()
            .iter()
            .map(|m| {
                checks
                    .validate(&m.feature, Some(&m.topic), &tb.space, None)
                    .unwrap()
            })
            .collect();
        let with_station: Vec<(String, Option<String>, Vec<_>)> = decoded
            .into_iter()
            .map(|v| {
                let st = match &v.source {
                    wire::Source::Station(s) => Some(s.clone()),
                    wire::Source::Satellite(..) => None,
                };
                (v.id, st, v.obs)
            })
            .collect();
        let withheld: Vec<String> = sim
            .network
            .stations
            .iter()
            .filter(|s| s.withheld)
            .map(|s| s.id.clone())
            .collect();
        let (obs, origins, _) = gather(
            with_station
                .iter()
                .map(|(i, s, o)| (i.as_str(), s.as_deref(), o.as_slice())),
            &|s| withheld.iter().any(|w| w == s),
        );
        let all = ObsBatch::new(&tb.space, obs).unwrap();
        let ens = Ensemble::from_members(tb.climatological_draws(n, 2)).unwrap();
        let (mut qc, _) = Qc::new(QcSettings::default(), MonitorState::default());
        let clim = tb.climatology();
        qc.climatology = Some((clim.mean, clim.std));
        group.bench_function(format!("divergence-guard/{name}"), |b| {
            b.iter(|| qc.diverged(&ens, &all, &origins))
        });
        group.bench_function(format!("screen/{name}"), |b| {
            b.iter_batched(
                || qc.clone(),
                |mut q| q.screen(1, &tb.space, &all, &origins, &ens).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, ingest, screening);
criterion_main!(benches);
