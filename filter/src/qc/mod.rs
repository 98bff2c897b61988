//! # Quality control: background check, Huber down-weighting, station monitoring, divergence guard
//!
//! What stands between an observing network and the analysis (DESIGN §7), shared by every filter:
//! the daemon and `assimd experiment` screen each cycle's observations once, against one background
//! ensemble (the LETKF's, the baseline every deployment runs), and give every filter the same
//! accepted set.
//!
//! **Background (first-guess) check** ([`BackgroundCheck`]). For observation i with value yᵢ,
//! operator row Hᵢ and error σᵢ, against background members x_k (k = 1..N):
//!
//!   dᵢ = yᵢ − Hᵢ x̄ᵇ,   σ_d,ᵢ² = diag(H Pᵇ Hᵀ)ᵢ + σᵢ²,   zᵢ = dᵢ / σ_d,ᵢ,
//!
//! with diag(H Pᵇ Hᵀ)ᵢ the unbiased ensemble variance of Hᵢ x_k. For a reliable ensemble and a good
//! observation zᵢ ~ N(0, 1). The observation is rejected when |zᵢ| > k (k per modality). With a
//! Huber threshold c < k, one between c and k is kept with weight wᵢ = c / |zᵢ|, i.e. its error
//! inflated to σᵢ / √wᵢ: the ensemble-space analogue of Huber-norm variational QC (Tavolato &
//! Isaksen 2015; in an LETKF, Roh et al. 2013), whose cost is quadratic in z up to c and linear
//! beyond, so a moderately wrong observation pulls the analysis linearly rather than quadratically.
//!
//! **Station monitoring** ([`StationMonitor`]). Per station, exponentially weighted running
//! statistics over cycles (weight λ on the newest cycle) of the normalised departures z of its
//! accepted observations (mean: the bias in units of σ_d; standard deviation, about 1 for a good
//! sensor) and of its rejection rate. The caller may divide z by the cycle's network-wide scale
//! s = max(1, √r) (r the robust innovation ratio below, over all stations), so that a background
//! worse than its spread claims (spin-up, a regime change) does not make every station look biased
//! at once; and by the same robust scale of its k nearest reporting stations' departures
//! (`neighbours`, itself left out), so that a local excursion of the background, which inflates a
//! neighbourhood's departures together, is not taken for a shift of each station in it, while a
//! biased station, an outlier among its neighbours, keeps its z. A station past the bias, noise or rejection-rate threshold for W consecutive cycles is
//! blacklisted; so is, at once, a station whose values repeat exactly `max_repeats` cycles in a row
//! (the persistence check for a frozen sensor, WMO-No. 488), and, also at once, a station whose
//! departures shifted suddenly: Page's two-sided CUSUM of its per-cycle departure
//! u_t = Σᵢ zᵢ / √n (≈ N(0, 1) for a good station with n observations a cycle),
//!
//!   S⁺_t = max(0, S⁺_{t−1} + u_t − k),   S⁻_t = max(0, S⁻_{t−1} − u_t − k),
//!
//! flags it when max(S⁺, S⁻) > h. For a step of size δ > k the delay is about h / (δ − k) cycles
//! (Page 1954), the least of any detector with the same false-alarm rate (Lorden 1971). It matters
//! because a biased station is partly absorbed: each analysis moves the state towards it, and the
//! next background carries the move, so its O−B shrinks after the first cycles of the shift (on
//! qg2l a +3 σ_o step shows z ≈ 2.5–3 for three cycles, then ≈ 0.3): a running mean that waits
//! for a long sample sees only what is left. Its reports are still journaled and
//! monitored, never assimilated. A
//! blacklisted station whose statistics are back inside half the thresholds for
//! `rehabilitate_cycles` cycles is taken back (its sensor was fixed). This is the automatic part of
//! the operational blacklists of ECMWF and NCEP (Hollingsworth et al. 1986).
//!
//! **Divergence guard** ([`DivergenceGuard`]). For a sound filter the innovation statistics match
//! their expectation, E\[z²\] = 1 (Desroziers et al. 2005). A wrecked or collapsed ensemble makes the
//! departures many times larger than σ_d. The guard tests the robust ratio
//!
//!   r = median(zᵢ²) / m₁,   m₁ = 0.454936… (the median of χ²₁),
//!
//! over all of a cycle's observations before screening (a mean would be tripped by a few gross
//! errors: one 50 σ value among 40 makes mean z² ≈ 63), and flags the cycle when r exceeds its
//! threshold. A state wrecked together with its spread (every member thrown far off, so σ_b is
//! huge too) keeps z moderate; the second test needs no spread at all:
//!
//!   c = median(dᵢ² / vᵢ),   vᵢ = median_j (y_j − median y)² over the observations j of the same variable,
//!
//! the background's squared departures against the observations' own scatter about their network
//! median. A background of climatological quality gives c ≈ 1 (spin-up from climatological
//! draws), a working filter c ≪ 1; the cycle is flagged when c exceeds its threshold.
//! Observations see a wreck only once it reaches them; a third test sees it anywhere: a background
//! value more than `max_state_sigmas` climatological standard deviations from its field's
//! climatological mean (or not finite) flags the cycle at once. The recovery (restart from climatological draws) is the caller's: it knows the
//! testbed.
//!
//! ## References
//! - Hollingsworth, A., Shaw, D. B., Lönnberg, P., Illari, L., Arpe, K., Simmons, A. J. (1986).
//!   Monitoring of observation and analysis quality by a data assimilation system. MWR 114.
//! - Page, E. S. (1954). Continuous inspection schemes. Biometrika 41.
//! - Lorden, G. (1971). Procedures for reacting to a change in distribution. Ann. Math. Stat. 42.
//! - WMO (2017). Guide to the Global Observing System, WMO-No. 488, appendix 6.1 (persistence and
//!   range checks of surface observations).
//! - Desroziers, G., Berre, L., Chapnik, B., Poli, P. (2005). Diagnosis of observation, background
//!   and analysis-error statistics in observation space. QJRMS 131.
//! - Roh, S., Genton, M. G., Jun, M., Szunyogh, I., Hoteit, I. (2013). Observation quality control
//!   with a robust ensemble Kalman filter. MWR 141.
//! - Tavolato, C., Isaksen, L. (2015). On the use of a Huber norm for observation quality control
//!   in the ECMWF 4D-Var. QJRMS 141.

mod check;
mod divergence;
mod monitor;

pub use check::{departures, BackgroundCheck, Departure, Thresholds, Verdict};
pub use divergence::{
    climate_ratio, innovation_ratio, state_excursion, Divergence, DivergenceGuard, MEDIAN_CHI2_1,
};
pub use monitor::{
    Blacklisting, MonitorState, StationMonitor, StationReport, StationStats, StationStatus,
};
