//! # Model bundles
//!
//! A bundle (DESIGN §5) is a directory `models/zoo/<name>/` with a `manifest.toml`, the ONNX graphs it
//! names (`denoiser.onnx`, `denoiser_vjp.onnx`, optionally `conditioner.onnx`, `encoder.onnx`,
//! `decoder.onnx`, `forecast.onnx`) and `fixtures/` saved at export. [`Bundle::load`] opens one and runs
//! its graphs through [`ort`] with the ONNX Runtime shared library of the PyPI wheel
//! `onnxruntime==1.31.1`; [`Bundle::condition`] turns a cycle's background ensemble into a
//! [`ConditionedDenoiser`], the [`Denoiser`] the score filter samples with.
//!
//! ## ONNX Runtime
//! `ort` is built with `load-dynamic`: the library `libonnxruntime.so.1.31.1` is loaded at run time, once
//! per process, from [`BundleOptions::ort_library`] or else the environment variable `ORT_DYLIB_PATH`
//! (`scripts/setup.sh` installs the wheel into `.venv/` and exports it). When neither is set, or the file
//! cannot be loaded, loading fails with [`BundleError::Runtime`] naming that fix. The first successful
//! initialisation wins for the whole process; later options naming another library are ignored.
//!
//! ## What is validated
//! When [`Bundle::load`] returns `Ok`, all of the following held; otherwise the error names the file
//! (manifest or graph) and what is wrong:
//! - the manifest parses, names a known testbed (`l96`, `qg2l`), a grid whose `dims` multiply to
//!   `n_points`, a noise range `0 < sigma_min < sigma_max` (finite), and a latent shape; an identity codec
//!   (pixel space) has latent shape = grid dims and no encoder/decoder graph, any other codec has both;
//! - `graphs` has `denoiser` and `denoiser_vjp` (and only known graph names); every graph is float32,
//!   has unique input/output names with a shape for each (a dimension is a positive integer or a symbol
//!   such as `B` for a dynamic one), and its file is a relative path inside the bundle;
//! - the denoiser takes `x_sigma` `[B, latent...]`, `sigma` `[B]` and exactly the conditioning inputs
//!   with the shapes given under `[conditioning.inputs]`; `denoiser_vjp` takes the same plus `v`
//!   `[B, grid...]` and returns `x0_hat` `[B, grid...]` and `vjp` `[B, latent...]`; the conditioner, present
//!   iff `conditioning.set_encoder`, outputs conditioning inputs (`features` with `feature_channels`);
//! - every graph file exists, ONNX Runtime opens it, and its inputs and outputs are exactly the
//!   manifest's names, float32, with the manifest's ranks; a dimension fixed in the manifest is fixed to
//!   the same size (or dynamic) in the graph, and one the manifest calls dynamic is dynamic in the graph.
//!
//! Fixture parity (each graph on the fixture inputs against the exported outputs) is not run at load
//! time; [`Bundle::check_fixtures`] runs it on demand.
//!
//! ## Provider selection
//! [`BundleOptions::device`] chooses CPU or CUDA. For CUDA the bundle asks ONNX Runtime whether its build
//! has the CUDA execution provider and registers `ort::ep::CUDA` with `error_on_failure`, so a failed
//! registration is seen rather than logged. When CUDA is unavailable (the CPU wheel `onnxruntime==1.31.1`
//! has no CUDA provider; a GPU needs the `onnxruntime-gpu` wheel, the CUDA 13 libraries and a driver),
//! the bundle falls back to CPU and says so in [`Bundle::provider_note`], unless
//! [`BundleOptions::strict_device`] is set, in which case loading fails with
//! [`BundleError::Provider`]. [`Bundle::provider`] reports the provider really registered: `"CPU"` or
//! `"CUDA"` (with CUDA, ONNX Runtime may still place single nodes the CUDA provider lacks on CPU).
//!
//! ## Threads
//! Each graph has one session behind a mutex (ONNX Runtime's `run` needs exclusive access in `ort`), so
//! calls on one bundle are serialised; [`BundleOptions::threads`] is the intra-op thread count of each
//! session (default 1, so that the daemon's own parallelism is not oversubscribed; 0 = ONNX Runtime's
//! default).

mod npy;

pub use npy::read_npy_f32;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::testbed::{Testbed, TestbedKind};
use assimd_filter::score::{Denoiser, EnsembleGaussianPrior};
use assimd_filter::{Ensemble, FilterError};
use nalgebra::{DMatrix, DVector};
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use serde::Deserialize;

/// File name of the ONNX Runtime library this crate is built against (`ort` API 31).
pub const ORT_LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";

/// What to do when ONNX Runtime cannot be found: part of every [`BundleError::Runtime`] message.
pub const ORT_FIX: &str = "set ORT_DYLIB_PATH to libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel \
(site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1), or run scripts/setup.sh, which installs it into .venv/ and exports ORT_DYLIB_PATH";

/// Graph names a manifest may use.
pub const KNOWN_GRAPHS: [&str; 6] = [
    "conditioner",
    "denoiser",
    "denoiser_vjp",
    "encoder",
    "decoder",
    "forecast",
];

/// Everything that can go wrong with a bundle. Messages name the file concerned and the fix when
/// there is one. (`ort` errors are not `Send`/`Sync`; they are kept as strings.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// ONNX Runtime could not be initialised.
    #[error("ONNX Runtime is not available: {0}")]
    Runtime(String),
    /// A file could not be read.
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// The manifest does not parse or is inconsistent.
    #[error("{}: invalid manifest: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    /// A graph file is missing, corrupt, or disagrees with the manifest.
    #[error("{}: graph `{graph}`: {message}", path.display())]
    Graph {
        path: PathBuf,
        graph: String,
        message: String,
    },
    /// The requested execution provider is unavailable and `strict_device` was set.
    #[error("execution provider: {0}")]
    Provider(String),
    /// A fixture file is unreadable or inconsistent.
    #[error("{}: fixture: {message}", path.display())]
    Fixture { path: PathBuf, message: String },
    /// Inputs given to a graph do not match its manifest entry.
    #[error("graph `{graph}`: {message}")]
    Input { graph: String, message: String },
    /// ONNX Runtime failed while running a graph.
    #[error("graph `{graph}` ({}): run failed: {message}", path.display())]
    Run {
        path: PathBuf,
        graph: String,
        message: String,
    },
    /// The bundle lacks what an operation needs (e.g. a latent-space bundle asked for pixel-space use).
    #[error("bundle `{bundle}`: {message}")]
    Unsupported { bundle: String, message: String },
}

