//! # ONNX Runtime sessions
//!
//! Every graph of a bundle runs in its own ONNX Runtime session, through [`ort`] with the shared
//! library of the PyPI wheel `onnxruntime==1.31.1`. This module loads that library, chooses the
//! execution provider, opens one session per graph, checks each session's inputs and outputs against
//! the manifest, and converts between [`TensorF32`] and ONNX tensors.
//!
//! ## The library
//! `ort` is built with `load-dynamic`: the library `libonnxruntime.so.1.31.1` is loaded at run time, once
//! per process, from [`BundleOptions::ort_library`] or else the environment variable `ORT_DYLIB_PATH`
//! (`scripts/setup.sh` installs the wheel into `.venv/` and exports it). When neither is set, or the file
//! cannot be loaded, loading fails with [`BundleError::Runtime`] naming that fix ([`ORT_FIX`]). The first
//! successful initialisation wins for the whole process; later options naming another library are
//! ignored.
//!
//! ## What is checked when a graph is opened
//! The file exists, ONNX Runtime opens it, and its inputs and outputs are exactly the manifest's
//! names, float32, with the manifest's ranks; a dimension fixed in the manifest is fixed to the same
//! size (or dynamic) in the graph, and one the manifest calls dynamic is dynamic in the graph.
//!
//! ## Memory
//! Sessions run without ONNX Runtime's memory pattern, which plans and keeps one allocation
//! pattern per input shape: the bundles' batches change shape (the members; the m observations of
//! a cycle in the likelihood's VJP rows), and with it a qg2l daemon's peak RSS grew to 0.94-1.4 GB
//! (0.55 GB without, for about 4 % more time; `docs/benchmarks.md`). The CPU arena stays on: off,
//! it saved another 60 MB and cost 17 % of the analysis time.
//!
//! ## Provider selection
//! [`BundleOptions::device`] chooses CPU or CUDA. For CUDA the bundle asks ONNX Runtime whether its build
//! has the CUDA execution provider and registers `ort::ep::CUDA` with `error_on_failure`, so a failed
//! registration is seen rather than logged. When CUDA is unavailable (the CPU wheel `onnxruntime==1.31.1`
//! has no CUDA provider; a GPU needs the `onnxruntime-gpu` wheel, the CUDA 13 libraries and a driver),
//! every graph falls back to CPU and the bundle says so in [`super::Bundle::provider_note`], unless
//! [`BundleOptions::strict_device`] is set, in which case loading fails with
//! [`BundleError::Provider`]. [`super::Bundle::provider`] reports the provider really registered:
//! `"CPU"` or `"CUDA"` (with CUDA, ONNX Runtime may still place single nodes the CUDA provider lacks on
//! CPU).
//!
//! ## Threads
//! Each graph has one session behind a mutex (ONNX Runtime's `run` needs exclusive access in `ort`), so
//! calls on one bundle are serialised; [`BundleOptions::threads`] is the intra-op thread count of each
//! session (default 1, so that the daemon's own parallelism is not oversubscribed; 0 = ONNX Runtime's
//! default).
//!
//! ## Counting
//! Every run is counted per graph name, process-wide: calls and batch rows (the first input's
//! leading dimension). [`evaluations`] returns the counts, so a benchmark can report network
//! evaluations per member and analysis as measured rather than as read off the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use serde::Deserialize;

use super::manifest::{show_shape, Dim, GraphSpec, Manifest};
use super::BundleError;

/// File name of the ONNX Runtime library this crate is built against (`ort` API 31).
pub const ORT_LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";

/// What to do when ONNX Runtime cannot be found: part of every [`BundleError::Runtime`] message.
pub const ORT_FIX: &str = "set ORT_DYLIB_PATH to libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel \
(site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1), or run scripts/setup.sh, which installs it into .venv/ and exports ORT_DYLIB_PATH";

static ORT_ENV: Mutex<Option<&'static ort::environment::Environment>> = Mutex::new(None);

/// Initialise ONNX Runtime once per process from `explicit` or `ORT_DYLIB_PATH`.
pub(super) fn ort_environment(
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
    /// Override `[conditioning.ensemble_gaussian]`'s `half_width_km` (bundles that have one): the
    /// Gaussian the members start from and the denoiser's skip connection.
    pub prior_localization_km: Option<f64>,
    /// Override `[conditioning.ensemble_gaussian]`'s `inflation`.
    pub prior_inflation: Option<f64>,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            device: Device::Cpu,
            threads: 1,
            strict_device: false,
            ort_library: None,
            prior_localization_km: None,
            prior_inflation: None,
        }
    }
}

/// A dense float32 tensor in C order, the unit of [`super::Bundle::run`].
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

    /// Round f64 values to float32.
    pub(super) fn from_f64(shape: Vec<usize>, data: &[f64]) -> Self {
        TensorF32 {
            shape,
            data: data.iter().map(|&v| v as f32).collect(),
        }
    }
}

/// Calls and batch rows of one graph, counted by [`Graph::run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evaluations {
    /// Runs of the graph.
    pub calls: u64,
    /// Batch rows over all runs: one row is one network evaluation (one member, or one
    /// observation for the likelihood covariance's VJP).
    pub rows: u64,
}

static EVALUATIONS: Mutex<BTreeMap<String, Evaluations>> = Mutex::new(BTreeMap::new());

