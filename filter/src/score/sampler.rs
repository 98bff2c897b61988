//! The guided predictor–corrector sampler (module docs of `score` for the equations).

use super::Denoiser;
use crate::enkf::tangent_basis;
use crate::obs::{ObsBatch, ObservationOperator};
use crate::FilterError;
use nalgebra::{DMatrix, DVector};
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};

/// Sampler settings (see the module docs for the symbols).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Number of noise levels S; 0 switches the diffusion off (with `lo_steps = 0`): the analysis
    /// is then the start alone ([`super::Start`]), the control that isolates the learned prior.
    pub steps: usize,
    /// Langevin corrector steps C per noise level (the corrector of predictor–corrector sampling).
    pub corrections: usize,
    /// Langevin step-size factor τ.
    pub tau: f64,
    /// Guidance variance factor γ in R + γ σ² I.
    pub gamma: f64,
    /// Initial noise level σ_start (the sampler starts at the encoded background + σ_start ξ).
    pub sigma_start: f64,
    /// Final noise level σ_min.
    pub sigma_min: f64,
    /// Karras schedule exponent ρ.
    pub rho: f64,
    /// Latent optimisation after sampling (LO-SDA, Li et al. 2025): gradient steps per member on
    /// ½‖y - H(decode(z))‖²_R + ½‖z - z_s‖²/s_b², from the sample z_s (0 = off; see [`Sampler::optimise`]).
    pub lo_steps: usize,
    /// When the denoiser knows no prior covariance (latent bundles), add σ² G Gᵀ to the likelihood's
    /// covariance, G = H ∂x̂₀/∂z at σ_min and the batch mean (Tweedie: Cov[z₀ | z_σ] ≈ σ² I for small
    /// σ), from one batch of VJPs per analysis; see the module docs for why (stiff guidance).
    pub jacobian_cov: bool,
    /// Guidance with the prior's own posterior covariance (Tweedie): at every noise level σ,
    /// S(σ) = R + γσ²I + σ² [H J Hᵀ]₊ with J = ∂D/∂z at σ and the batch mean, from one batch of m
    /// VJPs (symmetrised, negative eigenvalues set to 0), so that Cov[x₀ | z_σ] = σ² J is the
    /// learned prior's and not a Gaussian's. Takes precedence over the denoiser's prior covariance
    /// and over `jacobian_cov`; pixel-space denoisers only.
    pub tweedie: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            steps: 16,
            corrections: 1,
            tau: 0.05,
            gamma: 0.01,
            sigma_start: 2.0,
            sigma_min: 0.01,
            rho: 7.0,
            lo_steps: 0,
            jacobian_cov: true,
            tweedie: false,
        }
    }
}

impl SamplerConfig {
    /// True when the diffusion is switched off (`steps = 0`): the analysis is the start alone.
    pub fn diffusion_off(&self) -> bool {
        self.steps == 0
    }

    /// Check ranges; errors name the fix.
    pub fn validate(self) -> Result<Self, FilterError> {
        let bad = |m: String| Err(FilterError::InvalidParameter(m));
        if self.steps == 1 {
            return bad("steps must be >= 2 (0 = no diffusion, the start alone), got 1".into());
        }
        if self.steps == 0 && self.lo_steps > 0 {
            return bad("steps = 0 (no diffusion) leaves nothing for lo_steps to optimise: set lo_steps = 0 or steps >= 2".into());
        }
        if !(self.sigma_min > 0.0 && self.sigma_start > self.sigma_min) {
            return bad(format!(
                "need 0 < sigma_min < sigma_start, got {} and {}",
                self.sigma_min, self.sigma_start
            ));
        }
        if !(self.tau > 0.0 && self.tau.is_finite()) {
            return bad(format!("tau must be > 0, got {}", self.tau));
        }
        if !(self.gamma >= 0.0 && self.gamma.is_finite()) {
            return bad(format!(
                "gamma must be >= 0 (1e-2..1e-1 typical), got {}",
                self.gamma
            ));
        }
        if self.tweedie && self.lo_steps > 0 {
            return bad(
                "tweedie guidance and lo_steps (LO-SDA) do not combine: set one of them off".into(),
            );
        }
        if self.rho.is_nan() || self.rho <= 0.0 {
            return bad(format!("rho must be > 0 (7 is EDM's), got {}", self.rho));
        }
        Ok(self)
    }
}