// ---------------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------------

/// One dimension of a graph's input or output in the manifest: fixed (`"40"`) or dynamic (`"B"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawDim")]
pub enum Dim {
    Fixed(usize),
    Symbol(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDim {
    Int(i64),
    Str(String),
}

impl TryFrom<RawDim> for Dim {
    type Error = String;
    fn try_from(raw: RawDim) -> Result<Self, String> {
        match raw {
            RawDim::Int(n) if n > 0 => Ok(Dim::Fixed(n as usize)),
            RawDim::Int(n) => Err(format!("dimension {n} is not positive")),
            RawDim::Str(s) => {
                let s = s.trim().to_string();
                if let Ok(n) = s.parse::<i64>() {
                    return Dim::try_from(RawDim::Int(n));
                }
                if s.is_empty()
                    || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || s.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(format!(
                        "dimension {s:?} is neither a positive integer nor a symbol like \"B\""
                    ));
                }
                Ok(Dim::Symbol(s))
            }
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => write!(f, "{s}"),
        }
    }
}

fn show_shape(shape: &[Dim]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(Dim::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `manifest.toml` of a bundle (the fields the runtime uses; provenance and quality tables are kept in
/// the file and ignored here).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub testbed: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub git_commit: String,
    #[serde(default)]
    pub variables: Vec<String>,
    pub grid: Grid,
    pub normalisation: Normalisation,
    pub latent: Latent,
    pub noise: Noise,
    pub conditioning: Conditioning,
    pub graphs: BTreeMap<String, GraphSpec>,
    #[serde(default)]
    pub fixtures: Option<FixturesSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Grid {
    pub n_points: usize,
    #[serde(default)]
    pub geometry: String,
    pub dims: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Normalisation {
    pub space: String,
    /// `"identity ..."` for pixel-space bundles.
    pub codec: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Latent {
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Noise {
    pub sigma_min: f64,
    pub sigma_max: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Conditioning {
    pub set_encoder: bool,
    #[serde(default)]
    pub feature_channels: usize,
    pub inputs: BTreeMap<String, ConditioningInput>,
    /// The localised ensemble Gaussian whose exact denoiser is the network's skip connection (the
    /// `basis` and `eigvals` inputs); absent for bundles without it.
    #[serde(default)]
    pub ensemble_gaussian: Option<EnsembleGaussianSpec>,
}

/// `[conditioning.ensemble_gaussian]`: P = inflation (L ∘ C) + floor² I of the background members
/// (see [`assimd_filter::score::EnsembleGaussianPrior`]).
#[derive(Debug, Clone, Deserialize)]
pub struct EnsembleGaussianSpec {
    pub half_width_km: f64,
    pub inflation: f64,
    pub floor: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConditioningInput {
    pub shape: Vec<usize>,
    pub dtype: String,
    #[serde(default)]
    pub what: String,
}

/// One graph of `[graphs]`.
#[derive(Debug, Clone, Deserialize)]
pub struct GraphSpec {
    pub file: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub dtype: String,
    pub input_shapes: BTreeMap<String, Vec<Dim>>,
    pub output_shapes: BTreeMap<String, Vec<Dim>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FixturesSpec {
    #[serde(default = "default_fixture_dir")]
    pub dir: String,
    #[serde(default = "default_fixture_index")]
    pub index: String,
    #[serde(default = "default_tolerance")]
    pub tolerance_max_abs: f64,
}

fn default_fixture_dir() -> String {
    "fixtures".into()
}
fn default_fixture_index() -> String {
    "fixtures/index.json".into()
}
fn default_tolerance() -> f64 {
    1e-4
}

impl Manifest {
    /// Read, parse and validate `path` (a `manifest.toml`).
    pub fn from_file(path: &Path) -> Result<Manifest, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|e| BundleError::Io {
            path: path.to_path_buf(),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "missing: a bundle directory needs a manifest.toml".into()
            } else {
                e.to_string()
            },
        })?;
        Manifest::from_toml(&text, path)
    }

    /// Parse and validate manifest text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Manifest, BundleError> {
        let m: Manifest = toml::from_str(text).map_err(|e| BundleError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        m.validate().map_err(|message| BundleError::Manifest {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(m)
    }

    /// True for pixel-space bundles (identity codec: no encoder/decoder).
    pub fn is_pixel_space(&self) -> bool {
        self.normalisation
            .codec
            .trim_start()
            .starts_with("identity")
    }

    /// Dimension of the physical state (product of the grid dims).
    pub fn state_dim(&self) -> usize {
        self.grid.dims.iter().product()
    }

    /// Dimension of the sampling space.
    pub fn latent_dim(&self) -> usize {
        self.latent.shape.iter().product()
    }

    fn graph(&self, name: &str) -> Option<&GraphSpec> {
        self.graphs.get(name)
    }

    /// Check the manifest's internal consistency (see the module documentation).
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        if !["l96", "qg2l"].contains(&self.testbed.as_str()) {
            return Err(format!(
                "unknown testbed {:?} (known: \"l96\", \"qg2l\")",
                self.testbed
            ));
        }
        if self.grid.dims.is_empty() || self.grid.dims.contains(&0) {
            return Err(format!(
                "[grid] dims {:?} must be non-empty and positive",
                self.grid.dims
            ));
        }
        if self.state_dim() != self.grid.n_points {
            return Err(format!(
                "[grid] dims {:?} hold {} points, n_points says {}",
                self.grid.dims,
                self.state_dim(),
                self.grid.n_points
            ));
        }
        let (lo, hi) = (self.noise.sigma_min, self.noise.sigma_max);
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo < hi) {
            return Err(format!("[noise] needs finite 0 < sigma_min < sigma_max, got sigma_min = {lo}, sigma_max = {hi}"));
        }
        if self.latent.shape.is_empty() || self.latent.shape.contains(&0) {
            return Err(format!(
                "[latent] shape {:?} must be non-empty and positive",
                self.latent.shape
            ));
        }
        for name in self.graphs.keys() {
            if !KNOWN_GRAPHS.contains(&name.as_str()) {
                return Err(format!(
                    "unknown graph [graphs.{name}] (known: {})",
                    KNOWN_GRAPHS.join(", ")
                ));
            }
        }
        let has_codec = self.graphs.contains_key("encoder") || self.graphs.contains_key("decoder");
        if self.is_pixel_space() {
            if has_codec {
                return Err(
                    "the codec is identity (pixel space) but [graphs] has an encoder or decoder"
                        .into(),
                );
            }
            if self.latent.shape != self.grid.dims {
                return Err(format!(
                    "identity codec: [latent] shape {:?} must equal [grid] dims {:?}",
                    self.latent.shape, self.grid.dims
                ));
            }
        } else if !(self.graphs.contains_key("encoder") && self.graphs.contains_key("decoder")) {
            return Err(format!(
                "codec {:?} is not identity, so [graphs] needs both encoder and decoder",
                self.normalisation.codec
            ));
        }
        for (name, g) in &self.graphs {
            validate_graph(name, g).map_err(|e| format!("[graphs.{name}]: {e}"))?;
        }
        for (name, c) in &self.conditioning.inputs {
            if c.dtype != "float32" {
                return Err(format!(
                    "[conditioning.inputs.{name}] dtype {:?} is not \"float32\"",
                    c.dtype
                ));
            }
            if c.shape.is_empty() || c.shape.contains(&0) {
                return Err(format!(
                    "[conditioning.inputs.{name}] shape {:?} must be non-empty and positive",
                    c.shape
                ));
            }
        }
        if self.conditioning.inputs.is_empty() {
            return Err("[conditioning.inputs] is empty: the denoiser must be conditioned on the background".into());
        }

        // The denoiser and its VJP.
        let batch = |rest: &[usize]| -> Vec<Dim> {
            std::iter::once(Dim::Symbol("B".into()))
                .chain(rest.iter().map(|&n| Dim::Fixed(n)))
                .collect()
        };
        let fixed = |s: &[usize]| -> Vec<Dim> { s.iter().map(|&n| Dim::Fixed(n)).collect() };
        let latent_b = batch(&self.latent.shape);
        let grid_b = batch(&self.grid.dims);
        let sigma_b = vec![Dim::Symbol("B".into())];
        let cond_names: BTreeSet<&str> = self
            .conditioning
            .inputs
            .keys()
            .map(String::as_str)
            .collect();

        let den = self.graph("denoiser").ok_or("[graphs] has no denoiser")?;
        let want: BTreeSet<&str> = ["x_sigma", "sigma"]
            .into_iter()
            .chain(cond_names.iter().copied())
            .collect();
        let have: BTreeSet<&str> = den.inputs.iter().map(String::as_str).collect();
        if want != have {
            return Err(format!("[graphs.denoiser] inputs {:?} must be x_sigma, sigma and the conditioning inputs {:?}", den.inputs, cond_names));
        }
        expect_shape(
            "denoiser",
            "x_sigma",
            &den.input_shapes["x_sigma"],
            &latent_b,
        )?;
        expect_shape("denoiser", "sigma", &den.input_shapes["sigma"], &sigma_b)?;
        for (name, c) in &self.conditioning.inputs {
            expect_shape("denoiser", name, &den.input_shapes[name], &fixed(&c.shape))?;
        }
        if den.outputs.len() != 1 {
            return Err(format!(
                "[graphs.denoiser] must have one output, has {:?}",
                den.outputs
            ));
        }
        expect_shape(
            "denoiser",
            &den.outputs[0],
            &den.output_shapes[&den.outputs[0]],
            &latent_b,
        )?;

        let vjp = self
            .graph("denoiser_vjp")
            .ok_or("[graphs] has no denoiser_vjp")?;
        let mut want_vjp = want.clone();
        want_vjp.insert("v");
        let have_vjp: BTreeSet<&str> = vjp.inputs.iter().map(String::as_str).collect();
        if want_vjp != have_vjp {
            return Err(format!(
                "[graphs.denoiser_vjp] inputs {:?} must be the denoiser's inputs and v",
                vjp.inputs
            ));
        }
        for name in &den.inputs {
            expect_shape(
                "denoiser_vjp",
                name,
                &vjp.input_shapes[name],
                &den.input_shapes[name],
            )?;
        }
        expect_shape("denoiser_vjp", "v", &vjp.input_shapes["v"], &grid_b)?;
        let outs: BTreeSet<&str> = vjp.outputs.iter().map(String::as_str).collect();
        if outs != BTreeSet::from(["x0_hat", "vjp"]) {
            return Err(format!(
                "[graphs.denoiser_vjp] outputs {:?} must be x0_hat and vjp",
                vjp.outputs
            ));
        }
        expect_shape(
            "denoiser_vjp",
            "x0_hat",
            &vjp.output_shapes["x0_hat"],
            &grid_b,
        )?;
        expect_shape("denoiser_vjp", "vjp", &vjp.output_shapes["vjp"], &latent_b)?;

        // The conditioner.
        match (self.conditioning.set_encoder, self.graph("conditioner")) {
            (true, None) => {
                return Err(
                    "conditioning.set_encoder = true but [graphs] has no conditioner".into(),
                )
            }
            (false, Some(_)) => {
                return Err(
                    "[graphs] has a conditioner but conditioning.set_encoder = false".into(),
                )
            }
            (true, Some(c)) => {
                for out in &c.outputs {
                    let ci = self.conditioning.inputs.get(out).ok_or_else(|| {
                        format!("[graphs.conditioner] output {out:?} is not a conditioning input")
                    })?;
                    expect_shape("conditioner", out, &c.output_shapes[out], &fixed(&ci.shape))?;
                }
                for inp in &c.inputs {
                    if inp != "members" && !cond_names.contains(inp.as_str()) {
                        return Err(format!("[graphs.conditioner] input {inp:?} is neither \"members\" nor a conditioning input"));
                    }
                }
            }
            (false, None) => {}
        }
        if let Some(f) = self.conditioning.inputs.get("features") {
            if f.shape.get(1) != Some(&self.conditioning.feature_channels) {
                return Err(format!(
                    "[conditioning.inputs.features] shape {:?} does not have feature_channels = {} channels",
                    f.shape, self.conditioning.feature_channels
                ));
            }
        }
        Ok(())
    }
}

fn validate_graph(name: &str, g: &GraphSpec) -> Result<(), String> {
    let p = Path::new(&g.file);
    if g.file.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "file {:?} must be a relative path inside the bundle",
            g.file
        ));
    }
    if g.dtype != "float32" {
        return Err(format!("dtype {:?} is not \"float32\"", g.dtype));
    }
    for (kind, names, shapes) in [
        ("inputs", &g.inputs, &g.input_shapes),
        ("outputs", &g.outputs, &g.output_shapes),
    ] {
        if names.is_empty() {
            return Err(format!("no {kind}"));
        }
        let set: BTreeSet<&String> = names.iter().collect();
        if set.len() != names.len() {
            return Err(format!("{kind} {names:?} repeat a name"));
        }
        let keys: BTreeSet<&String> = shapes.keys().collect();
        if set != keys {
            return Err(format!(
                "{kind} {names:?} and the names in {}_shapes {:?} differ",
                &kind[..kind.len() - 1],
                keys
            ));
        }
    }
    let _ = name;
    Ok(())
}

/// `got` must equal `want` with any symbol matching any symbol.
fn expect_shape(graph: &str, what: &str, got: &[Dim], want: &[Dim]) -> Result<(), String> {
    let ok = got.len() == want.len()
        && got.iter().zip(want).all(|(a, b)| match (a, b) {
            (Dim::Fixed(x), Dim::Fixed(y)) => x == y,
            (Dim::Symbol(_), Dim::Symbol(_)) => true,
            _ => false,
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "[graphs.{graph}] {what} has shape {}, expected {}",
            show_shape(got),
            show_shape(want)
        ))
    }
}

// ---------------------------------------------------------------------------------------------------
// ONNX Runtime environment
// ---------------------------------------------------------------------------------------------------

static ORT_ENV: Mutex<Option<&'static ort::environment::Environment>> = Mutex::new(None);

/// Initialise ONNX Runtime once per process from `explicit` or `ORT_DYLIB_PATH`.
fn ort_environment(
    explicit: Option<&Path>,
) -> Result<&'static ort::environment::Environment, BundleError> {
    let mut guard = ORT_ENV.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = *guard {
        return Ok(env);
    }
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(BundleError::Runtime(format!(
                    "ORT_DYLIB_PATH is not set; {ORT_FIX}"
                )))
            }
        },
    };
    if !path.is_file() {
        return Err(BundleError::Runtime(format!(
            "{} does not exist; {ORT_FIX}",
            path.display()
        )));
    }
    let builder = ort::init_from(&path).map_err(|e| {
        BundleError::Runtime(format!("cannot load {}: {e}; {ORT_FIX}", path.display()))
    })?;
    let env = builder.with_name("assimd").build().map_err(|e| {
        BundleError::Runtime(format!(
            "cannot create an environment from {}: {e}; {ORT_FIX}",
            path.display()
        ))
    })?;
    let env: &'static ort::environment::Environment = Box::leak(Box::new(env));
    *guard = Some(env);
    Ok(env)
}

