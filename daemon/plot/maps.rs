//! # Per-cycle maps (qg2l)
//!
//! One PNG per cycle, two rows of square panels over the 1000-km box:
//!
//! | | column 1 | one column per filter |
//! |---|---|---|
//! | row 1 | the truth (simulation only) | the filter's analysis mean |
//! | row 2 | the observations | the filter's analysis spread (per-point ensemble std) |
//!
//! of one state field (the upper-layer streamfunction ψ1 by default). The truth and every analysis
//! mean share one symmetric, diverging colour scale fixed for the whole run (± about three
//! climatological standard deviations, so pictures of different cycles compare); the spreads share
//! one sequential scale, 0 to the largest spread of the cycle. The observation panel shows the
//! assimilated stations as ringed dots, the withheld (verification) stations as squares and the
//! satellite footprints as discs of their footprint size, coloured by temperature anomaly (station
//! `temperature`, satellite `brightness_temperature`) on a third scale; stations without a
//! temperature report are grey. Observations that quality control left out (background check or
//! blacklist) are marked with a red cross at their position.

use super::canvas::{Align, Canvas, Rgb, BLACK, GREY, LIGHT, WHITE};
use super::{label, nice_ceil, ticks, Scale, DIVERGING, SEQUENTIAL};
use anyhow::{bail, Result};
use assimd_filter::geometry::{Geometry, Variable};
use assimd_filter::obs::{Footprint, Modality, Observation};
use assimd_filter::Ensemble;
use std::path::{Path, PathBuf};

/// Side of a map panel in pixels.
pub const PANEL: i64 = 256;
const MARGIN: i64 = 16;
const TITLE: i64 = 36;
const PANEL_TITLE: i64 = 22;
const BAR_AREA: i64 = 96;
const OBS_BAR_AREA: i64 = 70;
const WITHHELD: Rgb = [200, 0, 160];

/// What one cycle's picture shows.
pub struct MapInput<'a> {
    /// The grid (a `PeriodicBox`).
    pub geometry: &'a Geometry,
    /// The observable quantities (to pick the temperature-like ones for colour).
    pub variables: &'a [Variable],
    /// Cycle number.
    pub cycle: u64,
    /// Valid time (RFC 3339).
    pub time: &'a str,
    /// The true state, in simulation.
    pub truth: Option<&'a [f64]>,
    /// Each filter's name and analysis ensemble.
    pub filters: Vec<(&'a str, &'a Ensemble)>,
    /// Assimilated observations.
    pub assimilated: &'a [Observation],
    /// Withheld (verification) observations.
    pub withheld: &'a [Observation],
    /// Observations quality control left out (drawn as red crosses).
    pub rejected: &'a [Observation],
    /// Which state field to map, and its name and unit for the title.
    pub field: usize,
    /// Title of the field, e.g. "upper-layer streamfunction ψ1 (m²/s)".
    pub field_title: &'a str,
    /// The fields' colour scale runs from -field_limit to +field_limit.
    pub field_limit: f64,
}

struct Layout {
    nx: usize,
    ny: usize,
    length_km: f64,
}

impl Layout {
    fn panel_origin(col: usize, row: usize) -> (i64, i64) {
        (
            MARGIN + col as i64 * (PANEL + MARGIN),
            TITLE + PANEL_TITLE + row as i64 * (PANEL + PANEL_TITLE + MARGIN),
        )
    }

    /// Pixel position of a latitude/longitude inside the panel at (x0, y0).
    fn to_px(&self, g: &Geometry, (x0, y0): (i64, i64), lat: f64, lon: f64) -> (f64, f64) {
        let (x, y) = g.to_plane(lat, lon);
        let l = self.length_km;
        (
            x0 as f64 + (x + l / 2.0) / l * PANEL as f64,
            y0 as f64 + (l / 2.0 - y) / l * PANEL as f64,
        )
    }
}

