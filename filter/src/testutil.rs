//! Exact references shared by the crate's unit tests: the Kalman update of a linear-Gaussian
//! problem, ensemble moments, and ensembles with prescribed sample moments.

use crate::ensemble::Ensemble;
use crate::obs::ObsBatch;
use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// H (m × n) of a batch whose operator is linear (its sparse rows).
pub fn h_matrix(batch: &ObsBatch, n: usize) -> DMatrix<f64> {
    let mut h = DMatrix::zeros(batch.len(), n);
    for (j, row) in batch.op.rows().iter().enumerate() {
        for &(i, w) in row {
            h[(j, i)] = w;
        }
    }
    h
}

/// R = diag(σ_o²) of a batch.
pub fn r_matrix(batch: &ObsBatch) -> DMatrix<f64> {
    DMatrix::from_diagonal(&DVector::from_iterator(
        batch.len(),
        batch.sigma.iter().map(|s| s * s),
    ))
}

/// The Kalman gain K = P Hᵀ (H P Hᵀ + R)⁻¹ for the batch's linear H.
pub fn kalman_gain(p: &DMatrix<f64>, batch: &ObsBatch) -> DMatrix<f64> {
    let h = h_matrix(batch, p.nrows());
    let s = &h * p * h.transpose() + r_matrix(batch);
    // S = H P Hᵀ + R is positive definite for the tests' R > 0.
    p * h.transpose() * s.try_inverse().unwrap()
}

/// The exact Kalman update of the prior N(m, P) by the batch (linear H, R = diag(σ_o²)):
/// m^a = m + K (y - H m), P^a = (I - K H) P.
pub fn kalman(m: &[f64], p: &DMatrix<f64>, batch: &ObsBatch) -> (DVector<f64>, DMatrix<f64>) {
    let n = m.len();
    let h = h_matrix(batch, n);
    let k = kalman_gain(p, batch);
    let m = DVector::from_column_slice(m);
    let ma = &m + &k * (DVector::from_column_slice(&batch.y) - &h * &m);
    let pa = (DMatrix::identity(n, n) - &k * &h) * p;
    (ma, pa)
}

/// Sample mean and (unbiased) sample covariance of the members.
pub fn moments(ens: &Ensemble) -> (DVector<f64>, DMatrix<f64>) {
    let (n, d) = (ens.n_members(), ens.dim());
    let mean = DVector::from_vec(ens.mean());
    let a = DMatrix::from_fn(d, n, |i, k| ens.member(k)[i] - mean[i]);
    (mean, &a * a.transpose() / (n as f64 - 1.0))
}

/// `n` members whose sample mean is `m` and whose sample covariance is `p` (P positive definite,
/// n > dim), up to round-off: Gaussian draws, centred, whitened by their own sample covariance's
/// Cholesky factor L_S and coloured by P's, A ← L_P L_S⁻¹ A.
pub fn ensemble_with_moments(m: &[f64], p: &DMatrix<f64>, n: usize, seed: u64) -> Ensemble {
    let d = m.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut a: DMatrix<f64> = DMatrix::from_fn(d, n, |_, _| StandardNormal.sample(&mut rng));
    let mean = a.column_mean();
    for mut col in a.column_iter_mut() {
        col -= &mean;
    }
    let s = &a * a.transpose() / (n as f64 - 1.0);
    // Both are positive definite: S for n > dim draws of a continuous law, P by the caller.
    let ls = s.cholesky().unwrap().l();
    let lp = p.clone().cholesky().unwrap().l();
    let a = lp * ls.solve_lower_triangular(&a).unwrap();
    let members = (0..n)
        .map(|k| (0..d).map(|i| m[i] + a[(i, k)]).collect())
        .collect();
    // n ≥ 1 members of equal length d.
    Ensemble::from_members(members).unwrap()
}