// ---------------------------------------------------------------------------------------------------
// Bundle
// ---------------------------------------------------------------------------------------------------

/// Where the graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// How to load a bundle.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub device: Device,
    /// Intra-op threads per session; 0 = ONNX Runtime's default (all cores).
    pub threads: usize,
    /// Fail instead of falling back to CPU when `device` is unavailable.
    pub strict_device: bool,
    /// The ONNX Runtime library; `None` = `ORT_DYLIB_PATH`. Only the first initialisation counts.
    pub ort_library: Option<PathBuf>,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            device: Device::Cpu,
            threads: 1,
            strict_device: false,
            ort_library: None,
        }
    }
}

/// A dense float32 tensor in C order, the unit of [`Bundle::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct TensorF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TensorF32 {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        TensorF32 { shape, data }
    }

    fn from_f64(shape: Vec<usize>, data: &[f64]) -> Self {
        TensorF32 {
            shape,
            data: data.iter().map(|&v| v as f32).collect(),
        }
    }
}

/// One opened graph.
struct Graph {
    name: String,
    path: PathBuf,
    spec: GraphSpec,
    session: Mutex<Session>,
}

impl Graph {
    /// Run with inputs by name; returns the outputs in manifest order.
    fn run(&self, inputs: Vec<(String, TensorF32)>) -> Result<Vec<TensorF32>, BundleError> {
        let err = |message: String| BundleError::Input {
            graph: self.name.clone(),
            message,
        };
        let given: BTreeSet<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        let want: BTreeSet<&str> = self.spec.inputs.iter().map(String::as_str).collect();
        if given != want || given.len() != inputs.len() {
            return Err(err(format!(
                "inputs {:?} given, the graph takes {:?}",
                inputs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                self.spec.inputs
            )));
        }
        let mut values = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let spec = &self.spec.input_shapes[&name];
            let fits = spec.len() == t.shape.len()
                && spec.iter().zip(&t.shape).all(|(d, &n)| match d {
                    Dim::Fixed(m) => *m == n,
                    Dim::Symbol(_) => n > 0,
                });
            if !fits || t.shape.iter().product::<usize>() != t.data.len() {
                return Err(err(format!(
                    "input {name} has shape {:?} ({} values), the graph takes {}",
                    t.shape,
                    t.data.len(),
                    show_shape(spec)
                )));
            }
            let shape: Vec<i64> = t.shape.iter().map(|&n| n as i64).collect();
            let value = Tensor::from_array((shape, t.data))
                .map_err(|e| err(format!("input {name}: {e}")))?;
            values.push((name, value));
        }
        let run_err = |message: String| BundleError::Run {
            path: self.path.clone(),
            graph: self.name.clone(),
            message,
        };
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(values).map_err(|e| run_err(e.to_string()))?;
        let mut result = Vec::with_capacity(self.spec.outputs.len());
        for name in &self.spec.outputs {
            let value = outputs
                .get(name)
                .ok_or_else(|| run_err(format!("no output {name}")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err(format!("output {name}: {e}")))?;
            result.push(TensorF32 {
                shape: shape.iter().map(|&d| d as usize).collect(),
                data: data.to_vec(),
            });
        }
        Ok(result)
    }
}

