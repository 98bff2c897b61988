//! # Model bundles
//!
//! A bundle (DESIGN §5) is a directory `models/zoo/<name>/` holding a learned prior for the score
//! filter: a `manifest.toml`, the ONNX graphs it names (`denoiser.onnx`, `denoiser_vjp.onnx`,
//! optionally `conditioner.onnx`, `encoder.onnx`, `decoder.onnx`, `forecast.onnx`) and `fixtures/`
//! saved at export. [`Bundle::load`] opens and checks one; [`Bundle::condition`] turns a cycle's
//! background ensemble into a [`ConditionedDenoiser`], the
//! [`Denoiser`](assimd_filter::score::Denoiser) the score filter samples with.
//!
//! | module | what |
//! |---|---|
//! | `manifest.rs` | `manifest.toml`: parsing and validation |
//! | `runtime.rs` | ONNX Runtime: the library, execution providers, one checked session per graph |
//! | `loaded.rs` | [`Bundle`]: load a directory, run a graph by name |
//! | `conditioned.rs` | [`Bundle::condition`] and [`ConditionedDenoiser`]: conditioning on the background |
//! | `latent.rs` | the encoder/decoder of latent bundles |
//! | `fixtures.rs` | [`Bundle::check_fixtures`]: parity of every graph with its export |
//! | `npy.rs` | [`read_npy_f32`]: the fixtures' file format |
//! | `error.rs` | [`BundleError`] |

mod conditioned;
mod error;
mod fixtures;
mod latent;
mod loaded;
mod manifest;
mod npy;
mod runtime;

pub use conditioned::ConditionedDenoiser;
pub use error::BundleError;
pub use fixtures::FixtureCheck;
pub use loaded::Bundle;
pub use manifest::{
    Conditioning, ConditioningInput, Dim, EnsembleGaussianSpec, FixturesSpec, GraphSpec, Grid,
    Latent, Manifest, Noise, Normalisation, KNOWN_GRAPHS,
};
pub use npy::{read_npy_f32, NpyRows};
pub use runtime::{
    evaluations, BundleOptions, Device, Evaluations, TensorF32, ORT_FIX, ORT_LIBRARY_NAME,
};
