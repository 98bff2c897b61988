//! # Latent model
//!
//! A latent bundle (any codec but `identity`) samples in a latent space z ∈ ℝᵈ instead of the
//! physical state x ∈ ℝⁿ, through an autoencoder exported as two graphs:
//!
//! ```text
//! z = ℰ(x)      encoder.onnx   [B, grid...]   -> [B, latent...]
//! x = 𝒟(z)      decoder.onnx   [B, latent...] -> [B, grid...]
//! ```
//!
//! The background members are encoded once per cycle, z_k = ℰ(x_k), and every conditioning
//! statistic (mean, spread, set-encoder features) is taken over the z_k; the denoiser
//! D_θ(z; σ) ≈ E[z₀ | z₀ + σε = z] acts on latents. Observations stay physical: `denoiser_vjp`
//! returns x̂₀ = 𝒟(D_θ(z; σ)) and Jᵀv with J = ∂(𝒟 ∘ D_θ)/∂z, so the guided sampler's likelihood
//! gradient Jᵀ Hᵀ Σ⁻¹ (y − H x̂₀) (Σ the observation-error covariance it assumes at σ) is one graph
//! call, with no separate decoder Jacobian. The analysis is decoded back to the grid with 𝒟. Any scaling between physical units and z (per-layer
//! climatological std, per-channel latent std) is folded into ℰ and 𝒟.
//!
//! The ensemble Gaussian skip connection (`[conditioning.ensemble_gaussian]`) is a pixel-space
//! construction and is not used by latent bundles.
//!
//! ## References
//! - Rombach, R., Blattmann, A., Lorenz, D., Esser, P., Ommer, B. (2022). High-resolution image
//!   synthesis with latent diffusion models. CVPR.
//! - Li et al. (2025). LO-SDA: latent optimization for score-based atmospheric data assimilation.

use std::sync::Arc;

use assimd_filter::{Ensemble, FilterError};

use super::runtime::{Graph, TensorF32};
use super::{Bundle, BundleError};

/// The encoder/decoder pair of a latent bundle, shared with the [`Bundle`] it came from.
#[derive(Clone)]
pub(super) struct LatentCodec {
    /// ℰ: `[B, grid...]` -> `[B, latent...]`.
    encoder: Arc<Graph>,
    /// 𝒟: `[B, latent...]` -> `[B, grid...]`.
    decoder: Arc<Graph>,
    /// The grid's shape without the batch dimension.
    grid_dims: Vec<usize>,
    /// The latent shape without the batch dimension.
    latent_shape: Vec<usize>,
}

impl LatentCodec {
    /// The codec of `bundle`, or `None` for a pixel-space bundle.
    pub(super) fn of(bundle: &Bundle) -> Result<Option<LatentCodec>, BundleError> {
        let m = &bundle.manifest;
        if m.is_pixel_space() {
            return Ok(None);
        }
        Ok(Some(LatentCodec {
            encoder: bundle.graph("encoder")?.clone(),
            decoder: bundle.graph("decoder")?.clone(),
            grid_dims: m.grid.dims.clone(),
            latent_shape: m.latent.shape.clone(),
        }))
    }

    /// The latent ensemble z_k = ℰ(x_k), all members in one encoder call.
    pub(super) fn encode_ensemble(&self, members: &Ensemble) -> Result<Ensemble, BundleError> {
        let n = members.n_members();
        let shape: Vec<usize> = std::iter::once(n)
            .chain(self.grid_dims.iter().copied())
            .collect();
        let z = self.encoder.run(vec![(
            self.encoder.spec.inputs[0].clone(),
            TensorF32::from_f64(shape, members.as_flat()),
        )])?;
        let zf: Vec<f64> = z[0].data.iter().map(|&v| f64::from(v)).collect();
        let latent_dim = self.latent_shape.iter().product();
        Ensemble::from_flat(n, latent_dim, zf).map_err(|e| BundleError::Input {
            graph: "encoder".into(),
            message: e.to_string(),
        })
    }

    /// ℰ on a state or a batch of states (B × n, flat).
    pub(super) fn encode(&self, x: &[f64]) -> Result<Vec<f64>, FilterError> {
        run_batch(&self.encoder, &self.grid_dims, x)
    }

    /// 𝒟 on a latent or a batch of latents (B × d, flat).
    pub(super) fn decode(&self, z: &[f64]) -> Result<Vec<f64>, FilterError> {
        run_batch(&self.decoder, &self.latent_shape, z)
    }
}

/// Run a one-input graph on a batch of B inputs of shape `shape` (flat, B × ∏shape).
fn run_batch(g: &Graph, shape: &[usize], x: &[f64]) -> Result<Vec<f64>, FilterError> {
    let per: usize = shape.iter().product();
    if x.is_empty() || !x.len().is_multiple_of(per) {
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
        .map_err(|e| FilterError::Model(e.to_string()))?;
    Ok(out[0].data.iter().map(|&v| f64::from(v)).collect())
}