/// A loaded, validated bundle with one ONNX Runtime session per graph.
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    graphs: BTreeMap<String, Arc<Graph>>,
    provider: &'static str,
    provider_note: Option<String>,
    gaussian: Option<EnsembleGaussianPrior>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("name", &self.manifest.name)
            .field("graphs", &self.graphs.keys().collect::<Vec<_>>())
            .field("provider", &self.provider)
            .finish()
    }
}

impl Bundle {
    /// Open the bundle in `dir`: initialise ONNX Runtime (once per process), validate the manifest,
    /// open every graph and check it against the manifest. See the module documentation.
    pub fn load(dir: impl AsRef<Path>, options: &BundleOptions) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let env = ort_environment(options.ort_library.as_deref())?;
        let manifest = Manifest::from_file(&dir.join("manifest.toml"))?;
        for (name, spec) in &manifest.graphs {
            let path = dir.join(&spec.file);
            if !path.is_file() {
                return Err(BundleError::Graph {
                    path,
                    graph: name.clone(),
                    message: "missing: the manifest names this file but it does not exist".into(),
                });
            }
        }

        let (use_cuda, provider_note) = match options.device {
            Device::Cpu => (false, None),
            Device::Cuda => match <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available() {
                Ok(true) => (true, None),
                Ok(false) => {
                    let note = "CUDA was requested but this ONNX Runtime build has no CUDAExecutionProvider (the CPU wheel onnxruntime==1.31.1 \
                                never has; a GPU needs the onnxruntime-gpu wheel, the CUDA 13 libraries and a driver)";
                    if options.strict_device {
                        return Err(BundleError::Provider(note.into()));
                    }
                    (false, Some(format!("{note}: running on CPU")))
                }
                Err(e) => {
                    let note = format!(
                        "CUDA was requested but ONNX Runtime cannot list its providers ({e})"
                    );
                    if options.strict_device {
                        return Err(BundleError::Provider(note));
                    }
                    (false, Some(format!("{note}: running on CPU")))
                }
            },
        };

