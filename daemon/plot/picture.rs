//! # Picture: an RGB raster drawn with `plotters`, stored as PNG
//!
//! The plots draw on a [`plotters`] bitmap backend over a [`Picture`]'s buffer; text is set in the
//! bundled Go font, registered with plotters' `ab_glyph` renderer as the family `"sans-serif"`, so
//! neither the daemon nor CI needs a system font or graphics library. PNG encoding and decoding is
//! the `png` crate's.

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, IntoDrawingArea, RGBColor};
use plotters::style::{FontStyle, IntoFont, TextStyle};
use std::path::Path;
use std::sync::Once;

/// An sRGB colour.
pub type Rgb = [u8; 3];

/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Mid grey (axes, grid, missing values).
pub const GREY: Rgb = [150, 150, 150];
/// Light grey (panel backgrounds without data).
pub const LIGHT: Rgb = [235, 235, 235];

/// The Go font (Bigelow & Holmes, BSD-3-Clause; licence in `Go-Regular.LICENSE` beside it).
static GO_REGULAR: &[u8] = include_bytes!("Go-Regular.ttf");

/// The plotters colour of `c`.
pub fn rgb(c: Rgb) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Text of `size` pixels in the bundled font.
pub fn font(size: f64) -> TextStyle<'static> {
    static REGISTER: Once = Once::new();
    // The bundled file is a valid TrueType font (checked by the test below).
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, GO_REGULAR);
    });
    ("sans-serif", size).into_font().into()
}

/// The drawing area plots draw on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// An RGB image.
pub struct Picture {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB bytes.
    pub pixels: Vec<u8>,
}

impl Picture {
    /// A white picture of `width` × `height` drawn on by `f`.
    pub fn draw(width: u32, height: u32, f: impl FnOnce(&Area) -> Result<()>) -> Result<Picture> {
        let mut pixels = vec![255; 3 * width as usize * height as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
            f(&root)?;
            root.present().context("drawing the picture")?;
        }
        Ok(Picture {
            width,
            height,
            pixels,
        })
    }

    /// The colour at (x, y) (inside the picture).
    pub fn get(&self, x: u32, y: u32) -> Rgb {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// PNG-encoded bytes.
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

/// Read a PNG written by [`Picture::save_png`] back (8-bit RGB), for tests and checks.
pub fn read_png(path: &Path) -> Result<Picture> {
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
    Ok(Picture {
        width: info.width,
        height: info.height,
        pixels: buf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::Text;

    #[test]
    fn text_in_the_bundled_font_is_drawn_and_png_round_trips() {
        let p = Picture::draw(120, 40, |a| {
            a.draw(&Text::new("Skill 0.25", (10, 10), font(18.0)))?;
            Ok(())
        })
        .unwrap();
        let dark = p.pixels.chunks(3).filter(|c| c[0] < 128).count();
        assert!(dark > 40, "the text is drawn: {dark} dark pixels");
        // Nothing left of x = 10 or right of the text's advance (~90 px at 18 px).
        assert!((0..40).all(|y| (0..9).all(|x| p.get(x, y) == WHITE)));
        assert!((0..40).all(|y| (110..120).all(|x| p.get(x, y) == WHITE)));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/t.png");
        p.save_png(&f).unwrap();
        let q = read_png(&f).unwrap();
        assert_eq!((q.width, q.height), (120, 40));
        assert_eq!(q.pixels, p.pixels);
    }
}
