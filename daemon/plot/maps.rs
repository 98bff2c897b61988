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
//! climatological standard deviations, so pictures of different cycles compare); the scale is widened
//! to the next nice number only in a cycle whose fields go beyond it, so no value is clipped); the
//! spreads share one sequential scale, 0 to the largest spread of the cycle. The observation panel shows the
//! assimilated stations as ringed dots, the withheld (verification) stations as squares and the
//! satellite footprints as discs of their footprint size, coloured by temperature anomaly (station
//! `temperature`, satellite `brightness_temperature`) on a third scale; stations without a
//! temperature report are grey. Observations that quality control left out (background check or
//! blacklist) are marked with a red cross at their position.

use super::picture::{font, rgb, Area, Picture, Rgb, BLACK, GREY, LIGHT, WHITE};
use super::{label, nice_ceil, ColourMap, Scale};
use anyhow::{bail, Result};
use assimd_filter::geometry::{Geometry, Variable};
use assimd_filter::obs::{Footprint, Modality, Observation};
use assimd_filter::Ensemble;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// Side of a map panel in pixels.
pub const PANEL: i32 = 256;
/// Gap between panels and around the picture.
pub const MARGIN: i32 = 16;
const TITLE: i32 = 36;
const PANEL_TITLE: i32 = 22;
/// Width of a vertical colour bar with its labels.
pub const BAR_AREA: i32 = 96;
/// Width of the colour strip of a vertical colour bar.
pub const BAR: i32 = 14;
const OBS_BAR_AREA: i32 = 70;
const WITHHELD: Rgb = [200, 0, 160];
/// Marker colour of observations left out by quality control.
const REJECTED: Rgb = [215, 25, 28];

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
    /// The fields' colour scale runs from -field_limit to +field_limit (widened where a field
    /// goes beyond it).
    pub field_limit: f64,
}

/// Top-left pixel of the panel in column `col`, row `row` (row 0: fields, row 1: observations and
/// spreads).
pub fn panel_origin(col: usize, row: usize) -> (i32, i32) {
    (
        MARGIN + col as i32 * (PANEL + MARGIN),
        TITLE + PANEL_TITLE + row as i32 * (PANEL + PANEL_TITLE + MARGIN),
    )
}

/// The three colour scales of a picture.
#[derive(Clone, Copy, Debug)]
pub struct Scales {
    /// Truth and analysis means: ±max(field_limit, nice ceiling of the largest |value|).
    pub field: Scale,
    /// Analysis spreads: 0 to the nice ceiling of the largest spread.
    pub spread: Scale,
    /// Temperature-like observations: ± the nice ceiling of the largest |value|.
    pub observations: Scale,
}

/// The mapped field of a state vector.
fn field_of(m: &MapInput, np: usize, x: &[f64]) -> Vec<f64> {
    x[m.field * np..(m.field + 1) * np].to_vec()
}

/// Whether observations of this variable are coloured (temperature-like, in K).
fn coloured(variables: &[Variable], var: usize) -> bool {
    variables
        .get(var)
        .is_some_and(|v| v.name.contains("temperature"))
}

fn abs_max(values: impl IntoIterator<Item = f64>) -> f64 {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0, |a, v| a.max(v.abs()))
}

/// The colour scales of `m`'s picture; `np` grid points per field.
pub fn scales(m: &MapInput, np: usize) -> Scales {
    let means = m
        .filters
        .iter()
        .flat_map(|(_, e)| field_of(m, np, &e.mean()));
    let truth = m.truth.map(|t| field_of(m, np, t)).unwrap_or_default();
    let flim = m
        .field_limit
        .max(nice_ceil(abs_max(truth.into_iter().chain(means))));
    let smax = nice_ceil(abs_max(
        m.filters
            .iter()
            .flat_map(|(_, e)| field_of(m, np, &e.std())),
    ));
    let omax = nice_ceil(abs_max(
        m.assimilated
            .iter()
            .chain(m.withheld)
            .filter(|o| coloured(m.variables, o.var))
            .map(|o| o.value),
    ));
    let symmetric = |l: f64| Scale {
        lo: -l,
        hi: l,
        map: ColourMap::Diverging,
    };
    Scales {
        field: symmetric(flim),
        spread: Scale {
            lo: 0.0,
            hi: smax,
            map: ColourMap::Sequential,
        },
        observations: symmetric(omax),
    }
}

type MapChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The area of the panel with its top-left corner at (x0, y0). Plotters maps a chart's range onto
/// pixels 0 to size − 1 of its area, so the area is one pixel larger than the panel.
fn panel_area<'b>(root: &Area<'b>, (x0, y0): (i32, i32)) -> Area<'b> {
    root.clone()
        .shrink((x0, y0), (PANEL as u32 + 1, PANEL as u32 + 1))
}

/// A panel's chart: plane coordinates in km, centred on the box, north up, no axes.
fn panel<'a, 'b>(area: &'a Area<'b>, length_km: f64) -> Result<MapChart<'a, 'b>> {
    let h = length_km / 2.0;
    Ok(ChartBuilder::on(area).build_cartesian_2d(-h..h, -h..h)?)
}

fn frame(root: &Area, (x0, y0): (i32, i32)) -> Result<()> {
    root.draw(&Rectangle::new(
        [(x0 - 1, y0 - 1), (x0 + PANEL, y0 + PANEL)],
        rgb(BLACK),
    ))?;
    Ok(())
}

fn panel_title(root: &Area, (x0, y0): (i32, i32), text: &str) -> Result<()> {
    let style = font(15.0).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw(&Text::new(
        text.to_string(),
        (x0 + PANEL / 2, y0 - PANEL_TITLE + 3),
        style,
    ))?;
    Ok(())
}

/// A field of nx × ny cells (row j = j cells north of the southern edge) as coloured cells.
fn draw_field(
    root: &Area,
    origin: (i32, i32),
    (nx, ny, length_km): (usize, usize, f64),
    values: &[f64],
    scale: &Scale,
) -> Result<()> {
    let area = panel_area(root, origin);
    let mut chart = panel(&area, length_km)?;
    let edge = |i: usize, n: usize| i as f64 / n as f64 * length_km - length_km / 2.0;
    chart.draw_series((0..ny).flat_map(|j| {
        (0..nx).map(move |i| {
            Rectangle::new(
                [
                    (edge(i, nx), edge(j + 1, ny)),
                    (edge(i + 1, nx), edge(j, ny)),
                ],
                rgb(scale.colour(values[j * nx + i])).filled(),
            )
        })
    }))?;
    frame(root, origin)
}

/// A colour bar's `n` bands from the low to the high end of `scale`: each band's value range and
/// the colour of its middle.
fn bands(scale: &Scale, n: i32) -> impl Iterator<Item = (f64, f64, RGBColor)> + '_ {
    let step = (scale.hi - scale.lo) / n as f64;
    (0..n).map(move |k| {
        let a = scale.lo + k as f64 * step;
        (a, a + step, rgb(scale.colour(a + step / 2.0)))
    })
}

/// A vertical colour bar of `h` pixels with its top-left corner at (x0, y0), labels and title on
/// its right.
fn vertical_bar(
    root: &Area,
    (x0, y0): (i32, i32),
    h: i32,
    scale: &Scale,
    title: &str,
) -> Result<()> {
    let area = root
        .clone()
        .shrink((x0, y0), ((BAR_AREA - 11) as u32, h as u32 + 1));
    let mut chart = ChartBuilder::on(&area)
        .set_label_area_size(LabelAreaPosition::Right, BAR_AREA - 12 - BAR)
        .build_cartesian_2d(0.0..1.0, scale.lo..scale.hi)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .y_label_formatter(&|v| label(*v))
        .label_style(font(12.0))
        .y_desc(title)
        .axis_desc_style(font(13.0))
        .draw()?;
    chart.draw_series(
        bands(scale, h).map(|(a, b, c)| Rectangle::new([(0.0, a), (1.0, b)], c.filled())),
    )?;
    root.draw(&Rectangle::new(
        [(x0 - 1, y0 - 1), (x0 + BAR, y0 + h)],
        rgb(BLACK),
    ))?;
    Ok(())
}

