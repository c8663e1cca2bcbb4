//! The evaluation report: JSON, a Markdown table, per-sample JSON lines, and the plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::mono3drefer::{Problem, SampleKey, Split};
use crate::error::{Error, Result};
use crate::eval::categories::CategorySources;
use crate::eval::metrics::{CategoryMetrics, SampleResult};
use crate::eval::plots;

/// How many keys the report lists for each kind of miss (the counts are complete).
pub const MAX_LISTED_KEYS: usize = 50;

/// A summary of an evaluation: what was scored, how, and the metrics per breakdown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// The dataset root.
    pub dataset: PathBuf,
    /// The split scored.
    pub split: Split,
    /// Where the predictions came from (a file or `baseline`).
    pub predictions: String,
    /// Samples in the split (one per description).
    pub samples: usize,
    /// Samples with a predicted box.
    pub predicted: usize,
    /// Samples with no prediction line (scored IoU 0).
    pub missing: usize,
    /// Samples whose prediction could not be parsed (scored IoU 0).
    pub format_failures: usize,
    /// Predicted samples without a 2D box (2D IoU 0).
    pub missing_2d: usize,
    /// Prediction lines whose key is not a sample of the split (ignored).
    pub unexpected_predictions: usize,
    /// Where each breakdown's categories came from.
    pub category_sources: CategorySources,
    /// Metrics per breakdown: Overall, Unique, Multiple, Near, Medium, Far, Easy, Moderate, Hard.
    pub breakdowns: Vec<CategoryMetrics>,
    /// The first [`MAX_LISTED_KEYS`] missing samples.
    pub missing_keys: Vec<SampleKey>,
    /// The first [`MAX_LISTED_KEYS`] format failures with their reasons.
    pub format_failure_examples: Vec<(SampleKey, String)>,
    /// The first [`MAX_LISTED_KEYS`] unexpected prediction keys.
    pub unexpected_keys: Vec<SampleKey>,
    /// Problems reading the predictions (unattributable lines, repeated keys) and, for the
    /// baseline, images it could not predict for.
    pub problems: Vec<Problem>,
}

/// An evaluation: the report and every scored sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The summary.
    pub report: EvalReport,
    /// Every sample, in dataset order.
    pub samples: Vec<SampleResult>,
}

/// `12.34` for a value, `-` for none.
fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

impl EvalReport {
    /// The breakdown named `name` (`Overall`, `Unique`, ...).
    pub fn breakdown(&self, name: &str) -> Option<&CategoryMetrics> {
        self.breakdowns.iter().find(|b| b.name == name)
    }

