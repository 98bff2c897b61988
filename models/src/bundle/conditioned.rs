//! # Conditioned model
//!
//! A bundle's denoiser is a network D_θ(z; σ | c) of the noisy sample z = z₀ + σε, ε ~ N(0, I), the
//! noise level σ and a conditioning c computed once per cycle from the background ensemble; it
//! approximates E[z₀ | z] under the forecast distribution, so that the score is
//! ∇ log p_σ(z) = (D_θ(z; σ) − z)/σ² (Tweedie's formula; EDM parameterisation, Karras et al. 2022).
//! [`Bundle::condition`] computes c from the N background members x_k (or their latents z_k = ℰ(x_k)
//! for a latent bundle, see [`super::latent`]) and returns the [`ConditionedDenoiser`] the score
//! filter samples with:
//!
//! - `mean`   z̄ = (1/N) Σ_k z_k;
//! - `spread` s_i = ( Σ_k (z_{k,i} − z̄_i)² / (N − 1) )^½ per point;
//! - `features` = C_φ(members, z̄, s), a permutation-invariant set encoder of the members
//!   (Zaheer et al. 2017), when the bundle has `conditioner.onnx`;
//! - `basis`, `eigvals` = U, λ of the localised ensemble Gaussian P = ρ (L ∘ C) + s₀² I = U diag(λ) Uᵀ
//!   (`[conditioning.ensemble_gaussian]`, pixel space only; see
//!   [`assimd_filter::score::EnsembleGaussianPrior`]). Its exact denoiser
//!   x̄ + U diag(λ/(λ + σ²)) Uᵀ (z − x̄) is the network's skip connection, and P is also handed to the
//!   sampler as [`Denoiser::prior_covariance`].
//!
//! Every conditioning input has batch dimension 1 and is broadcast over the B samples of a call. The
//! [`Denoiser`] works in f64; the graphs run in float32.
//!
//! ## References
//! - Karras, T., Aittala, M., Aila, T., Laine, S. (2022). Elucidating the design space of
//!   diffusion-based generative models. NeurIPS.
//! - Efron, B. (2011). Tweedie's formula and selection bias. J. Am. Stat. Assoc. 106, 1602–1614.
//! - Zaheer, M., Kottur, S., Ravanbakhsh, S., Póczos, B., Salakhutdinov, R., Smola, A. (2017). Deep
//!   sets. NeurIPS.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use assimd_filter::score::{Denoiser, EnsembleGaussianPrior};
use assimd_filter::{Ensemble, FilterError};
use nalgebra::{DMatrix, DVector};

use super::latent::LatentCodec;
use super::manifest::Manifest;
use super::runtime::{Graph, TensorF32};
use super::{Bundle, BundleError};
use crate::testbed::{Testbed, TestbedKind};

/// The ensemble Gaussian of `[conditioning.ensemble_gaussian]` on the manifest's testbed grid, if the
/// manifest has one (built once at load; `manifest_path` is for messages).
pub(super) fn ensemble_gaussian(
    manifest: &Manifest,
    manifest_path: &Path,
    options: &super::BundleOptions,
) -> Result<Option<EnsembleGaussianPrior>, BundleError> {
    let bad = |message: String| BundleError::Manifest {
        path: manifest_path.to_path_buf(),
        message,
    };
    let Some(eg) = &manifest.conditioning.ensemble_gaussian else {
        if options.prior_localization_km.is_some() || options.prior_inflation.is_some() {
            return Err(bad("this bundle has no [conditioning.ensemble_gaussian] to override: remove prior_localization_km and prior_inflation from [score]".into()));
        }
        return Ok(None);
    };
    let kind: TestbedKind = manifest.testbed.parse().map_err(|e: String| bad(e))?;
    let space = Testbed::new(kind).space;
    if space.dim() != manifest.state_dim() {
        return Err(bad(format!(
            "[grid] has {} values but testbed {kind} has {}: fix [grid] or testbed",
            manifest.state_dim(),
            space.dim()
        )));
    }
    EnsembleGaussianPrior::new(
        &space,
        options.prior_localization_km.unwrap_or(eg.half_width_km),
        options.prior_inflation.unwrap_or(eg.inflation),
        eg.floor,
    )
    .map(Some)
    .map_err(|e| bad(format!("[conditioning.ensemble_gaussian]: {e}")))
}

