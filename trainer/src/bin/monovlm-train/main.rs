//! `monovlm-train`: datasets, evaluation, models and training for MonoVLM.
//!
//! A thin wrapper over `monovlm_trainer`: argument parsing, progress bars and printing.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use monovlm_trainer::data::mono3drefer::{Dataset, INSTANCE_SPLIT_FILE, Split, Strictness};
use monovlm_trainer::eval::predictions::{PredictionSet, write_prediction_lines};
use monovlm_trainer::eval::{baseline, evaluate, report};

mod model_cmds;

/// Prints a line to stdout, returning the error (a closed pipe, say) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => { writeln!(std::io::stdout(), $($arg)*)? };
}

/// MonoVLM trainer: datasets, evaluation, Qwen2.5-VL models, SFT and the GRPO curriculum.
#[derive(Debug, Parser)]
#[command(name = "monovlm-train", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Score predictions (or the geometric baseline) on a split: JSON and Markdown reports, plots.
    Eval(EvalArgs),
    /// Several evaluations of the same samples side by side: compare.md and two PNG bar charts.
    Compare(CompareArgs),
    /// Dataset tools.
    Data {
        /// The dataset tool to run.
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Train a byte-level BPE (Qwen special tokens, single-digit numbers) for a from-scratch model
    /// on a dataset's descriptions, prompts and answers; writes tokenizer.json and tokenizer_config.json.
    Tokenizer(TokenizerArgs),
    /// Create a from-scratch model (random weights, Qwen2.5-VL layout) for a tokenizer.
    Init(model_cmds::InitArgs),
    /// Supervised fine-tuning on a dataset's grounding answers (loss on answer tokens only).
    Sft(model_cmds::SftArgs),
    /// Dense pre-training of a from-scratch vision tower: each image token learns the class, 2D box
    /// and 3D box of the object it shows (linear heads on the merger, discarded afterwards).
    PretrainVision(model_cmds::PretrainVisionArgs),
    /// How much a checkpoint's answers depend on the image: answer loss with each example's own
    /// image and with another scene's (equal when the model ignores its image).
    Probe(model_cmds::ProbeArgs),
    /// Training and generation speed on a ~3M-parameter model (compare with
    /// scripts/reference/bench_qwen_torch.py).
    Bench(model_cmds::BenchArgs),
    /// Run a training curriculum (SFT and GRPO stages from a TOML file) with evaluation after
    /// each stage, atomic checkpoints and exact --resume.
    Curriculum(model_cmds::CurriculumArgs),
    /// The ablation table (Markdown) of finished curriculum runs.
    Ablation(model_cmds::AblationArgs),
}

/// Arguments of `tokenizer`.
#[derive(Debug, Args)]
struct TokenizerArgs {
    /// Dataset root (the folder holding Mono3DRefer.json, images/, calib/); every split is used.
    #[arg(long)]
    data: PathBuf,
    /// Largest vocabulary, special tokens and the 256 byte symbols included (at least 270).
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// A pair seen fewer times in the corpus is never merged.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Output folder: tokenizer.json and tokenizer_config.json (created; files overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Refuse a dataset with malformed records (default: skip them).
    #[arg(long)]
    strict: bool,
}

/// `monovlm-train data ...`.
#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Read a Mono3DRefer-layout dataset and its files; print counts and every problem.
    Check(CheckArgs),
    /// Generate a synthetic driving-scene dataset in the Mono3DRefer layout.
    Synth(SynthArgs),
}

/// Arguments of `data synth`.
#[derive(Debug, Args)]
struct SynthArgs {
    /// Output folder (created; files of the same names are overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Number of images (frames with --sequence).
    #[arg(long, default_value_t = 100)]
    images: u32,
    /// Random seed: the same seed gives byte-identical files, whatever the thread count.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One world and a camera driving through it at 10 Hz (frames in order), instead of an
    /// independent scene per image.
    #[arg(long)]
    sequence: bool,
    /// Camera model: kitti (1242x375, KITTI P2), hd (1280x720) or vga (640x480).
    #[arg(long, default_value = "kitti")]
    camera: monovlm_trainer::data::synth::scene::CameraPreset,
    /// Descriptions per object at most.
    #[arg(long, default_value_t = 3)]
    descriptions: usize,
    /// Turn off the photometric augmentation (exposure, white balance, noise, blur).
    #[arg(long)]
    no_augment: bool,
}

/// Arguments of `data check`.
#[derive(Debug, Args)]
struct CheckArgs {
    /// Dataset root (the folder holding Mono3DRefer.json, images/, calib/).
    #[arg(long)]
    data: PathBuf,
    /// Exit with an error when anything is malformed (default: skip and report).
    #[arg(long)]
    strict: bool,
    /// Only read the annotation and split files, not each image's PNG header and calibration.
    #[arg(long)]
    no_files: bool,
}

