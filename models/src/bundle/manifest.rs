//! # Bundle manifest
//!
//! `manifest.toml` describes a bundle: the testbed and grid it is for, the sampling space (the grid
//! itself, or a latent shape with an encoder/decoder pair), the noise range it was trained on, how it
//! is conditioned on the background ensemble, and each ONNX graph with the names and shapes of its
//! inputs and outputs. [`Manifest::from_file`] parses it and [`Manifest::validate`] checks that it is
//! consistent before any graph is opened; every error names the table and key concerned and what to
//! change.
//!
//! ## What is validated
//! - the manifest names a known testbed (`l96`, `qg2l`), a grid whose `dims` multiply to `n_points`, a
//!   noise range `0 < sigma_min < sigma_max` (finite), and a latent shape; an identity codec (pixel
//!   space) has latent shape = grid dims and no encoder/decoder graph, any other codec has both;
//! - `graphs` has `denoiser` and `denoiser_vjp` (and only names in [`KNOWN_GRAPHS`]); every graph is
//!   float32, has unique input/output names with a shape for each (a dimension is a positive integer or
//!   a symbol such as `B` for a dynamic one), and its file is a relative path inside the bundle;
//! - the denoiser D takes `x_sigma` `[B, latent...]`, `sigma` `[B]` and exactly the conditioning
//!   inputs with the shapes given under `[conditioning.inputs]`, and returns one `[B, latent...]`
//!   output; `denoiser_vjp` takes the same plus the cotangent `v` `[B, grid...]` and returns
//!   `x0_hat` = decode(D) `[B, grid...]` and `vjp` = Jᵀv `[B, latent...]` (J the Jacobian of
//!   decode ∘ D with respect to `x_sigma`);
//! - the conditioner, present iff `conditioning.set_encoder`, takes `members` and conditioning inputs
//!   and outputs conditioning inputs (`features` with `feature_channels` channels).
//!
//! That the graph files agree with the manifest is checked when they are opened
//! ([`super::runtime`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path};

use serde::Deserialize;

use super::BundleError;

/// Graph names a manifest may use.
pub const KNOWN_GRAPHS: [&str; 6] = [
    "conditioner",
    "denoiser",
    "denoiser_vjp",
    "encoder",
    "decoder",
    "forecast",
];

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
            RawDim::Int(n) => Err(format!(
                "dimension {n} is not positive: give a size >= 1, or a symbol like \"B\" for a dynamic one"
            )),
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
                        "dimension {s:?} is neither a positive integer nor a symbol like \"B\" \
                         (letters, digits and _, not starting with a digit)"
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

/// `[B, 40]`-style display of a manifest shape.
pub(super) fn show_shape(shape: &[Dim]) -> String {
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
    /// The bundle's name, used in every message about it.
    pub name: String,
    /// The testbed whose states the bundle models (`l96` or `qg2l`): fixes the grid and, for the
    /// ensemble Gaussian, the geometry used for localisation.
    pub testbed: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// The commit the bundle was trained and exported from (provenance).
    #[serde(default)]
    pub git_commit: String,
    /// Names of the state's fields, in grid order.
    #[serde(default)]
    pub variables: Vec<String>,
    /// The physical state the bundle maps to and from.
    pub grid: Grid,
    /// The sampling space and the codec between it and the grid.
    pub normalisation: Normalisation,
    /// The shape of the sampling space.
    pub latent: Latent,
    /// The noise levels the denoiser was trained on; the sampler must stay inside them.
    pub noise: Noise,
    /// What the denoiser is conditioned on and how it is computed from the background.
    pub conditioning: Conditioning,
    /// The ONNX graphs, by name (see [`KNOWN_GRAPHS`]).
    pub graphs: BTreeMap<String, GraphSpec>,
    /// Inputs and outputs saved at export, for [`super::Bundle::check_fixtures`].
    #[serde(default)]
    pub fixtures: Option<FixturesSpec>,
}

/// `[grid]`: the physical state.
#[derive(Debug, Clone, Deserialize)]
pub struct Grid {
    /// Number of values of a state, checked against the product of `dims`.
    pub n_points: usize,
    /// Free text (e.g. "periodic box").
    #[serde(default)]
    pub geometry: String,
    /// The state's shape without the batch dimension, as the graphs see it (e.g. `[2, 64, 64]`).
    pub dims: Vec<usize>,
}

