//! # Skill history plot (`assimd plot skill`)
//!
//! The per-cycle RMSE of each filter's ensemble mean (analysis solid, background dashed) and its
//! ensemble spread (dotted), in one panel against the truth and one against the withheld
//! stations (a panel only when its data exist). Inputs:
//! - a per-cycle history written by `assimd experiment --history FILE` (JSON lines), or
//! - a daemon's store directory (its committed cycles' summaries; the daemon must be stopped).
//!
//! Both carry the keys of the daemon's per-filter summaries: `cycle`, `filter`, `rmse_a_truth`,
//! `rmse_f_truth`, `spread_a`, `rmse_a_withheld`, `rmse_f_withheld` (absent or null = unknown).

use super::label;
use super::picture::{font, rgb, Area, Picture, Rgb, BLACK, GREY, WHITE};
use anyhow::{bail, Context, Result};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

/// One cycle's scores of one filter; NaN when unknown.
#[derive(Clone, Copy, Debug)]
pub struct SkillPoint {
    /// Cycle number.
    pub cycle: u64,
    /// Analysis RMSE against the truth.
    pub rmse_a_truth: f64,
    /// Background RMSE against the truth.
    pub rmse_f_truth: f64,
    /// Analysis spread.
    pub spread_a: f64,
    /// Analysis RMSE against the withheld stations.
    pub rmse_a_withheld: f64,
    /// Background RMSE against the withheld stations.
    pub rmse_f_withheld: f64,
}

impl SkillPoint {
    fn from_json(cycle: u64, v: &Value) -> SkillPoint {
        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        SkillPoint {
            cycle,
            rmse_a_truth: f("rmse_a_truth"),
            rmse_f_truth: f("rmse_f_truth"),
            spread_a: f("spread_a"),
            rmse_a_withheld: f("rmse_a_withheld"),
            rmse_f_withheld: f("rmse_f_withheld"),
        }
    }
}

/// The history of one filter in one run.
#[derive(Clone, Debug)]
pub struct SkillRun {
    /// Legend label (the filter's name, with the input's name when several inputs share it).
    pub label: String,
    /// Points in cycle order.
    pub points: Vec<SkillPoint>,
}

fn push(runs: &mut Vec<SkillRun>, label: &str, p: SkillPoint) {
    match runs.iter_mut().find(|r| r.label == label) {
        Some(r) => r.points.push(p),
        None => runs.push(SkillRun {
            label: label.to_string(),
            points: vec![p],
        }),
    }
}

