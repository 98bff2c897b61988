//! # Training-triple recorder
//!
//! While `assimd experiment` cycles, it can record what a score model is trained on (DESIGN §6):
//! per recorded cycle the truth, the background ensemble mean and per-point spread, and optionally
//! the background members themselves (for the set encoder over anomalies). Files are NumPy `.npy`
//! (little-endian float32, C order, written by `assimd_models::bundle::NpyRows` through `npyz`),
//! readable by `numpy.load` with no other dependency:
//!
//! | file | shape |
//! |---|---|
//! | `truth.npy` | (K, n) |
//! | `mean.npy` | (K, n) background ensemble mean |
//! | `spread.npy` | (K, n) background per-point standard deviation (unbiased) |
//! | `members.npy` | (K, N, n) background members (only with `--record-members`) |
//! | `meta.json` | testbed, network, filter, seed, members, cycles recorded, state layout |
//!
//! n is the state length (l96: 40; qg2l: 2 × 64 × 64, field-major, row-major within a field).

use anyhow::{Context, Result};
use assimd_models::bundle::NpyRows;
use std::path::{Path, PathBuf};

/// The recorder of one experiment.
pub struct Recorder {
    /// Record every this many cycles (after burn-in).
    pub every: usize,
    truth: NpyRows,
    mean: NpyRows,
    spread: NpyRows,
    members: Option<NpyRows>,
    meta: serde_json::Value,
    dir: PathBuf,
}

impl Recorder {
    /// Create the files in `dir` (created if missing).
    pub fn create(
        dir: &Path,
        dim: usize,
        n_members: usize,
        with_members: bool,
        every: usize,
        meta: serde_json::Value,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the record directory {}", dir.display()))?;
        let rows = |name: &str, shape: &[usize]| {
            let p = dir.join(name);
            NpyRows::create(&p, shape).with_context(|| format!("creating {}", p.display()))
        };
        Ok(Recorder {
            every: every.max(1),
            truth: rows("truth.npy", &[dim])?,
            mean: rows("mean.npy", &[dim])?,
            spread: rows("spread.npy", &[dim])?,
            members: if with_members {
                Some(rows("members.npy", &[n_members, dim])?)
            } else {
                None
            },
            meta,
            dir: dir.to_path_buf(),
        })
    }

    /// Record one cycle's truth and background ensemble.
    pub fn push(&mut self, truth: &[f64], background: &assimd_filter::Ensemble) -> Result<()> {
        self.truth.push(truth)?;
        self.mean.push(&background.mean())?;
        self.spread.push(&background.std())?;
        if let Some(m) = &mut self.members {
            m.push(background.as_flat())?;
        }
        Ok(())
    }

    /// Finish every file and write `meta.json`.
    pub fn finish(mut self) -> Result<usize> {
        let done = |w: NpyRows, name: &str| {
            w.finish()
                .with_context(|| format!("writing {}", self.dir.join(name).display()))
        };
        let rows = done(self.truth, "truth.npy")?;
        done(self.mean, "mean.npy")?;
        done(self.spread, "spread.npy")?;
        if let Some(m) = self.members {
            done(m, "members.npy")?;
        }
        self.meta["records"] = rows.into();
        std::fs::write(
            self.dir.join("meta.json"),
            serde_json::to_string_pretty(&self.meta)?,
        )?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assimd_filter::Ensemble;
    use assimd_models::bundle::read_npy_f32;

    /// What is recorded reads back as the truth, the background's mean, spread and members, in
    /// float32, with the shapes of the module doc.
    #[test]
    fn a_recording_reads_back_as_what_was_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let (dim, n) = (5, 3);
        let mut r = Recorder::create(dir.path(), dim, n, true, 1, serde_json::json!({})).unwrap();
        let mut pushed = Vec::new();
        for k in 0..4 {
            let truth: Vec<f64> = (0..dim).map(|i| (k * dim + i) as f64 / 7.0).collect();
            let members: Vec<Vec<f64>> = (0..n)
                .map(|m| truth.iter().map(|v| v + 0.1 * m as f64).collect())
                .collect();
            let ens = Ensemble::from_members(members).unwrap();
            r.push(&truth, &ens).unwrap();
            pushed.push((truth, ens));
        }
        assert_eq!(r.finish().unwrap(), 4);
        let read = |name: &str| read_npy_f32(&dir.path().join(name)).unwrap();
        let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
        let (truth, mean, spread, members) = (
            read("truth.npy"),
            read("mean.npy"),
            read("spread.npy"),
            read("members.npy"),
        );
        assert_eq!(truth.shape, vec![4, dim]);
        assert_eq!(members.shape, vec![4, n, dim]);
        for (k, (t, ens)) in pushed.iter().enumerate() {
            let row = k * dim..(k + 1) * dim;
            assert_eq!(truth.data[row.clone()], f32s(t)[..]);
            assert_eq!(mean.data[row.clone()], f32s(&ens.mean())[..]);
            assert_eq!(spread.data[row], f32s(&ens.std())[..]);
            assert_eq!(
                members.data[k * n * dim..(k + 1) * n * dim],
                f32s(ens.as_flat())[..]
            );
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["records"], 4);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".part"))
            .collect();
        assert!(left.is_empty(), "part files removed: {left:?}");
    }
}