/// The EDM/Karras noise levels from `sigma_max` down to `sigma_min`, `steps` of them.
pub fn karras_schedule(sigma_max: f64, sigma_min: f64, steps: usize, rho: f64) -> Vec<f64> {
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    (0..steps)
        .map(|i| (a + i as f64 / (steps - 1) as f64 * (b - a)).powf(rho))
        .collect()
}

/// H Cov[x₀ | z_σ] Hᵀ in observation space, for the likelihood's covariance.
pub(crate) enum ObsCovariance {
    /// A prior covariance U diag(λ) Uᵀ seen through H: (H U) diag(λσ²/(λ + σ²)) (H U)ᵀ.
    Spectral { hu: DMatrix<f64>, lam: DVector<f64> },
    /// σ² M: M = G Gᵀ with G = H ∂x̂₀/∂z at σ_min, formed once per analysis (`jacobian_cov`), or
    /// M = [H J Hᵀ]₊ at one noise level (`tweedie`).
    Jacobian { ggt: DMatrix<f64> },
}

impl ObsCovariance {
    pub(crate) fn at(&self, s2: f64) -> DMatrix<f64> {
        match self {
            ObsCovariance::Spectral { hu, lam } => {
                let mut hw = hu.clone();
                for k in 0..hw.ncols() {
                    hw.column_mut(k).scale_mut(lam[k] * s2 / (lam[k] + s2));
                }
                &hw * hu.transpose()
            }
            ObsCovariance::Jacobian { ggt } => ggt * s2,
        }
    }
}

/// H J at noise level σ and the batch mean z̄ of `z` (m × d), with H linearised at x̄ =
/// decode(D(z̄; σ)), and the rows Hᵀ eⱼ (m × n) it was computed from: row j of H J is the VJP of
/// x̂₀ with the cotangent Hᵀ eⱼ, one batch of m VJPs.
fn obs_jacobian(
    den: &dyn Denoiser,
    z: &[f64],
    sigma: f64,
    batch: &ObsBatch,
) -> Result<(DMatrix<f64>, DMatrix<f64>), FilterError> {
    let (m, d, n) = (batch.len(), den.dim(), den.state_dim());
    let b = z.len() / d;
    let mut zbar = vec![0.0; d];
    for zk in z.chunks(d) {
        for (a, v) in zbar.iter_mut().zip(zk) {
            *a += v / b as f64;
        }
    }
    let mut dz = vec![0.0; d];
    den.denoise(&zbar, &[sigma], &mut dz)?;
    let xbar = den.decode(&dz)?;
    let mut ht = vec![0.0; m * n];
    let mut e = vec![0.0; m];
    for j in 0..m {
        e[j] = 1.0;
        batch.op.adjoint(&xbar, &e, &mut ht[j * n..(j + 1) * n]);
        e[j] = 0.0;
    }
    let zs: Vec<f64> = (0..m).flat_map(|_| zbar.iter().copied()).collect();
    let (mut xs, mut hj) = (vec![0.0; m * n], vec![0.0; m * d]);
    den.denoise_vjp(&zs, &vec![sigma; m], &ht, &mut xs, &mut hj)?;
    // Row-major m × d and m × n buffers as column-major matrices.
    Ok((
        DMatrix::from_row_slice(m, d, &hj),
        DMatrix::from_row_slice(m, n, &ht),
    ))
}

/// Guided posterior sampler over a batch of members.
pub struct Sampler {
    /// Settings.
    pub config: SamplerConfig,
}

fn normal(rng: &mut dyn RngCore) -> f64 {
    <StandardNormal as Distribution<f64>>::sample(&StandardNormal, rng)
}

impl Sampler {
    /// A sampler with validated settings.
    pub fn new(config: SamplerConfig) -> Result<Self, FilterError> {
        Ok(Sampler {
            config: config.validate()?,
        })
    }

