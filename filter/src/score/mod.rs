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
//! followed by C steps of the Langevin corrector at σ_{i+1} (predictor–corrector sampling, Song
//! et al. 2021),
//!
//!   z ← z + δ s(z; σ_{i+1}) + sqrt(2δ) ξ,   δ = τ / mean(s²) over the batch,
//!
//! with the step-size rule of SDA (Rozet & Louppe 2023). Members are independent draws, batched
//! through the denoiser.
//!
//! ## Four choices for a cycled filter
//! Each replaces an approximation of plain SDA that biases a filter run cycle after cycle
//! (measurements: `docs/results.md`, "Score sampler: design measurements").
//!
//! 1. **The likelihood's covariance.** For a Gaussian prior N(x̄, P) and linear H,
//!    p(y | z_σ) = N(y; H x̂₀, R + H Σ_σ Hᵀ) exactly, Σ_σ = Cov[x₀ | z_σ] = P (P + σ² I)⁻¹ σ²
//!    (Tweedie). When the denoiser knows P = U diag(λ) Uᵀ ([`Denoiser::prior_covariance`]) the
//!    sampler uses S(σ) = R + γσ² I + (H U) diag(λσ²/(λ+σ²)) (H U)ᵀ, factorised once per noise
//!    level and shared by all members, instead of SDA's R + γσ² I. For a learned prior the same
//!    identity holds with the prior's own Tweedie covariance, Σ_σ = σ² ∂D/∂z (the Jacobian of the
//!    denoiser is the posterior covariance over σ²): with [`SamplerConfig::tweedie`] the sampler
//!    forms S(σ) = R + γσ² I + σ² [H J Hᵀ]₊ at every level from one batch of m VJPs at the batch
//!    mean (row j of H J is the VJP with cotangent Hᵀ eⱼ; symmetrised, negative eigenvalues set to
//!    0), so the guidance is consistent with the prior at large σ, where a Gaussian's covariance
//!    and the learned prior disagree. For a Gaussian prior it is exact (tests
//!    `tweedie_covariance_from_vjps_is_the_gaussian_posterior_covariance`,
//!    `tweedie_guidance_gives_the_exact_posterior_score_for_a_gaussian_prior`). Cost: one more
//!    forward and one VJP call of batch m per level.
//! 2. **The start.** Reverse diffusion from σ_start reproduces the posterior only if it starts from
//!    the posterior's noised marginal p_σ(z | y). [`Start::Analysis`] and [`Start::SquareRoot`]
//!    start each member at its EnKF update under the prior's covariance (perturbed observations,
//!    [`crate::enkf::perturbed_obs_enkf`]; or the EnSRF, [`crate::enkf::ensrf()`]): for a Gaussian
//!    prior these are posterior members, so their noised versions are the noised posterior, and the
//!    diffusion only corrects what is not Gaussian, at scales below σ_start. Without a prior
//!    covariance (latent bundles) the start is [`ScoreFilter::baseline`]'s analysis.
//!    [`Start::Baseline`] starts every member at the baseline's (the tuned LETKF's) analysis
//!    whatever the prior, x_start,k = x^a_LETKF,k, and [`ScoreFilter::sigma_start_spread`] sets
//!    σ_start = f · s_b per cycle, s_b = (1/d Σ_j Var_k[z^b_{k,j}])^{1/2} the background spread in
//!    the space the diffusion runs in. With f = O(1) (the long window, where a 48-hour forecast is
//!    far from Gaussian) the noise reaches the background's own uncertainty and the learned prior,
//!    not the start, shapes the sample, while the start keeps what the observations said; with f
//!    small the step is the LETKF plus a correction below s_b. With the diffusion off it is the
//!    LETKF exactly, so the LETKF is this filter's start-only control.
//! 3. **Stiff guidance.** With R + γσ² I alone, the predictor's guidance moves z by
//!    (σ_i² - σ_{i+1}²) Gᵀ R⁻¹ (y - H x̂₀), G = H ∂x̂₀/∂z, and overshoots the observations once
//!    (σ_i² - σ_{i+1}²) ‖Gᵀ R⁻¹ G‖ > 2. With [`SamplerConfig::jacobian_cov`] the sampler adds σ² G Gᵀ
//!    to the likelihood's covariance (Tweedie's Cov[z₀ | z_σ] ≈ σ² I for small σ, pushed through the
//!    decoder and H), G from one batch of m VJPs at σ_min and the batch mean; the gain is then
//!    below one.
//! 4. **The codec's error does not cycle.** The analysis is the increment
//!
//!      x^a = x_start + decode(z) - decode(encode(x_start)),
//!
//!    so the autoencoder's reconstruction error never enters the cycled state; with no diffusion it
//!    is exactly the starting analysis (for pixel-space models, decode(z)).
//!
//! With the analytic prior ([`EnsembleGaussianPrior`]) and linear H the whole step reproduces the
//! Kalman update (tests `guided_sampler_matches_the_kalman_update`,
//! `analysis_start_makes_a_short_diffusion_exact_in_the_l96_regime`). The shipped settings per
//! regime (the LETKF start; f = 1 and 16 levels with the learned long-window prior where the
//! forecast is not Gaussian, f = 0.02 where it is) and the measurements that chose them are in
//! `docs/results.md`.
//!
//! ## References
//! - Rozet, F., Louppe, G. (2023). Score-based data assimilation. NeurIPS.
//! - Whitaker, J. S., Hamill, T. M. (2002). Ensemble data assimilation without perturbed observations.
//!   Mon. Wea. Rev. 130, 1913–1924.
//! - Burgers, G., van Leeuwen, P. J., Evensen, G. (1998). Analysis scheme in the ensemble Kalman
//!   filter. Mon. Wea. Rev. 126, 1719–1724.
//! - Houtekamer, P. L., Mitchell, H. L. (2001). A sequential ensemble Kalman filter for atmospheric data
//!   assimilation. Mon. Wea. Rev. 129, 123–137.
//! - Li et al. (2025). LO-SDA: latent optimization for score-based atmospheric data assimilation.
//! - Karras, T., Aittala, M., Aila, T., Laine, S. (2022). Elucidating the design space of
//!   diffusion-based generative models. NeurIPS.
//! - Song, Y. et al. (2021). Score-based generative modeling through stochastic differential
//!   equations. ICLR.

mod filter;
mod gaussian;
mod sampler;

pub use filter::{ScoreFilter, ScorePrior, Start};
pub use gaussian::{EnsembleGaussianPrior, GaussianDenoiser, SpectralGaussianDenoiser, Spectrum};
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
    fn denoise_vjp(
        &self,
        z: &[f64],
        sigma: &[f64],
        v: &[f64],
        x0: &mut [f64],
        jtv: &mut [f64],
    ) -> Result<(), FilterError>;

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
