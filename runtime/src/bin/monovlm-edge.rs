//! `monovlm-edge`: ground referring expressions in 3D from a camera, on the vehicle.
//!
//! One JSON line per frame and query on stdout; logs on stderr. `monovlm-edge serve` (or
//! `--listen ADDR`) runs the camera daemon instead (`docs/api.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use monovlm_calib::Intrinsics;
use monovlm_calib::formats::{ReadOptions, read_intrinsics};
use monovlm_runtime::camera::{CameraConfig, V4l2Camera};
use monovlm_runtime::decoding::DecodingArgs;
use monovlm_runtime::grounder::{Grounder, GrounderOptions, Grounding, Timings};
use monovlm_runtime::protocol::Query;
use monovlm_runtime::serve::{OpenSource, ServeConfig, Server};
use monovlm_runtime::session::{SessionOptions, parse_devices};
use monovlm_runtime::source::{Frame, FrameSource, ImageDir, SingleImage, demo_sequence, fit_intrinsics};
use monovlm_runtime::{draw, ortlib, protocol};

#[derive(Parser)]
#[command(
    about = "Where, in metres, is the object a person describes? (MonoVLM on ONNX Runtime)",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Print the version, the ONNX Runtime library and the execution providers usable here.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Daemon options; `--listen ADDR` here runs the daemon like `serve`.
    #[command(flatten)]
    serve: ServeFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Load ONNX Runtime and report its version, the execution providers it was built with, and
    /// the model packages found under `models/`.
    Info {
        /// Directory holding model packages.
        #[arg(long, default_value = "models")]
        models: PathBuf,
    },
    /// Ground the queries on N frames and print the latency breakdown (mean and median).
    Bench {
        #[command(flatten)]
        run: Box<RunArgs>,
        /// Frames to time (the source is replayed as often as needed).
        #[arg(long, default_value_t = 10)]
        frames: usize,
        /// Untimed frames first (session warm-up).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Run the camera daemon: HTTP/WebSocket API, live web viewer and metrics (docs/api.md).
    /// `--query` gives the first standing queries; the source is replayed when it ends.
    Serve {
        #[command(flatten)]
        run: Box<RunArgs>,
        #[command(flatten)]
        serve: ServeFlags,
    },
}

/// Options of the daemon (`serve`); limits are checked per request.
#[derive(Args, Clone, Debug, Default, PartialEq)]
struct ServeFlags {
    /// Address to listen on [default: 127.0.0.1:8080]; any non-loopback address needs --api-key
    /// (or --insecure).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// API key: every endpoint but /healthz and the viewer page needs `Authorization: Bearer KEY`
    /// (default: the MONOVLM_API_KEY environment variable, if set).
    #[arg(long)]
    api_key: Option<String>,
    /// Serve a non-loopback address without an API key.
    #[arg(long)]
    insecure: bool,
    /// Requests that may wait for inference; one more gets 503 with Retry-After [default: 4].
    #[arg(long)]
    queue: Option<usize>,
    /// Seconds a request may wait and run before it gets 504 [default: 30].
    #[arg(long)]
    request_timeout: Option<f64>,
    /// Largest request body in bytes (413 above) [default: 8388608].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Longest query in characters (422 above) [default: 512].
    #[arg(long)]
    max_query_chars: Option<usize>,
    /// Standing queries at most [default: 16].
    #[arg(long)]
    max_standing_queries: Option<usize>,
    /// Seconds after which a camera frame is stale (/readyz 503) [default: 5].
    #[arg(long)]
    staleness: Option<f64>,
    /// Frames per second an image directory or the demo is replayed at [default: 10].
    #[arg(long)]
    replay_fps: Option<f64>,
}