fn draw_field(c: &mut Canvas, lay: &Layout, origin: (i64, i64), values: &[f64], scale: &Scale) {
    let (x0, y0) = origin;
    let cell = |i: usize, n: usize| (i as f64 * PANEL as f64 / n as f64).round() as i64;
    for j in 0..lay.ny {
        // Row j of the grid lies j cells north of the southern edge: pixel rows count down from the top.
        let (ya, yb) = (
            y0 + PANEL - cell(j + 1, lay.ny),
            y0 + PANEL - cell(j, lay.ny),
        );
        for i in 0..lay.nx {
            c.fill_rect(
                x0 + cell(i, lay.nx),
                ya,
                x0 + cell(i + 1, lay.nx),
                yb,
                scale.colour(values[j * lay.nx + i]),
            );
        }
    }
    c.stroke_rect(x0 - 1, y0 - 1, x0 + PANEL + 1, y0 + PANEL + 1, BLACK);
}

fn panel_title(c: &mut Canvas, (x0, y0): (i64, i64), text: &str) {
    c.text(
        (x0 + PANEL / 2) as f64,
        (y0 - PANEL_TITLE + 2) as f64,
        15.0,
        BLACK,
        Align::Centre,
        text,
    );
}

fn vertical_bar(c: &mut Canvas, x0: i64, y0: i64, h: i64, scale: &Scale, title: &str) {
    let w = 14;
    for y in 0..h {
        let v = scale.hi - (y as f64 + 0.5) / h as f64 * (scale.hi - scale.lo);
        c.fill_rect(x0, y0 + y, x0 + w, y0 + y + 1, scale.colour(v));
    }
    c.stroke_rect(x0 - 1, y0 - 1, x0 + w + 1, y0 + h + 1, BLACK);
    for t in ticks(scale.lo, scale.hi, 4) {
        let y = y0 as f64 + (scale.hi - t) / (scale.hi - scale.lo) * h as f64;
        c.fill_rect(x0 + w, y as i64, x0 + w + 4, y as i64 + 1, BLACK);
        c.text(
            (x0 + w + 6) as f64,
            y - 7.0,
            12.0,
            BLACK,
            Align::Left,
            &label(t),
        );
    }
    c.text_vertical(
        (x0 + w + 72) as f64,
        (y0 + h / 2) as f64,
        13.0,
        BLACK,
        title,
    );
}

fn horizontal_bar(c: &mut Canvas, x0: i64, y0: i64, w: i64, scale: &Scale, title: &str) {
    let h = 10;
    for x in 0..w {
        let v = scale.lo + (x as f64 + 0.5) / w as f64 * (scale.hi - scale.lo);
        c.fill_rect(x0 + x, y0, x0 + x + 1, y0 + h, scale.colour(v));
    }
    c.stroke_rect(x0 - 1, y0 - 1, x0 + w + 1, y0 + h + 1, BLACK);
    for t in ticks(scale.lo, scale.hi, 4) {
        let x = x0 as f64 + (t - scale.lo) / (scale.hi - scale.lo) * w as f64;
        c.fill_rect(x as i64, y0 + h, x as i64 + 1, y0 + h + 3, BLACK);
        c.text(
            x,
            (y0 + h + 3) as f64,
            11.0,
            BLACK,
            Align::Centre,
            &label(t),
        );
    }
    c.text(
        (x0 + w / 2) as f64,
        (y0 + h + 17) as f64,
        12.0,
        BLACK,
        Align::Centre,
        title,
    );
}

/// Whether observations of this variable are coloured (temperature-like, in K).
fn coloured(variables: &[Variable], var: usize) -> bool {
    variables
        .get(var)
        .is_some_and(|v| v.name.contains("temperature"))
}