/// Arguments of `eval`.
#[derive(Debug, Args)]
struct EvalArgs {
    /// Dataset root (the folder holding Mono3DRefer.json, images/, calib/).
    #[arg(long)]
    data: PathBuf,
    /// The split to score: train, val or test.
    #[arg(long, default_value = "test")]
    split: Split,
    /// JSON-lines predictions, one per sample: {"instance_id", "ann_id", "bbox_3d": [x, y, z, l, w, h,
    /// yaw], "bbox_2d": [x1, y1, x2, y2]} or {"instance_id", "ann_id", "text": "<answer>...</answer>"}.
    #[arg(long, required_unless_present_any = ["baseline", "package"], conflicts_with_all = ["baseline", "package"])]
    predictions: Option<PathBuf>,
    /// Ground the split with an exported model package (`monovlm-export`) on ONNX Runtime, the
    /// runtime the vehicle runs; its predictions are written to OUT/predictions.jsonl first.
    #[arg(long, conflicts_with = "baseline")]
    package: Option<PathBuf>,
    /// With --package: ONNX Runtime intra-op threads (0 = its default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// With --package: queries decoded together per batch (one image's descriptions).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// With --package: greedy or consensus decoding.
    #[command(flatten)]
    decoding: monovlm_runtime::decoding::DecodingArgs,
    /// Score only the first N images of the split (with all their descriptions).
    #[arg(long)]
    images: Option<usize>,
    /// Score the geometric baseline (ground-truth 2D box, class-mean size, ground-plane depth)
    /// instead; its predictions are written to OUT/baseline_predictions.jsonl first.
    #[arg(long)]
    baseline: bool,
    /// The split the baseline fits its camera height and class-mean sizes on.
    #[arg(long, default_value = "train")]
    fit_split: Split,
    /// Output folder: report.json, report.md, samples.jsonl, accuracy_per_category.png,
    /// depth_error_vs_distance.png.
    #[arg(long)]
    out: PathBuf,
    /// Refuse a dataset with malformed records (default: skip and report them).
    #[arg(long)]
    strict: bool,
}

/// Arguments of `compare`.
#[derive(Debug, Args)]
struct CompareArgs {
    /// A method as NAME=REPORT (a report.json of `monovlm-train eval`), in table order.
    #[arg(long = "method", required = true)]
    methods: Vec<String>,
    /// Title of the plots.
    #[arg(long, default_value = "3D grounding")]
    title: String,
    /// Output folder: compare.md, compare_overall.png, compare_breakdowns.png.
    #[arg(long)]
    out: PathBuf,
}

