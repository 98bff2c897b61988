//! Gaspari–Cohn localisation.

/// The Gaspari & Cohn (1999, eq. 4.10) fifth-order piecewise rational function of r = d / c:
/// 1 at r = 0, compactly supported on r < 2, a smooth stand-in for a Gaussian of length ≈ c.
pub fn gaspari_cohn(r: f64) -> f64 {
    let r = r.abs();
    if r >= 2.0 {
        0.0
    } else if r >= 1.0 {
        ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0 - 2.0 / (3.0 * r)
    } else {
        (((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r * r + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaspari_cohn_values() {
        assert_eq!(gaspari_cohn(0.0), 1.0);
        assert_eq!(gaspari_cohn(2.0), 0.0);
        assert_eq!(gaspari_cohn(3.0), 0.0);
        // Continuous at r = 1 (value 0.2083333 = 5/24) and smooth to zero at r = 2.
        let below = gaspari_cohn(1.0 - 1e-12);
        let above = gaspari_cohn(1.0 + 1e-12);
        assert!((below - 5.0 / 24.0).abs() < 1e-9 && (above - 5.0 / 24.0).abs() < 1e-9);
        assert!(gaspari_cohn(1.999999) < 1e-12);
        // Monotone decreasing.
        let v: Vec<f64> = (0..200).map(|i| gaspari_cohn(i as f64 / 100.0)).collect();
        assert!(v.windows(2).all(|w| w[1] <= w[0]));
    }
}