    /// The report as Markdown: the counts, a table of Acc@0.25 / Acc@0.5 / mIoU per breakdown with
    /// both 3D IoUs, and a table of 2D accuracy and mean errors.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Evaluation: {} split of {}\n", self.split, self.dataset.display());
        let _ = writeln!(md, "Predictions: `{}`\n", self.predictions);
        let _ = writeln!(
            md,
            "{} samples: {} predicted, {} missing, {} format failures (both scored IoU 0); \
             {} predicted without a 2D box; {} prediction lines for unknown samples; {} problems.\n",
            self.samples,
            self.predicted,
            self.missing,
            self.format_failures,
            self.missing_2d,
            self.unexpected_predictions,
            self.problems.len()
        );
        let src = |s| match s {
            crate::eval::categories::CategorySource::SplitFile => "split file",
            crate::eval::categories::CategorySource::Labels => "labels",
        };
        let _ = writeln!(
            md,
            "Categories from: Unique/Multiple {}, Near/Medium/Far {}, Easy/Moderate/Hard {}.\n",
            src(self.category_sources.uniqueness),
            src(self.category_sources.distance),
            src(self.category_sources.difficulty)
        );
        let _ =
            writeln!(md, "## 3D grounding (Acc in %, strictly greater than the threshold; mIoU in [0, 1])\n");
        let _ = writeln!(
            md,
            "| breakdown | n | Acc@0.25 | Acc@0.5 | mIoU | Acc@0.25 (Mono3DVG IoU) | Acc@0.5 (Mono3DVG IoU) | mIoU (Mono3DVG IoU) |"
        );
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for b in &self.breakdowns {
            let e = b.iou_3d;
            let m = b.iou_3d_mono3dvg;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                b.name,
                b.samples,
                cell(e.map(|s| s.acc_at_025_pct), 2),
                cell(e.map(|s| s.acc_at_050_pct), 2),
                cell(e.map(|s| s.miou), 4),
                cell(m.map(|s| s.acc_at_025_pct), 2),
                cell(m.map(|s| s.acc_at_050_pct), 2),
                cell(m.map(|s| s.miou), 4),
            );
        }
        let _ = writeln!(
            md,
            "\nExact IoU: yaw-rotated boxes. Mono3DVG IoU: the reference evaluator's axis-aligned formula (ignores yaw), for comparison with published numbers.\n"
        );
        let _ = writeln!(md, "## 2D grounding and errors of the predicted boxes\n");
        let _ = writeln!(
            md,
            "| breakdown | n | 2D Acc@0.5 | 2D mIoU | on another object | on no object | predicted | mean abs dx (m) | dy (m) | dz (m) | size (m) | yaw (deg) |"
        );
        let _ = writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for b in &self.breakdowns {
            let e = b.errors;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                b.name,
                b.samples,
                cell(b.iou_2d.map(|s| s.acc_at_050_pct), 2),
                cell(b.iou_2d.map(|s| s.miou), 4),
                cell(b.landing.map(|l| l.other_object_pct), 2),
                cell(b.landing.map(|l| l.no_object_pct), 2),
                b.predicted,
                cell(e.map(|e| e.mean_abs_centre_err_m[0]), 3),
                cell(e.map(|e| e.mean_abs_centre_err_m[1]), 3),
                cell(e.map(|e| e.mean_abs_centre_err_m[2]), 3),
                cell(e.map(|e| e.mean_abs_size_err_avg_m), 3),
                cell(e.map(|e| e.mean_abs_yaw_err_rad.to_degrees()), 1),
            );
        }
        let _ = writeln!(
            md,
            "\nWhere the 2D boxes land (% of all samples, 2D IoU > 0.5): on the described object (2D Acc@0.5), on another annotated object of the image (a wrong pick), on none (a poor box). \
             Errors are over the samples with a predicted box (`predicted`); size is the mean of |dl|, |dw|, |dh|."
        );
        if !self.problems.is_empty() {
            let _ = writeln!(md, "\n## Problems\n");
            for p in &self.problems {
                let _ = writeln!(md, "- {p}");
            }
        }
        md
    }
}

/// The files [`write_outputs`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFiles {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `samples.jsonl`, one scored sample per line.
    pub samples: PathBuf,
    /// `accuracy_per_category.png`.
    pub accuracy_plot: PathBuf,
    /// `depth_error_vs_distance.png`.
    pub depth_plot: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Writes the report (JSON and Markdown), the per-sample lines and the two plots into `out_dir`
/// (created if needed).
///
/// # Errors
/// [`Error::Io`] when a file cannot be written; [`Error::Plot`] when a plot cannot be drawn.
pub fn write_outputs(evaluation: &Evaluation, out_dir: &Path) -> Result<OutputFiles> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let files = OutputFiles {
        json: out_dir.join("report.json"),
        markdown: out_dir.join("report.md"),
        samples: out_dir.join("samples.jsonl"),
        accuracy_plot: out_dir.join("accuracy_per_category.png"),
        depth_plot: out_dir.join("depth_error_vs_distance.png"),
    };
    let json = serde_json::to_string_pretty(&evaluation.report)
        .map_err(|e| Error::Json { path: files.json.clone(), message: e.to_string() })?;
    write(&files.json, &json)?;
    write(&files.markdown, &evaluation.report.to_markdown())?;
    let mut lines = String::new();
    for s in &evaluation.samples {
        let line = serde_json::to_string(s)
            .map_err(|e| Error::Json { path: files.samples.clone(), message: e.to_string() })?;
        lines += &line;
        lines.push('\n');
    }
    write(&files.samples, &lines)?;
    plots::accuracy_per_category(&evaluation.report, &files.accuracy_plot)?;
    plots::depth_error_vs_distance(&evaluation.samples, &files.depth_plot)?;
    Ok(files)
}
