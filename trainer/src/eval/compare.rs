//! Several evaluations of the same samples side by side (the ablation of `docs/results.md`):
//! a Markdown table of the Overall metrics, one of Acc@0.25 per breakdown, and two grouped bar
//! charts, from the `report.json` files `monovlm-train eval` writes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::eval::metrics::BREAKDOWNS;
use crate::eval::plots::{Bars, SERIES_COLOURS, grouped_bars};

/// The numbers of one method that the comparison shows.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodMetrics {
    /// The method's name in the tables.
    pub name: String,
    /// Samples scored.
    pub samples: usize,
    /// Samples with a parsed prediction (not missing, not a format failure).
    pub predicted: usize,
    /// Per breakdown (the order of [`BREAKDOWNS`]): `(samples, Acc@0.25 %, Acc@0.5 %, mIoU)` of the
    /// exact 3D IoU, and 2D Acc@0.5 %; `None` for an empty breakdown.
    pub breakdowns: Vec<Option<BreakdownNumbers>>,
    /// Mean `|dz|` over predicted samples (Overall), metres.
    pub mean_abs_depth_err_m: Option<f64>,
    /// Percent of the samples whose 2D box lands on another object (Overall; `None` in reports
    /// from before the evaluator measured it).
    pub other_object_pct: Option<f64>,
}

/// The metrics of one breakdown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakdownNumbers {
    /// Samples in it.
    pub samples: usize,
    /// 3D Acc@0.25, percent.
    pub acc_025_pct: f64,
    /// 3D Acc@0.5, percent.
    pub acc_050_pct: f64,
    /// 3D mIoU, in [0, 1].
    pub miou: f64,
    /// 2D Acc@0.5, percent.
    pub acc2d_050_pct: f64,
}

