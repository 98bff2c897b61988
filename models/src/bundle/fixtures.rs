//! # Parity fixtures
//!
//! At export, every graph was run on fixed inputs and the inputs and outputs were saved as `.npy`
//! files (float32, C order) under the bundle's `fixtures/`, with an index `fixtures/index.json`:
//!
//! ```text
//! { "tolerance_max_abs": 1e-4,
//!   "<graph>": { "inputs":  { "<input>":  "<graph>_in_<input>.npy", ... },
//!                "outputs": { "<output>": "<graph>_out_<output>.npy", ... },
//!                "tolerance_max_abs": { "<output>": 1e-2 } } }     // optional, per output
//! ```
//!
//! [`Bundle::check_fixtures`] reruns each graph that has an entry through ONNX Runtime and reports,
//! per output, the largest absolute difference e = maxᵢ |yᵢ − ŷᵢ| to the exported output with the
//! tolerance that applies: the output's own entry, else the index's `tolerance_max_abs`, else the
//! manifest's `[fixtures] tolerance_max_abs` (default 1e-4). A graph passes when e ≤ tolerance; the
//! caller judges. This is not run at load time.

use std::path::PathBuf;

use super::npy::read_npy_f32;
use super::runtime::TensorF32;
use super::{Bundle, BundleError};

/// The result of running one graph output on its fixture.
#[derive(Debug, Clone)]
pub struct FixtureCheck {
    /// The graph run.
    pub graph: String,
    /// The output compared.
    pub output: String,
    /// maxᵢ |yᵢ − ŷᵢ| between the output now and the one saved at export.
    pub max_abs_err: f64,
    /// The tolerance the index sets for this output.
    pub tolerance: f64,
}

impl FixtureCheck {
    /// `max_abs_err <= tolerance`.
    pub fn passed(&self) -> bool {
        self.max_abs_err <= self.tolerance
    }
}

impl Bundle {
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
}