impl Bundle {
    /// Condition the bundle on a cycle's background ensemble: encodes the members (latent bundles),
    /// computes the mean and per-point spread (std, ddof = 1), the ensemble Gaussian's basis and
    /// eigenvalues when the manifest has one, runs `conditioner.onnx` once when the bundle has one,
    /// and returns the [`Denoiser`] for the cycle. See the module documentation.
    pub fn condition(&self, background: &Ensemble) -> Result<ConditionedDenoiser, BundleError> {
        let m = &self.manifest;
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
        let codec = LatentCodec::of(self)?;
        let members_z = match &codec {
            Some(c) => Some(c.encode_ensemble(background)?),
            None => None,
        };
        // The members the statistics are taken over: latents, or the states themselves.
        let stats = members_z.as_ref().unwrap_or(background);
        let mean = stats.mean();
        let spread = stats.std();
        let mut cond: BTreeMap<String, TensorF32> = BTreeMap::new();
        let mut prior_cov = None;
        if let (Some(g), None) = (&self.gaussian, &codec) {
            let (u, lam) = self.gaussian_inputs(g, background, &mut cond)?;
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
        let features = self.run_conditioner(stats, &mut cond)?;
        for (name, c) in &m.conditioning.inputs {
            let t = cond.get(name).ok_or_else(|| BundleError::Unsupported {
                bundle: m.name.clone(),
                message: format!(
                    "conditioning input `{name}` is neither mean, spread, basis/eigvals \
                     ([conditioning.ensemble_gaussian]) nor a conditioner output: rename it or \
                     add it to the conditioner's outputs"
                ),
            })?;
            if t.shape != c.shape {
                return Err(BundleError::Input {
                    graph: "conditioner".into(),
                    message: format!(
                        "conditioning input `{name}` came out with shape {:?}, the manifest says {:?}",
                        t.shape, c.shape
                    ),
                });
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

    /// `basis` (1, n, k) and `eigvals` (1, k) of P = U diag(λ) Uᵀ into `cond`; returns U and λ.
    fn gaussian_inputs(
        &self,
        g: &EnsembleGaussianPrior,
        background: &Ensemble,
        cond: &mut BTreeMap<String, TensorF32>,
    ) -> Result<(DMatrix<f64>, DVector<f64>), BundleError> {
        let d = background.dim();
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
        Ok((u, lam))
    }

    /// Run `conditioner.onnx` (if the bundle has one) on the members `stats` and the inputs already in
    /// `cond`; its outputs join `cond`. Returns the `features` output as f64.
    fn run_conditioner(
        &self,
        stats: &Ensemble,
        cond: &mut BTreeMap<String, TensorF32>,
    ) -> Result<Option<Vec<f64>>, BundleError> {
        let Some(conditioner) = self.graphs.get("conditioner") else {
            return Ok(None);
        };
        let n = stats.n_members();
        let mut inputs = Vec::new();
        for name in &conditioner.spec.inputs {
            let t = if name == "members" {
                let shape: Vec<usize> = [1, n]
                    .into_iter()
                    .chain(self.manifest.latent.shape.iter().copied())
                    .collect();
                TensorF32::from_f64(shape, stats.as_flat())
            } else {
                cond.get(name)
                    .cloned()
                    .ok_or_else(|| BundleError::Unsupported {
                        bundle: self.manifest.name.clone(),
                        message: format!(
                            "conditioner input `{name}` cannot be computed from an ensemble \
                             (it takes members and the mean, spread, basis or eigvals)"
                        ),
                    })?
            };
            inputs.push((name.clone(), t));
        }
        let outs = conditioner.run(inputs)?;
        let mut features = None;
        for (name, t) in conditioner.spec.outputs.iter().zip(outs) {
            if name == "features" {
                features = Some(t.data.iter().map(|&v| f64::from(v)).collect());
            }
            cond.insert(name.clone(), t);
        }
        Ok(features)
    }
}

/// A bundle's denoiser conditioned on one cycle's background ensemble: implements [`Denoiser`] with
/// dynamic batch B (f64 in and out, float32 inside the graphs). Encode/decode are the identity for a
/// pixel-space bundle and the bundle's encoder/decoder for a latent one. It shares the sessions with
/// the [`Bundle`], so making one per cycle is cheap.
pub struct ConditionedDenoiser {
    /// The bundle's name, for messages.
    bundle: String,
    /// D_θ: latent -> latent.
    denoiser: Arc<Graph>,
    /// (x̂₀ = decode(D_θ), Jᵀv).
    vjp: Arc<Graph>,
    /// The conditioning inputs, fixed for the cycle.
    cond: Vec<(String, TensorF32)>,
    /// One sample's shape in the sampling space.
    latent_shape: Vec<usize>,
    /// One state's shape.
    grid_dims: Vec<usize>,
    /// z̄ of the background (latent for latent bundles).
    mean: Vec<f64>,
    /// Per-point spread of the background (latent for latent bundles).
    spread: Vec<f64>,
    /// The conditioner's output, when there is a conditioner.
    features: Option<Vec<f64>>,
    /// P = U diag(λ) Uᵀ when the bundle has the ensemble Gaussian.
    prior_cov: Option<(DMatrix<f64>, DVector<f64>)>,
    /// The encoder/decoder of a latent bundle.
    codec: Option<LatentCodec>,
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
    /// The background ensemble mean (of the encoded members for a latent bundle).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The background per-point spread (std, ddof = 1; of the encoded members for a latent bundle).
    pub fn spread(&self) -> &[f64] {
        &self.spread
    }

    /// The conditioner's features (C × d, row-major), when the bundle has a conditioner.
    pub fn features(&self) -> Option<&[f64]> {
        self.features.as_deref()
    }

    /// The graph inputs for a batch: `x_sigma`, `sigma`, the conditioning, and `v` when given.
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
        let batched = |shape: &[usize]| -> Vec<usize> {
            std::iter::once(b).chain(shape.iter().copied()).collect()
        };
        let mut inputs = Vec::with_capacity(self.cond.len() + 3);
        inputs.push((
            "x_sigma".to_string(),
            TensorF32::from_f64(batched(&self.latent_shape), z),
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
                TensorF32::from_f64(batched(&self.grid_dims), v),
            ));
        }
        Ok(inputs)
    }

    fn model_error(&self, e: impl fmt::Display) -> FilterError {
        FilterError::Model(format!("bundle `{}`: {e}", self.bundle))
    }

    /// Name the bundle in a codec's model error.
    fn codec_error(&self, e: FilterError) -> FilterError {
        match e {
            FilterError::Model(m) => self.model_error(m),
            other => other,
        }
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
            Some(c) => c.encode(x).map_err(|e| self.codec_error(e)),
        }
    }

    fn decode(&self, z: &[f64]) -> Result<Vec<f64>, FilterError> {
        match &self.codec {
            None => Ok(z.to_vec()),
            Some(c) => c.decode(z).map_err(|e| self.codec_error(e)),
        }
    }

    fn prior_covariance(&self) -> Option<(&DMatrix<f64>, &DVector<f64>)> {
        self.prior_cov.as_ref().map(|(u, l)| (u, l))
    }
}
