//! One score-filter analysis with the shipped experiment files' settings (issue 5): qg2l
//! `stations+satellite` with N = 16 (the benchmark) and 32 (the daemon's), l96 `full` with N = 20 and the long
//! window with the learned prior at N = 20 (issue 16).
//! Needs ORT_DYLIB_PATH (`source scripts/setup.sh`). Network evaluations per member per analysis:
//! qg2l: 1 encoder + (S-1) × (denoiser + decoder + denoiser_vjp) + 1 decoder, plus one conditioner
//! call and one encoder batch of the background per cycle; S = 4 levels, no corrections. Before
//! timing, each case prints the evaluations of one analysis as the bundle counted them
//! ([`assimd_models::bundle::evaluations`]): calls and batch rows per graph, and rows per member.

use assimd::experiment::ExperimentFile;
use assimd_filter::obs::ObsBatch;
use assimd_filter::Ensemble;
use assimd_models::testbed::Testbed;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn bench_file(c: &mut Criterion, file: &str, members: usize, samples: usize) {
    let root = env!("CARGO_MANIFEST_DIR");
    std::env::set_current_dir(root).unwrap();
    let mut spec = ExperimentFile::load(std::path::Path::new(file))
        .unwrap()
        .spec()
        .unwrap();
    spec.members = members;
    let tb = Testbed::new(spec.testbed.name);
    let analysis = assimd::filters::build_filter(spec.filter, &spec.filters, &tb)
        .unwrap()
        .expect("a score filter")
        .analysis;
    let network = tb.network(spec.testbed.network).unwrap();
    let truth = tb.initial_truth(1);
    // A background near the truth, as in a cycled run: truth + 0.3 climatological std.
    let std = tb
        .climatology()
        .std_state(truth.len() / tb.space.fields.len());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let members_v: Vec<Vec<f64>> = (0..members)
        .map(|_| {
            truth
                .iter()
                .zip(&std)
                .map(|(x, s)| {
                    x + 0.3
                        * s
                        * <rand_distr::StandardNormal as rand_distr::Distribution<f64>>::sample(
                            &rand_distr::StandardNormal,
                            &mut rng,
                        )
                })
                .collect()
        })
        .collect();
    let ens = Ensemble::from_members(members_v).unwrap();
    let (obs, _) = network.observe(&tb.space, &truth, 1, &mut rng);
    let batch = ObsBatch::new(&tb.space, obs).unwrap();
    let name = std::path::Path::new(file)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .to_string();
    // Network evaluations of one analysis, as counted by the bundle's sessions.
    let before = assimd_models::bundle::evaluations();
    analysis
        .analyse(&mut ens.clone(), &batch, &mut rng)
        .unwrap();
    let after = assimd_models::bundle::evaluations();
    let mut line = Vec::new();
    let mut per_member = 0.0;
    for (graph, a) in &after {
        let b = before.get(graph).copied().unwrap_or_default();
        let (calls, rows) = (a.calls - b.calls, a.rows - b.rows);
        if calls > 0 {
            per_member += rows as f64 / members as f64;
            line.push(format!("{graph} {calls} calls / {rows} rows"));
        }
    }
    println!(
        "{name} N = {members}, m = {} observations: {:.1} network evaluations per member ({})",
        batch.len(),
        per_member,
        line.join(", ")
    );
    let mut group = c.benchmark_group("score_analysis");
    group.sample_size(samples);
    group.bench_function(format!("{name}-N{members}"), |b| {
        b.iter_batched(
            || ens.clone(),
            |mut e| analysis.analyse(&mut e, &batch, &mut rng).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_file(
        c,
        "configs/experiments/qg2l-stations+satellite-score.toml",
        16,
        10,
    );
    // The daemon's qg2l ensemble size (configs/tuned.toml: members = 32).
    bench_file(
        c,
        "configs/experiments/qg2l-stations+satellite-score.toml",
        32,
        10,
    );
    bench_file(c, "configs/experiments/l96-full-score.toml", 20, 20);
    // Issue 16's long window: the learned prior l96-long, 16 levels from the LETKF start (one LETKF
    // analysis, one conditioner call, then 15 × (denoiser + denoiser_vjp) of batch N).
    bench_file(
        c,
        "configs/experiments/l96-sparse-r0.5-dt0.4-n20-score.toml",
        20,
        10,
    );
}

criterion_group!(score_benches, benches);
criterion_main!(score_benches);