#[derive(Args, Clone, Debug, Default)]
struct RunArgs {
    /// V4L2 camera device, e.g. /dev/video0.
    #[arg(long, group = "input")]
    camera: Option<PathBuf>,
    /// Directory of images (plain, or the KITTI layout image_2/ + calib/).
    #[arg(long, group = "input")]
    images: Option<PathBuf>,
    /// One image file.
    #[arg(long, group = "input")]
    image: Option<PathBuf>,
    /// Demo sequence directory (KITTI layout; alone: assets/demo).
    #[arg(long, group = "input", num_args = 0..=1, default_missing_value = "assets/demo")]
    demo: Option<PathBuf>,
    /// Camera intrinsics file (OpenCV YAML, ROS camera_info or KITTI calib; detected).
    #[arg(long)]
    intrinsics: Option<PathBuf>,
    /// Model package directory (default: the first package under models/).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A referring expression (repeat for several; all are grounded on every frame).
    #[arg(long = "query")]
    queries: Vec<String>,
    /// Execution providers in preference order, comma-separated: trt, cuda, cpu.
    #[arg(long, default_value = "trt,cuda,cpu")]
    device: String,
    /// Stop after this many frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Write each frame with its 3D boxes drawn (projected wireframes, labelled with the query) as
    /// DIR/<frame>.jpg.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    /// Threads per ONNX Runtime operator (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Threads across independent ONNX Runtime operators (0: ONNX Runtime's default).
    #[arg(long, default_value_t = 0)]
    inter_threads: usize,
    /// Tokens generated per query at most.
    #[arg(long, default_value_t = monovlm_runtime::grounder::DEFAULT_MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// Decode a frame's queries one after the other instead of as one batch.
    #[arg(long)]
    no_batch: bool,
    /// Greedy or consensus decoding.
    #[command(flatten)]
    decoding: DecodingArgs,
    /// Camera resolution to ask for, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720")]
    camera_size: String,
    /// Camera frame rate to ask for, frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// TensorRT engine and timing cache directory.
    #[arg(long, default_value = ".cache/tensorrt")]
    trt_cache: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn")),
        )
        .init();
    let cli = Cli::parse();
    if cli.version {
        return version();
    }
    match cli.command {
        Some(Command::Info { models }) => info(&models),
        Some(Command::Bench { run, frames, warmup }) => bench(&run, frames, warmup),
        Some(Command::Serve { run, serve: flags }) => serve(&run, &flags),
        None if cli.serve.listen.is_some() => serve(&cli.run, &cli.serve),
        None if cli.serve != ServeFlags::default() => {
            bail!("daemon options (--api-key, --queue, ...) need `serve` or --listen ADDR")
        }
        None => run(&cli.run),
    }
}

fn version() -> anyhow::Result<()> {
    println!("monovlm-edge {} (answer protocol v{})", env!("CARGO_PKG_VERSION"), protocol::PROTOCOL_VERSION);
    match ortlib::init() {
        Ok(ort) => {
            println!("ONNX Runtime: {} ({})", ort.build_info, ort.library.display());
            let usable: Vec<_> = ortlib::provider_support()?
                .into_iter()
                .filter(|(_, s)| *s == ortlib::ProviderSupport::Available)
                .map(|(n, _)| n)
                .collect();
            println!("execution providers usable: {}", usable.join(", "));
            println!("active provider (first usable of trt,cuda,cpu): {}", usable.first().unwrap_or(&"none"));
        }
        Err(e) => println!("ONNX Runtime: not loaded ({e})"),
    }
    Ok(())
}

fn info(models: &Path) -> anyhow::Result<()> {
    let ort = ortlib::init().context("loading ONNX Runtime")?;
    println!("monovlm-edge {}", env!("CARGO_PKG_VERSION"));
    println!("answer protocol: v{}", protocol::PROTOCOL_VERSION);
    println!("ONNX Runtime: {}", ort.library.display());
    println!("  {}", ort.build_info);
    for (name, support) in ortlib::provider_support()? {
        println!("  provider {name:<9} {support}");
    }
    let packages = find_packages(models);
    if packages.is_empty() {
        println!(
            "model packages under {}: none yet (the exporter writes them; grounding needs one)",
            models.display()
        );
    } else {
        for p in packages {
            println!("model package: {}", p.display());
        }
    }
    Ok(())
}