        let mut bundle = Bundle {
            dir: dir.clone(),
            manifest,
            graphs: BTreeMap::new(),
            provider: if use_cuda { "CUDA" } else { "CPU" },
            provider_note,
            gaussian: None,
        };
        let specs: Vec<(String, GraphSpec)> = bundle
            .manifest
            .graphs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, spec) in specs {
            let path = dir.join(&spec.file);
            let session =
                match bundle.open_session(env, &name, &path, options, bundle.provider == "CUDA") {
                    Ok(s) => s,
                    Err(BundleError::Provider(msg)) if !options.strict_device => {
                        // Registration failed: every graph falls back to CPU.
                        bundle.provider = "CPU";
                        bundle.provider_note = Some(format!("{msg}: running on CPU"));
                        let mut reopened = BTreeMap::new();
                        for (n, g) in std::mem::take(&mut bundle.graphs) {
                            let s = bundle.open_session(env, &n, &g.path, options, false)?;
                            reopened.insert(
                                n.clone(),
                                Arc::new(Graph {
                                    name: n,
                                    path: g.path.clone(),
                                    spec: g.spec.clone(),
                                    session: Mutex::new(s),
                                }),
                            );
                        }
                        bundle.graphs = reopened;
                        bundle.open_session(env, &name, &path, options, false)?
                    }
                    Err(e) => return Err(e),
                };
            check_session(&name, &path, &spec, &session)?;
            bundle.graphs.insert(
                name.clone(),
                Arc::new(Graph {
                    name,
                    path,
                    spec,
                    session: Mutex::new(session),
                }),
            );
        }
        if let Some(eg) = &bundle.manifest.conditioning.ensemble_gaussian {
            let bad = |message: String| BundleError::Manifest {
                path: dir.join("manifest.toml"),
                message,
            };
            let kind: TestbedKind = bundle
                .manifest
                .testbed
                .parse()
                .map_err(|e: String| bad(e))?;
            let space = Testbed::new(kind).space;
            if space.dim() != bundle.manifest.state_dim() {
                return Err(bad(format!(
                    "[grid] has {} values, testbed {kind} {}",
                    bundle.manifest.state_dim(),
                    space.dim()
                )));
            }
            bundle.gaussian = Some(
                EnsembleGaussianPrior::new(&space, eg.half_width_km, eg.inflation, eg.floor)
                    .map_err(|e| bad(format!("[conditioning.ensemble_gaussian]: {e}")))?,
            );
        }
        Ok(bundle)
    }

    fn open_session(
        &self,
        env: &ort::environment::Environment,
        name: &str,
        path: &Path,
        options: &BundleOptions,
        cuda: bool,
    ) -> Result<Session, BundleError> {
        let gerr = |message: String| BundleError::Graph {
            path: path.to_path_buf(),
            graph: name.to_string(),
            message,
        };
        let mut builder = Session::builder(env)
            .map_err(|e| gerr(format!("cannot create a session builder: {e}")))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| gerr(format!("cannot set {} threads: {e}", options.threads)))?;
        }
        if cuda {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| {
                    BundleError::Provider(format!(
                        "registering the CUDA execution provider failed ({e})"
                    ))
                })?;
        }
        builder.commit_from_file(path).map_err(|e| {
            gerr(format!(
                "ONNX Runtime cannot load it (corrupt or not an ONNX model?): {e}"
            ))
        })
    }

    /// The directory the bundle was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The execution provider really registered for every session: `"CPU"` or `"CUDA"`.
    pub fn provider(&self) -> &str {
        self.provider
    }

    /// Why the provider differs from the one requested (a CUDA request that fell back to CPU), if it does.
    pub fn provider_note(&self) -> Option<&str> {
        self.provider_note.as_deref()
    }

    /// Names of the graphs loaded.
    pub fn graph_names(&self) -> impl Iterator<Item = &str> {
        self.graphs.keys().map(String::as_str)
    }

    fn graph(&self, name: &str) -> Result<&Arc<Graph>, BundleError> {
        self.graphs
            .get(name)
            .ok_or_else(|| BundleError::Unsupported {
                bundle: self.manifest.name.clone(),
                message: format!("has no graph `{name}`"),
            })
    }

    /// Run graph `name` on float32 inputs given by name; returns its outputs by name.
    pub fn run(
        &self,
        name: &str,
        inputs: &[(&str, &TensorF32)],
    ) -> Result<BTreeMap<String, TensorF32>, BundleError> {
        let graph = self.graph(name)?;
        let outs = graph.run(
            inputs
                .iter()
                .map(|(n, t)| (n.to_string(), (*t).clone()))
                .collect(),
        )?;
        Ok(graph.spec.outputs.iter().cloned().zip(outs).collect())
    }

    /// Run every graph that has fixtures on the fixture inputs saved at export, and compare with the
    /// saved outputs. Returns one entry per (graph, output); the caller judges the tolerance.
    pub fn check_fixtures(&self) -> Result<Vec<FixtureCheck>, BundleError> {
        let spec = self
            .manifest
            .fixtures
            .clone()
            .ok_or_else(|| BundleError::Unsupported {
                bundle: self.manifest.name.clone(),
                message: "the manifest has no [fixtures]".into(),
            })?;
        let index_path = self.dir.join(&spec.index);
        let text = std::fs::read_to_string(&index_path).map_err(|e| BundleError::Io {
            path: index_path.clone(),
            message: e.to_string(),
        })?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| BundleError::Fixture {
                path: index_path.clone(),
                message: e.to_string(),
            })?;
        let tolerance = index
            .get("tolerance_max_abs")
            .and_then(|v| v.as_f64())
            .unwrap_or(spec.tolerance_max_abs);
        let fixture_dir = self.dir.join(&spec.dir);
        let files =
            |entry: &serde_json::Value, key: &str| -> Result<Vec<(String, PathBuf)>, BundleError> {
                let map = entry.get(key).and_then(|v| v.as_object()).ok_or_else(|| {
                    BundleError::Fixture {
                        path: index_path.clone(),
                        message: format!("no `{key}` map"),
                    }
                })?;
                map.iter()
                    .map(|(k, v)| {
                        let f = v.as_str().ok_or_else(|| BundleError::Fixture {
                            path: index_path.clone(),
                            message: format!("`{k}` is not a file name"),
                        })?;
                        Ok((k.clone(), fixture_dir.join(f)))
                    })
                    .collect()
            };
        let mut checks = Vec::new();
        for name in self.graphs.keys() {
            let Some(entry) = index.get(name) else {
                continue;
            };
            let mut inputs = Vec::new();
            for (input, path) in files(entry, "inputs")? {
                inputs.push((input, read_npy_f32(&path)?));
            }
            let refs: Vec<(&str, &TensorF32)> =
                inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let outputs = self.run(name, &refs)?;
            for (output, path) in files(entry, "outputs")? {
                let want = read_npy_f32(&path)?;
                let got = outputs.get(&output).ok_or_else(|| BundleError::Fixture {
                    path: path.clone(),
                    message: format!("graph `{name}` has no output `{output}`"),
                })?;
                if got.shape != want.shape {
                    return Err(BundleError::Fixture {
                        path,
                        message: format!(
                            "graph `{name}` output `{output}` has shape {:?}, the fixture {:?}",
                            got.shape, want.shape
                        ),
                    });
                }
                let max_abs_err = got
                    .data
                    .iter()
                    .zip(&want.data)
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
                    .fold(0.0, f64::max);
                // A graph's own `tolerance_max_abs` map overrides the global one per output (outputs in
                // physical units, e.g. m²/s up to ~6e3, where float32 spacing alone is ~5e-4).
                let tolerance = entry
                    .get("tolerance_max_abs")
                    .and_then(|m| m.get(&output))
                    .and_then(|v| v.as_f64())
                    .unwrap_or(tolerance);
                checks.push(FixtureCheck {
                    graph: name.clone(),
                    output,
                    max_abs_err,
                    tolerance,
                });
            }
        }
        Ok(checks)
    }

    /// Condition the bundle on a cycle's background ensemble (pixel-space bundles): computes the mean
    /// and per-point spread (std, ddof = 1), runs `conditioner.onnx` once when the bundle has one, and
    /// returns the [`Denoiser`] for the cycle.
    pub fn condition(&self, background: &Ensemble) -> Result<ConditionedDenoiser, BundleError> {
        let m = &self.manifest;
        let unsupported = |message: String| BundleError::Unsupported {
            bundle: m.name.clone(),
            message,
        };
        let d = m.state_dim();
        if background.dim() != d {
            return Err(BundleError::Input {
                graph: "conditioning".into(),
                message: format!(
                    "the background has dimension {}, the bundle's grid {d}",
                    background.dim()
                ),
            });
        }
        // Latent bundles: the members are encoded (one batched encoder call) and every conditioning
        // statistic is taken over the encoded members; pixel bundles use the members themselves.
        let (codec, members_z) = if m.is_pixel_space() {
            (None, None)
        } else {
            let enc = self.graph("encoder")?.clone();
            let dec = self.graph("decoder")?.clone();
            let n = background.n_members();
            let shape: Vec<usize> = std::iter::once(n)
                .chain(m.grid.dims.iter().copied())
                .collect();
            let z = enc.run(vec![(
                enc.spec.inputs[0].clone(),
                TensorF32::from_f64(shape, background.as_flat()),
            )])?;
            let zf: Vec<f64> = z[0].data.iter().map(|&v| f64::from(v)).collect();
            let latent =
                Ensemble::from_flat(n, m.latent_dim(), zf).map_err(|e| BundleError::Input {
                    graph: "encoder".into(),
                    message: e.to_string(),
                })?;
            (Some((enc, dec)), Some(latent))
        };
        let stats = members_z.as_ref().unwrap_or(background);
        let mean = stats.mean();
        let spread = stats.std();
        let mut cond: BTreeMap<String, TensorF32> = BTreeMap::new();
        let mut features = None;
        let mut prior_cov = None;
        if let (Some(g), None) = (&self.gaussian, &codec) {
            let (_, u, lam) = g.spectrum(background).map_err(|e| BundleError::Input {
                graph: "conditioning".into(),
                message: e.to_string(),
            })?;
            // basis (1, d, k): row-major, basis[i][k] = U[(i, k)]
            let basis: Vec<f64> = (0..d)
                .flat_map(|i| (0..u.ncols()).map(move |k| (i, k)))
                .map(|(i, k)| u[(i, k)])
                .collect();
            cond.insert(
                "basis".into(),
                TensorF32::from_f64(vec![1, d, u.ncols()], &basis),
            );
            cond.insert(
                "eigvals".into(),
                TensorF32::from_f64(vec![1, lam.len()], lam.as_slice()),
            );
            prior_cov = Some((u, lam));
        }
        for (name, c) in &m.conditioning.inputs {
            match name.as_str() {
                "mean" => {
                    cond.insert(name.clone(), TensorF32::from_f64(c.shape.clone(), &mean));
                }
                "spread" => {
                    cond.insert(name.clone(), TensorF32::from_f64(c.shape.clone(), &spread));
                }
                _ => {}
            }
        }
        if let Some(conditioner) = self.graphs.get("conditioner") {
            let n = stats.n_members();
            let mut inputs = Vec::new();
            for name in &conditioner.spec.inputs {
                let t = if name == "members" {
                    let shape: Vec<usize> = [1, n]
                        .into_iter()
                        .chain(m.latent.shape.iter().copied())
                        .collect();
                    TensorF32::from_f64(shape, stats.as_flat())
                } else {
                    cond.get(name).cloned().ok_or_else(|| {
                        unsupported(format!(
                            "conditioner input `{name}` cannot be computed from an ensemble"
                        ))
                    })?
                };
                inputs.push((name.clone(), t));
            }
            let outs = conditioner.run(inputs)?;
            for (name, t) in conditioner.spec.outputs.iter().zip(outs) {
                if name == "features" {
                    features = Some(t.data.iter().map(|&v| f64::from(v)).collect());
                }
                cond.insert(name.clone(), t);
            }
        }
        for (name, c) in &m.conditioning.inputs {
            let t = cond.get(name).ok_or_else(|| {
                unsupported(format!(
                    "conditioning input `{name}` is neither mean, spread, basis/eigvals ([conditioning.ensemble_gaussian]) nor a conditioner output"
                ))
            })?;
            if t.shape != c.shape {
                return Err(BundleError::Input { graph: "conditioner".into(), message: format!("conditioning input `{name}` came out with shape {:?}, the manifest says {:?}", t.shape, c.shape) });
            }
        }
        Ok(ConditionedDenoiser {
            bundle: m.name.clone(),
            denoiser: self.graph("denoiser")?.clone(),
            vjp: self.graph("denoiser_vjp")?.clone(),
            cond: cond
                .into_iter()
                .filter(|(k, _)| m.conditioning.inputs.contains_key(k))
                .collect(),
            latent_shape: m.latent.shape.clone(),
            grid_dims: m.grid.dims.clone(),
            mean,
            spread,
            features,
            prior_cov,
            codec,
        })
    }
}

