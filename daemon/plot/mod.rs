//! # Pictures: per-cycle maps and skill histories as PNG
//!
//! - [`maps`]: for qg2l, one PNG per cycle (`[maps]` in the daemon config, the demo turns it on):
//!   the truth (in simulation), the observations (station dots, satellite footprints), each filter's
//!   analysis mean and spread, fields on one shared colour scale and spreads on another.
//! - [`skill`]: `assimd plot skill`: the RMSE and spread history of a run (an experiment's
//!   `--history` file or a daemon's store) as a line plot.
//!
//! Everything is drawn by [`canvas`] in pure Rust (the Go font is bundled), so neither the daemon
//! nor CI needs a system font or graphics library.

pub mod canvas;
pub mod maps;
pub mod skill;

use canvas::Rgb;

/// A colour map: anchors at equal steps from 0 to 1, linearly interpolated.
#[derive(Clone, Copy, Debug)]
pub struct ColourMap(&'static [Rgb]);

/// Diverging blue–white–red (after ColorBrewer RdBu, reversed): negative blue, zero white.
pub const DIVERGING: ColourMap = ColourMap(&[
    [5, 48, 97],
    [33, 102, 172],
    [67, 147, 195],
    [146, 197, 222],
    [209, 229, 240],
    [247, 247, 247],
    [253, 219, 199],
    [244, 165, 130],
    [214, 96, 77],
    [178, 24, 43],
    [103, 0, 31],
]);

/// Sequential (viridis anchors): small dark purple, large yellow.
pub const SEQUENTIAL: ColourMap = ColourMap(&[
    [68, 1, 84],
    [72, 40, 120],
    [62, 74, 137],
    [49, 104, 142],
    [38, 130, 142],
    [31, 158, 137],
    [53, 183, 121],
    [109, 205, 89],
    [180, 222, 44],
    [253, 231, 37],
]);

impl ColourMap {
    /// The colour at t in [0, 1] (clamped; NaN is grey).
    pub fn at(&self, t: f64) -> Rgb {
        if t.is_nan() {
            return canvas::GREY;
        }
        let n = self.0.len() - 1;
        let x = t.clamp(0.0, 1.0) * n as f64;
        let i = (x.floor() as usize).min(n - 1);
        let f = x - i as f64;
        let (a, b) = (self.0[i], self.0[i + 1]);
        [0, 1, 2].map(|c| (a[c] as f64 + f * (b[c] as f64 - a[c] as f64)).round() as u8)
    }
}

/// A value range mapped onto a colour map.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Value at the low end.
    pub lo: f64,
    /// Value at the high end.
    pub hi: f64,
    /// Colours.
    pub map: ColourMap,
}

impl Scale {
    /// The colour of value v (clamped to the range).
    pub fn colour(&self, v: f64) -> Rgb {
        self.map.at((v - self.lo) / (self.hi - self.lo))
    }
}

/// About `n` (at least 2 where the range allows) round tick values (1, 2, 5 times a power of
/// ten) inside [lo, hi].
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let mag = 10f64.powf(((hi - lo) / n.max(1) as f64).log10().floor());
    let count = |s: f64| (hi / s).floor() - (lo / s).ceil() + 1.0;
    // The smallest step that gives at most n + 1 ticks, unless that leaves fewer than two.
    let mut step = 0.1 * mag;
    for s in [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0].map(|m| m * mag) {
        if count(s) >= 2.0 {
            step = s;
            if count(s) <= n as f64 + 1.0 {
                break;
            }
        }
    }
    ((lo / step).ceil() as i64..=(hi / step).floor() as i64)
        .map(|i| i as f64 * step)
        .collect()
}

/// The smallest "nice" number (1, 2, 2.5, 5 times a power of ten) >= x > 0.
pub fn nice_ceil(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= x * (1.0 - 1e-12))
        .unwrap_or(10.0 * mag)
}

/// A tick label: few digits, no trailing zeros.
pub fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_maps_hit_their_anchors_and_clamp() {
        assert_eq!(DIVERGING.at(0.5), [247, 247, 247]);
        assert_eq!(DIVERGING.at(-3.0), [5, 48, 97]);
        assert_eq!(DIVERGING.at(7.0), [103, 0, 31]);
        assert_eq!(SEQUENTIAL.at(1.0), [253, 231, 37]);
        let s = Scale {
            lo: -10.0,
            hi: 10.0,
            map: DIVERGING,
        };
        assert!(s.colour(8.0)[0] > s.colour(8.0)[2], "positive is red");
        assert!(s.colour(-8.0)[2] > s.colour(-8.0)[0], "negative is blue");
    }

    #[test]
    fn ticks_are_round_and_inside() {
        let close = |a: Vec<f64>, b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
        };
        assert!(close(ticks(0.0, 1.0, 5), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]));
        assert!(close(
            ticks(-4500.0, 4500.0, 4),
            &[-4000.0, -2000.0, 0.0, 2000.0, 4000.0]
        ));
        assert!(close(
            ticks(-5000.0, 5000.0, 4),
            &[-4000.0, -2000.0, 0.0, 2000.0, 4000.0]
        ));
        assert!(close(
            ticks(1.0, 60.0, 8),
            &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        ));
        assert_eq!(nice_ceil(3.1), 5.0);
        assert_eq!(nice_ceil(4596.0), 5000.0);
        assert_eq!(nice_ceil(0.22), 0.25);
        assert_eq!(label(2000.0), "2000");
        assert_eq!(label(0.25), "0.25");
    }
}
