//! # Canvas: an RGB raster with the few primitives the plots need
//!
//! Rectangles, lines (solid or dashed, any width), discs and squares, and text in the bundled Go
//! font (rasterised by `ab_glyph`), written as PNG by the `png` crate. Pure Rust: no system font or
//! graphics library. Coordinates are pixels, origin top left, y down.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::OnceLock;

/// An sRGB colour.
pub type Rgb = [u8; 3];

/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Mid grey (axes, grid).
pub const GREY: Rgb = [150, 150, 150];
/// Light grey (panel backgrounds without data).
pub const LIGHT: Rgb = [235, 235, 235];

/// The Go font (Bigelow & Holmes, BSD-3-Clause; licence in `Go-Regular.LICENSE` beside it).
static GO_REGULAR: &[u8] = include_bytes!("Go-Regular.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    // The bundled file is a valid TrueType font, checked by the unit test below.
    FONT.get_or_init(|| {
        FontRef::try_from_slice(GO_REGULAR).expect("the bundled Go-Regular.ttf parses")
    })
}

/// Horizontal placement of text relative to the given x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// x is the left edge.
    Left,
    /// x is the centre.
    Centre,
    /// x is the right edge.
    Right,
}

/// An RGB image.
pub struct Canvas {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB bytes.
    pub pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `background`.
    pub fn new(width: u32, height: u32, background: Rgb) -> Canvas {
        let pixels = background
            .iter()
            .copied()
            .cycle()
            .take(3 * width as usize * height as usize)
            .collect();
        Canvas {
            width,
            height,
            pixels,
        }
    }

    /// The colour at (x, y) (inside the canvas).
    pub fn get(&self, x: u32, y: u32) -> Rgb {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Blend `c` over the pixel (x, y) with opacity `alpha` in [0, 1]; outside the canvas: nothing.
    pub fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 || alpha <= 0.0 {
            return;
        }
        let a = alpha.min(1.0);
        let i = 3 * (y as usize * self.width as usize + x as usize);
        for (p, c) in self.pixels[i..i + 3].iter_mut().zip(c) {
            *p = (*p as f32 * (1.0 - a) + c as f32 * a).round() as u8;
        }
    }

    /// Fill the rectangle [x0, x1) × [y0, y1), clipped to the canvas.
    pub fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.max(0)..y1.min(self.height as i64) {
            for x in x0.max(0)..x1.min(self.width as i64) {
                let i = 3 * (y as usize * self.width as usize + x as usize);
                self.pixels[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// The outline of the rectangle [x0, x1) × [y0, y1), one pixel wide.
    pub fn stroke_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.fill_rect(x0, y0, x1, y0 + 1, c);
        self.fill_rect(x0, y1 - 1, x1, y1, c);
        self.fill_rect(x0, y0, x0 + 1, y1, c);
        self.fill_rect(x1 - 1, y0, x1, y1, c);
    }

    /// A disc of radius `r` at (cx, cy), edges anti-aliased.
    pub fn disc(&mut self, cx: f64, cy: f64, r: f64, c: Rgb) {
        let (x0, x1) = ((cx - r - 1.0).floor() as i64, (cx + r + 1.0).ceil() as i64);
        let (y0, y1) = ((cy - r - 1.0).floor() as i64, (cy + r + 1.0).ceil() as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                self.blend(x, y, c, (r + 0.5 - d).clamp(0.0, 1.0) as f32);
            }
        }
    }

    /// A disc filled with `fill` inside a ring of colour `edge` and width `w`.
    pub fn ringed_disc(&mut self, cx: f64, cy: f64, r: f64, w: f64, fill: Rgb, edge: Rgb) {
        self.disc(cx, cy, r, edge);
        self.disc(cx, cy, (r - w).max(0.0), fill);
    }

    /// A line from (x0, y0) to (x1, y1) of width `w`; `dash` = (on, off) lengths in pixels.
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), w: f64, c: Rgb, dash: Option<(f64, f64)>) {
        self.dashed_segment(a, b, w, c, dash, 0.0);
    }

    /// A segment whose dash pattern starts `phase` pixels in; returns the phase at its end, so that
    /// a polyline of short segments keeps one continuous pattern.
    fn dashed_segment(
        &mut self,
        (x0, y0): (f64, f64),
        (x1, y1): (f64, f64),
        w: f64,
        c: Rgb,
        dash: Option<(f64, f64)>,
        phase: f64,
    ) -> f64 {
        let len = (x1 - x0).hypot(y1 - y0);
        let steps = (len * 2.0).ceil().max(1.0) as usize;
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            if let Some((on, off)) = dash {
                if (phase + t * len) % (on + off) > on {
                    continue;
                }
            }
            self.disc(x0 + t * (x1 - x0), y0 + t * (y1 - y0), w / 2.0, c);
        }
        phase + len
    }

    /// A polyline through `pts`; a point with a non-finite coordinate breaks it.
    pub fn polyline(&mut self, pts: &[(f64, f64)], w: f64, c: Rgb, dash: Option<(f64, f64)>) {
        let mut phase = 0.0;
        for p in pts.windows(2) {
            if [p[0].0, p[0].1, p[1].0, p[1].1]
                .iter()
                .all(|v| v.is_finite())
            {
                phase = self.dashed_segment(p[0], p[1], w, c, dash, phase);
            }
        }
    }

    /// Width in pixels of `text` at font size `size`.
    pub fn text_width(size: f32, text: &str) -> f64 {
        let f = font().as_scaled(PxScale::from(size));
        let mut w = 0.0;
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                w += f.kern(p, id);
            }
            w += f.h_advance(id);
            prev = Some(id);
        }
        w as f64
    }

    /// Draw `text` with its top at `y` (the line is `size` pixels high), placed by `align` at `x`.
    pub fn text(&mut self, x: f64, y: f64, size: f32, c: Rgb, align: Align, text: &str) {
        let f = font().as_scaled(PxScale::from(size));
        let w = Self::text_width(size, text) as f32;
        let mut caret = match align {
            Align::Left => x as f32,
            Align::Centre => x as f32 - w / 2.0,
            Align::Right => x as f32 - w,
        };
        let baseline = y as f32 + f.ascent();
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                caret += f.kern(p, id);
            }
            let glyph = id.with_scale_and_position(size, point(caret, baseline));
            caret += f.h_advance(id);
            prev = Some(id);
            if let Some(og) = font().outline_glyph(glyph) {
                let b = og.px_bounds();
                og.draw(|gx, gy, cov| {
                    self.blend(
                        b.min.x as i64 + gx as i64,
                        b.min.y as i64 + gy as i64,
                        c,
                        cov,
                    )
                });
            }
        }
    }

    /// Text rotated a quarter turn counter-clockwise (reads bottom to top), centred on (x, y).
    pub fn text_vertical(&mut self, x: f64, y: f64, size: f32, c: Rgb, text: &str) {
        let w = Self::text_width(size, text).ceil() as u32 + 2;
        let h = size.ceil() as u32 + 2;
        let mut tmp = Canvas::new(w, h, WHITE);
        tmp.text(1.0, 1.0, size, BLACK, Align::Left, text);
        for ty in 0..h {
            for tx in 0..w {
                // Coverage from the black-on-white rendering.
                let cov = 1.0 - tmp.get(tx, ty)[0] as f32 / 255.0;
                let (px, py) = (
                    x - h as f64 / 2.0 + ty as f64,
                    y + w as f64 / 2.0 - tx as f64,
                );
                self.blend(px as i64, py as i64, c, cov);
            }
        }
    }

    /// PNG bytes (8-bit RGB).
    pub fn png_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::High);
            let mut w = enc.write_header().context("PNG header")?;
            w.write_image_data(&self.pixels).context("PNG data")?;
        }
        Ok(out)
    }

    /// Write as PNG, atomically (a temporary file renamed into place), creating the directory.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("png.tmp");
        std::fs::write(&tmp, self.png_bytes()?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }
}

