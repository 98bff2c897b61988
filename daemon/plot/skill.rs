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

use super::canvas::{Align, Canvas, Rgb, BLACK, GREY, WHITE};
use super::{label, ticks};
use anyhow::{bail, Context, Result};
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
const W: i64 = 900;
const PANEL_H: i64 = 280;
const LEFT: i64 = 78;
const RIGHT: i64 = 24;
const TOP: i64 = 70;
const GAP: i64 = 70;

/// The colour of run i.
pub fn colour(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

type Get = fn(&SkillPoint) -> f64;

/// A line of a panel: the value it draws, its dash pattern (None = solid) and its width.
type Line = (Get, Option<(f64, f64)>, f64);

struct Panel {
    title: &'static str,
    lines: Vec<Line>,
}

/// Draw the history of `runs`; `log_y` puts the values on a logarithmic axis.
pub fn render(runs: &[SkillRun], title: &str, log_y: bool) -> Result<Canvas> {
    let has = |g: Get| {
        runs.iter()
            .flat_map(|r| &r.points)
            .any(|p| g(p).is_finite())
    };
    let mut panels = Vec::new();
    if has(|p| p.rmse_a_truth) {
        panels.push(Panel {
            title: "against the truth: RMSE of the analysis (solid) and background (dashed) mean, ensemble spread (dotted)",
            lines: vec![(|p| p.rmse_a_truth, None, 2.2), (|p| p.rmse_f_truth, Some((7.0, 5.0)), 1.4), (|p| p.spread_a, Some((1.5, 3.5)), 1.6)],
        });
    }
    if has(|p| p.rmse_a_withheld) {
        panels.push(Panel {
            title: "against the withheld stations: RMSE of the analysis (solid) and background (dashed) mean",
            lines: vec![(|p| p.rmse_a_withheld, None, 2.2), (|p| p.rmse_f_withheld, Some((7.0, 5.0)), 1.4)],
        });
    }
    if panels.is_empty() {
        bail!("no finite score to plot (neither a truth nor withheld stations in the input)");
    }
    let h = TOP + panels.len() as i64 * (PANEL_H + GAP);
    let mut c = Canvas::new(W as u32, h as u32, WHITE);
    c.text(LEFT as f64, 10.0, 18.0, BLACK, Align::Left, title);
    // Legend: one swatch per run.
    let mut x = LEFT as f64;
    for (i, r) in runs.iter().enumerate() {
        c.line((x, 44.0), (x + 26.0, 44.0), 3.0, colour(i), None);
        c.text(x + 32.0, 36.0, 14.0, BLACK, Align::Left, &r.label);
        x += 32.0 + Canvas::text_width(14.0, &r.label) + 24.0;
    }
    let (c0, c1) = runs
        .iter()
        .flat_map(|r| &r.points)
        .fold((u64::MAX, 0), |(a, b), p| (a.min(p.cycle), b.max(p.cycle)));
    let (x_lo, x_hi) = (c0 as f64, if c1 > c0 { c1 as f64 } else { c0 as f64 + 1.0 });
    for (pi, panel) in panels.iter().enumerate() {
        let y0 = TOP + pi as i64 * (PANEL_H + GAP) + 24;
        let (x0, x1, y1) = (LEFT, W - RIGHT, y0 + PANEL_H - 24);
        c.text(
            x0 as f64,
            (y0 - 22) as f64,
            13.0,
            BLACK,
            Align::Left,
            panel.title,
        );
        let vals: Vec<f64> = runs
            .iter()
            .flat_map(|r| &r.points)
            .flat_map(|p| panel.lines.iter().map(move |(g, _, _)| g(p)))
            .filter(|v| v.is_finite() && (!log_y || *v > 0.0))
            .collect();
        let vmax = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let vmin = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let (lo, hi) = if log_y {
            (
                vmin.log10().floor(),
                vmax.log10().ceil().max(vmin.log10().floor() + 1.0),
            )
        } else {
            (0.0, if vmax > 0.0 { vmax * 1.05 } else { 1.0 })
        };
        let ty = |v: f64| if log_y { v.log10() } else { v };
        let px = |cy: f64| x0 as f64 + (cy - x_lo) / (x_hi - x_lo) * (x1 - x0) as f64;
        let py = |v: f64| y1 as f64 - (ty(v) - lo) / (hi - lo) * (y1 - y0) as f64;
        // Grid and axes.
        let yt: Vec<f64> = if log_y {
            (lo as i64..=hi as i64)
                .map(|e| 10f64.powi(e as i32))
                .collect()
        } else {
            ticks(lo, hi, 5)
        };
        for t in yt {
            let y = py(t);
            c.fill_rect(x0, y as i64, x1, y as i64 + 1, [225, 225, 225]);
            c.text(
                (x0 - 6) as f64,
                y - 7.0,
                12.0,
                BLACK,
                Align::Right,
                &label(t),
            );
        }
        for t in ticks(x_lo, x_hi, 8)
            .into_iter()
            .filter(|t| t.fract() == 0.0)
        {
            let x = px(t);
            c.fill_rect(x as i64, y1, x as i64 + 1, y1 + 4, BLACK);
            c.text(x, (y1 + 5) as f64, 12.0, BLACK, Align::Centre, &label(t));
        }
        c.stroke_rect(x0, y0, x1 + 1, y1 + 1, GREY);
        c.text(
            ((x0 + x1) / 2) as f64,
            (y1 + 20) as f64,
            12.0,
            BLACK,
            Align::Centre,
            "cycle",
        );
        for (i, r) in runs.iter().enumerate() {
            for (g, dash, w) in &panel.lines {
                let pts: Vec<(f64, f64)> = r
                    .points
                    .iter()
                    .map(|p| {
                        (
                            px(p.cycle as f64),
                            if g(p).is_finite() && (!log_y || g(p) > 0.0) {
                                py(g(p))
                            } else {
                                f64::NAN
                            },
                        )
                    })
                    .collect();
                c.polyline(&pts, *w, colour(i), *dash);
                if pts.len() == 1 && pts[0].1.is_finite() {
                    c.disc(pts[0].0, pts[0].1, 3.0, colour(i));
                }
            }
        }
    }
    Ok(c)
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
            c.height as i64,
            TOP + PANEL_H + GAP,
            "one panel: no withheld scores"
        );
        assert!(
            c.pixels.chunks(3).any(|p| p == colour(0)),
            "the run's colour is drawn"
        );
        std::fs::write(&h, "{\"testbed\":\"l96\",\"rmse_a\":0.2}\n").unwrap();
        assert!(format!("{:#}", load(&h).unwrap_err()).contains("--history"));
    }
}