/// `[normalisation]`: the sampling space.
#[derive(Debug, Clone, Deserialize)]
pub struct Normalisation {
    /// Free text describing the sampling space.
    pub space: String,
    /// `"identity ..."` for pixel-space bundles; anything else needs an encoder and a decoder.
    pub codec: String,
}

/// `[latent]`: the sampling space's shape.
#[derive(Debug, Clone, Deserialize)]
pub struct Latent {
    /// Shape of one sample without the batch dimension; equals the grid dims in pixel space.
    pub shape: Vec<usize>,
}

/// `[noise]`: the trained noise range.
#[derive(Debug, Clone, Deserialize)]
pub struct Noise {
    /// Smallest σ trained on.
    pub sigma_min: f64,
    /// Largest σ trained on.
    pub sigma_max: f64,
}

/// `[conditioning]`: what the denoiser sees of the background ensemble.
#[derive(Debug, Clone, Deserialize)]
pub struct Conditioning {
    /// Whether a `conditioner` graph (a set encoder of the members) computes some inputs.
    pub set_encoder: bool,
    /// Channels of the conditioner's `features` output.
    #[serde(default)]
    pub feature_channels: usize,
    /// The conditioning inputs the denoiser graphs take, by name.
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
    /// Gaspari–Cohn half-width of the localisation L, in km.
    pub half_width_km: f64,
    /// Multiplicative inflation of the localised sample covariance.
    pub inflation: f64,
    /// Standard deviation added on the diagonal, so that P is positive definite.
    pub floor: f64,
}

/// One `[conditioning.inputs.NAME]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ConditioningInput {
    /// The input's full shape (batch dimension 1: it is broadcast over the samples).
    pub shape: Vec<usize>,
    /// Must be `"float32"`.
    pub dtype: String,
    /// Free text: how the input is computed.
    #[serde(default)]
    pub what: String,
}

/// One graph of `[graphs]`.
#[derive(Debug, Clone, Deserialize)]
pub struct GraphSpec {
    /// The ONNX file, relative to the bundle directory.
    pub file: String,
    /// Input names; a run must give each exactly once.
    pub inputs: Vec<String>,
    /// Output names, in the order [`super::Bundle::run`] reports them.
    pub outputs: Vec<String>,
    /// Must be `"float32"`.
    pub dtype: String,
    /// Shape of each input; checked against the graph file when it is opened.
    pub input_shapes: BTreeMap<String, Vec<Dim>>,
    /// Shape of each output; checked against the graph file when it is opened.
    pub output_shapes: BTreeMap<String, Vec<Dim>>,
}

/// `[fixtures]`: where the export saved each graph's inputs and outputs.
#[derive(Debug, Clone, Deserialize)]
pub struct FixturesSpec {
    /// Directory of the `.npy` files, relative to the bundle.
    #[serde(default = "default_fixture_dir")]
    pub dir: String,
    /// The JSON index naming each graph's fixture files, relative to the bundle.
    #[serde(default = "default_fixture_index")]
    pub index: String,
    /// Default max-abs tolerance of a parity check (the index may override it).
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
                "missing: a bundle directory needs a manifest.toml (export one with models/train)"
                    .into()
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