/// Read a PNG written by [`Canvas::save_png`] back (8-bit RGB), for tests and checks.
pub fn read_png(path: &Path) -> Result<Canvas> {
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    ));
    let mut r = dec.read_info().context("PNG header")?;
    let mut buf = vec![0; r.output_buffer_size().context("PNG size")?];
    let info = r.next_frame(&mut buf).context("PNG data")?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        anyhow::bail!("{}: not an 8-bit RGB PNG", path.display());
    }
    buf.truncate(info.buffer_size());
    Ok(Canvas {
        width: info.width,
        height: info.height,
        pixels: buf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lands_where_it_is_placed_and_png_round_trips() {
        let mut c = Canvas::new(120, 40, WHITE);
        c.text(60.0, 10.0, 16.0, BLACK, Align::Centre, "O-B 12");
        let dark = |c: &Canvas, x0: u32, x1: u32| {
            (x0..x1)
                .flat_map(|x| (0..40).map(move |y| (x, y)))
                .filter(|&(x, y)| c.get(x, y)[0] < 128)
                .count()
        };
        let w = Canvas::text_width(16.0, "O-B 12");
        assert!(w > 30.0 && w < 80.0, "{w}");
        assert!(dark(&c, 30, 90) > 40, "glyphs drawn around the centre");
        assert_eq!(
            dark(&c, 0, 20) + dark(&c, 100, 120),
            0,
            "nothing far from the text"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.png");
        c.save_png(&p).unwrap();
        let back = read_png(&p).unwrap();
        assert_eq!((back.width, back.height), (120, 40));
        assert!(back.pixels == c.pixels);
    }

    #[test]
    fn shapes_are_clipped_and_filled() {
        let mut c = Canvas::new(20, 20, WHITE);
        c.fill_rect(-5, -5, 5, 5, BLACK);
        assert_eq!(c.get(0, 0), BLACK);
        assert_eq!(c.get(5, 5), WHITE);
        c.disc(15.0, 15.0, 3.0, [255, 0, 0]);
        assert_eq!(c.get(15, 15), [255, 0, 0]);
        assert_eq!(c.get(19, 10), WHITE);
        c.line((0.0, 19.5), (19.0, 19.5), 1.0, [0, 0, 255], None);
        assert!(c.get(10, 19)[2] > 200 && c.get(10, 19)[0] < 100);
    }
}
