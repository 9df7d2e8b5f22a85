//! The scale benchmark's plot: apply→Ready latency of one server (CDF, operator vs the plain
//! client) and servers done over time for the bulk (operator vs the Keycloak limit), one PNG.

use std::path::Path;

use plotters::prelude::*;

/// What the plot shows, all in seconds (latencies in ms).
pub struct Figures<'a> {
    pub operator_ms: &'a [f64],
    pub plain_ms: &'a [f64],
    /// (seconds since the first create, servers Ready) sampled while the bulk converged.
    pub operator_ready: &'a [(f64, usize)],
    /// (seconds since the start, servers done) of the plain concurrent client.
    pub plain_done: &'a [(f64, usize)],
    pub scale: usize,
}

/// A TTF font from the Debian package fonts-dejavu-core (hack/install-deps installs it);
/// plotters draws no text without one.
fn register_font() -> bool {
    let paths = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    let Some(bytes) = paths.iter().find_map(|p| std::fs::read(p).ok()) else {
        return false;
    };
    // plotters keeps fonts for the process's lifetime.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
}

/// Draws `out` (PNG); an error message when it cannot.
pub fn draw(out: &Path, f: &Figures) -> Result<(), String> {
    if !register_font() {
        return Err("no TTF font found (install fonts-dejavu-core)".into());
    }
    let root = BitMapBackend::new(out, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(480);
    cdf(&left, f).map_err(|e| e.to_string())?;
    bulk(&right, f).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// (value, fraction ≤ value) steps of a sorted sample.
fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    let steps = sorted.iter().enumerate();
    steps.map(|(i, v)| (*v, (i + 1) as f64 / n)).collect()
}

fn cdf(area: &Area, f: &Figures) -> DrawResult {
    let max = f
        .operator_ms
        .iter()
        .chain(f.plain_ms)
        .fold(1.0f64, |a, b| a.max(*b));
    let mut chart = ChartBuilder::on(area)
        .caption("apply→Ready, one McpServer (CDF)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max * 1.05, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("fraction of runs")
        .draw()?;
    let series = [
        (f.operator_ms, "operator", RED),
        (f.plain_ms, "plain admin client", BLUE),
    ];
    for (data, label, color) in series {
        let mut sorted = data.to_vec();
        sorted.sort_by(f64::total_cmp);
        chart
            .draw_series(LineSeries::new(cdf_points(&sorted), color.stroke_width(2)))?
            .label(format!("{label} ({} runs)", sorted.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn bulk(area: &Area, f: &Figures) -> DrawResult {
    let end = f.operator_ready.iter().chain(f.plain_done).map(|(t, _)| *t);
    let end = end.fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} McpServers at once", f.scale),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..end * 1.05, 0..f.scale + f.scale / 20)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first create")
        .y_desc("servers done")
        .draw()?;
    let series = [
        (f.operator_ready, "operator: Ready", RED),
        (f.plain_done, "Keycloak limit: plain client", BLUE),
    ];
    for (data, label, color) in series {
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
