//! # Training-triple recorder
//!
//! While `assimd experiment` cycles, it can record what a score model is trained on (DESIGN §6):
//! per recorded cycle the truth, the background ensemble mean and per-point spread, and optionally
//! the background members themselves (for the set encoder over anomalies). Files are NumPy `.npy`
//! (format 1.0, little-endian float32, C order), readable by `numpy.load` with no other dependency:
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
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// Bytes reserved for the `.npy` header, so that it can be rewritten with the final shape.
const HEADER_LEN: usize = 128;

/// A `.npy` file of float32 rows, written as they come; the shape is fixed up by [`NpyWriter::finish`].
pub struct NpyWriter {
    out: BufWriter<File>,
    row_shape: Vec<usize>,
    rows: usize,
}

fn header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let body_len = HEADER_LEN - 10;
    h.extend_from_slice(&(body_len as u16).to_le_bytes());
    let mut body = dict.into_bytes();
    body.resize(body_len - 1, b' ');
    body.push(b'\n');
    h.extend_from_slice(&body);
    h
}

impl NpyWriter {
    /// Create `path` for rows of shape `row_shape`.
    pub fn create(path: &Path, row_shape: &[usize]) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(&header(&[0]))?;
        Ok(NpyWriter {
            out,
            row_shape: row_shape.to_vec(),
            rows: 0,
        })
    }

    /// Append one row (its length must be the product of the row shape).
    pub fn push(&mut self, row: &[f64]) -> Result<()> {
        assert_eq!(
            row.len(),
            self.row_shape.iter().product::<usize>(),
            "npy row of the wrong length"
        );
        for v in row {
            self.out.write_all(&(*v as f32).to_le_bytes())?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Rewrite the header with the final shape and flush.
    pub fn finish(mut self) -> Result<usize> {
        let mut shape = vec![self.rows];
        shape.extend(&self.row_shape);
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(&shape))?;
        file.sync_all()?;
        Ok(self.rows)
    }
}

/// The recorder of one experiment.
pub struct Recorder {
    /// Record every this many cycles (after burn-in).
    pub every: usize,
    truth: NpyWriter,
    mean: NpyWriter,
    spread: NpyWriter,
    members: Option<NpyWriter>,
    meta: serde_json::Value,
    dir: std::path::PathBuf,
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
        Ok(Recorder {
            every: every.max(1),
            truth: NpyWriter::create(&dir.join("truth.npy"), &[dim])?,
            mean: NpyWriter::create(&dir.join("mean.npy"), &[dim])?,
            spread: NpyWriter::create(&dir.join("spread.npy"), &[dim])?,
            members: if with_members {
                Some(NpyWriter::create(
                    &dir.join("members.npy"),
                    &[n_members, dim],
                )?)
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
        let rows = self.truth.finish()?;
        self.mean.finish()?;
        self.spread.finish()?;
        if let Some(m) = self.members {
            m.finish()?;
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

    #[test]
    fn npy_files_have_a_valid_header_and_the_final_shape() {
        let dir = std::env::temp_dir().join(format!("assimd-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let mut w = NpyWriter::create(&path, &[2, 3]).unwrap();
        w.push(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        w.push(&[0.5; 6]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0, "numpy wants the data 64-byte aligned");
        let h = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(
            h.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 3), }")
                && h.ends_with('\n'),
            "{h}"
        );
        let data = &bytes[10 + hlen..];
        assert_eq!(data.len(), 12 * 4);
        assert_eq!(f32::from_le_bytes(data[8..12].try_into().unwrap()), 3.0);
    }
}
