//! # Score-based filter
//!
//! Posterior sampling by reverse diffusion with observation guidance (SDA, Rozet & Louppe 2023), the
//! analysis step of DESIGN §6. A [`Denoiser`] D(z; σ) estimates E[z₀ | z_σ = z] for z_σ = z₀ + σ ε,
//! already conditioned on the cycle's background ensemble; its score is (D(z; σ) - z)/σ². With
//! observations y = H(x) + ε_o, ε_o ~ N(0, R), and x = decode(z), the posterior score is approximated by
//!
//!   s(z; σ) = (D(z; σ) - z)/σ²  +  Jᵀ H'ᵀ (R + γ σ² I)⁻¹ (y - H(x̂₀)),   x̂₀ = decode(D(z; σ)),
//!
//! where J = ∂x̂₀/∂z comes from the denoiser's VJP graph and H'ᵀ from the operator's adjoint.
//!
//! Noise levels follow the EDM/Karras schedule σ_i = (σ_max^{1/ρ} + i/(S-1) (σ_min^{1/ρ} -
//! σ_max^{1/ρ}))^ρ, ρ = 7, from σ_start down to σ_min. Each step is a predictor, one
//! Euler–Maruyama step of the reverse variance-exploding SDE,
//!
//!   z ← z + (σ_i² - σ_{i+1}²) s(z; σ_i) + sqrt(σ_i² - σ_{i+1}²) ξ,
//!
//! followed by C Langevin corrections at σ_{i+1} (Song et al. 2021),
//!
//!   z ← z + δ s(z; σ_{i+1}) + sqrt(2δ) ξ,   δ = τ / mean(s²) over the batch,
//!
//! with the step size rule of SDA. Members are independent draws, batched through the denoiser.
//!
//! ## References
//! - Rozet, F., Louppe, G. (2023). Score-based data assimilation. NeurIPS.
//! - Karras, T., Aittala, M., Aila, T., Laine, S. (2022). Elucidating the design space of
//!   diffusion-based generative models. NeurIPS.
//! - Song, Y. et al. (2021). Score-based generative modeling through stochastic differential
//!   equations. ICLR.

mod ensemble;
mod filter;
mod gaussian;
mod sampler;

pub use ensemble::{EnsembleGaussianPrior, SpectralGaussianDenoiser};
pub use filter::{ScoreFilter, ScorePrior, Start};
pub use gaussian::GaussianDenoiser;
pub use sampler::{karras_schedule, Sampler, SamplerConfig};

use crate::FilterError;

/// A denoiser already conditioned on one cycle's background ensemble, acting on batches of B
/// states of dimension [`Denoiser::dim`] (row-major, B × dim).
pub trait Denoiser: Send + Sync {
    /// Dimension d of the sampling space (latent, or the state for pixel-space models).
    fn dim(&self) -> usize;

    /// Dimension n of the physical state that [`Denoiser::denoise_vjp`] decodes to.
    fn state_dim(&self) -> usize;

    /// D(z; σ) for a batch: `z` is B × d, `sigma` has B entries, `out` is B × d.
    fn denoise(&self, z: &[f64], sigma: &[f64], out: &mut [f64]) -> Result<(), FilterError>;

    /// x̂₀ = decode(D(z; σ)) (B × n) and Jᵀ v (B × d) for cotangents `v` (B × n).
    fn denoise_vjp(&self, z: &[f64], sigma: &[f64], v: &[f64], x0: &mut [f64], jtv: &mut [f64]) -> Result<(), FilterError>;

    /// Map a physical state, or a batch of them (B × n), into the sampling space (identity for
    /// pixel-space models).
    fn encode(&self, x: &[f64]) -> Result<Vec<f64>, FilterError>;

    /// Map a sample, or a batch of them (B × d), back to physical states (identity for pixel-space
    /// models).
    fn decode(&self, z: &[f64]) -> Result<Vec<f64>, FilterError>;

    /// The prior covariance P = U diag(λ) Uᵀ in state space (U: n × k, orthonormal columns), if this
    /// denoiser knows one (the localised ensemble Gaussian it is built on). The sampler then uses
    /// Cov[x₀ | z_σ] ≈ U diag(λσ²/(λ+σ²)) Uᵀ in its likelihood (see the module docs); without it,
    /// SDA's γσ²I.
    fn prior_covariance(&self) -> Option<(&nalgebra::DMatrix<f64>, &nalgebra::DVector<f64>)> {
        None
    }
}

#[cfg(test)]
mod tests;
