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
//! ## What makes it exact for a Gaussian prior (and why the defaults are what they are)
//! Two approximations of plain SDA bias a *cycled* filter, measured with the analytic prior of
//! [`EnsembleGaussianPrior`] on Lorenz-96 `full` (tests `analysis_start_makes_a_short_diffusion_exact_in_the_l96_regime`
//! and the experiment runs in the README):
//!
//! 1. **The likelihood's covariance.** p(y | z_σ) = N(y; H x̂₀, R + H Σ_σ Hᵀ) exactly for a Gaussian prior
//!    and linear H, with Σ_σ = Cov[x₀ | z_σ] = P (P + σ² I)⁻¹ σ² (Tweedie). SDA's R + γσ² I ignores Σ_σ,
//!    which is of the order of P itself once σ² exceeds the prior variance. When the denoiser knows its
//!    prior covariance P = U diag(λ) Uᵀ ([`Denoiser::prior_covariance`]: the localised ensemble
//!    Gaussian, which the learned l96 denoisers use as their skip connection), the sampler uses
//!    S(σ) = R + γσ² I + (H U) diag(λσ²/(λ+σ²)) (H U)ᵀ, factorised once per noise level and shared
//!    by all members.
//! 2. **The start.** Reverse diffusion from σ_start reproduces the posterior only if it starts from the
//!    posterior's noised marginal p_σ(z | y). Starting at each background member plus σ_start noise
//!    starts from the *prior's* noised marginal instead; unless σ_start is many prior standard
//!    deviations (and then the sampler needs many levels), the analysis stays biased towards the
//!    background. With L96 `full` numbers (prior sd 0.22, R = I, 40 observations) a 256-level
//!    diffusion from σ_start = 0.7 keeps a mean error of 0.07 against the Kalman update (whose shift is
//!    0.25). [`Start::Analysis`] starts each member at its perturbed-observation Kalman update under the
//!    prior's covariance instead: for a Gaussian prior that *is* a draw from the posterior, so its
//!    noised version is the noised posterior, and 8 levels from σ_start = 0.2 reproduce the Kalman
//!    mean and covariance (errors 0.008 and 0.004). The diffusion then only has to correct what is not
//!    Gaussian, at the scales below σ_start.
//!
//! Two more matter for latent bundles, whose denoiser knows no prior covariance (qg2l):
//!
//! 3. **Stiff guidance.** With R + γσ² I alone the guidance term of the predictor moves z by
//!    (σ_i² - σ_{i+1}²) Gᵀ R⁻¹ (y - H x̂₀), G = H ∂x̂₀/∂z; once (σ_i² - σ_{i+1}²) ‖Gᵀ R⁻¹ G‖ > 2 the
//!    explicit step overshoots the observations and the samples blow up (precise observations, small
//!    σ). With `jacobian_cov` (default) the sampler adds σ² G Gᵀ to the likelihood's covariance, the
//!    Tweedie covariance Cov[z₀ | z_σ] ≈ σ² I of a small σ pushed through the decoder and H, with G
//!    from one batch of VJPs (one per observation) at σ_min and the batch mean; the gain is then below
//!    one. Test `jacobian_covariance_keeps_the_guidance_stable_under_precise_observations`: σ_o 200
//!    times below the prior sd, SDA's form ends 689 away from the Kalman mean, this one 0.008. On
//!    qg2l's networks the guidance is not that stiff and the two give the same skill (seed 101, 100
//!    cycles: 571.1 vs 572.2); the cost is one VJP batch of m observations per analysis.
//! 4. **The codec's error must not cycle.** Replacing each member by decode(sample) puts the
//!    autoencoder's reconstruction error (1.7–4% of the climatological std, mostly at small scales)
//!    into the state every cycle; qg2l's dynamics amplify it (the prognostic variable is potential
//!    vorticity, ∇²ψ + …), and a filter whose analysis is just decode(encode(LETKF analysis)) diverges
//!    from the LETKF's 425 to 2,275 in 100 cycles. The analysis is therefore the increment
//!    x_start + decode(z) - decode(encode(x_start)) (test
//!    `the_codec_reconstruction_error_never_enters_the_cycled_state`): with no diffusion it is exactly
//!    the starting analysis, and the latent diffusion only adds what it changes.
//!
//! ## Defaults, and what the measurements chose (Lorenz-96, N = 20)
//! Chosen on tuning seed 101 (500–1,000 cycles), confirmed on seed 1 (README table):
//! - **Start = [`Start::SquareRoot`], σ_start = 0.015, 4 levels, no Langevin correction, RTPS 0.2.** With the
//!   background start of plain SDA (σ_start 0.7, 16 levels, 1 correction) the best learned prior
//!   reached 0.33 on `full`, 1.8× the LETKF. Starting from the Kalman-updated members (item 2 above)
//!   removes the bias: the perturbed-observation start gives 0.24, the deterministic square-root start
//!   0.22. Any larger σ_start costs skill, with the learned prior as with the analytic one (learned:
//!   σ_start 0.1 → 0.30, 0.2 → 0.32, 0.4 → 0.35): noising a good analysis and denoising it with a
//!   prior estimated from 20 members replaces structure the members carried by the prior's sampling
//!   noise. So the diffusion only corrects the smallest scales and most of the skill comes from the
//!   Gaussian part; where it does act (σ_start 0.1 + RTPS 0.3) the learned prior beats the analytic
//!   one (0.269 vs 0.277 on seed 101). Session 3 (1,000 cycles, seed 101): σ_start 0.03 / 0.015 /
//!   0.015 + RTPS 0.2 give 0.222 / 0.214 / 0.209 on `full` (spread/skill 0.88 / 0.90 / 1.08), and
//!   the same ordering on `sparse` and `stations+satellite`; on seed 1 (2,000 cycles) that is 0.214
//!   against the LETKF's 0.184, the analytic prior's 0.215, and 0.407 vs 0.428 on `sparse`.
//!   On qg2l (latent bundle, LETKF start) σ_start 0.02 with RTPS 0.15 after sampling (seed 101,
//!   100 cycles: σ_start 0.05 / 0.03 / 0.02 / 0.015 → 466.6 (RTPS 0.3) / 444.8 / 430.7 / 426.1,
//!   LETKF 425.0: the less the latent diffusion acts, the better; 0.015 over-disperses the
//!   satellite network on seed 1, spread/skill 1.33, so 0.02 stays).
//! - **Prior = the bundle's set-encoder denoiser whose skip is the localised ensemble Gaussian.**
//!   The members' correlations enter twice: exactly, through the Gaussian skip and its covariance (the
//!   likelihood and the start), and learned, through the set encoder. Offline the network improves
//!   the skip's x̂₀ by up to 20% (σ 0.1–0.3: RMSE 0.124 vs 0.154). The set encoder alone, without the
//!   skip (bundles `l96-setenc` vs `l96-meanspread`, background start), made no difference (0.332 vs
//!   0.326 over 5,000 cycles).
//! - **RTPS 0.2** after sampling: at σ_start 0.015 the members are slightly under-dispersed
//!   (spread/skill 0.85–0.90) and 0.2 brings them to 1.04–1.08 for equal or better RMSE; 0.4
//!   over-disperses (1.23). RTPS 0.3 helps once the diffusion acts (σ_start 0.1: 0.30 → 0.27).
//! - **No self-training round by default**: the bundle fine-tuned on the score filter's own cycled
//!   triples (`models/zoo/l96-selftrain`, `models/train/run.sh l96 --self-train`) gives the same skill
//!   as round 1 (seed 1, 2,000 cycles: 0.2140 vs 0.2139 at the shipped settings; 0.227 vs 0.227 at
//!   σ_start 0.03), so the default stays the round-1 bundle, which needs no cycled data to remake.
//! - **No latent optimisation** (LO-SDA, `lo_steps`): 3 steps after sampling pull the members onto the
//!   observations and collapse the spread (σ_start 0.1: 0.303 → 0.313, spread/skill 0.74 → 0.56).
//! - Exactness: with the analytic prior and linear H the whole step reproduces the Kalman update
//!   (tests `analysis_start_makes_a_short_diffusion_exact_in_the_l96_regime`,
//!   `guided_sampler_matches_the_kalman_update`).
//!
//! ## References
//! - Rozet, F., Louppe, G. (2023). Score-based data assimilation. NeurIPS.
//! - Whitaker, J. S., Hamill, T. M. (2002). Ensemble data assimilation without perturbed observations.
//!   Mon. Wea. Rev. 130, 1913–1924.
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