/// A horizontal colour bar of `w` pixels with its top-left corner at (x0, y0), labels and title
/// below.
fn horizontal_bar(
    root: &Area,
    (x0, y0): (i32, i32),
    w: i32,
    scale: &Scale,
    title: &str,
) -> Result<()> {
    let h = 10;
    let area = root
        .clone()
        .shrink((x0, y0), (w as u32 + 1, (h + 36) as u32));
    let mut chart = ChartBuilder::on(&area)
        .x_label_area_size(36)
        .build_cartesian_2d(scale.lo..scale.hi, 0.0..1.0)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_y_axis()
        .x_labels(5)
        .x_label_formatter(&|v| label(*v))
        .label_style(font(11.0))
        .x_desc(title)
        .axis_desc_style(font(12.0))
        .draw()?;
    chart.draw_series(
        bands(scale, w).map(|(a, b, c)| Rectangle::new([(a, 0.0), (b, 1.0)], c.filled())),
    )?;
    root.draw(&Rectangle::new(
        [(x0 - 1, y0 - 1), (x0 + w, y0 + h)],
        rgb(BLACK),
    ))?;
    Ok(())
}

fn draw_observations(
    root: &Area,
    m: &MapInput,
    origin: (i32, i32),
    length_km: f64,
    scale: &Scale,
) -> Result<()> {
    let area = panel_area(root, origin);
    let mut chart = panel(&area, length_km)?;
    chart.plotting_area().fill(&rgb(LIGHT))?;
    let at = |o: &Observation| m.geometry.to_plane(o.lat, o.lon);
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
        let r = (d / 2.0 / length_km * PANEL as f64).max(2.0).round() as i32;
        chart.draw_series([
            Circle::new(at(o), r, rgb(colour_of(o)).filled()),
            Circle::new(at(o), r, rgb(GREY).stroke_width(1)),
        ])?;
    }
    // A station reports several variables at one place: one marker, coloured by its temperature.
    for (obs, withheld) in [(m.assimilated, false), (m.withheld, true)] {
        let mut sites: Vec<((f64, f64), Rgb)> = Vec::new();
        for o in obs.iter().filter(|o| o.modality == Modality::Station) {
            let p = at(o);
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
        for (p, col) in sites {
            if withheld {
                chart.draw_series(std::iter::once(
                    EmptyElement::at(p)
                        + Rectangle::new([(-5, -5), (5, 5)], rgb(WITHHELD).filled())
                        + Rectangle::new([(-3, -3), (3, 3)], rgb(col).filled()),
                ))?;
            } else {
                chart.draw_series([
                    Circle::new(p, 6, rgb(col).filled()),
                    Circle::new(p, 6, rgb(BLACK).stroke_width(1)),
                ])?;
            }
        }
    }
    chart.draw_series(m.rejected.iter().map(|o| {
        let style = rgb(REJECTED).stroke_width(3);
        EmptyElement::at(at(o))
            + PathElement::new(vec![(-6, -6), (6, 6)], style)
            + PathElement::new(vec![(-6, 6), (6, -6)], style)
    }))?;
    frame(root, origin)
}

