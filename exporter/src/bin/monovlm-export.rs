//! `monovlm-export`: a trainer checkpoint to an ONNX model package.
//!
//! A thin wrapper over `monovlm_exporter`: argument parsing, a progress bar, the size report and
//! the optional validation run.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use monovlm_exporter::Precision;
use monovlm_exporter::onnx::ExternalData;
use monovlm_exporter::package::{ExportOptions, GraphFiles, Step, export};
use monovlm_exporter::validate::{
    FP32_TOL, LOSSY_MAX_RELATIVE_ERROR, PackageSessions, Reference, agreement, parity,
};

/// Prints a line to stdout, returning the error (a closed pipe, say) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => { writeln!(std::io::stdout(), $($arg)*)? };
}

/// Prompts and greedy tokens of the fp32-vs-variant comparison.
const AGREEMENT_PROMPTS: usize = 8;
const AGREEMENT_TOKENS: usize = 8;

/// Numeric format.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum PrecisionArg {
    /// f32 weights and activations.
    Fp32,
    /// f16 weights and activations.
    Fp16,
    /// 4-bit decoder weights (MatMulNBits, block 32), the rest f32.
    Int4,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Fp16 => Precision::Fp16,
            PrecisionArg::Int4 => Precision::Int4,
        }
    }
}

/// Turns a Qwen2.5-VL checkpoint (trainer or Hugging Face layout) into an ONNX model package.
#[derive(Debug, Parser)]
#[command(name = "monovlm-export", version, about)]
struct Cli {
    /// Checkpoint directory: config.json and model.safetensors (or shards with their index).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Package directory to write (written beside it under a temporary name, then renamed).
    #[arg(long)]
    out: PathBuf,
    /// Numeric format of the graphs.
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    /// Replace an existing package at --out.
    #[arg(long)]
    force: bool,
    /// Run the package with ONNX Runtime afterwards: against the checkpoint's io.safetensors golden
    /// outputs when present, and (int4) against an fp32 export of the same checkpoint. Not for
    /// fp16, whose half-precision interfaces are meant for a GPU provider.
    #[arg(long)]
    validate: bool,
    /// Also write the decoder built from plain ONNX operators (benchmark baseline).
    #[arg(long)]
    plain_decoder: bool,
    /// Put weights in `<graph>.onnx_data` files even below the 2 GiB protobuf limit.
    #[arg(long)]
    external_data: bool,
    /// ONNX Runtime threads for --validate (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let cli = Cli::parse();
    let precision = Precision::from(cli.precision);
    if cli.validate && precision == Precision::Fp16 {
        // The CPU checks feed and read f32 tensors; an fp16 package's are f16 (checked before
        // exporting, so nothing is written for a run that cannot finish).
        bail!("--validate checks fp32 and int4 packages on the CPU; validate an fp16 package on its GPU");
    }
    let opts = ExportOptions {
        precision,
        force: cli.force,
        external_data: if cli.external_data { ExternalData::Always } else { ExternalData::Auto },
        with_plain_decoder: cli.plain_decoder,
    };
    let bar = ProgressBar::new(Step::count(&opts));
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed})") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut started = false;
    let result = export(&cli.checkpoint, &cli.out, &opts, &mut |step| {
        if started {
            bar.inc(1);
        }
        started = true;
        bar.set_message(step.label());
    });
    bar.finish_and_clear();
    let report = result.with_context(|| format!("exporting {}", cli.checkpoint.display()))?;
    say!("wrote {} ({}):", report.package.display(), precision.name());
    for f in &report.files {
        say!("  {:<48} {:>12}", f.path, human(f.bytes));
    }
    say!("  {:<48} {:>12}", "total", human(report.total_bytes()));
    if cli.validate {
        validate(&cli, precision)?;
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

fn validate(cli: &Cli, precision: Precision) -> Result<()> {
    let files = GraphFiles::for_precision(precision);
    let mut sessions = PackageSessions::open(&cli.out, &files, cli.threads)?;
    let golden = cli.checkpoint.join("io.safetensors");
    if golden.is_file() {
        let reference = Reference::read(&golden)?;
        let p = parity(&mut sessions, &reference)?;
        say!(
            "golden outputs: image features max |diff| {:.2e}, logits {:.2e} (scale {:.2}), greedy tokens {}",
            p.vision_max_abs,
            p.logits_max_abs,
            p.logits_scale,
            if p.tokens_equal() { "identical" } else { "DIFFERENT" }
        );
        if precision == Precision::Fp32 && !p.within(FP32_TOL) {
            bail!(
                "fp32 package disagrees with the golden outputs (greedy-step logits max |diff| {:.2e})",
                p.greedy_logits_max_abs
            );
        }
    }
    if precision != Precision::Fp32 {
        let tmp = tempfile::tempdir().context("temporary directory")?;
        let fp32 = tmp.path().join("fp32");
        export(&cli.checkpoint, &fp32, &ExportOptions::default(), &mut |_| {})?;
        let mut reference =
            PackageSessions::open(&fp32, &GraphFiles::for_precision(Precision::Fp32), cli.threads)?;
        let a = agreement(&mut reference, &mut sessions, AGREEMENT_PROMPTS, AGREEMENT_TOKENS)?;
        say!(
            "vs fp32 on {} synthetic prompts: logits max |diff| {:.3e} (scale {:.2}); greedy tokens equal {}/{} \
             (prefix), prompts identical {}/{}",
            a.prompts,
            a.logits_max_abs,
            a.logits_scale,
            a.equal_prefix_tokens,
            a.tokens,
            a.identical_prompts,
            a.prompts
        );
        let relative = a.relative_logits_error();
        if relative >= LOSSY_MAX_RELATIVE_ERROR {
            bail!(
                "{} package: its logits differ from fp32 by {:.0}% of their scale (at most {:.0}% passes); \
                 the quantised weights do not hold this model",
                precision.name(),
                relative * 100.0,
                LOSSY_MAX_RELATIVE_ERROR * 100.0
            );
        }
    } else if !golden.is_file() {
        // A checkpoint without golden outputs: a smoke run on a synthetic prompt.
        let mut twice = PackageSessions::open(&cli.out, &files, cli.threads)?;
        let a = agreement(&mut sessions, &mut twice, 1, AGREEMENT_TOKENS)?;
        if a.identical_prompts != 1 || !a.logits_scale.is_finite() {
            bail!("the package does not run deterministically on a synthetic prompt");
        }
        say!("smoke run on a synthetic prompt: ok");
    }
    Ok(())
}