/// The runs of every graph so far in this process, by graph name (`denoiser`, `denoiser_vjp`, …),
/// summed over bundles.
pub fn evaluations() -> BTreeMap<String, Evaluations> {
    EVALUATIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// One opened graph: its session and the manifest entry it was checked against.
pub(super) struct Graph {
    /// The graph's name in `[graphs]`, for messages.
    pub(super) name: String,
    /// The ONNX file, for messages.
    pub(super) path: PathBuf,
    /// The manifest entry: input names and shapes that [`Graph::run`] checks, output order.
    pub(super) spec: GraphSpec,
    /// `ort`'s `run` takes `&mut Session`.
    session: Mutex<Session>,
}

impl Graph {
    /// Run with inputs by name; returns the outputs in manifest order.
    pub(super) fn run(
        &self,
        inputs: Vec<(String, TensorF32)>,
    ) -> Result<Vec<TensorF32>, BundleError> {
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
        let rows = inputs
            .first()
            .and_then(|(_, t)| t.shape.first())
            .copied()
            .unwrap_or(1) as u64;
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
        {
            let mut counts = EVALUATIONS.lock().unwrap_or_else(|p| p.into_inner());
            let c = counts.entry(self.name.clone()).or_default();
            c.calls += 1;
            c.rows += rows;
        }
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

/// The opened graphs of a bundle and the provider they really run on.
pub(super) struct Sessions {
    /// One session per graph, shared with every conditioned model made from the bundle.
    pub(super) graphs: BTreeMap<String, Arc<Graph>>,
    /// `"CPU"` or `"CUDA"`: the provider registered for every session.
    pub(super) provider: &'static str,
    /// Why `provider` differs from the one requested, if it does.
    pub(super) provider_note: Option<String>,
}

/// Open every graph of `manifest` (files relative to `dir`) on the provider `options` asks for, and
/// check each against the manifest; a CUDA request falls back to CPU as the module documentation says.
pub(super) fn open_graphs(
    env: &ort::environment::Environment,
    dir: &Path,
    manifest: &Manifest,
    options: &BundleOptions,
) -> Result<Sessions, BundleError> {
    for (name, spec) in &manifest.graphs {
        let path = dir.join(&spec.file);
        if !path.is_file() {
            return Err(BundleError::Graph {
                path,
                graph: name.clone(),
                message: "missing: the manifest names this file but it does not exist \
                          (copy the whole bundle directory, or fix [graphs] file)"
                    .into(),
            });
        }
    }
    let mut note = None;
    if options.device == Device::Cuda {
        match cuda_available() {
            Ok(()) => match open_all(env, dir, manifest, options, true) {
                Ok(graphs) => {
                    return Ok(Sessions {
                        graphs,
                        provider: "CUDA",
                        provider_note: None,
                    })
                }
                Err(BundleError::Provider(msg)) if !options.strict_device => note = Some(msg),
                Err(e) => return Err(e),
            },
            Err(msg) if options.strict_device => return Err(BundleError::Provider(msg)),
            Err(msg) => note = Some(msg),
        }
    }
    Ok(Sessions {
        graphs: open_all(env, dir, manifest, options, false)?,
        provider: "CPU",
        provider_note: note.map(|msg| format!("{msg}: running on CPU")),
    })
}

/// Whether this ONNX Runtime build has the CUDA execution provider; `Err` says why not.
fn cuda_available() -> Result<(), String> {
    match <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available() {
        Ok(true) => Ok(()),
        Ok(false) => Err("CUDA was requested but this ONNX Runtime build has no CUDAExecutionProvider (the CPU wheel onnxruntime==1.31.1 \
                          never has; a GPU needs the onnxruntime-gpu wheel, the CUDA 13 libraries and a driver)".into()),
        Err(e) => Err(format!(
            "CUDA was requested but ONNX Runtime cannot list its providers ({e})"
        )),
    }
}

/// Open and check every graph, with the CUDA provider registered when `cuda`.
fn open_all(
    env: &ort::environment::Environment,
    dir: &Path,
    manifest: &Manifest,
    options: &BundleOptions,
    cuda: bool,
) -> Result<BTreeMap<String, Arc<Graph>>, BundleError> {
    let mut graphs = BTreeMap::new();
    for (name, spec) in &manifest.graphs {
        let path = dir.join(&spec.file);
        let session = open_session(env, name, &path, options, cuda)?;
        check_session(name, &path, spec, &session)?;
        let graph = Graph {
            name: name.clone(),
            path,
            spec: spec.clone(),
            session: Mutex::new(session),
        };
        graphs.insert(name.clone(), Arc::new(graph));
    }
    Ok(graphs)
}

fn open_session(
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
    let mut builder =
        Session::builder(env).map_err(|e| gerr(format!("cannot create a session builder: {e}")))?;
    // No memory pattern: ONNX Runtime plans and keeps one allocation pattern per input shape,
    // and ours vary (the batch is the members, or the m observations of a cycle for the VJP
    // rows). With it the daemon's peak RSS on qg2l reached 0.94-1.4 GB; without, 0.55 GB for
    // about 4 % more time (docs/benchmarks.md).
    builder = builder
        .with_memory_pattern(false)
        .map_err(|e| gerr(format!("cannot turn off the memory pattern: {e}")))?;
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
            "ONNX Runtime cannot load it (corrupt or not an ONNX model? re-export or copy it again): {e}"
        ))
    })
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