fn draw_observations(
    c: &mut Canvas,
    lay: &Layout,
    m: &MapInput,
    origin: (i64, i64),
    scale: &Scale,
) {
    let (x0, y0) = origin;
    c.fill_rect(x0, y0, x0 + PANEL, y0 + PANEL, LIGHT);
    let colour_of = |o: &Observation| {
        if coloured(m.variables, o.var) {
            scale.colour(o.value)
        } else {
            GREY
        }
    };
    for o in m
        .assimilated
        .iter()
        .chain(m.withheld)
        .filter(|o| o.modality == Modality::Satellite)
    {
        let d = match o.footprint {
            Footprint::Disc { diameter_km } => diameter_km,
            Footprint::Point => 10.0,
        };
        let (px, py) = lay.to_px(m.geometry, origin, o.lat, o.lon);
        c.ringed_disc(
            px,
            py,
            (d / 2.0 / lay.length_km * PANEL as f64).max(2.0),
            1.0,
            colour_of(o),
            GREY,
        );
    }
    // A station reports several variables at one place: one marker, coloured by its temperature.
    for (obs, withheld) in [(m.assimilated, false), (m.withheld, true)] {
        let mut sites: Vec<((f64, f64), Rgb)> = Vec::new();
        for o in obs.iter().filter(|o| o.modality == Modality::Station) {
            let p = lay.to_px(m.geometry, origin, o.lat, o.lon);
            let i = match sites
                .iter()
                .position(|(q, _)| (q.0 - p.0).abs() < 1e-6 && (q.1 - p.1).abs() < 1e-6)
            {
                Some(i) => i,
                None => {
                    sites.push((p, GREY));
                    sites.len() - 1
                }
            };
            if coloured(m.variables, o.var) {
                sites[i].1 = colour_of(o);
            }
        }
        for ((px, py), col) in sites {
            if withheld {
                let (x, y) = (px.round() as i64, py.round() as i64);
                c.fill_rect(x - 5, y - 5, x + 6, y + 6, WITHHELD);
                c.fill_rect(x - 3, y - 3, x + 4, y + 4, col);
            } else {
                c.ringed_disc(px, py, 5.0, 1.5, col, BLACK);
            }
        }
    }
    for o in m.rejected {
        let (px, py) = lay.to_px(m.geometry, origin, o.lat, o.lon);
        let r = 6.0;
        c.line((px - r, py - r), (px + r, py + r), 2.5, REJECTED, None);
        c.line((px - r, py + r), (px + r, py - r), 2.5, REJECTED, None);
    }
    c.stroke_rect(x0 - 1, y0 - 1, x0 + PANEL + 1, y0 + PANEL + 1, BLACK);
}

/// Marker colour of observations left out by quality control.
const REJECTED: Rgb = [215, 25, 28];

/// Draw the picture of one cycle.
pub fn render(m: &MapInput) -> Result<Canvas> {
    let Geometry::PeriodicBox {
        nx, ny, length_km, ..
    } = *m.geometry
    else {
        bail!("maps need a two-dimensional grid (testbed qg2l)");
    };
    let lay = Layout { nx, ny, length_km };
    let np = nx * ny;
    let field = |x: &[f64]| x[m.field * np..(m.field + 1) * np].to_vec();
    let cols = 1 + m.filters.len();
    let width = MARGIN + cols as i64 * (PANEL + MARGIN) + BAR_AREA;
    let height = Layout::panel_origin(0, 1).1 + PANEL + OBS_BAR_AREA;
    let mut c = Canvas::new(width as u32, height as u32, WHITE);
    c.text(
        MARGIN as f64,
        8.0,
        18.0,
        BLACK,
        Align::Left,
        &format!("cycle {}   {}   {}", m.cycle, m.time, m.field_title),
    );

    let fscale = Scale {
        lo: -m.field_limit,
        hi: m.field_limit,
        map: DIVERGING,
    };
    let spreads: Vec<Vec<f64>> = m.filters.iter().map(|(_, e)| field(&e.std())).collect();
    let smax = nice_ceil(
        spreads
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max),
    );
    let sscale = Scale {
        lo: 0.0,
        hi: smax,
        map: SEQUENTIAL,
    };
    let omax = nice_ceil(
        m.assimilated
            .iter()
            .chain(m.withheld)
            .filter(|o| coloured(m.variables, o.var))
            .map(|o| o.value.abs())
            .fold(0.0, f64::max),
    );
    let oscale = Scale {
        lo: -omax,
        hi: omax,
        map: DIVERGING,
    };

    let o = Layout::panel_origin(0, 0);
    panel_title(&mut c, o, "truth");
    match m.truth {
        Some(t) => draw_field(&mut c, &lay, o, &field(t), &fscale),
        None => {
            c.fill_rect(o.0, o.1, o.0 + PANEL, o.1 + PANEL, LIGHT);
            c.text(
                (o.0 + PANEL / 2) as f64,
                (o.1 + PANEL / 2 - 8) as f64,
                14.0,
                BLACK,
                Align::Centre,
                "no truth (not a simulation)",
            );
        }
    }
    for (i, ((name, ens), spread)) in m.filters.iter().zip(&spreads).enumerate() {
        let o = Layout::panel_origin(i + 1, 0);
        panel_title(&mut c, o, &format!("{name} analysis mean"));
        draw_field(&mut c, &lay, o, &field(&ens.mean()), &fscale);
        let o = Layout::panel_origin(i + 1, 1);
        panel_title(&mut c, o, &format!("{name} analysis spread"));
        draw_field(&mut c, &lay, o, spread, &sscale);
    }
    let o = Layout::panel_origin(0, 1);
    let n_sat = m
        .assimilated
        .iter()
        .filter(|o| o.modality == Modality::Satellite)
        .count();
    let mut sites: Vec<(f64, f64)> = m
        .assimilated
        .iter()
        .filter(|o| o.modality == Modality::Station)
        .map(|o| (o.lat, o.lon))
        .collect();
    sites.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sites.dedup();
    let left_out = if m.rejected.is_empty() {
        String::new()
    } else {
        format!(", {} left out (×)", m.rejected.len())
    };
    panel_title(
        &mut c,
        o,
        &format!(
            "observations: {} stations, {} footprints{left_out}",
            sites.len(),
            n_sat
        ),
    );
    draw_observations(&mut c, &lay, m, o, &oscale);
    horizontal_bar(
        &mut c,
        o.0 + 8,
        o.1 + PANEL + 8,
        PANEL - 16,
        &oscale,
        "temperature anomaly (K); □ withheld",
    );

    let bx = MARGIN + cols as i64 * (PANEL + MARGIN);
    let unit = m
        .field_title
        .rsplit_once('(')
        .map_or(String::new(), |(_, u)| format!("({}", u));
    vertical_bar(
        &mut c,
        bx,
        Layout::panel_origin(0, 0).1,
        PANEL,
        &fscale,
        &format!("field {unit}"),
    );
    vertical_bar(
        &mut c,
        bx,
        Layout::panel_origin(0, 1).1,
        PANEL,
        &sscale,
        &format!("spread {unit}"),
    );
    Ok(c)
}

