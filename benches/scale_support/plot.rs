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

/// Draws `out` (PNG); an error message when it cannot. Text is drawn with DejaVu Sans from the
/// `dejavu` crate (as benches/gateway_peers does), so no system font is needed.
pub fn draw(out: &Path, f: &Figures) -> Result<(), String> {
    // Registering twice fails harmlessly; the first registration stays.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let root = BitMapBackend::new(out, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(480);
    cdf(&left, f).map_err(|e| e.to_string())?;
    bulk(&right, f).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// A labelled line: its points, legend text and colour.
type Line = (Vec<(f64, f64)>, String, RGBColor);

/// One panel: a caption, axis names and labelled lines, x and y from 0 to 5 % past the data.
fn lines(
    area: &Area,
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    series: Vec<Line>,
) -> DrawResult {
    let points = || series.iter().flat_map(|(d, _, _)| d.iter());
    let x_max = points().fold(1.0f64, |a, (x, _)| a.max(*x));
    let y_max = points().fold(1.0f64, |a, (_, y)| a.max(*y));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max * 1.05)?;
    chart
        .configure_mesh()
        // No minor grid: it adds nothing to read and most of the PNG's bytes.
        .light_line_style(TRANSPARENT)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    for (data, label, color) in series {
        chart
            .draw_series(LineSeries::new(data, color.stroke_width(2)))?
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

/// (value, fraction ≤ value) steps of a sample.
fn cdf_points(sample: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = sample.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let steps = sorted.iter().enumerate();
    steps.map(|(i, v)| (*v, (i + 1) as f64 / n)).collect()
}

fn cdf(area: &Area, f: &Figures) -> DrawResult {
    let line = |data: &[f64], label: &str, color| {
        (
            cdf_points(data),
            format!("{label} ({} runs)", data.len()),
            color,
        )
    };
    let series = vec![
        line(f.operator_ms, "operator", RED),
        line(f.plain_ms, "plain admin client", BLUE),
    ];
    lines(
        area,
        "apply→Ready, one McpServer (CDF)",
        ("latency (ms)", "fraction of runs"),
        series,
    )
}

fn bulk(area: &Area, f: &Figures) -> DrawResult {
    let line = |data: &[(f64, usize)], label: &str, color| {
        let points = data.iter().map(|(t, n)| (*t, *n as f64)).collect();
        (points, label.to_string(), color)
    };
    let series = vec![
        line(f.operator_ready, "operator: Ready", RED),
        line(f.plain_done, "Keycloak limit: plain client", BLUE),
    ];
    lines(
        area,
        &format!("{} McpServers at once", f.scale),
        ("seconds since the first create", "servers done"),
        series,
    )
}