fn find_packages(models: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(models)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("monovlm.json").is_file() && p.join("config.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Everything a run needs, checked before the model is loaded.
struct Setup {
    queries: Vec<Query>,
    source: Box<dyn FrameSource>,
    /// The frame read during set-up, not yet grounded.
    first: Option<monovlm_runtime::source::Frame>,
    /// The --intrinsics camera, once read.
    cached: Option<Intrinsics>,
    intrinsics_file: Option<PathBuf>,
    grounder: Grounder,
}

/// The `--query` values, each checked by the protocol (numbered in errors).
fn parse_queries(args: &RunArgs) -> anyhow::Result<Vec<Query>> {
    args.queries
        .iter()
        .enumerate()
        .map(|(i, q)| Query::new(q).with_context(|| format!("--query #{}", i + 1)))
        .collect()
}

fn setup(args: &RunArgs) -> anyhow::Result<Setup> {
    if args.queries.is_empty() {
        bail!("no --query given: say what to find, e.g. --query \"the white van on the right\"");
    }
    let queries = parse_queries(args)?;
    let devices = parse_devices(&args.device).context("--device")?;
    let mut source = open_source(args)?;
    if let Some(f) = &args.intrinsics
        && !f.is_file()
    {
        bail!("--intrinsics {}: no such file", f.display());
    }
    // The first frame and its camera are read before the model loads, so that a bad image or
    // intrinsics file fails fast.
    let first = source.next_frame()?.context("the source has no frame")?;
    let mut cached = None;
    camera_of(first.intrinsics.as_ref(), args.intrinsics.as_deref(), &mut cached, first.image.dimensions())?;
    let grounder = open_grounder(args, devices)?;
    tracing::info!(source = source.describe(), provider = %grounder.provider(), "ready");
    Ok(Setup {
        queries,
        source,
        first: Some(first),
        cached,
        intrinsics_file: args.intrinsics.clone(),
        grounder,
    })
}

/// The input the flags name (exactly one of --camera, --images, --image, --demo).
fn open_source(args: &RunArgs) -> anyhow::Result<Box<dyn FrameSource>> {
    Ok(if let Some(cam) = &args.camera {
        let (width, height) = parse_size(&args.camera_size)?;
        let config = CameraConfig { width, height, fps: args.fps, ..CameraConfig::default() };
        Box::new(V4l2Camera::open(cam, &config)?)
    } else if let Some(dir) = &args.images {
        Box::new(ImageDir::open(dir)?)
    } else if let Some(file) = &args.image {
        if !file.is_file() {
            bail!("--image {}: no such file", file.display());
        }
        Box::new(SingleImage::new(file))
    } else if let Some(dir) = &args.demo {
        Box::new(demo_sequence(dir)?)
    } else {
        bail!("no input: give --camera, --images, --image or --demo");
    })
}

/// The --model package (default: the first under models/) in ONNX Runtime sessions.
fn open_grounder(args: &RunArgs, devices: Vec<monovlm_runtime::session::Device>) -> anyhow::Result<Grounder> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => find_packages(Path::new("models"))
            .into_iter()
            .next()
            .context("no --model given and no package under models/")?,
    };
    let options = GrounderOptions {
        session: SessionOptions {
            devices,
            intra_threads: args.threads,
            inter_threads: args.inter_threads,
            tensorrt: monovlm_runtime::session::TensorRtOptions {
                cache_dir: Some(args.trt_cache.clone()),
                ..Default::default()
            },
            ..SessionOptions::default()
        },
        max_new_tokens: args.max_new_tokens,
        batch_queries: !args.no_batch,
        decoding: args.decoding.decoding()?,
    };
    Grounder::open(&model, options).with_context(|| format!("--model {}", model.display()))
}

fn parse_size(text: &str) -> anyhow::Result<(u32, u32)> {
    let parsed =
        text.split_once(['x', 'X']).and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => bail!("--camera-size {text:?}: expected WIDTHxHEIGHT, e.g. 1280x720"),
    }
}

/// `k` for a frame of `size`: as is when the sizes agree, rescaled when only the resolution
/// differs.
fn fit_to_frame(k: Intrinsics, size: (u32, u32)) -> anyhow::Result<Intrinsics> {
    if (k.width(), k.height()) != size {
        tracing::warn!(from = ?(k.width(), k.height()), to = ?size, "intrinsics rescaled to the frame size");
    }
    fit_intrinsics(&k, size).map_err(|e| {
        anyhow::anyhow!(
            "the intrinsics are for {}x{} images but the frames are {}x{} (another aspect ratio): {e}",
            k.width(),
            k.height(),
            size.0,
            size.1
        )
    })
}

