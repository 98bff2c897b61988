//! # Ensembles
//!
//! N members of a state of length n, stored member by member (member k is
//! `data[k·n .. (k+1)·n]`), the layout the forecast (one member at a time) and the store (one value
//! per member) want. Ensemble mean x̄ = (1/N) Σ_k x_k; anomalies A_k = x_k - x̄; the unbiased
//! per-point variance (1/(N-1)) Σ_k A_k².

use crate::FilterError;

/// An ensemble of states.
#[derive(Clone, Debug, PartialEq)]
pub struct Ensemble {
    n_members: usize,
    dim: usize,
    data: Vec<f64>,
}

impl Ensemble {
    /// From members of equal length. At least one member.
    pub fn from_members(members: Vec<Vec<f64>>) -> Result<Self, FilterError> {
        let dim = members.first().map(Vec::len).ok_or_else(|| {
            FilterError::Dimension("an ensemble needs at least one member".into())
        })?;
        if members.iter().any(|m| m.len() != dim) {
            return Err(FilterError::Dimension(
                "ensemble members differ in length".into(),
            ));
        }
        let n_members = members.len();
        Ok(Ensemble {
            n_members,
            dim,
            data: members.concat(),
        })
    }

    /// From a flat member-major buffer.
    pub fn from_flat(n_members: usize, dim: usize, data: Vec<f64>) -> Result<Self, FilterError> {
        if n_members == 0 || data.len() != n_members * dim {
            return Err(FilterError::Dimension(format!(
                "{} values are not {n_members} members of length {dim}",
                data.len()
            )));
        }
        Ok(Ensemble {
            n_members,
            dim,
            data,
        })
    }

    /// Number of members N.
    pub fn n_members(&self) -> usize {
        self.n_members
    }

    /// State length n.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Member k.
    pub fn member(&self, k: usize) -> &[f64] {
        &self.data[k * self.dim..(k + 1) * self.dim]
    }

    /// Member k, mutable.
    pub fn member_mut(&mut self, k: usize) -> &mut [f64] {
        &mut self.data[k * self.dim..(k + 1) * self.dim]
    }

    /// Iterator over members.
    pub fn members(&self) -> impl ExactSizeIterator<Item = &[f64]> {
        self.data.chunks_exact(self.dim)
    }

    /// Mutable iterator over members (e.g. to forecast them in parallel with `par_chunks_mut`).
    pub fn members_mut(&mut self) -> std::slice::ChunksExactMut<'_, f64> {
        self.data.chunks_exact_mut(self.dim)
    }

    /// The flat member-major buffer.
    pub fn as_flat(&self) -> &[f64] {
        &self.data
    }

    /// The flat member-major buffer, mutable.
    pub fn as_flat_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// Ensemble mean x̄.
    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.dim];
        for x in self.members() {
            for (mi, xi) in m.iter_mut().zip(x) {
                *mi += xi;
            }
        }
        let inv = 1.0 / self.n_members as f64;
        m.iter_mut().for_each(|v| *v *= inv);
        m
    }

    /// Per-point unbiased variance (zero for a single member).
    pub fn variance(&self) -> Vec<f64> {
        let m = self.mean();
        let mut v = vec![0.0; self.dim];
        for x in self.members() {
            for ((vi, xi), mi) in v.iter_mut().zip(x).zip(&m) {
                *vi += (xi - mi) * (xi - mi);
            }
        }
        let denom = (self.n_members.max(2) - 1) as f64;
        v.iter_mut().for_each(|vi| *vi /= denom);
        v
    }

    /// Per-point standard deviation.
    pub fn std(&self) -> Vec<f64> {
        self.variance().into_iter().map(f64::sqrt).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_variance_of_a_small_ensemble() {
        let e =
            Ensemble::from_members(vec![vec![1.0, 0.0], vec![3.0, 0.0], vec![5.0, 3.0]]).unwrap();
        assert_eq!(e.mean(), vec![3.0, 1.0]);
        assert_eq!(e.variance(), vec![4.0, 3.0]);
        assert!(Ensemble::from_members(vec![vec![1.0], vec![1.0, 2.0]]).is_err());
        assert!(Ensemble::from_flat(2, 3, vec![0.0; 5]).is_err());
    }
}
