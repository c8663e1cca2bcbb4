//! PNG plots of an evaluation (plotters, bitmap backend): accuracy per breakdown, and depth error
//! against ground-truth distance.
//!
//! Text uses DejaVu Sans, compiled in (`assets/fonts/`, Bitstream Vera licence beside it), so
//! drawing needs no system font.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::eval::categories::{MEDIUM_MAX_DEPTH_M, NEAR_MAX_DEPTH_M};
use crate::eval::metrics::SampleResult;
use crate::eval::report::EvalReport;

/// DejaVu Sans (Bitstream Vera licence: `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT_TTF: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
/// The family name the font is registered under.
const FONT_FAMILY: &str = "sans-serif";
/// Height of the bar charts' plot area (the image less caption, margins and x labels), pixels.
const BAR_PLOT_AREA_PX: f64 = 560.0;
/// Height of one legend entry, pixels.
const LEGEND_ENTRY_PX: f64 = 22.0;
/// Grid colours.
const LIGHT_GRID: RGBColor = RGBColor(245, 245, 245);
const BOLD_GRID: RGBColor = RGBColor(215, 215, 215);
/// The Near/Medium/Far boundaries.
const BAND_BOUNDARY: RGBColor = RGBColor(214, 39, 40);
/// Plot size, pixels.
const PLOT_SIZE_PX: (u32, u32) = (1200, 700);

/// Registers the compiled-in font once; the outcome is remembered.
fn ensure_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF)
                .map_err(|_| "the compiled-in font is not a valid TrueType font".to_owned())
        })
        .clone()
}

/// Draws into an RGB buffer with `draw`, then saves it as a PNG.
fn render(
    path: &Path,
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> std::result::Result<(), String>,
) -> Result<()> {
    let plot_err = |message: String| Error::Plot { path: path.to_path_buf(), message };
    ensure_font().map_err(plot_err)?;
    let (w, h) = PLOT_SIZE_PX;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        draw(root.clone()).map_err(plot_err)?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let img =
        image::RgbImage::from_raw(w, h, buf).ok_or_else(|| plot_err("buffer size mismatch".to_owned()))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })
}