/// The result of running one graph output on its fixture.
#[derive(Debug, Clone)]
pub struct FixtureCheck {
    pub graph: String,
    pub output: String,
    pub max_abs_err: f64,
    pub tolerance: f64,
}

impl FixtureCheck {
    pub fn passed(&self) -> bool {
        self.max_abs_err <= self.tolerance
    }
}

/// A pixel-space bundle's denoiser conditioned on one cycle's background ensemble: implements
/// [`Denoiser`] with dynamic batch B (f64 in and out, float32 inside the graphs; encode/decode are the
/// identity). Cheap to clone the sessions into: it shares them with the [`Bundle`].
pub struct ConditionedDenoiser {
    bundle: String,
    denoiser: Arc<Graph>,
    vjp: Arc<Graph>,
    cond: Vec<(String, TensorF32)>,
    latent_shape: Vec<usize>,
    grid_dims: Vec<usize>,
    mean: Vec<f64>,
    spread: Vec<f64>,
    features: Option<Vec<f64>>,
    prior_cov: Option<(DMatrix<f64>, DVector<f64>)>,
    codec: Option<(Arc<Graph>, Arc<Graph>)>,
}

impl fmt::Debug for ConditionedDenoiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionedDenoiser")
            .field("bundle", &self.bundle)
            .field("dim", &self.dim())
            .finish()
    }
}