/// Writes the daemon's per-cycle pictures (`[maps]` of the config).
#[derive(Clone, Debug)]
pub struct MapWriter {
    /// Output directory.
    pub dir: PathBuf,
    /// Draw every this many cycles.
    pub every: u64,
    /// Most pictures kept (older ones are deleted); 0 = all.
    pub keep: usize,
    /// Colour limit of the fields (see [`MapInput::field_limit`]).
    pub field_limit: f64,
}

impl MapWriter {
    /// The file of cycle k.
    pub fn path(dir: &Path, k: u64) -> PathBuf {
        dir.join(format!("cycle-{k:06}.png"))
    }

    /// Whether cycle k gets a picture.
    pub fn due(&self, k: u64) -> bool {
        k.is_multiple_of(self.every)
    }

    /// Render and write cycle `m.cycle`'s picture, then delete the oldest beyond `keep`.
    pub fn write(&self, m: &MapInput) -> Result<PathBuf> {
        let p = Self::path(&self.dir, m.cycle);
        render(m)?.save_png(&p)?;
        if self.keep > 0 {
            let mut old: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("cycle-") && n.ends_with(".png"))
                })
                .collect();
            old.sort();
            let excess = old.len().saturating_sub(self.keep);
            for f in &old[..excess] {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assimd_models::testbed::{Testbed, TestbedKind};

    /// A truth that is +a in the western half and -a in the eastern half, an analysis equal to it,
    /// and one station: the panels show it where it is, with the same colours.
    #[test]
    fn panels_show_fields_where_they_are_on_shared_scales() {
        let tb = Testbed::new(TestbedKind::Qg2l);
        let g = &tb.space.geometry;
        let np = g.n_points();
        let a = 3000.0;
        let mut truth = vec![0.0; tb.space.dim()];
        for (p, t) in truth.iter_mut().enumerate().take(np) {
            *t = if p % 64 < 32 { a } else { -a };
        }
        let members: Vec<Vec<f64>> = (0..4)
            .map(|k| truth.iter().map(|v| v + k as f64).collect())
            .collect();
        let ens = Ensemble::from_members(members).unwrap();
        let (lat, lon) = g.point_latlon(10 * 64 + 10);
        let t = tb.space.variable("temperature").unwrap();
        let st = Observation {
            modality: Modality::Station,
            var: t,
            lat,
            lon,
            footprint: Footprint::Point,
            value: 2.0,
            sigma: 0.1,
        };
        let m = MapInput {
            geometry: g,
            variables: &tb.space.variables,
            cycle: 3,
            time: "2026-01-02T12:00:00Z",
            truth: Some(&truth),
            filters: vec![("letkf", &ens), ("score", &ens)],
            assimilated: std::slice::from_ref(&st),
            withheld: &[],
            rejected: &[],
            field: 0,
            field_title: "upper-layer streamfunction ψ1 (m²/s)",
            field_limit: 5000.0,
        };
        let c = render(&m).unwrap();
        let (tx, ty) = Layout::panel_origin(0, 0);
        let west = c.get((tx + 40) as u32, (ty + 128) as u32);
        let east = c.get((tx + 220) as u32, (ty + 128) as u32);
        assert!(
            west[0] > 150 && west[2] < 150,
            "positive streamfunction is red: {west:?}"
        );
        assert!(
            east[2] > 150 && east[0] < 150,
            "negative streamfunction is blue: {east:?}"
        );
        for col in 1..3 {
            let (x, y) = Layout::panel_origin(col, 0);
            // The means differ from the truth by 1.5 m²/s: the same colour on the shared scale.
            assert_eq!(c.get((x + 40) as u32, (y + 128) as u32), west);
            assert_eq!(c.get((x + 220) as u32, (y + 128) as u32), east);
        }
        // Both spreads are the same field: identical panels.
        let (s1, s2) = (Layout::panel_origin(1, 1), Layout::panel_origin(2, 1));
        for (dx, dy) in [(10, 10), (128, 128), (250, 5)] {
            assert_eq!(
                c.get((s1.0 + dx) as u32, (s1.1 + dy) as u32),
                c.get((s2.0 + dx) as u32, (s2.1 + dy) as u32)
            );
        }
        // The station (grid point i = j = 10, south-west) is a red dot (2 K on a ±2 K scale).
        let o = Layout::panel_origin(0, 1);
        let (px, py) = (o.0 as f64 + 10.5 * 4.0, o.1 as f64 + 256.0 - 10.5 * 4.0);
        let dot = c.get(px as u32, py as u32);
        assert!(
            dot[0] > 90 && dot[1] < 40 && dot[2] < 60,
            "station coloured by its temperature: {dot:?}"
        );
        assert_eq!(
            c.get((o.0 + 200) as u32, (o.1 + 40) as u32),
            LIGHT,
            "no observation there"
        );
        // The same station left out by QC: a red cross over it, whose arms reach past the dot.
        let rejected = MapInput {
            rejected: std::slice::from_ref(&st),
            ..m
        };
        let c = render(&rejected).unwrap();
        let arm = c.get((px + 5.0) as u32, (py - 5.0) as u32);
        assert_eq!(
            arm, REJECTED,
            "the cross's arm 5 px north-east of the station"
        );
        assert_ne!(
            c.get((px + 5.0) as u32, (py + 0.0) as u32 + 8),
            REJECTED,
            "only on the diagonals"
        );
    }

    #[test]
    fn writer_keeps_the_newest_pictures() {
        let tb = Testbed::new(TestbedKind::Qg2l);
        let ens =
            Ensemble::from_members(vec![vec![0.0; tb.space.dim()], vec![1.0; tb.space.dim()]])
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let w = MapWriter {
            dir: dir.path().join("maps"),
            every: 2,
            keep: 2,
            field_limit: 10.0,
        };
        for k in (2..=8).filter(|k| w.due(*k)) {
            let m = MapInput {
                geometry: &tb.space.geometry,
                variables: &tb.space.variables,
                cycle: k,
                time: "t",
                truth: None,
                filters: vec![("letkf", &ens)],
                assimilated: &[],
                withheld: &[],
                rejected: &[],
                field: 0,
                field_title: "ψ1 (m²/s)",
                field_limit: 10.0,
            };
            w.write(&m).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(&w.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["cycle-000006.png", "cycle-000008.png"]);
        let l96 = Testbed::new(TestbedKind::L96);
        let m = MapInput {
            geometry: &l96.space.geometry,
            variables: &[],
            cycle: 1,
            time: "t",
            truth: None,
            filters: vec![],
            assimilated: &[],
            withheld: &[],
            rejected: &[],
            field: 0,
            field_title: "",
            field_limit: 1.0,
        };
        assert!(render(&m).is_err(), "no map of a ring");
    }
}