/// The four bar series: (label, colour, value of a breakdown).
type Series = (&'static str, RGBColor, fn(&crate::eval::metrics::CategoryMetrics) -> Option<f64>);

const SERIES: [Series; 4] = [
    ("Acc@0.25 exact IoU", RGBColor(31, 119, 180), |b| b.iou_3d.map(|s| s.acc_at_025_pct)),
    ("Acc@0.5 exact IoU", RGBColor(174, 199, 232), |b| b.iou_3d.map(|s| s.acc_at_050_pct)),
    ("Acc@0.25 Mono3DVG IoU", RGBColor(255, 127, 14), |b| b.iou_3d_mono3dvg.map(|s| s.acc_at_025_pct)),
    ("Acc@0.5 Mono3DVG IoU", RGBColor(255, 187, 120), |b| b.iou_3d_mono3dvg.map(|s| s.acc_at_050_pct)),
];

/// A grouped bar chart: per breakdown, Acc@0.25 and Acc@0.5 with the exact and the Mono3DVG IoU;
/// the sample count under each name. Empty breakdowns show no bars.
///
/// # Errors
/// [`Error::Plot`] or [`Error::Image`] when drawing or saving fails.
pub fn accuracy_per_category(report: &EvalReport, path: &Path) -> Result<()> {
    let groups: Vec<String> =
        report.breakdowns.iter().map(|b| format!("{} ({})", b.name, b.samples)).collect();
    let series: Vec<Bars> = SERIES
        .iter()
        .map(|(label, colour, f)| Bars {
            label: (*label).to_owned(),
            colour: *colour,
            values: report.breakdowns.iter().map(f).collect(),
        })
        .collect();
    let title = format!("3D grounding accuracy, {} split ({})", report.split, report.predictions);
    grouped_bars(path, &title, "accuracy (%)", &groups, &series)
}

/// One series of a [`grouped_bars`] chart: a value (or none) per group.
pub struct Bars {
    /// Legend text.
    pub label: String,
    /// Fill colour.
    pub colour: RGBColor,
    /// One value per group, percent (`None`: no bar).
    pub values: Vec<Option<f64>>,
}

/// Colours for [`grouped_bars`] series compared side by side (tab10: ten series before one
/// repeats).
pub const SERIES_COLOURS: [RGBColor; 10] = CURVE_COLOURS;

/// Top of a [`grouped_bars`] axis, percent: 100% plus headroom for the legend of `n_series`
/// entries, so that the legend (upper right) stays above a 100% bar and its value label.
fn acc_axis_max_pct(n_series: usize) -> f64 {
    let legend_share = ((LEGEND_ENTRY_PX * n_series as f64 + 30.0) / BAR_PLOT_AREA_PX).min(0.6);
    100.0 / (1.0 - legend_share - 0.04)
}

/// A grouped bar chart of percentages: one group per name of `groups`, one bar per series in
/// each, the value printed above each bar, headroom above 100% for the legend.
///
/// # Errors
/// [`Error::Plot`] or [`Error::Image`] when drawing or saving fails.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Bars],
) -> Result<()> {
    let n_groups = groups.len().max(1);
    render(path, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..n_groups as f64, 0.0..acc_axis_max_pct(series.len()))
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(LIGHT_GRID)
            .bold_line_style(BOLD_GRID)
            .x_labels(n_groups * 2 + 1)
            .x_label_formatter(&|x| {
                // A label at each group centre only.
                let centre = x - x.floor();
                if (centre - 0.5).abs() < 1e-6 {
                    groups.get(x.floor() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| if *y <= 100.0 { format!("{y:.0}") } else { String::new() })
            .y_desc(y_desc)
            .label_style((FONT_FAMILY, 15))
            .draw()
            .map_err(|x| e(&x))?;
        let bar_w = 0.8 / series.len().max(1) as f64;
        for (si, bars) in series.iter().enumerate() {
            let colour = bars.colour;
            let at = move |gi: usize| gi as f64 + 0.1 + si as f64 * bar_w;
            let rects = bars.values.iter().enumerate().filter_map(move |(gi, v)| {
                let v = (*v)?;
                Some(Rectangle::new([(at(gi), 0.0), (at(gi) + bar_w * 0.95, v)], colour.filled()))
            });
            chart
                .draw_series(rects)
                .map_err(|x| e(&x))?
                .label(bars.label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
            // The value above each bar.
            let values = bars.values.iter().enumerate().filter_map(move |(gi, v)| {
                let v = (*v)?;
                let style =
                    TextStyle::from((FONT_FAMILY, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
                let text = if v < 10.0 { format!("{v:.1}") } else { format!("{v:.0}") };
                Some(Text::new(text, (at(gi) + 0.475 * bar_w, v + 0.5), style))
            });
            chart.draw_series(values).map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_FAMILY, 15))
            .draw()
            .map_err(|x| e(&x))?;
        Ok(())
    })
}

/// A scatter of depth error `z_pred - z_gt` (m) against ground-truth depth `z_gt` (m) for the
/// samples with a predicted box, with the Near/Medium/Far boundaries and the zero line.
///
/// # Errors
/// [`Error::Plot`] or [`Error::Image`] when drawing or saving fails.
pub fn depth_error_vs_distance(samples: &[SampleResult], path: &Path) -> Result<()> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.pred_box3d.map(|p| (s.gt_box3d.z, p.z - s.gt_box3d.z)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(MEDIUM_MAX_DEPTH_M + 10.0, f64::max) * 1.05;
    let x_min = points.iter().map(|p| p.0).fold(0.0, f64::min);
    let y_abs = points.iter().map(|p| p.1.abs()).fold(1.0, f64::max) * 1.1;
    let title = format!("Depth error against distance ({} predicted samples)", points.len());
    render(path, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, (FONT_FAMILY, 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, -y_abs..y_abs)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .light_line_style(LIGHT_GRID)
            .bold_line_style(BOLD_GRID)
            .x_desc("ground-truth depth z (m)")
            .y_desc("z predicted - z ground truth (m)")
            .label_style((FONT_FAMILY, 15))
            .draw()
            .map_err(|x| e(&x))?;
        for boundary in [NEAR_MAX_DEPTH_M, MEDIUM_MAX_DEPTH_M] {
            chart
                .draw_series(DashedLineSeries::new(
                    [(boundary, -y_abs), (boundary, y_abs)],
                    8,
                    6,
                    BAND_BOUNDARY.stroke_width(2),
                ))
                .map_err(|x| e(&x))?;
        }
        chart
            .draw_series(LineSeries::new([(x_min, 0.0), (x_max, 0.0)], BLACK.stroke_width(1)))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, RGBColor(31, 119, 180).mix(0.6).filled())))
            .map_err(|x| e(&x))?;
        for (label, x) in [
            ("Near", NEAR_MAX_DEPTH_M / 2.0),
            ("Medium", 0.5 * (NEAR_MAX_DEPTH_M + MEDIUM_MAX_DEPTH_M)),
            ("Far", 0.5 * (MEDIUM_MAX_DEPTH_M + x_max)),
        ] {
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x, -y_abs * 0.92),
                    (FONT_FAMILY, 16).into_font().color(&RGBColor(100, 100, 100)),
                )))
                .map_err(|x| e(&x))?;
        }
        Ok(())
    })
}

/// One curve of a [`curves`] plot.
pub struct Curve<'a> {
    /// Legend text.
    pub label: &'a str,
    /// `(x, y)` points in order; non-finite points are skipped.
    pub points: &'a [(f64, f64)],
}

/// Colours of successive curves (matplotlib's tab10).
const CURVE_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Line plot of training curves (loss, reward, KL...) against steps, with a legend.
///
/// # Errors
/// [`Error::Plot`] or [`Error::Image`] when drawing or saving fails.
pub fn curves(path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Curve<'_>]) -> Result<()> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|c| c.points.iter().filter(finite).copied()).collect();
    let (x0, x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0, x1) } else { (0.0, 1.0) };
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let (y0, y1) = if y0.is_finite() { (y0 - pad, y1 + pad) } else { (0.0, 1.0) };
    render(path, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .light_line_style(LIGHT_GRID)
            .bold_line_style(BOLD_GRID)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT_FAMILY, 15))
            .draw()
            .map_err(|x| e(&x))?;
        for (i, c) in series.iter().enumerate() {
            let colour = CURVE_COLOURS[i % CURVE_COLOURS.len()];
            chart
                .draw_series(LineSeries::new(c.points.iter().filter(finite).copied(), colour.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(c.label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BOLD_GRID)
            .label_font((FONT_FAMILY, 16))
            .draw()
            .map_err(|x| e(&x))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_axis_leaves_the_legend_room_above_a_full_bar() {
        for n in 1..=10 {
            let top = acc_axis_max_pct(n);
            // Pixels between the 100% line and the top of the plot area.
            let above_full_bar_px = (1.0 - 100.0 / top) * BAR_PLOT_AREA_PX;
            let legend_px = LEGEND_ENTRY_PX * n as f64 + 30.0;
            assert!(
                above_full_bar_px >= legend_px,
                "{n} series: {above_full_bar_px:.0} px for a {legend_px:.0} px legend"
            );
        }
    }
}
