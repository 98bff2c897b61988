//! # NumPy `.npy` reader
//!
//! A minimal reader of `.npy` files holding little-endian float32 arrays in C order (the format of the
//! bundles' fixtures), so that parity checks need no extra dependency.

use std::path::Path;

use super::{BundleError, TensorF32};

/// Read a little-endian float32, C-order `.npy` file (format versions 1–3).
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
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not UTF-8")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    if !(descr.contains("<f4") || descr.contains("float32")) {
        return Err(format!(
            "dtype {descr} is not little-endian float32 ('<f4')"
        ));
    }
    let fortran =
        dict_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    if fortran.trim_start().starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_src = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let open = shape_src.find('(').ok_or("bad shape in the .npy header")?;
    let close = shape_src.find(')').ok_or("bad shape in the .npy header")?;
    let shape = shape_src[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension {s:?} in the .npy shape"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + header_len..];
    if body.len() != 4 * n {
        return Err(format!(
            "shape {shape:?} needs {} bytes of data, the file has {}",
            4 * n,
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(TensorF32 { shape, data })
}

/// The text after `'key':` in a Python dict literal, up to the end of the header.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    header.find(&pat).map(|i| &header[i + pat.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_version_1_file() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        for v in 0..6 {
            bytes.extend_from_slice(&(v as f32).to_le_bytes());
        }
        let t = parse_npy_f32(&bytes).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(parse_npy_f32(&bytes[..bytes.len() - 4]).is_err());
    }
}