    /// H U and λ of the denoiser's prior covariance (see [`Denoiser::prior_covariance`]), linearised
    /// at the first member's decoded state, if the denoiser has one; else, with `jacobian_cov`, the
    /// Jacobian G = H ∂x̂₀/∂z at σ_min and the batch mean, one VJP per observation.
    fn obs_space_covariance(
        &self,
        den: &dyn Denoiser,
        z: &[f64],
        batch: &ObsBatch,
    ) -> Result<Option<ObsCovariance>, FilterError> {
        let m = batch.len();
        if m == 0 {
            return Ok(None);
        }
        if let Some((u, lam)) = den.prior_covariance() {
            let x = den.decode(&z[..den.dim()])?;
            return Ok(Some(ObsCovariance::Spectral {
                hu: tangent_basis(batch, &x, u),
                lam: lam.clone(),
            }));
        }
        if !self.config.jacobian_cov {
            return Ok(None);
        }
        let (g, _) = obs_jacobian(den, z, self.config.sigma_min, batch)?;
        Ok(Some(ObsCovariance::Jacobian {
            ggt: &g * g.transpose(),
        }))
    }

    /// The Tweedie form of H Cov[x₀ | z_σ] Hᵀ at this σ: σ² [H J Hᵀ]₊, J = ∂D/∂z at σ and the
    /// batch mean z̄, H linearised at D(z̄; σ). Row j of H J is the VJP with the cotangent Hᵀ eⱼ,
    /// so one batch of m VJPs gives H J, and (H J Hᵀ)_{jl} = (H J)ⱼ · Hᵀ e_l. For a Gaussian prior
    /// J = P (P + σ² I)⁻¹ is symmetric and σ² H J Hᵀ is exactly H Σ_σ Hᵀ; a trained J is nearly
    /// symmetric, so the matrix is symmetrised and its negative eigenvalues (noise) set to 0.
    pub(crate) fn tweedie_covariance(
        &self,
        den: &dyn Denoiser,
        z: &[f64],
        sigma: f64,
        batch: &ObsBatch,
    ) -> Result<Option<ObsCovariance>, FilterError> {
        let m = batch.len();
        if m == 0 {
            return Ok(None);
        }
        let (d, n) = (den.dim(), den.state_dim());
        if d != n {
            return Err(FilterError::InvalidParameter(format!(
                "tweedie guidance needs a pixel-space denoiser (latent dim {d} != state dim {n}): set [score.sampler] tweedie = false for latent bundles"
            )));
        }
        let (hj, ht) = obs_jacobian(den, z, sigma, batch)?;
        let hjh = &hj * ht.transpose();
        let sym = (&hjh + hjh.transpose()) * 0.5;
        let eig = sym.symmetric_eigen();
        let lam = eig.eigenvalues.map(|l| l.max(0.0));
        let psd = &eig.eigenvectors * DMatrix::from_diagonal(&lam) * eig.eigenvectors.transpose();
        Ok(Some(ObsCovariance::Jacobian { ggt: psd }))
    }

    /// Posterior score s(z; σ) for every member of the batch `z` (B × d), into `score`.
    pub(crate) fn score(
        &self,
        den: &dyn Denoiser,
        z: &[f64],
        sigma: f64,
        batch: &ObsBatch,
        cov: Option<&ObsCovariance>,
        score: &mut [f64],
    ) -> Result<(), FilterError> {
        let (d, n) = (den.dim(), den.state_dim());
        let b = z.len() / d;
        let sig = vec![sigma; b];
        let m = batch.len();
        if m == 0 {
            let mut dz = vec![0.0; z.len()];
            den.denoise(z, &sig, &mut dz)?;
            for ((s, dv), zv) in score.iter_mut().zip(&dz).zip(z) {
                *s = (dv - zv) / (sigma * sigma);
            }
            return Ok(());
        }
        // The likelihood's covariance in observation space: R + γσ²I, plus H Cov[x₀ | z_σ] Hᵀ when
        // the prior's covariance is known (exact for a Gaussian prior and linear H).
        let s2 = sigma * sigma;
        let chol = match cov {
            Some(c) => {
                let mut smat = c.at(s2);
                for j in 0..m {
                    smat[(j, j)] += batch.sigma[j] * batch.sigma[j] + self.config.gamma * s2;
                }
                Some(smat.cholesky().ok_or_else(|| {
                    FilterError::Numerical(
                        "observation-space covariance is not positive definite".into(),
                    )
                })?)
            }
            None => None,
        };
        // First pass: x̂₀ to form the likelihood cotangent v = H'ᵀ S⁻¹ (y - H(x̂₀)).
        // The cotangent v depends on x̂₀, so a forward pass must come before the VJP pass (which
        // recomputes x̂₀ itself); for pixel-space models decode is the identity.
        let mut dz = vec![0.0; z.len()];
        den.denoise(z, &sig, &mut dz)?;
        let mut v = vec![0.0; b * n];
        let mut hx = vec![0.0; m];
        let mut w = vec![0.0; m];
        let x0_all = den.decode(&dz)?;
        for k in 0..b {
            let x0 = &x0_all[k * n..(k + 1) * n];
            batch.op.apply(x0, &mut hx);
            match &chol {
                Some(c) => {
                    let innov = DVector::from_iterator(m, (0..m).map(|j| batch.y[j] - hx[j]));
                    w.copy_from_slice(c.solve(&innov).as_slice());
                }
                None => {
                    for j in 0..m {
                        let var = batch.sigma[j] * batch.sigma[j] + self.config.gamma * s2;
                        w[j] = (batch.y[j] - hx[j]) / var;
                    }
                }
            }
            batch.op.adjoint(x0, &w, &mut v[k * n..(k + 1) * n]);
        }
        let mut x0 = vec![0.0; b * n];
        let mut jtv = vec![0.0; b * d];
        den.denoise_vjp(z, &sig, &v, &mut x0, &mut jtv)?;
        for i in 0..z.len() {
            score[i] = (dz[i] - z[i]) / s2 + jtv[i];
        }
        Ok(())
    }

