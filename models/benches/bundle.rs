//! Denoiser and VJP calls of the committed bundles through ONNX Runtime (CPU, one intra-op thread, as
//! assimd runs them) per batch size, beside the same network in PyTorch eager.
//!
//! `cargo bench -p assimd-models --bench bundle` (needs ORT_DYLIB_PATH: `source scripts/setup.sh`).
//! The PyTorch numbers come from `models/zoo/<bundle>/bench_torch.json`, written after training by
//! `python -m assimd_train.bench_torch <bundle>` on the same machine; the bench prints the ratio
//! torch / ORT per call kind and batch size.

use assimd_filter::score::Denoiser;
use assimd_filter::Ensemble;
use assimd_models::bundle::{Bundle, BundleOptions};
use assimd_models::testbed::{Testbed, TestbedKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::PathBuf;
use std::time::Instant;

const BATCHES: [usize; 3] = [1, 20, 80];

fn zoo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("zoo")
        .join(name)
}

/// A background ensemble around a testbed state: truth + small perturbations.
fn background(kind: TestbedKind, n: usize, scale: f64) -> Ensemble {
    let tb = Testbed::new(kind);
    let truth = tb.initial_truth(1);
    let std = tb
        .climatology()
        .std_state(truth.len() / tb.space.fields.len());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let members = (0..n)
        .map(|_| {
            truth
                .iter()
                .zip(&std)
                .map(|(x, s)| {
                    x + scale
                        * s
                        * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, &mut rng)
                })
                .collect()
        })
        .collect();
    Ensemble::from_members(members).unwrap()
}

fn median_seconds(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t = Vec::new();
    let end = Instant::now() + std::time::Duration::from_secs(1);
    while t.len() < 20 || Instant::now() < end {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn bench_bundle(c: &mut Criterion, name: &str, kind: TestbedKind, members: usize) {
    let dir = zoo(name);
    if !dir.join("manifest.toml").is_file() {
        eprintln!("bundle {name}: not present, skipped");
        return;
    }
    let bundle = Bundle::load(&dir, &BundleOptions::default())
        .expect("bundle loads (is ORT_DYLIB_PATH set?)");
    let ens = background(kind, members, 0.05);
    let den = bundle.condition(&ens).unwrap();
    let (d, n) = (den.dim(), den.state_dim());
    let z1 = den.encode(ens.member(0)).unwrap();
    let torch: Option<serde_json::Value> = std::fs::read_to_string(dir.join("bench_torch.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let mut g = c.benchmark_group(format!("bundle_{name}"));
    g.sample_size(20);
    let mut report = Vec::new();
    for &b in &BATCHES {
        let z: Vec<f64> = (0..b).flat_map(|_| z1.iter().copied()).collect();
        let sigma = vec![0.3; b];
        let v = vec![0.5; b * n];
        let (mut out, mut x0, mut jtv) = (vec![0.0; b * d], vec![0.0; b * n], vec![0.0; b * d]);
        g.bench_with_input(BenchmarkId::new("denoise", b), &b, |bch, _| {
            bch.iter(|| den.denoise(&z, &sigma, &mut out).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("vjp", b), &b, |bch, _| {
            bch.iter(|| den.denoise_vjp(&z, &sigma, &v, &mut x0, &mut jtv).unwrap())
        });
        let ort_den = median_seconds(|| den.denoise(&z, &sigma, &mut out).unwrap());
        let ort_vjp =
            median_seconds(|| den.denoise_vjp(&z, &sigma, &v, &mut x0, &mut jtv).unwrap());
        let t = |kind: &str| {
            torch
                .as_ref()
                .and_then(|j| j["batches"][b.to_string()][kind].as_f64())
        };
        report.push((b, ort_den, ort_vjp, t("denoise"), t("vjp")));
    }
    g.finish();
    eprintln!(
        "\n{name}: ONNX Runtime (CPU, 1 thread) vs PyTorch eager (1 thread), median per call"
    );
    eprintln!(
        "{:>5} {:>14} {:>14} {:>8} {:>14} {:>14} {:>8}",
        "B", "ORT denoise", "torch denoise", "ratio", "ORT vjp", "torch vjp", "ratio"
    );
    for (b, od, ov, td, tv) in report {
        let ms = |x: f64| format!("{:.3} ms", x * 1e3);
        let opt = |x: Option<f64>| x.map(ms).unwrap_or_else(|| "-".into());
        let ratio = |t: Option<f64>, o: f64| {
            t.map(|t| format!("{:.2}x", t / o))
                .unwrap_or_else(|| "-".into())
        };
        eprintln!(
            "{b:>5} {:>14} {:>14} {:>8} {:>14} {:>14} {:>8}",
            ms(od),
            opt(td),
            ratio(td, od),
            ms(ov),
            opt(tv),
            ratio(tv, ov)
        );
    }
}

fn benches(c: &mut Criterion) {
    bench_bundle(c, "l96", TestbedKind::L96, 20);
    bench_bundle(c, "qg2l", TestbedKind::Qg2l, 16);
}

criterion_group!(bundle_benches, benches);
criterion_main!(bundle_benches);