impl ConditionedDenoiser {
    /// The background ensemble mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The background per-point spread (std, ddof = 1).
    pub fn spread(&self) -> &[f64] {
        &self.spread
    }

    /// The conditioner's features (C × d, row-major), when the bundle has a conditioner.
    pub fn features(&self) -> Option<&[f64]> {
        self.features.as_deref()
    }

    fn inputs(
        &self,
        z: &[f64],
        sigma: &[f64],
        v: Option<&[f64]>,
    ) -> Result<Vec<(String, TensorF32)>, FilterError> {
        let b = sigma.len();
        let d = self.dim();
        let n = self.state_dim();
        if b == 0 {
            return Err(FilterError::Dimension("an empty batch (no sigma)".into()));
        }
        if z.len() != b * d {
            return Err(FilterError::Dimension(format!(
                "z has {} values, not B × d = {b} × {d}",
                z.len()
            )));
        }
        if let Some(bad) = sigma.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(FilterError::InvalidParameter(format!(
                "sigma = {bad}: the denoiser needs finite sigma > 0"
            )));
        }
        let mut inputs = Vec::with_capacity(self.cond.len() + 3);
        inputs.push((
            "x_sigma".to_string(),
            TensorF32::from_f64(
                std::iter::once(b)
                    .chain(self.latent_shape.iter().copied())
                    .collect(),
                z,
            ),
        ));
        inputs.push(("sigma".to_string(), TensorF32::from_f64(vec![b], sigma)));
        inputs.extend(self.cond.iter().cloned());
        if let Some(v) = v {
            if v.len() != b * n {
                return Err(FilterError::Dimension(format!(
                    "v has {} values, not B × n = {b} × {n}",
                    v.len()
                )));
            }
            inputs.push((
                "v".to_string(),
                TensorF32::from_f64(
                    std::iter::once(b)
                        .chain(self.grid_dims.iter().copied())
                        .collect(),
                    v,
                ),
            ));
        }
        Ok(inputs)
    }

    /// Run the encoder or decoder on a batch of B inputs of shape `shape` (flat, B × ∏shape).
    fn codec_run(&self, g: &Graph, shape: &[usize], x: &[f64]) -> Result<Vec<f64>, FilterError> {
        let per: usize = shape.iter().product();
        if x.is_empty() || x.len() % per != 0 {
            return Err(FilterError::Dimension(format!(
                "{} values are not a batch of {shape:?}",
                x.len()
            )));
        }
        let full: Vec<usize> = std::iter::once(x.len() / per)
            .chain(shape.iter().copied())
            .collect();
        let out = g
            .run(vec![(
                g.spec.inputs[0].clone(),
                TensorF32::from_f64(full, x),
            )])
            .map_err(|e| self.model_error(e))?;
        Ok(out[0].data.iter().map(|&v| f64::from(v)).collect())
    }

    fn model_error(&self, e: BundleError) -> FilterError {
        FilterError::Model(format!("bundle `{}`: {e}", self.bundle))
    }
}

fn copy_out(name: &str, t: &TensorF32, out: &mut [f64]) -> Result<(), FilterError> {
    if t.data.len() != out.len() {
        return Err(FilterError::Dimension(format!(
            "output {name} has {} values, the buffer {}",
            t.data.len(),
            out.len()
        )));
    }
    out.iter_mut()
        .zip(&t.data)
        .for_each(|(o, &v)| *o = f64::from(v));
    Ok(())
}