    /// Latent optimisation at the end of sampling (the LO of LO-SDA, here after the last level): each
    /// sample z_s moves by `lo_steps` gradient steps on
    ///
    ///   J(z) = ½ (y - H x(z))ᵀ R⁻¹ (y - H x(z)) + ½ ‖z - z_s‖² / s_b²,   x(z) = decode(D(z; σ_min)),
    ///
    /// with the gradient Jᵀ Hᵀ R⁻¹ (H x - y) through the VJP graph at σ_min (where D is nearly the
    /// identity), s_b² the background's mean variance in the sampling space, and the step
    /// 1/(1/s_b² + max_j Σ_i H_ji² / σ_j²), which keeps the descent stable for a linear H.
    pub fn optimise(
        &self,
        den: &dyn Denoiser,
        z: &mut [f64],
        batch: &ObsBatch,
        background_var: f64,
    ) -> Result<(), FilterError> {
        let m = batch.len();
        if self.config.lo_steps == 0 || m == 0 {
            return Ok(());
        }
        let (d, n) = (den.dim(), den.state_dim());
        let b = z.len() / d;
        let zs = z.to_vec();
        let sb2 = background_var.max(1e-12);
        let curv = batch
            .op
            .rows()
            .iter()
            .zip(&batch.sigma)
            .map(|(row, s)| row.iter().map(|(_, w)| w * w).sum::<f64>() / (s * s))
            .fold(0.0, f64::max);
        let eta = 1.0 / (1.0 / sb2 + curv);
        let sig = vec![self.config.sigma_min; b];
        let (mut x0, mut g) = (vec![0.0; b * n], vec![0.0; b * d]);
        let mut hx = vec![0.0; m];
        let mut w = vec![0.0; m];
        for _ in 0..self.config.lo_steps {
            let mut dz = vec![0.0; z.len()];
            den.denoise(z, &sig, &mut dz)?;
            let xs = den.decode(&dz)?;
            let mut v = vec![0.0; b * n];
            for k in 0..b {
                let x = &xs[k * n..(k + 1) * n];
                batch.op.apply(x, &mut hx);
                for j in 0..m {
                    w[j] = (batch.y[j] - hx[j]) / (batch.sigma[j] * batch.sigma[j]);
                }
                batch.op.adjoint(x, &w, &mut v[k * n..(k + 1) * n]);
            }
            den.denoise_vjp(z, &sig, &v, &mut x0, &mut g)?;
            for i in 0..z.len() {
                z[i] += eta * (g[i] - (z[i] - zs[i]) / sb2);
            }
        }
        Ok(())
    }