    /// Check the manifest's internal consistency (see the module documentation).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_sizes()?;
        self.validate_codec()?;
        for (name, g) in &self.graphs {
            validate_graph(g).map_err(|e| format!("[graphs.{name}]: {e}"))?;
        }
        self.validate_conditioning_inputs()?;
        self.validate_denoisers()?;
        self.validate_conditioner()
    }

    /// Name, testbed, grid, noise range and latent shape.
    fn validate_sizes(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty: give the bundle a name".into());
        }
        if !["l96", "qg2l"].contains(&self.testbed.as_str()) {
            return Err(format!(
                "unknown testbed {:?}: set testbed to \"l96\" or \"qg2l\"",
                self.testbed
            ));
        }
        positive_shape("[grid] dims", &self.grid.dims)?;
        if self.state_dim() != self.grid.n_points {
            return Err(format!(
                "[grid] dims {:?} hold {} points but n_points says {}: make them agree",
                self.grid.dims,
                self.state_dim(),
                self.grid.n_points
            ));
        }
        let (lo, hi) = (self.noise.sigma_min, self.noise.sigma_max);
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo < hi) {
            return Err(format!(
                "[noise] needs finite 0 < sigma_min < sigma_max, got sigma_min = {lo}, sigma_max = {hi}"
            ));
        }
        positive_shape("[latent] shape", &self.latent.shape)
    }

    /// Graph names, and the codec against the encoder/decoder graphs.
    fn validate_codec(&self) -> Result<(), String> {
        for name in self.graphs.keys() {
            if !KNOWN_GRAPHS.contains(&name.as_str()) {
                return Err(format!(
                    "unknown graph [graphs.{name}]: rename or remove it (known: {})",
                    KNOWN_GRAPHS.join(", ")
                ));
            }
        }
        let has_codec = self.graphs.contains_key("encoder") || self.graphs.contains_key("decoder");
        if self.is_pixel_space() {
            if has_codec {
                return Err(
                    "the codec is identity (pixel space) but [graphs] has an encoder or \
                     decoder: remove them, or name the codec in [normalisation] codec"
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
                "codec {:?} is not identity, so [graphs] needs both encoder and decoder \
                 (or set [normalisation] codec = \"identity\" for a pixel-space bundle)",
                self.normalisation.codec
            ));
        }
        Ok(())
    }

    /// `[conditioning.inputs]`: non-empty, float32, positive shapes.
    fn validate_conditioning_inputs(&self) -> Result<(), String> {
        for (name, c) in &self.conditioning.inputs {
            if c.dtype != "float32" {
                return Err(format!(
                    "[conditioning.inputs.{name}] dtype {:?} is not supported: export it as \"float32\"",
                    c.dtype
                ));
            }
            positive_shape(&format!("[conditioning.inputs.{name}] shape"), &c.shape)?;
        }
        if self.conditioning.inputs.is_empty() {
            return Err(
                "[conditioning.inputs] is empty: the denoiser must be conditioned on the \
                 background (add at least mean or spread)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The denoiser and its VJP against the grid, latent and conditioning shapes.
    fn validate_denoisers(&self) -> Result<(), String> {
        let latent_b = batched(&self.latent.shape);
        let grid_b = batched(&self.grid.dims);
        let sigma_b = vec![Dim::Symbol("B".into())];
        let cond_names = self.conditioning_names();

        let den = self
            .graphs
            .get("denoiser")
            .ok_or("[graphs] has no denoiser: add [graphs.denoiser]")?;
        let want: BTreeSet<&str> = ["x_sigma", "sigma"]
            .into_iter()
            .chain(cond_names.iter().copied())
            .collect();
        let have: BTreeSet<&str> = den.inputs.iter().map(String::as_str).collect();
        if want != have {
            return Err(format!(
                "[graphs.denoiser] inputs {:?} must be x_sigma, sigma and the conditioning inputs {:?}",
                den.inputs, cond_names
            ));
        }
        // Indexing cannot panic: validate_graph checked that every input has a shape.
        let shape = |name: &str| &den.input_shapes[name];
        expect_shape("denoiser", "x_sigma", shape("x_sigma"), &latent_b)?;
        expect_shape("denoiser", "sigma", shape("sigma"), &sigma_b)?;
        for (name, c) in &self.conditioning.inputs {
            expect_shape("denoiser", name, shape(name), &fixed(&c.shape))?;
        }
        if den.outputs.len() != 1 {
            return Err(format!(
                "[graphs.denoiser] must have one output (the denoised sample), has {:?}",
                den.outputs
            ));
        }
        let out = &den.outputs[0];
        expect_shape("denoiser", out, &den.output_shapes[out], &latent_b)?;

        let vjp = self
            .graphs
            .get("denoiser_vjp")
            .ok_or("[graphs] has no denoiser_vjp: add [graphs.denoiser_vjp]")?;
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
        let out_shape = |name: &str| &vjp.output_shapes[name];
        expect_shape("denoiser_vjp", "x0_hat", out_shape("x0_hat"), &grid_b)?;
        expect_shape("denoiser_vjp", "vjp", out_shape("vjp"), &latent_b)
    }

    /// The conditioner against `set_encoder`, and its outputs against the conditioning inputs.
    fn validate_conditioner(&self) -> Result<(), String> {
        let cond_names = self.conditioning_names();
        match (
            self.conditioning.set_encoder,
            self.graphs.get("conditioner"),
        ) {
            (true, None) => {
                return Err(
                    "conditioning.set_encoder = true but [graphs] has no conditioner: \
                     add [graphs.conditioner] or set set_encoder = false"
                        .into(),
                )
            }
            (false, Some(_)) => {
                return Err(
                    "[graphs] has a conditioner but conditioning.set_encoder = false: \
                     set it to true or remove [graphs.conditioner]"
                        .into(),
                )
            }
            (true, Some(c)) => {
                for out in &c.outputs {
                    let ci = self.conditioning.inputs.get(out).ok_or_else(|| {
                        format!(
                            "[graphs.conditioner] output {out:?} is not a conditioning input: \
                             add [conditioning.inputs.{out}]"
                        )
                    })?;
                    expect_shape("conditioner", out, &c.output_shapes[out], &fixed(&ci.shape))?;
                }
                for inp in &c.inputs {
                    if inp != "members" && !cond_names.contains(inp.as_str()) {
                        return Err(format!(
                            "[graphs.conditioner] input {inp:?} is neither \"members\" nor a \
                             conditioning input: rename it or add [conditioning.inputs.{inp}]"
                        ));
                    }
                }
            }
            (false, None) => {}
        }
        if let Some(f) = self.conditioning.inputs.get("features") {
            if f.shape.get(1) != Some(&self.conditioning.feature_channels) {
                return Err(format!(
                    "[conditioning.inputs.features] shape {:?} does not have feature_channels = {} \
                     channels (its second dimension): make them agree",
                    f.shape, self.conditioning.feature_channels
                ));
            }
        }
        Ok(())
    }

    fn conditioning_names(&self) -> BTreeSet<&str> {
        self.conditioning
            .inputs
            .keys()
            .map(String::as_str)
            .collect()
    }
}

/// A shape must be a non-empty list of positive sizes.
fn positive_shape(what: &str, shape: &[usize]) -> Result<(), String> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(format!(
            "{what} {shape:?} must be a non-empty list of positive sizes"
        ));
    }
    Ok(())
}

