//! SVG plots of experiment results (plotters, SVG backend).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// One bar: label, mean, and the spread (min, max) drawn as an error bar.
pub struct Bar {
    pub label: String,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// A horizontal bar chart with error bars and the mean written beside each bar (one bar per
/// method, first at the top): long method names stay readable, and so do close values next
/// to an outlier.
pub fn bars(path: &Path, title: &str, xlabel: &str, bars: &[Bar]) -> Result<()> {
    atomically(path, |path| draw_bars(path, title, xlabel, bars))
}

/// Draws into a temporary sibling of `path`, then renames it into place: a report never
/// holds half a plot.
fn atomically(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = crate::fsutil::sibling(path, &format!("copal-partial-{}.svg", std::process::id()));
    draw(&tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn draw_bars(path: &Path, title: &str, xlabel: &str, bars: &[Bar]) -> Result<()> {
    let n = bars.len();
    let h = (110 + 34 * n) as u32;
    let root = SVGBackend::new(path, (900, h.max(240))).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let lo = bars.iter().map(|b| b.min.min(b.mean)).fold(0f64, f64::min);
    let hi = bars.iter().map(|b| b.max.max(b.mean)).fold(0f64, f64::max);
    let span = (hi - lo).max(1e-6);
    // Room on the right for the value labels.
    let (x0, x1) = (lo - 0.02 * span, hi + 0.16 * span);
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    // Bar i sits at y = n − 1 − i, so the first bar is at the top.
    let row = |i: usize| (n - 1 - i) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(230)
        .build_cartesian_2d(x0..x1, -0.5f64..(n as f64 - 0.5))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(1))
        .y_label_formatter(&|y| {
            let r = y.round();
            if (y - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < n {
                labels[n - 1 - r as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc(xlabel)
        .draw()
        .map_err(err)?;
    for (i, b) in bars.iter().enumerate() {
        let y = row(i);
        let c = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.35), (b.mean, y + 0.35)],
                c.mix(0.8).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(b.min, y), (b.max, y)],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
        for x in [b.min, b.max] {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, y - 0.15), (x, y + 0.15)],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.2}", b.mean),
                (b.max.max(b.mean).max(0.0) + 0.01 * span, y + 0.2),
                ("sans-serif", 13),
            )))
            .map_err(err)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, -0.5), (0.0, n as f64 - 0.5)],
            BLACK,
        )))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One panel of a small-multiples line chart: lines (label, points (x, y)).
pub struct Panel {
    pub title: String,
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// Small multiples of line charts sharing a log-scale y axis (perplexity over steps).
pub fn line_panels(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    panels: &[Panel],
) -> Result<()> {
    atomically(path, |path| {
        draw_panels(path, title, xlabel, ylabel, panels)
    })
}

fn draw_panels(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    panels: &[Panel],
) -> Result<()> {
    let cols = panels.len().clamp(1, 3);
    let rows = panels.len().div_ceil(cols).max(1);
    let root =
        SVGBackend::new(path, (380 * cols as u32, 60 + 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, body) = root.split_vertically(50);
    top.titled(title, ("sans-serif", 22)).map_err(err)?;
    let ys: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.lines.iter().flat_map(|l| l.1.iter().map(|q| q.1)))
        .filter(|y| y.is_finite() && *y > 0.0)
        .collect();
    let ymin = ys.iter().cloned().fold(f64::INFINITY, f64::min).max(1e-3) * 0.8;
    let ymax = ys.iter().cloned().fold(0f64, f64::max).max(ymin * 2.0) * 2.5; // headroom for the legend
    let xmax = panels
        .iter()
        .flat_map(|p| p.lines.iter().flat_map(|l| l.1.iter().map(|q| q.0)))
        .fold(1f64, f64::max);
    for (area, p) in body.split_evenly((rows, cols)).iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.75f64..(xmax + 0.25), (ymin..ymax).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(xmax as usize)
            .x_label_formatter(&|x| format!("{:.0}", x))
            // A log axis labels every mesh line by default, which crowds each decade.
            .y_labels(6)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .x_desc(xlabel)
            .y_desc(ylabel)
            .draw()
            .map_err(err)?;
        for (i, (label, pts)) in p.lines.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = pts.iter().cloned().filter(|q| q.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