/// The camera of a frame: its own (KITTI per-frame calib), else the --intrinsics file's, read once
/// with the first frame's size (KITTI files carry none).
fn camera_of(
    frame_intrinsics: Option<&Intrinsics>,
    file: Option<&Path>,
    cached: &mut Option<Intrinsics>,
    size: (u32, u32),
) -> anyhow::Result<Intrinsics> {
    if let Some(k) = frame_intrinsics {
        return Ok(k.clone());
    }
    if let Some(k) = cached
        && (k.width(), k.height()) == size
    {
        return Ok(k.clone());
    }
    let Some(file) = file else {
        bail!("no camera intrinsics: pass --intrinsics FILE (OpenCV YAML, ROS camera_info or KITTI calib)");
    };
    let (k, format) = read_intrinsics(file, &ReadOptions::default().with_image_size(size.0, size.1))
        .with_context(|| format!("--intrinsics {}", file.display()))?;
    tracing::info!(file = %file.display(), %format, fx = k.fx(), fy = k.fy(), "intrinsics");
    let k = fit_to_frame(k, size)?;
    *cached = Some(k.clone());
    Ok(k)
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let mut s = setup(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut cached = s.cached.take();
    let mut frames = 0u64;
    while !stop.load(Ordering::SeqCst) && args.max_frames.is_none_or(|m| frames < m) {
        let next = match s.first.take() {
            Some(f) => Some(f),
            None => match s.source.next_frame() {
                // A live camera that stalls or was unplugged: its capture thread reconnects;
                // waiting again is how this loop waits for it (each wait is the frame timeout).
                Err(e @ monovlm_runtime::Error::SourceStalled { .. }) => {
                    tracing::warn!("{e}; waiting for the camera");
                    continue;
                }
                other => other?,
            },
        };
        let Some(frame) = next else { break };
        let camera = camera_of(
            frame.intrinsics.as_ref(),
            s.intrinsics_file.as_deref(),
            &mut cached,
            frame.image.dimensions(),
        )?;
        let results = s
            .grounder
            .ground(&frame, &s.queries, &camera)
            .with_context(|| format!("frame {}", frame.name))?;
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
        if let Some(dir) = &args.annotate {
            write_annotated(dir, &frame, &results)?;
        }
        frames += 1;
    }
    if stop.load(Ordering::SeqCst) {
        tracing::info!(frames, "interrupted; stopped cleanly");
    } else {
        tracing::info!(frames, "done");
    }
    Ok(())
}

/// Writes `frame` with `results` drawn as `dir/<Frame::output_stem>.jpg` (the folder is created).
fn write_annotated(dir: &Path, frame: &Frame, results: &[Grounding]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.jpg", frame.output_stem()));
    let drawn = draw::annotate(&frame.image, &results.iter().collect::<Vec<_>>());
    let bytes = draw::jpeg(&drawn).map_err(|e| anyhow::anyhow!("encoding {}: {e}", path.display()))?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn seconds(flag: &str, value: Option<f64>, default: Duration) -> anyhow::Result<Duration> {
    match value {
        None => Ok(default),
        Some(s) if s > 0.0 => match Duration::try_from_secs_f64(s) {
            Ok(d) => Ok(d),
            Err(_) => bail!("--{flag} {s}: too long a duration"),
        },
        Some(s) => bail!("--{flag} {s}: must be a positive number of seconds"),
    }
}

/// The daemon: checks every input before the model loads, then serves until Ctrl-C.
fn serve(args: &RunArgs, flags: &ServeFlags) -> anyhow::Result<()> {
    let defaults = ServeConfig::default();
    let initial_queries = parse_queries(args)?;
    let api_key = flags.api_key.clone().or_else(|| std::env::var("MONOVLM_API_KEY").ok());
    let live = args.camera.is_some();
    let mut config = ServeConfig {
        listen: flags.listen.unwrap_or(defaults.listen),
        api_key,
        insecure: flags.insecure,
        queue_capacity: flags.queue.unwrap_or(defaults.queue_capacity),
        request_timeout: seconds("request-timeout", flags.request_timeout, defaults.request_timeout)?,
        max_body_bytes: flags.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_query_chars: flags.max_query_chars.unwrap_or(defaults.max_query_chars),
        max_standing_queries: flags.max_standing_queries.unwrap_or(defaults.max_standing_queries),
        staleness: seconds("staleness", flags.staleness, defaults.staleness)?,
        // A live camera paces itself; replayed files at --replay-fps.
        replay_fps: if live { None } else { Some(flags.replay_fps.unwrap_or(DEFAULT_REPLAY_FPS)) },
        initial_queries,
        ..defaults
    };
    // Security and limits are refused before anything is opened.
    config.validate()?;
    let devices = parse_devices(&args.device).context("--device")?;
    if let Some(f) = &args.intrinsics {
        if !f.is_file() {
            bail!("--intrinsics {}: no such file", f.display());
        }
        // The file's camera, sized by a first frame (KITTI files carry no image size).
        let first = open_source(args)?.next_frame()?.context("the source has no frame")?;
        let mut cached = None;
        config.default_intrinsics =
            Some(camera_of(None, Some(f.as_path()), &mut cached, first.image.dimensions())?);
    } else {
        open_source(args)?;
    }
    let grounder = open_grounder(args, devices)?;
    let source_args = args.clone();
    let source_name = [&args.camera, &args.images, &args.image, &args.demo]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .next()
        .unwrap_or_default();
    let open: OpenSource = Box::new(move || {
        // The runtime's own errors name the source already.
        open_source(&source_args).map_err(|e| {
            e.downcast::<monovlm_runtime::Error>().unwrap_or_else(|e| monovlm_runtime::Error::Source {
                source_name: source_name.clone(),
                message: format!("{e:#}"),
            })
        })
    });
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async move {
        let server = Server::start(config, open, grounder).await?;
        let handle = server.shutdown_handle();
        tokio::spawn(async move {
            let terminate = async {
                #[cfg(unix)]
                if let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    term.recv().await;
                    return;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                Ok(()) = tokio::signal::ctrl_c() => {}
                () = terminate => {}
            }
            tracing::info!("interrupted; shutting down");
            handle.shutdown();
        });
        server.wait().await?;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })
}

/// Frames per second an image directory or the demo is replayed at by default.
const DEFAULT_REPLAY_FPS: f64 = 10.0;

fn stats(values: &mut [f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (mean, values[values.len() / 2])
}

fn bench(args: &RunArgs, frames: usize, warmup: usize) -> anyhow::Result<()> {
    let mut s = setup(args)?;
    let mut pool: Vec<_> = s.first.take().into_iter().collect();
    while pool.len() < frames.max(1)
        && let Some(f) = s.source.next_frame()?
    {
        pool.push(f);
        if pool.len() >= frames.max(1) {
            break;
        }
    }
    if pool.is_empty() {
        bail!("the source gave no frame");
    }
    let mut cached = s.cached.take();
    let mut timings: Vec<Timings> = Vec::new();
    for i in 0..warmup + frames {
        let frame = &pool[i % pool.len()];
        let camera = camera_of(
            frame.intrinsics.as_ref(),
            s.intrinsics_file.as_deref(),
            &mut cached,
            frame.image.dimensions(),
        )?;
        let r = s.grounder.ground(frame, &s.queries, &camera)?;
        if i >= warmup
            && let Some(first) = r.first()
        {
            timings.push(first.timings);
        }
    }
    let (w, h) = pool[0].image.dimensions();
    println!(
        "monovlm-edge bench: {} frames of {w}x{h}, {} queries per frame (batch {}), provider {}, package {}",
        timings.len(),
        s.queries.len(),
        timings.first().map_or(0, |t| t.batch),
        s.grounder.provider(),
        s.grounder.package().dir.display()
    );
    type Column = fn(&Timings) -> f64;
    let rows: [(&str, Column); 9] = [
        ("preprocess ms", |t| t.preprocess_ms),
        ("vision ms", |t| t.vision_ms),
        ("tokenize ms", |t| t.tokenize_ms),
        ("prefill ms", |t| t.prefill_ms),
        ("decode ms", |t| t.decode_ms),
        ("postprocess ms", |t| t.postprocess_ms),
        ("total ms", |t| t.total_ms),
        ("outside ORT ms", |t| t.total_ms - t.ort_ms),
        ("tokens/s", |t| t.tokens_per_s),
    ];
    println!("{:<16} {:>10} {:>10}", "", "mean", "median");
    for (name, get) in rows {
        let mut v: Vec<f64> = timings.iter().map(get).collect();
        let (mean, median) = stats(&mut v);
        println!("{name:<16} {mean:>10.2} {median:>10.2}");
    }
    let total: f64 = timings.iter().map(|t| t.total_ms).sum();
    let outside: f64 = timings.iter().map(|t| t.total_ms - t.ort_ms).sum();
    if total > 0.0 {
        println!("time outside ONNX Runtime: {:.1}% of the total", 100.0 * outside / total);
    }
    Ok(())
}