    /// Draw one posterior sample per starting point by predictor–corrector sampling: `z` (B × d)
    /// holds the encoded starting points on entry (noised here by σ_start) and the samples on exit.
    /// At each level, one reverse-SDE predictor step (`reverse_sde_predictor`) from σ_i to σ_{i+1},
    /// then C Langevin corrector steps (`langevin_corrector`) at σ_{i+1}.
    pub fn sample(
        &self,
        den: &dyn Denoiser,
        z: &mut [f64],
        batch: &ObsBatch,
        rng: &mut dyn RngCore,
    ) -> Result<(), FilterError> {
        let c = &self.config;
        let d = den.dim();
        if !z.len().is_multiple_of(d) {
            return Err(FilterError::Dimension(format!(
                "{} values are not a batch of states of length {d}",
                z.len()
            )));
        }
        if c.diffusion_off() {
            return Ok(());
        }
        let sigmas = karras_schedule(c.sigma_start, c.sigma_min, c.steps, c.rho);
        for v in z.iter_mut() {
            *v += c.sigma_start * normal(rng);
        }
        let mut s = vec![0.0; z.len()];
        let mut cov = if c.tweedie {
            self.tweedie_covariance(den, z, sigmas[0], batch)?
        } else {
            self.obs_space_covariance(den, z, batch)?
        };
        for i in 0..sigmas.len() - 1 {
            let (si, sn) = (sigmas[i], sigmas[i + 1]);
            self.reverse_sde_predictor(den, z, (si, sn), batch, cov.as_ref(), &mut s, rng)?;
            if c.tweedie {
                // The covariance of σ_{i+1}, shared by this level's correctors and the next
                // predictor.
                cov = self.tweedie_covariance(den, z, sn, batch)?;
            }
            for _ in 0..c.corrections {
                self.langevin_corrector(den, z, sn, batch, cov.as_ref(), &mut s, rng)?;
            }
        }
        Ok(())
    }

    /// The predictor of predictor–corrector sampling (Song et al. 2021): one Euler–Maruyama step of
    /// the reverse variance-exploding SDE from σ_i to σ_{i+1},
    ///
    ///   z ← z + (σ_i² - σ_{i+1}²) s(z; σ_i) + sqrt(σ_i² - σ_{i+1}²) ξ,   ξ ~ N(0, I).
    ///
    /// `s` is scratch space for the scores (B × d).
    #[allow(clippy::too_many_arguments)]
    fn reverse_sde_predictor(
        &self,
        den: &dyn Denoiser,
        z: &mut [f64],
        (si, sn): (f64, f64),
        batch: &ObsBatch,
        cov: Option<&ObsCovariance>,
        s: &mut [f64],
        rng: &mut dyn RngCore,
    ) -> Result<(), FilterError> {
        let dv = si * si - sn * sn;
        self.score(den, z, si, batch, cov, s)?;
        for (zv, sv) in z.iter_mut().zip(s.iter()) {
            *zv += dv * sv + dv.sqrt() * normal(rng);
        }
        Ok(())
    }

    /// The Langevin corrector of predictor–corrector sampling (Song et al. 2021, §4.2; the
    /// corrector algorithm for the VE SDE of their App. G): one step of unadjusted Langevin dynamics at fixed noise level σ, whose
    /// stationary law (as δ → 0) is the noised posterior p_σ(z | y),
    ///
    ///   z ← z + δ s(z; σ) + sqrt(2δ) ξ,   ξ ~ N(0, I),
    ///
    /// with the step-size rule of SDA (Rozet & Louppe 2023): δ = τ / mean(s²), the mean over every
    /// coordinate of every member of the batch. (Song et al. set δ = 2 (r ‖ξ‖ / ‖s‖)² instead.)
    /// `s` is scratch space for the scores (B × d).
    #[allow(clippy::too_many_arguments)]
    fn langevin_corrector(
        &self,
        den: &dyn Denoiser,
        z: &mut [f64],
        sigma: f64,
        batch: &ObsBatch,
        cov: Option<&ObsCovariance>,
        s: &mut [f64],
        rng: &mut dyn RngCore,
    ) -> Result<(), FilterError> {
        self.score(den, z, sigma, batch, cov, s)?;
        // One step size for the whole batch: a step that depended on each member's own score
        // would break the chain's detailed balance and bias the samples.
        let mean_sq = s.iter().map(|v| v * v).sum::<f64>() / s.len() as f64;
        let delta = self.config.tau / mean_sq.max(f64::MIN_POSITIVE);
        for (zv, sv) in z.iter_mut().zip(s.iter()) {
            *zv += delta * sv + (2.0 * delta).sqrt() * normal(rng);
        }
        Ok(())
    }
}