/// `[B, shape...]` with a dynamic batch dimension.
fn batched(shape: &[usize]) -> Vec<Dim> {
    std::iter::once(Dim::Symbol("B".into()))
        .chain(shape.iter().map(|&n| Dim::Fixed(n)))
        .collect()
}

fn fixed(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&n| Dim::Fixed(n)).collect()
}

fn validate_graph(g: &GraphSpec) -> Result<(), String> {
    let p = Path::new(&g.file);
    if g.file.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "file {:?} must be a relative path inside the bundle (no \"..\", no leading \"/\")",
            g.file
        ));
    }
    if g.dtype != "float32" {
        return Err(format!(
            "dtype {:?} is not supported: export the graph as \"float32\"",
            g.dtype
        ));
    }
    for (kind, names, shapes) in [
        ("inputs", &g.inputs, &g.input_shapes),
        ("outputs", &g.outputs, &g.output_shapes),
    ] {
        let singular = &kind[..kind.len() - 1];
        if names.is_empty() {
            return Err(format!("no {kind}: list the graph's {kind}"));
        }
        let set: BTreeSet<&String> = names.iter().collect();
        if set.len() != names.len() {
            return Err(format!(
                "{kind} {names:?} repeat a name: give each a unique name"
            ));
        }
        let keys: BTreeSet<&String> = shapes.keys().collect();
        if set != keys {
            return Err(format!(
                "{kind} {names:?} and the names in {singular}_shapes {keys:?} differ: give \
                 exactly one shape per {singular}"
            ));
        }
    }
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
            "[graphs.{graph}] {what} has shape {}, expected {} from the rest of the manifest",
            show_shape(got),
            show_shape(want)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L96: &str = include_str!("../../zoo/l96/manifest.toml");

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