impl Denoiser for ConditionedDenoiser {
    fn dim(&self) -> usize {
        self.latent_shape.iter().product()
    }

    fn state_dim(&self) -> usize {
        self.grid_dims.iter().product()
    }

    fn denoise(&self, z: &[f64], sigma: &[f64], out: &mut [f64]) -> Result<(), FilterError> {
        let inputs = self.inputs(z, sigma, None)?;
        let outs = self.denoiser.run(inputs).map_err(|e| self.model_error(e))?;
        copy_out(&self.denoiser.spec.outputs[0], &outs[0], out)
    }

    fn denoise_vjp(
        &self,
        z: &[f64],
        sigma: &[f64],
        v: &[f64],
        x0: &mut [f64],
        jtv: &mut [f64],
    ) -> Result<(), FilterError> {
        let inputs = self.inputs(z, sigma, Some(v))?;
        let outs = self.vjp.run(inputs).map_err(|e| self.model_error(e))?;
        for (name, t) in self.vjp.spec.outputs.iter().zip(&outs) {
            match name.as_str() {
                "x0_hat" => copy_out(name, t, x0)?,
                "vjp" => copy_out(name, t, jtv)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn encode(&self, x: &[f64]) -> Result<Vec<f64>, FilterError> {
        match &self.codec {
            None => Ok(x.to_vec()),
            Some((enc, _)) => self.codec_run(enc, &self.grid_dims, x),
        }
    }

    fn decode(&self, z: &[f64]) -> Result<Vec<f64>, FilterError> {
        match &self.codec {
            None => Ok(z.to_vec()),
            Some((_, dec)) => self.codec_run(dec, &self.latent_shape, z),
        }
    }

    fn prior_covariance(&self) -> Option<(&DMatrix<f64>, &DVector<f64>)> {
        self.prior_cov.as_ref().map(|(u, l)| (u, l))
    }
}

/// Check an opened session's inputs and outputs against the manifest.
fn check_session(
    name: &str,
    path: &Path,
    spec: &GraphSpec,
    session: &Session,
) -> Result<(), BundleError> {
    let gerr = |message: String| BundleError::Graph {
        path: path.to_path_buf(),
        graph: name.to_string(),
        message,
    };
    for (kind, names, shapes, outlets) in [
        ("input", &spec.inputs, &spec.input_shapes, session.inputs()),
        (
            "output",
            &spec.outputs,
            &spec.output_shapes,
            session.outputs(),
        ),
    ] {
        let in_graph: BTreeSet<&str> = outlets.iter().map(|o| o.name()).collect();
        let in_manifest: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        if in_graph != in_manifest {
            let missing: Vec<_> = in_manifest.difference(&in_graph).collect();
            let extra: Vec<_> = in_graph.difference(&in_manifest).collect();
            return Err(gerr(format!(
                "{kind}s differ from the manifest: the manifest names {missing:?} which the graph lacks; the graph has {extra:?} which the manifest does not name"
            )));
        }
        for outlet in outlets {
            let want = &shapes[outlet.name()];
            let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(gerr(format!("{kind} {} is not a tensor", outlet.name())));
            };
            if *ty != TensorElementType::Float32 {
                return Err(gerr(format!(
                    "{kind} {} is {ty:?}, the manifest says float32",
                    outlet.name()
                )));
            }
            let dims: &[i64] = shape;
            let show = || {
                format!(
                    "[{}]",
                    dims.iter()
                        .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            if dims.len() != want.len() {
                return Err(gerr(format!(
                    "{kind} {} has rank {} {}, the manifest says {}",
                    outlet.name(),
                    dims.len(),
                    show(),
                    show_shape(want)
                )));
            }
            for (i, (g, w)) in dims.iter().zip(want).enumerate() {
                let ok = match w {
                    Dim::Fixed(n) => *g < 0 || *g == *n as i64,
                    Dim::Symbol(_) => *g < 0,
                };
                if !ok {
                    return Err(gerr(format!(
                        "{kind} {} dimension {i} is {} in the graph {}, the manifest says {w} ({})",
                        outlet.name(),
                        g,
                        show(),
                        show_shape(want)
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const L96: &str = include_str!("../zoo/l96/manifest.toml");

    fn reject(edit: impl Fn(&str) -> String, needle: &str) {
        let text = edit(L96);
        let err = Manifest::from_toml(&text, Path::new("m.toml"))
            .expect_err("the edited manifest must be rejected")
            .to_string();
        assert!(err.contains("m.toml") && err.contains(needle), "{err}");
    }

    #[test]
    fn the_l96_manifest_validates() {
        let m = Manifest::from_toml(L96, Path::new("m.toml")).unwrap();
        assert!(m.is_pixel_space());
        assert_eq!((m.state_dim(), m.latent_dim()), (40, 40));
        assert_eq!(
            m.graphs["denoiser"].input_shapes["x_sigma"],
            vec![Dim::Symbol("B".into()), Dim::Fixed(40)]
        );
    }

    #[test]
    fn inconsistent_manifests_are_rejected() {
        reject(
            |s| s.replace("sigma_min = 0.01", "sigma_min = 20.0"),
            "sigma_min",
        );
        reject(
            |s| s.replace("testbed = \"l96\"", "testbed = \"l63\""),
            "testbed",
        );
        reject(|s| s.replace("n_points = 40", "n_points = 41"), "n_points");
        reject(
            |s| s.replace("set_encoder = true", "set_encoder = false"),
            "conditioner",
        );
        reject(
            |s| {
                s.replace(
                    "x_sigma = [\"B\", \"40\"]\nsigma",
                    "x_sigma = [\"B\", \"39\"]\nsigma",
                )
            },
            "x_sigma",
        );
        reject(
            |s| s.replace("file = \"denoiser.onnx\"", "file = \"../denoiser.onnx\""),
            "relative path",
        );
        reject(
            |s| {
                s.replace(
                    "outputs = [\"x0_hat\", \"vjp\"]",
                    "outputs = [\"x0_hat\", \"jvp\"]",
                )
            },
            "denoiser_vjp",
        );
        reject(
            |s| s.replace("feature_channels = 16", "feature_channels = 8"),
            "feature_channels",
        );
        reject(
            |s| s.replace("x_sigma = [\"B\", \"40\"]", "x_sigma = [\"B\", \"-4\"]"),
            "dimension",
        );
    }
}