/// Read one input: a store directory or a history file.
pub fn load(input: &Path) -> Result<Vec<SkillRun>> {
    let mut runs = Vec::new();
    if input.is_dir() {
        let store = crate::service::store::Store::open(input).with_context(|| {
            format!(
                "opening the store {} (is the daemon running? stop it first)",
                input.display()
            )
        })?;
        for (k, s) in store.summaries()? {
            for (name, f) in &s.filters {
                let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
                let p = SkillPoint {
                    cycle: k,
                    rmse_a_truth: nan(f.rmse_a_truth),
                    rmse_f_truth: nan(f.rmse_f_truth),
                    spread_a: nan(f.spread_a),
                    rmse_a_withheld: nan(f.rmse_a_withheld),
                    rmse_f_withheld: nan(f.rmse_f_withheld),
                };
                push(&mut runs, name, p);
            }
        }
        if runs.is_empty() {
            bail!("the store {} holds no committed cycle", input.display());
        }
    } else {
        let text = std::fs::read_to_string(input)
            .with_context(|| format!("reading {}", input.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", input.display(), i + 1))?;
            match (v["cycle"].as_u64(), v["filter"].as_str()) {
                (Some(k), Some(f)) => push(&mut runs, f, SkillPoint::from_json(k, &v)),
                _ if v.get("rmse_a").is_some() => bail!(
                    "{} is an experiment summary (--json) without per-cycle scores: rerun `assimd experiment` with --history FILE and plot that file",
                    input.display()
                ),
                _ => bail!("{} line {}: expected an object with \"cycle\" and \"filter\" (a history written by assimd experiment --history)", input.display(), i + 1),
            }
        }
        if runs.is_empty() {
            bail!("{} holds no cycle", input.display());
        }
    }
    for r in &mut runs {
        r.points.sort_by_key(|p| p.cycle);
    }
    Ok(runs)
}

/// Read several inputs; labels get the input's file name where two inputs share a filter.
pub fn load_all(inputs: &[std::path::PathBuf]) -> Result<Vec<SkillRun>> {
    let mut all: Vec<(String, SkillRun)> = Vec::new();
    for p in inputs {
        let name = p.file_stem().map_or_else(
            || p.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        all.extend(load(p)?.into_iter().map(|r| (name.clone(), r)));
    }
    let clash = |l: &str| all.iter().filter(|(_, r)| r.label == l).count() > 1;
    let labels: Vec<String> = all
        .iter()
        .map(|(n, r)| {
            if clash(&r.label) {
                format!("{} ({n})", r.label)
            } else {
                r.label.clone()
            }
        })
        .collect();
    Ok(all
        .into_iter()
        .zip(labels)
        .map(|((_, mut r), l)| {
            r.label = l;
            r
        })
        .collect())
}

const PALETTE: [Rgb; 6] = [
    [31, 119, 180],
    [230, 110, 0],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];
/// Width of the picture in pixels.
pub const W: u32 = 900;
/// Height of a panel, with its title and axis labels.
pub const PANEL_H: u32 = 350;
/// Height of the picture's title.
pub const TOP: u32 = 70;

/// The colour of run i.
pub fn colour(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

type Get = fn(&SkillPoint) -> f64;

/// How a line is drawn: solid, dashed or dotted (dash and gap lengths in pixels), and its width.
#[derive(Clone, Copy)]
enum Stroke {
    Solid(u32),
    Dashed(u32, u32, u32),
}

struct Panel {
    title: &'static str,
    lines: Vec<(Get, Stroke)>,
}

/// The value axis of a panel: [0, 1.05 max] or, on a log axis, whole decades around the data.
pub fn value_range(values: impl IntoIterator<Item = f64>, log_y: bool) -> (f64, f64) {
    let (vmin, vmax) = values
        .into_iter()
        .filter(|v| v.is_finite() && (!log_y || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if log_y {
        if !vmin.is_finite() {
            return (0.1, 10.0);
        }
        let lo = vmin.log10().floor();
        let hi = vmax.log10().ceil().max(lo + 1.0);
        (10f64.powf(lo), 10f64.powf(hi))
    } else {
        (0.0, if vmax > 0.0 { vmax * 1.05 } else { 1.0 })
    }
}

/// Draw the history of `runs`; `log_y` puts the values on a logarithmic axis.
pub fn render(runs: &[SkillRun], title: &str, log_y: bool) -> Result<Picture> {
    let has = |g: Get| {
        runs.iter()
            .flat_map(|r| &r.points)
            .any(|p| g(p).is_finite())
    };
    let mut panels = Vec::new();
    if has(|p| p.rmse_a_truth) {
        panels.push(Panel {
            title: "against the truth: RMSE of the analysis (solid) and background (dashed) mean, ensemble spread (dotted)",
            lines: vec![(|p| p.rmse_a_truth, Stroke::Solid(2)), (|p| p.rmse_f_truth, Stroke::Dashed(7, 5, 1)), (|p| p.spread_a, Stroke::Dashed(2, 4, 2))],
        });
    }
    if has(|p| p.rmse_a_withheld) {
        panels.push(Panel {
            title: "against the withheld stations: RMSE of the analysis (solid) and background (dashed) mean",
            lines: vec![(|p| p.rmse_a_withheld, Stroke::Solid(2)), (|p| p.rmse_f_withheld, Stroke::Dashed(7, 5, 1))],
        });
    }
    if panels.is_empty() {
        bail!("no finite score to plot (neither a truth nor withheld stations in the input)");
    }
    let (c0, c1) = runs
        .iter()
        .flat_map(|r| &r.points)
        .fold((u64::MAX, 0), |(a, b), p| (a.min(p.cycle), b.max(p.cycle)));
    let x = c0 as f64..if c1 > c0 { c1 as f64 } else { c0 as f64 + 1.0 };
    let height = TOP + panels.len() as u32 * PANEL_H;
    Picture::draw(W, height, |root| {
        root.fill(&rgb(WHITE))?;
        root.draw(&Text::new(title.to_string(), (78, 10), font(20.0)))?;
        let (_, body) = root.split_vertically(TOP);
        for (panel, area) in panels.iter().zip(body.split_evenly((panels.len(), 1))) {
            let values = runs
                .iter()
                .flat_map(|r| &r.points)
                .flat_map(|p| panel.lines.iter().map(move |(g, _)| g(p)));
            let (lo, hi) = value_range(values, log_y);
            if log_y {
                // Widened by a hair so the decades at the ends are inside the axis and labelled.
                let y = (lo * (1.0 - 1e-9)..hi * (1.0 + 1e-9)).log_scale();
                draw_panel::<LogCoord<f64>>(&area, panel, runs, x.clone(), y.into(), log_y, 12)?;
            } else {
                draw_panel::<RangedCoordf64>(
                    &area,
                    panel,
                    runs,
                    x.clone(),
                    (lo..hi).into(),
                    log_y,
                    6,
                )?;
            }
        }
        Ok(())
    })
}

/// One panel: the panel's lines of every run on the value axis `y`.
fn draw_panel<Y>(
    area: &Area,
    panel: &Panel,
    runs: &[SkillRun],
    x: std::ops::Range<f64>,
    y: Y,
    log_y: bool,
    y_labels: usize,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, font(13.0))
        .margin_right(24)
        .margin_bottom(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_labels(y_labels)
        .max_light_lines(0)
        .bold_line_style(rgb([225, 225, 225]))
        .axis_style(rgb(GREY))
        .x_labels(8)
        .x_label_formatter(&|v| label(*v))
        .y_label_formatter(&|v| label(*v))
        .label_style(font(12.0))
        .x_desc("cycle")
        .axis_desc_style(font(12.0))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let c = rgb(colour(i));
        for (li, (g, stroke)) in panel.lines.iter().enumerate() {
            // Unknown values (NaN, and non-positive ones on a log axis) break the line.
            let value =
                |p: &SkillPoint| Some(g(p)).filter(|v| v.is_finite() && (!log_y || *v > 0.0));
            let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for p in &run.points {
                match value(p) {
                    Some(v) => segments
                        .last_mut()
                        .expect("one segment")
                        .push((p.cycle as f64, v)),
                    None => segments.push(Vec::new()),
                }
            }
            for (si, seg) in segments.iter().filter(|s| !s.is_empty()).enumerate() {
                if seg.len() == 1 {
                    chart.draw_series(std::iter::once(Circle::new(seg[0], 3, c.filled())))?;
                    continue;
                }
                let anno =
                    match *stroke {
                        Stroke::Solid(w) => {
                            chart.draw_series(LineSeries::new(seg.clone(), c.stroke_width(w)))?
                        }
                        Stroke::Dashed(dash, gap, w) => chart.draw_series(
                            DashedLineSeries::new(seg.clone(), dash, gap, c.stroke_width(w)),
                        )?,
                    };
                if li == 0 && si == 0 {
                    anno.label(run.label.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 26, y)], c.stroke_width(3))
                    });
                }
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(rgb(WHITE).mix(0.85))
        .border_style(rgb(BLACK))
        .label_font(font(14.0))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lines_load_per_filter_and_summaries_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("h.jsonl");
        std::fs::write(
            &h,
            "{\"cycle\":2,\"filter\":\"letkf\",\"rmse_a_truth\":0.5,\"rmse_f_truth\":0.9,\"spread_a\":0.4,\"rmse_a_withheld\":null}\n\
             {\"cycle\":1,\"filter\":\"letkf\",\"rmse_a_truth\":0.6,\"rmse_f_truth\":1.0,\"spread_a\":0.5}\n",
        )
        .unwrap();
        let runs = load(&h).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            runs[0].points.iter().map(|p| p.cycle).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(runs[0].points[1].rmse_a_withheld.is_nan());
        let both = load_all(&[h.clone(), h.clone()]).unwrap();
        assert_eq!(both[0].label, "letkf (h)");
        let c = render(&runs, "t", false).unwrap();
        assert_eq!(
            (c.width, c.height),
            (W, TOP + PANEL_H),
            "one panel: no withheld scores"
        );
        assert!(
            c.pixels.chunks(3).filter(|p| *p == colour(0)).count() > 50,
            "the run's colour is drawn"
        );
        std::fs::write(&h, "{\"testbed\":\"l96\",\"rmse_a\":0.2}\n").unwrap();
        assert!(format!("{:#}", load(&h).unwrap_err()).contains("--history"));
    }

    /// The value axis holds every finite value: from 0 on a linear axis, whole decades on a log one.
    #[test]
    fn the_value_axis_covers_the_data() {
        let v = [0.031, 0.4, f64::NAN, 2.7, 0.0];
        assert_eq!(value_range(v, false), (0.0, 2.7 * 1.05));
        let (lo, hi) = value_range(v, true);
        assert!(
            (lo - 0.01).abs() < 1e-15 && (hi - 10.0).abs() < 1e-12,
            "{lo} {hi}"
        );
        assert_eq!(value_range([1.0], true), (1.0, 10.0), "at least one decade");
        assert_eq!(value_range([f64::NAN], false), (0.0, 1.0));
    }
}