/// Draw the picture of one cycle.
pub fn render(m: &MapInput) -> Result<Picture> {
    let Geometry::PeriodicBox {
        nx, ny, length_km, ..
    } = *m.geometry
    else {
        bail!("maps need a two-dimensional grid (testbed qg2l)");
    };
    let np = nx * ny;
    let s = scales(m, np);
    let cols = 1 + m.filters.len();
    let width = MARGIN + cols as i32 * (PANEL + MARGIN) + BAR_AREA;
    let height = panel_origin(0, 1).1 + PANEL + OBS_BAR_AREA;
    Picture::draw(width as u32, height as u32, |root| {
        root.fill(&rgb(WHITE))?;
        root.draw(&Text::new(
            format!("cycle {}   {}   {}", m.cycle, m.time, m.field_title),
            (MARGIN, 8),
            font(20.0),
        ))?;
        let grid = (nx, ny, length_km);
        let o = panel_origin(0, 0);
        panel_title(root, o, "truth")?;
        match m.truth {
            Some(t) => draw_field(root, o, grid, &field_of(m, np, t), &s.field)?,
            None => {
                root.draw(&Rectangle::new(
                    [o, (o.0 + PANEL, o.1 + PANEL)],
                    rgb(LIGHT).filled(),
                ))?;
                let style = font(14.0).pos(Pos::new(HPos::Center, VPos::Center));
                root.draw(&Text::new(
                    "no truth (not a simulation)",
                    (o.0 + PANEL / 2, o.1 + PANEL / 2),
                    style,
                ))?;
                frame(root, o)?;
            }
        }
        for (i, (name, ens)) in m.filters.iter().enumerate() {
            let o = panel_origin(i + 1, 0);
            panel_title(root, o, &format!("{name} analysis mean"))?;
            draw_field(root, o, grid, &field_of(m, np, &ens.mean()), &s.field)?;
            let o = panel_origin(i + 1, 1);
            panel_title(root, o, &format!("{name} analysis spread"))?;
            draw_field(root, o, grid, &field_of(m, np, &ens.std()), &s.spread)?;
        }
        let o = panel_origin(0, 1);
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
            root,
            o,
            &format!(
                "observations: {} stations, {} footprints{left_out}",
                sites.len(),
                n_sat
            ),
        )?;
        draw_observations(root, m, o, length_km, &s.observations)?;
        horizontal_bar(
            root,
            (o.0 + 8, o.1 + PANEL + 8),
            PANEL - 16,
            &s.observations,
            "temperature anomaly (K); □ withheld",
        )?;
        let bx = MARGIN + cols as i32 * (PANEL + MARGIN);
        let unit = m
            .field_title
            .rsplit_once('(')
            .map_or(String::new(), |(_, u)| format!("({u}"));
        vertical_bar(
            root,
            (bx, panel_origin(0, 0).1),
            PANEL,
            &s.field,
            &format!("field {unit}"),
        )?;
        vertical_bar(
            root,
            (bx, panel_origin(0, 1).1),
            PANEL,
            &s.spread,
            &format!("spread {unit}"),
        )?;
        Ok(())
    })
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
        let (tx, ty) = panel_origin(0, 0);
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
            let (x, y) = panel_origin(col, 0);
            // The means differ from the truth by 1.5 m²/s: the same colour on the shared scale.
            assert_eq!(c.get((x + 40) as u32, (y + 128) as u32), west);
            assert_eq!(c.get((x + 220) as u32, (y + 128) as u32), east);
        }
        // Both spreads are the same field: identical panels.
        let (s1, s2) = (panel_origin(1, 1), panel_origin(2, 1));
        for (dx, dy) in [(10, 10), (128, 128), (250, 5)] {
            assert_eq!(
                c.get((s1.0 + dx) as u32, (s1.1 + dy) as u32),
                c.get((s2.0 + dx) as u32, (s2.1 + dy) as u32)
            );
        }
        // The station (grid point i = j = 10, south-west) is a red dot (2 K on a ±2 K scale).
        let o = panel_origin(0, 1);
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

    /// Every scale holds its data (the field scale widens past `field_limit` when a field goes
    /// beyond it), the bars show each scale end to end, and the picture has its size and is not blank.
    #[test]
    fn each_scale_covers_its_data_and_the_bars_show_it() {
        let tb = Testbed::new(TestbedKind::Qg2l);
        let g = &tb.space.geometry;
        let (np, dim) = (g.n_points(), tb.space.dim());
        // A smooth truth reaching ±7000 m²/s, beyond a field_limit of 5000.
        let truth: Vec<f64> = (0..dim)
            .map(|p| 7000.0 * ((p % np % 64) as f64 / 64.0 * std::f64::consts::TAU).sin())
            .collect();
        let members: Vec<Vec<f64>> = (0..4)
            .map(|k| {
                truth
                    .iter()
                    .map(|v| (0.5 + 0.1 * k as f64) * v + 300.0 * k as f64)
                    .collect()
            })
            .collect();
        let ens = Ensemble::from_members(members).unwrap();
        let t = tb.space.variable("temperature").unwrap();
        let obs: Vec<Observation> = [(-1.3, 5), (0.4, 20), (2.2, 40)]
            .iter()
            .map(|&(value, p)| {
                let (lat, lon) = g.point_latlon(p * 64 + p);
                Observation {
                    modality: Modality::Station,
                    var: t,
                    lat,
                    lon,
                    footprint: Footprint::Point,
                    value,
                    sigma: 0.1,
                }
            })
            .collect();
        let m = MapInput {
            geometry: g,
            variables: &tb.space.variables,
            cycle: 1,
            time: "t",
            truth: Some(&truth),
            filters: vec![("letkf", &ens)],
            assimilated: &obs,
            withheld: &[],
            rejected: &[],
            field: 0,
            field_title: "ψ1 (m²/s)",
            field_limit: 5000.0,
        };
        let s = scales(&m, np);
        let field = |x: &[f64]| x[..np].to_vec();
        assert_eq!(
            (s.field.lo, s.field.hi),
            (-10000.0, 10000.0),
            "widened to a nice ±10000"
        );
        assert!(s.field.covers(field(&truth)) && s.field.covers(field(&ens.mean())));
        assert!(s.spread.covers(field(&ens.std())) && s.spread.lo == 0.0);
        assert!(s.observations.covers(obs.iter().map(|o| o.value)));
        assert_eq!((s.observations.lo, s.observations.hi), (-2.5, 2.5));

        let c = render(&m).unwrap();
        assert_eq!(
            (c.width as i32, c.height as i32),
            (
                MARGIN + 2 * (PANEL + MARGIN) + BAR_AREA,
                panel_origin(0, 1).1 + PANEL + OBS_BAR_AREA
            )
        );
        // Not blank: every field panel shows many colours.
        for (col, row) in [(0, 0), (1, 0), (1, 1)] {
            let (x0, y0) = panel_origin(col, row);
            let mut seen: Vec<Rgb> = (0..PANEL)
                .step_by(2)
                .flat_map(|dy| (0..PANEL).step_by(2).map(move |dx| (dx, dy)))
                .map(|(dx, dy)| c.get((x0 + dx) as u32, (y0 + dy) as u32))
                .collect();
            seen.sort();
            seen.dedup();
            assert!(
                seen.len() >= 10,
                "panel ({col}, {row}): {} colours",
                seen.len()
            );
        }
        // The vertical bars run from the colour of their top to that of their bottom value.
        let bx = MARGIN + 2 * (PANEL + MARGIN);
        for (row, scale) in [(0, s.field), (1, s.spread)] {
            let y0 = panel_origin(0, row).1;
            let half = (scale.hi - scale.lo) / PANEL as f64 / 2.0;
            let top = c.get((bx + BAR / 2) as u32, y0 as u32);
            let bottom = c.get((bx + BAR / 2) as u32, (y0 + PANEL - 1) as u32);
            assert_eq!(
                top,
                scale.colour(scale.hi - half),
                "row {row}: top of the bar"
            );
            assert_eq!(
                bottom,
                scale.colour(scale.lo + half),
                "row {row}: bottom of the bar"
            );
        }
        // The truth's largest value is drawn in its own colour, which the bar holds (not clipped
        // to the bar's end colour).
        let (x0, y0) = panel_origin(0, 0);
        let peak = c.get((x0 + 16 * 4 + 2) as u32, (y0 + 128) as u32);
        assert_eq!(peak, s.field.colour(7000.0));
        assert_ne!(peak, s.field.colour(s.field.hi));
        let bar: Vec<Rgb> = (0..PANEL)
            .map(|y| c.get((bx + BAR / 2) as u32, (y0 + y) as u32))
            .collect();
        assert!(
            bar.iter()
                .any(|b| (0..3).all(|k| b[k].abs_diff(peak[k]) <= 3)),
            "the peak's colour {peak:?} is on the bar"
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
