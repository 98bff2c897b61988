//! # NumPy `.npy` files (through `npyz`)
//!
//! The one `.npy` codec of assimd, on the [`npyz`] crate (NPY format versions 1–3):
//! - [`read_npy_f32`] reads a float32 array in C order (the bundles' fixtures);
//! - [`NpyRows`] writes float32 rows whose number is known only at the end (the recorder of
//!   `assimd experiment --record`): rows go to a raw `PATH.part` file as they come, and
//!   [`NpyRows::finish`] writes `PATH` through `npyz` with the final shape (rows, row shape…) and
//!   removes the part file. `npyz` can fix a header up after the data only for 1-D and 2-D arrays;
//!   the recorder's `members.npy` is 3-D (records × members × state), hence the part file.
//!
//! Format: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

use super::{BundleError, TensorF32};

/// Read a float32 `.npy` file in C order (either byte order; format versions 1–3).
pub fn read_npy_f32(path: &Path) -> Result<TensorF32, BundleError> {
    let bytes = std::fs::read(path).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    parse_npy_f32(&bytes).map_err(|message| BundleError::Fixture {
        path: path.to_path_buf(),
        message,
    })
}

fn parse_npy_f32(bytes: &[u8]) -> Result<TensorF32, String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("not a readable .npy file: {e}"))?;
    if npy.order() == npyz::Order::Fortran && npy.shape().len() > 1 {
        return Err("Fortran-order arrays are not supported (save in C order)".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let dtype = npy.dtype().descr();
    let data = npy
        .into_vec::<f32>()
        .map_err(|e| format!("dtype {dtype} is not float32 ('<f4'): {e}"))?;
    Ok(TensorF32 { shape, data })
}

/// A `.npy` file of float32 rows of a fixed shape, written as they come (see the module doc).
pub struct NpyRows {
    path: PathBuf,
    part: PathBuf,
    out: BufWriter<File>,
    row_shape: Vec<usize>,
    rows: usize,
}

impl NpyRows {
    /// Start `path` for rows of shape `row_shape` (the data goes to `path.part` until
    /// [`NpyRows::finish`]).
    pub fn create(path: &Path, row_shape: &[usize]) -> std::io::Result<Self> {
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        Ok(NpyRows {
            path: path.to_path_buf(),
            out: BufWriter::new(File::create(&part)?),
            part,
            row_shape: row_shape.to_vec(),
            rows: 0,
        })
    }

    /// Append one row; its length must be the product of the row shape.
    pub fn push(&mut self, row: &[f64]) -> std::io::Result<()> {
        let n: usize = self.row_shape.iter().product();
        if row.len() != n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a row of {} values, expected {n}", row.len()),
            ));
        }
        for v in row {
            self.out.write_all(&(*v as f32).to_le_bytes())?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Write the `.npy` file with its final shape, sync it and remove the part file; returns
    /// the number of rows.
    pub fn finish(mut self) -> std::io::Result<usize> {
        self.out.flush()?;
        drop(self.out);
        let shape: Vec<u64> = std::iter::once(self.rows)
            .chain(self.row_shape.iter().copied())
            .map(|d| d as u64)
            .collect();
        let file = File::create(&self.path)?;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(BufWriter::new(&file))
            .begin_nd()?;
        let mut raw = BufReader::new(File::open(&self.part)?);
        let mut buf = [0u8; 4];
        for _ in 0..shape.iter().product::<u64>() {
            raw.read_exact(&mut buf)?;
            w.push(&f32::from_le_bytes(buf))?;
        }
        w.finish()?;
        file.sync_all()?;
        std::fs::remove_file(&self.part)?;
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 header as numpy writes it (padded so the data starts 64-byte aligned).
    fn npy_v1(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn reads_numpy_files_and_names_what_it_refuses() {
        let data: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let f4 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let t = parse_npy_f32(&npy_v1(f4, &data)).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(
            parse_npy_f32(&npy_v1(f4, &data[..20])).is_err(),
            "truncated"
        );
        let f8 = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }";
        let e = parse_npy_f32(&npy_v1(f8, &data)).unwrap_err();
        assert!(e.contains("<f8") && e.contains("float32"), "{e}");
        let fortran = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        assert!(parse_npy_f32(&npy_v1(fortran, &data))
            .unwrap_err()
            .contains("Fortran"));
        assert!(parse_npy_f32(b"PK\x03\x04 not npy").is_err());
    }

    #[test]
    fn rows_are_written_with_the_final_shape_and_read_back() {
        let dir = std::env::temp_dir().join(format!("assimd-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let mut w = NpyRows::create(&path, &[2, 3]).unwrap();
        w.push(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        w.push(&[0.5; 6]).unwrap();
        assert!(w.push(&[1.0; 5]).is_err(), "a row of the wrong length");
        assert_eq!(w.finish().unwrap(), 2);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0, "numpy wants the data 64-byte aligned");
        let t = read_npy_f32(&path).unwrap();
        assert_eq!(t.shape, vec![2, 2, 3]);
        assert_eq!(&t.data[..6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(&t.data[6..], &[0.5; 6]);
        assert!(!dir.join("a.npy.part").exists(), "the part file is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