fn compare(args: &CompareArgs) -> Result<()> {
    use monovlm_trainer::eval::compare::{read_method, write_outputs};
    let methods = args
        .methods
        .iter()
        .map(|m| {
            let (name, path) = m.split_once('=').context("--method must be NAME=REPORT.json")?;
            read_method(name, Path::new(path)).with_context(|| format!("reading {path}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let files = write_outputs(&methods, &args.title, &args.out)?;
    write!(std::io::stdout(), "{}", std::fs::read_to_string(&files.markdown)?)?;
    say!(
        "\nwrote {}, {}, {}",
        files.markdown.display(),
        files.overall_plot.display(),
        files.breakdown_plot.display()
    );
    Ok(())
}

/// A progress bar of `len` steps: drawn in place on a terminal; when stderr is a file or a pipe
/// (long runs under `nohup`, CI logs), one plain line every [`LOG_LINE_EVERY`] instead.
fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::with_draw_target(
            Some(len as u64),
            ProgressDrawTarget::term_like(Box::new(LogLines::default())),
        )
    };
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Writes `line` above `bar` on a terminal, or as a plain line on stderr otherwise — never
/// throttled like the bar's own lines in logs, so no evaluation goes missing.
fn print_above(bar: &ProgressBar, line: &str) {
    if std::io::stderr().is_terminal() {
        bar.println(line);
    } else {
        eprintln!("{line}");
    }
}

/// How often a progress bar writes a line when stderr is not a terminal.
const LOG_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A progress-bar target for logs: ignores cursor movement and writes the bar's text as a line at
/// most once per [`LOG_LINE_EVERY`] (the first draw always).
#[derive(Debug, Default)]
struct LogLines {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LogLines {
    fn line(&self, text: &str) -> std::io::Result<()> {
        let text = text.trim_end();
        if text.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < LOG_LINE_EVERY) {
            return Ok(());
        }
        *last = Some(std::time::Instant::now());
        writeln!(std::io::stderr(), "{text}")
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.line(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn strictness(strict: bool) -> Strictness {
    if strict { Strictness::Strict } else { Strictness::Lenient }
}

/// Reads a dataset; a strict read that refuses it lists every problem on stderr first (the
/// error names only the first).
fn load(data: &Path, strict: bool) -> Result<Dataset> {
    Dataset::load(data, strictness(strict))
        .inspect_err(|e| {
            if let monovlm_trainer::Error::Rejected { problems } = e {
                for p in problems {
                    eprintln!("problem: {p}");
                }
            }
        })
        .with_context(|| format!("reading the dataset at {}", data.display()))
}

fn data_check(args: &CheckArgs) -> Result<()> {
    // Always read leniently, so every problem is listed; --strict fails after the listing.
    let dataset = load(&args.data, false)?;
    let report = dataset.report();
    say!("dataset {}", args.data.display());
    say!(
        "records: {} in file, {} loaded, {} whose image is in no split",
        report.records_in_file,
        report.records_loaded,
        report.records_without_split
    );
    for split in Split::ALL {
        let records = dataset.records(split);
        let objects: std::collections::BTreeSet<u64> = records.iter().map(|r| r.instance_id).collect();
        say!(
            "  {split:<5}: {:>6} images, {:>6} objects, {:>6} descriptions",
            dataset.images(split).len(),
            objects.len(),
            records.len()
        );
    }
    say!(
        "instance categories ({}): {}",
        INSTANCE_SPLIT_FILE,
        if report.instance_split_file { "read" } else { "absent (computed from the labels)" }
    );
    let mut problems = report.problems.clone();
    if !args.no_files {
        let images: usize = Split::ALL.iter().map(|&s| dataset.images(s).len()).sum();
        let bar = progress(images, "files");
        problems.extend(dataset.check_files(|| bar.inc(1)));
        bar.finish_and_clear();
    }
    say!("problems: {}", problems.len());
    for p in &problems {
        say!("  {p}");
    }
    if args.strict && !problems.is_empty() {
        anyhow::bail!("{} problem(s) found (--strict)", problems.len());
    }
    Ok(())
}

fn eval(args: &EvalArgs) -> Result<()> {
    if args.decoding.samples > 1 && args.package.is_none() {
        anyhow::bail!(
            "--samples {} decodes a --package; it does nothing for --predictions or --baseline",
            args.decoding.samples
        );
    }
    let mut dataset = load(&args.data, args.strict)?;
    if let Some(n) = args.images {
        dataset.keep_first_images(args.split, n);
    }
    let skipped = dataset.report().problems.len();
    if skipped > 0 {
        eprintln!(
            "warning: {skipped} malformed part(s) of the dataset skipped (see `monovlm-train data check`)"
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    // Problems met while predicting (the baseline's images without calibration), reported with
    // the prediction file's own.
    let (path, source, predicting_problems) = match (&args.predictions, &args.package) {
        (Some(path), _) => (path.clone(), path.display().to_string(), Vec::new()),
        (None, Some(package)) => {
            (predict_with_package(&dataset, args, package)?, package.display().to_string(), Vec::new())
        }
        (None, None) => {
            let bar = progress(dataset.images(args.split).len(), "baseline");
            let (fitted, lines, problems) =
                baseline::run(&dataset, args.fit_split, args.split, || bar.inc(1));
            bar.finish_and_clear();
            for p in &problems {
                eprintln!("warning: {p}");
            }
            say!(
                "baseline: camera height {:.3} m ({}), class-mean sizes ({}), yaw {:.3} rad",
                fitted.camera_height_m,
                fitted.camera_height_from,
                fitted.sizes_from,
                fitted.yaw_rad
            );
            let path = args.out.join("baseline_predictions.jsonl");
            write_prediction_lines(&path, &lines)?;
            let fitted_path = args.out.join("baseline.json");
            std::fs::write(&fitted_path, serde_json::to_string_pretty(&fitted)?)
                .with_context(|| format!("writing {}", fitted_path.display()))?;
            (path, "baseline".to_owned(), problems)
        }
    };
    let mut predictions = PredictionSet::read(&path)?;
    predictions.problems.extend(predicting_problems);
    let bar = progress(dataset.records(args.split).len(), "scoring");
    let evaluation = evaluate(&dataset, args.split, &predictions, &source, || bar.inc(1))?;
    bar.finish_and_clear();
    let files = report::write_outputs(&evaluation, &args.out)?;
    write!(std::io::stdout(), "{}", evaluation.report.to_markdown())?;
    say!(
        "\nwrote {}, {}, {}, {}, {}",
        files.json.display(),
        files.markdown.display(),
        files.samples.display(),
        files.accuracy_plot.display(),
        files.depth_plot.display()
    );
    Ok(())
}

/// Runs `package` over the split, writes OUT/predictions.jsonl and OUT/package_run.json (speed).
fn predict_with_package(dataset: &Dataset, args: &EvalArgs, package: &Path) -> Result<PathBuf> {
    use monovlm_runtime::grounder::{Grounder, GrounderOptions};
    use monovlm_runtime::session::SessionOptions;
    use monovlm_trainer::eval::package::predict_split;
    monovlm_runtime::ortlib::init().context("loading ONNX Runtime")?;
    let options = GrounderOptions {
        session: SessionOptions { intra_threads: args.threads, ..SessionOptions::default() },
        decoding: args.decoding.decoding()?,
        ..GrounderOptions::default()
    };
    let decoding = options.decoding;
    let mut grounder =
        Grounder::open(package, options).with_context(|| format!("opening {}", package.display()))?;
    let bar = progress(dataset.records(args.split).len(), "grounding");
    let run = predict_split(dataset, args.split, &mut grounder, args.batch, || bar.inc(1))?;
    bar.finish_and_clear();
    let path = args.out.join("predictions.jsonl");
    std::fs::write(&path, run.lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    let speed = serde_json::json!({
        "package": package.display().to_string(),
        "provider": grounder.provider(),
        "records": run.lines.len(),
        "images": run.images,
        "seconds": run.seconds,
        "queries_per_s": run.lines.len() as f64 / run.seconds.max(1e-9),
        "new_tokens": run.new_tokens,
        "decoding": format!("{decoding:?}"),
    });
    let speed_path = args.out.join("package_run.json");
    std::fs::write(&speed_path, serde_json::to_string_pretty(&speed)?)
        .with_context(|| format!("writing {}", speed_path.display()))?;
    say!(
        "grounded {} descriptions on {} images in {:.0} s with {} ({:.1} queries/s)",
        run.lines.len(),
        run.images,
        run.seconds,
        package.display(),
        run.lines.len() as f64 / run.seconds.max(1e-9)
    );
    Ok(path)
}

fn data_synth(args: &SynthArgs) -> Result<()> {
    use monovlm_trainer::data::synth::{SynthConfig, generate};
    let cfg = SynthConfig {
        images: args.images,
        seed: args.seed,
        camera: args.camera,
        sequence: args.sequence,
        augment: !args.no_augment,
        descriptions_per_object: args.descriptions,
    };
    let bar = progress(args.images as usize, "synth");
    let start = std::time::Instant::now();
    let summary = generate(&cfg, &args.out, &|| bar.inc(1))
        .with_context(|| format!("generating a synthetic dataset in {}", args.out.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    say!(
        "wrote {} images ({:.1} images/s), {} labels, {} described objects, {} descriptions to {}",
        summary.images,
        f64::from(summary.images) / secs.max(1e-9),
        summary.labels,
        summary.described_objects,
        summary.records,
        args.out.display()
    );
    Ok(())
}

fn tokenizer(args: &TokenizerArgs) -> Result<()> {
    use monovlm_trainer::tokenizer::{dataset_corpus, save, train_bpe};
    let dataset = load(&args.data, args.strict)?;
    let corpus = dataset_corpus(&dataset).context("building the tokenizer corpus")?;
    let texts = corpus.len();
    let start = std::time::Instant::now();
    let tok = train_bpe(corpus.into_iter(), args.vocab_size, args.min_frequency)?;
    let files = save(&tok, &args.out)?;
    say!(
        "trained a {}-token byte-level BPE on {texts} texts in {:.1} s; wrote {}, {}",
        tok.get_vocab_size(true),
        start.elapsed().as_secs_f64(),
        files.tokenizer.display(),
        files.config.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Eval(args) => eval(args),
        Command::Compare(args) => compare(args),
        Command::Data { command } => match command {
            DataCommand::Check(args) => data_check(args),
            DataCommand::Synth(args) => data_synth(args),
        },
        Command::Tokenizer(args) => tokenizer(args),
        Command::Init(args) => model_cmds::init(args),
        Command::Sft(args) => model_cmds::sft(args),
        Command::PretrainVision(args) => model_cmds::pretrain_vision(args),
        Command::Probe(args) => model_cmds::probe(args),
        Command::Bench(args) => model_cmds::bench(args),
        Command::Curriculum(args) => model_cmds::curriculum(args),
        Command::Ablation(args) => model_cmds::ablation(args),
    }
}