/// Reads the numbers of `report.json` (as `monovlm-train eval` writes it) under `name`.
///
/// # Errors
/// [`Error::Io`] when unreadable, [`Error::Json`]/[`Error::NothingToEvaluate`] when it is not an
/// evaluation report.
pub fn read_method(name: &str, report_json: &Path) -> Result<MethodMetrics> {
    let text = std::fs::read_to_string(report_json).map_err(|e| Error::io(report_json, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Json { path: report_json.to_path_buf(), message: e.to_string() })?;
    let bad = |what: &str| {
        Error::NothingToEvaluate(format!("{} is not an evaluation report: {what}", report_json.display()))
    };
    let count = |key: &str| v.get(key).and_then(Value::as_u64).map(|n| n as usize).ok_or_else(|| bad(key));
    let list = v.get("breakdowns").and_then(Value::as_array).ok_or_else(|| bad("breakdowns"))?;
    let find = |name: &str| list.iter().find(|b| b.get("name").and_then(Value::as_str) == Some(name));
    let num =
        |b: &Value, path: [&str; 2]| b.get(path[0]).and_then(|x| x.get(path[1])).and_then(Value::as_f64);
    let breakdowns = BREAKDOWNS
        .iter()
        .map(|name| {
            let b = find(name)?;
            Some(BreakdownNumbers {
                samples: b.get("samples").and_then(Value::as_u64)? as usize,
                acc_025_pct: num(b, ["iou_3d", "acc_at_025_pct"])?,
                acc_050_pct: num(b, ["iou_3d", "acc_at_050_pct"])?,
                miou: num(b, ["iou_3d", "miou"])?,
                acc2d_050_pct: num(b, ["iou_2d", "acc_at_050_pct"]).unwrap_or(0.0),
            })
        })
        .collect();
    let mean_abs_depth_err_m = find("Overall")
        .and_then(|b| b.get("errors"))
        .and_then(|e| e.get("mean_abs_centre_err_m"))
        .and_then(|c| c.get(2))
        .and_then(Value::as_f64);
    let other_object_pct = find("Overall").and_then(|b| num(b, ["landing", "other_object_pct"]));
    Ok(MethodMetrics {
        name: name.to_owned(),
        samples: count("samples")?,
        predicted: count("predicted")?,
        breakdowns,
        mean_abs_depth_err_m,
        other_object_pct,
    })
}

/// The Markdown of the comparison: Overall metrics per method, then Acc@0.25 per breakdown.
pub fn markdown(methods: &[MethodMetrics]) -> String {
    let mut md = String::from(
        "| method | samples | 3D Acc@0.25 % | 3D Acc@0.5 % | mIoU | 2D Acc@0.5 % | 2D on another object % | format % | mean abs dz (m) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in methods {
        let overall = m.breakdowns.first().copied().flatten();
        // As SFT's log counts it: a missing prediction is not a well-formed one.
        let format_pct = 100.0 * m.predicted as f64 / m.samples.max(1) as f64;
        let dz = m.mean_abs_depth_err_m.map_or("-".to_owned(), |d| format!("{d:.2}"));
        let other = m.other_object_pct.map_or("-".to_owned(), |p| format!("{p:.1}"));
        match overall {
            Some(o) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} | {:.1} | {:.3} | {:.1} | {other} | {format_pct:.1} | {dz} |",
                    m.name, m.samples, o.acc_025_pct, o.acc_050_pct, o.miou, o.acc2d_050_pct
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | {} | - | - | - | - | {other} | {format_pct:.1} | {dz} |",
                    m.name, m.samples
                );
            }
        }
    }
    md.push_str("\n3D Acc@0.25 % per breakdown (samples in brackets):\n\n| method |");
    for name in &BREAKDOWNS[1..] {
        let _ = write!(md, " {name} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(BREAKDOWNS.len() - 1));
    md.push('\n');
    for m in methods {
        let _ = write!(md, "| {} |", m.name);
        for b in &m.breakdowns[1..] {
            match b {
                Some(b) => {
                    let _ = write!(md, " {:.1} ({}) |", b.acc_025_pct, b.samples);
                }
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md
}

/// The files [`write_outputs`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareFiles {
    /// `compare.md`.
    pub markdown: PathBuf,
    /// `compare_overall.png`: Acc@0.25, Acc@0.5, mIoU x 100 and 2D Acc@0.5 per method.
    pub overall_plot: PathBuf,
    /// `compare_breakdowns.png`: Acc@0.25 per breakdown, one bar per method.
    pub breakdown_plot: PathBuf,
}

/// Writes the Markdown and both plots into `out_dir` (created).
///
/// # Errors
/// [`Error::Io`] when the folder or a file cannot be written; plotting errors.
pub fn write_outputs(methods: &[MethodMetrics], title: &str, out_dir: &Path) -> Result<CompareFiles> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let files = CompareFiles {
        markdown: out_dir.join("compare.md"),
        overall_plot: out_dir.join("compare_overall.png"),
        breakdown_plot: out_dir.join("compare_breakdowns.png"),
    };
    std::fs::write(&files.markdown, markdown(methods)).map_err(|e| Error::io(&files.markdown, e))?;
    let colour = |i: usize| SERIES_COLOURS[i % SERIES_COLOURS.len()];
    let metric_names = ["3D Acc@0.25", "3D Acc@0.5", "3D mIoU x 100", "2D Acc@0.5"];
    let overall: Vec<Bars> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let o = m.breakdowns.first().copied().flatten();
            Bars {
                label: m.name.clone(),
                colour: colour(i),
                values: vec![
                    o.map(|o| o.acc_025_pct),
                    o.map(|o| o.acc_050_pct),
                    o.map(|o| 100.0 * o.miou),
                    o.map(|o| o.acc2d_050_pct),
                ],
            }
        })
        .collect();
    let groups: Vec<String> = metric_names.iter().map(|s| (*s).to_owned()).collect();
    grouped_bars(&files.overall_plot, &format!("{title}: Overall"), "percent", &groups, &overall)?;
    let per_breakdown: Vec<Bars> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| Bars {
            label: m.name.clone(),
            colour: colour(i),
            values: m.breakdowns.iter().map(|b| b.map(|b| b.acc_025_pct)).collect(),
        })
        .collect();
    let groups: Vec<String> = BREAKDOWNS.iter().map(|s| (*s).to_owned()).collect();
    grouped_bars(
        &files.breakdown_plot,
        &format!("{title}: 3D Acc@0.25 per breakdown"),
        "3D Acc@0.25 (%)",
        &groups,
        &per_breakdown,
    )?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A report; `other_pct` is the landing on other objects (absent in older reports).
    fn report(acc: f64, miou: f64, other_pct: Option<f64>) -> String {
        let b = |name: &str, n: u64| {
            let mut v = serde_json::json!({
                "name": name, "samples": n,
                "iou_3d": {"acc_at_025_pct": acc, "acc_at_050_pct": acc / 2.0, "miou": miou},
                "iou_2d": {"acc_at_025_pct": 90.0, "acc_at_050_pct": 80.0, "miou": 0.7},
                "errors": {"mean_abs_centre_err_m": [0.5, 0.2, 3.25]}
            });
            if let Some(p) = other_pct {
                v["landing"] =
                    serde_json::json!({"target_pct": 80.0, "other_object_pct": p, "no_object_pct": 20.0 - p});
            }
            v
        };
        serde_json::json!({
            "samples": 10, "predicted": 9, "format_failures": 1,
            "breakdowns": BREAKDOWNS.iter().map(|n| b(n, 10)).collect::<Vec<_>>()
        })
        .to_string()
    }

    #[test]
    fn reports_become_tables_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        std::fs::write(&a, report(40.0, 0.3, Some(7.5))).unwrap();
        std::fs::write(&b, report(12.5, 0.1, None)).unwrap();
        let methods = vec![read_method("ours", &a).unwrap(), read_method("baseline", &b).unwrap()];
        assert_eq!(methods[0].breakdowns.len(), BREAKDOWNS.len());
        assert_eq!(methods[0].mean_abs_depth_err_m, Some(3.25));
        let md = markdown(&methods);
        assert!(md.contains("| ours | 10 | 40.0 | 20.0 | 0.300 | 80.0 | 7.5 | 90.0 | 3.25 |"), "{md}");
        assert!(md.contains("| baseline | 10 | 12.5 | 6.2 | 0.100 | 80.0 | - | 90.0 | 3.25 |"), "{md}");
        assert!(md.contains("| baseline | 12.5 (10) |"), "{md}");
        let files = write_outputs(&methods, "test", &dir.path().join("out")).unwrap();
        assert!(std::fs::metadata(&files.overall_plot).unwrap().len() > 1000);
        assert!(std::fs::metadata(&files.breakdown_plot).unwrap().len() > 1000);
    }

    #[test]
    fn a_file_that_is_not_a_report_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, "{\"hello\": 1}").unwrap();
        let e = read_method("x", &p).unwrap_err().to_string();
        assert!(e.contains("x.json"), "{e}");
    }
}
