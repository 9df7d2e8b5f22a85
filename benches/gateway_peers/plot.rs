//! The latency-percentile plot (PNG): one panel per concurrency, one line per target, log-scale
//! milliseconds. Text is drawn with DejaVu Sans from the `dejavu` crate, so no system font is
//! needed.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::report::{Figures, Target};

/// The percentiles drawn, as oha names them.
pub const KEYS: [&str; 6] = ["p50", "p75", "p90", "p95", "p99", "p99.9"];

fn color(t: Target) -> RGBColor {
    match t {
        Target::Direct => RGBColor(120, 120, 120),
        Target::Gateway => RGBColor(31, 119, 180),
        Target::OAuth2Proxy => RGBColor(214, 39, 40),
    }
}

/// Draws `panels` (concurrency, figures per target) side by side into `path`.
pub fn draw(
    path: &Path,
    title: &str,
    panels: &[(usize, BTreeMap<Target, Figures>)],
) -> Result<(), Box<dyn std::error::Error>> {
    // Registering twice fails harmlessly; the first registration stays.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, (conns, figs)) in areas.iter().zip(panels) {
        panel(area, *conns, figs)?;
    }
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    conns: usize,
    figs: &BTreeMap<Target, Figures>,
) -> Result<(), Box<dyn std::error::Error>> {
    let values = || figs.values().flat_map(|f| KEYS.iter().map(|k| f.p(k)));
    let lo = values().fold(f64::INFINITY, f64::min).max(0.001) * 0.8;
    let hi = values().fold(0.0, f64::max) * 1.25;
    let n = KEYS.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{conns} connection(s)"), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.3f64..(n - 0.7), (lo..hi).log_scale())?;
    let label = |x: &f64| {
        let i = x.round();
        let on_key = (x - i).abs() < 0.01 && i >= 0.0 && i < n;
        if on_key {
            KEYS[i as usize].to_string()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(KEYS.len() * 4)
        .x_label_formatter(&label)
        // No minor grid: it adds nothing to read and most of the PNG's bytes.
        .light_line_style(TRANSPARENT)
        .y_desc("latency (ms)")
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    for (t, f) in figs {
        let c = color(*t);
        let points: Vec<(f64, f64)> = KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| (i as f64, f.p(k)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(t.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
