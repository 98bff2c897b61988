//! # The loaded bundle
//!
//! [`Bundle::load`] opens a bundle directory: it initialises ONNX Runtime (once per process), reads
//! and validates `manifest.toml` ([`super::manifest`]), opens and checks one session per graph
//! ([`super::runtime`]) and, when the manifest has `[conditioning.ensemble_gaussian]`, builds the
//! localised ensemble Gaussian the conditioned model needs. When it returns `Ok`, everything
//! described in those modules held; otherwise the error names the file (manifest or graph) and what
//! is wrong. [`Bundle::run`] runs one graph by name; [`Bundle::condition`] and
//! [`Bundle::check_fixtures`] are in [`super::conditioned`] and [`super::fixtures`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use assimd_filter::score::EnsembleGaussianPrior;

use super::conditioned::ensemble_gaussian;
use super::manifest::Manifest;
use super::runtime::{open_graphs, ort_environment, BundleOptions, Graph, TensorF32};
use super::BundleError;

/// A loaded, validated bundle with one ONNX Runtime session per graph.
pub struct Bundle {
    /// The directory loaded from; fixture paths are relative to it.
    pub(super) dir: PathBuf,
    /// The validated manifest.
    pub(super) manifest: Manifest,
    /// One checked session per graph of the manifest.
    pub(super) graphs: BTreeMap<String, Arc<Graph>>,
    /// `"CPU"` or `"CUDA"`: the provider really registered.
    provider: &'static str,
    /// Why `provider` differs from the one requested, if it does.
    provider_note: Option<String>,
    /// The ensemble Gaussian of `[conditioning.ensemble_gaussian]`, built once at load.
    pub(super) gaussian: Option<EnsembleGaussianPrior>,
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
        let manifest_path = dir.join("manifest.toml");
        let manifest = Manifest::from_file(&manifest_path)?;
        let sessions = open_graphs(env, &dir, &manifest, options)?;
        let gaussian = ensemble_gaussian(&manifest, &manifest_path, options)?;
        Ok(Bundle {
            dir,
            manifest,
            graphs: sessions.graphs,
            provider: sessions.provider,
            provider_note: sessions.provider_note,
            gaussian,
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

    /// Graph `name`, or an error naming the bundle when it has none.
    pub(super) fn graph(&self, name: &str) -> Result<&Arc<Graph>, BundleError> {
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
}
