//! # Pictures: per-cycle maps and skill histories as PNG
//!
//! - [`maps`]: for qg2l, one PNG per cycle (`[maps]` in the daemon config, the demo turns it on):
//!   the truth (in simulation), the observations (station dots, satellite footprints), each filter's
//!   analysis mean and spread, fields on one shared colour scale and spreads on another.
//! - [`skill`]: `assimd plot skill`: the RMSE and spread history of a run (an experiment's
//!   `--history` file or a daemon's store) as a line plot.
//!
//! Both are drawn with [`plotters`] on its bitmap backend ([`picture`]: the raster, the bundled
//! font, PNG files), so neither the daemon nor CI needs a system font or graphics library.
//! Colour maps are plotters' [`ViridisRGB`] (sequential; van der Walt and Smith's matplotlib
//! default) and a [`DerivedColorMap`] of ColorBrewer's RdBu, reversed (diverging; Brewer 2002):
//! anchors at equal steps, linearly interpolated.

pub mod maps;
pub mod picture;
pub mod skill;

use picture::{Rgb, GREY};
use plotters::prelude::{ColorMap, DerivedColorMap, RGBColor, ViridisRGB};
use std::sync::OnceLock;

/// ColorBrewer RdBu (Brewer 2002), reversed: negative blue, zero white, positive red.
const RDBU_R: [RGBColor; 11] = [
    RGBColor(5, 48, 97),
    RGBColor(33, 102, 172),
    RGBColor(67, 147, 195),
    RGBColor(146, 197, 222),
    RGBColor(209, 229, 240),
    RGBColor(247, 247, 247),
    RGBColor(253, 219, 199),
    RGBColor(244, 165, 130),
    RGBColor(214, 96, 77),
    RGBColor(178, 24, 43),
    RGBColor(103, 0, 31),
];

fn diverging() -> &'static DerivedColorMap<RGBColor> {
    static MAP: OnceLock<DerivedColorMap<RGBColor>> = OnceLock::new();
    MAP.get_or_init(|| DerivedColorMap::new(&RDBU_R))
}

/// A colour map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColourMap {
    /// ColorBrewer RdBu, reversed: for signed fields, symmetric about zero.
    Diverging,
    /// [`ViridisRGB`]: for magnitudes (spreads).
    Sequential,
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
    /// The colour of value v, clamped to the range; NaN is grey.
    pub fn colour(&self, v: f64) -> Rgb {
        if v.is_nan() {
            return GREY;
        }
        let v = v.clamp(self.lo, self.hi);
        let RGBColor(r, g, b) = match self.map {
            ColourMap::Diverging => diverging().get_color_normalized(v, self.lo, self.hi),
            ColourMap::Sequential => ViridisRGB.get_color_normalized(v, self.lo, self.hi),
        };
        [r, g, b]
    }

    /// Whether every finite value of `values` lies inside the range.
    pub fn covers(&self, values: impl IntoIterator<Item = f64>) -> bool {
        values
            .into_iter()
            .filter(|v| v.is_finite())
            .all(|v| self.lo <= v && v <= self.hi)
    }
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
    // Axis key points computed as lo + k·step can miss zero by a rounding error.
    if v.abs() < 1e-12 {
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
        let d = Scale {
            lo: -10.0,
            hi: 10.0,
            map: ColourMap::Diverging,
        };
        assert_eq!(d.colour(0.0), [247, 247, 247], "zero is white");
        assert_eq!(d.colour(-30.0), [5, 48, 97]);
        assert_eq!(d.colour(70.0), [103, 0, 31]);
        assert_eq!(d.colour(f64::NAN), GREY);
        assert!(d.colour(8.0)[0] > d.colour(8.0)[2], "positive is red");
        assert!(d.colour(-8.0)[2] > d.colour(-8.0)[0], "negative is blue");
        let s = Scale {
            lo: 0.0,
            hi: 1.0,
            map: ColourMap::Sequential,
        };
        // matplotlib's viridis ends: dark purple (68, 1, 84) and yellow (253, 231, 37), ±1.
        assert_eq!(s.colour(0.0), [68, 1, 84]);
        let top = s.colour(1.0);
        assert!(top[0] >= 252 && top[1] >= 230 && top[2] <= 38, "{top:?}");
        assert!(s.covers([0.0, 0.5, f64::NAN, 1.0]) && !s.covers([1.01]));
    }

    #[test]
    fn nice_numbers_and_labels() {
        assert_eq!(nice_ceil(3.1), 5.0);
        assert_eq!(nice_ceil(4596.0), 5000.0);
        assert_eq!(nice_ceil(0.22), 0.25);
        assert_eq!(label(2000.0), "2000");
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(1e-4), "1e-4");
        assert_eq!(label(-6e-17), "0");
    }
}
