//! `monovlm-calib`: calibrate a camera from checkerboard images, convert and show calibration files,
//! undistort images, print boards.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use monovlm_calib::calibrate::{CalibrationOptions, calibrate};
use monovlm_calib::chessboard::detect;
use monovlm_calib::formats::{CalibFormat, ReadOptions, read_intrinsics, write_intrinsics};
use monovlm_calib::report::{ReportView, render};
use monovlm_calib::synth::{Degradation, ViewRenderer, look_at_board, true_corners};
use monovlm_calib::undistort::{NewCamera, UndistortMap, new_camera};
use monovlm_calib::{Checkerboard, Distortion, Intrinsics};

/// `println!` that returns an error (e.g. a closed pipe: `monovlm-calib ... | head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => { writeln!(std::io::stdout(), $($arg)*)? };
}

#[derive(Parser)]
#[command(version, about = "Camera calibration for monovlm-edge (checkerboard, OpenCV / ROS / KITTI files)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Calibrate intrinsics and distortion from checkerboard images.
    Calibrate {
        /// Images: a glob such as 'DIR/*.png' (quote it), a directory, or one file.
        #[arg(long)]
        images: String,
        /// Inner corners COLSxROWS, e.g. 9x6 for a board of 10x7 squares.
        #[arg(long)]
        board: String,
        /// Side of one square, millimetres.
        #[arg(long)]
        square_mm: f64,
        /// Output calibration file.
        #[arg(long)]
        out: PathBuf,
        /// Output format (default: OpenCV; KITTI calib files hold no lens distortion, which a
        /// calibration estimates, so they are refused before the images are read).
        #[arg(long)]
        format: Option<CalibFormat>,
        /// Camera name written into the file.
        #[arg(long, default_value = "camera")]
        camera_name: String,
        /// Also estimate k3 (by default k3 = 0, OpenCV's advice for ordinary lenses).
        #[arg(long)]
        estimate_k3: bool,
        /// Keep p1 = p2 = 0.
        #[arg(long)]
        zero_tangential: bool,
        /// Keep fx / fy fixed at RATIO (1.0, square pixels, when given without a value).
        #[arg(long, value_name = "RATIO", num_args = 0..=1, default_missing_value = "1.0")]
        fix_aspect_ratio: Option<f64>,
        /// Keep the principal point at the image centre.
        #[arg(long)]
        fix_principal_point: bool,
        /// Report picture: each view with its corners and magnified residuals, and its error bar.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Undistort an image with a calibration file.
    Undistort {
        /// Calibration file (OpenCV, ROS or KITTI; detected).
        #[arg(long)]
        calib: PathBuf,
        /// Distorted input image.
        #[arg(long)]
        input: PathBuf,
        /// Undistorted output image.
        #[arg(long)]
        output: PathBuf,
        /// Camera of the undistorted image.
        #[arg(long, value_enum, default_value = "crop-valid")]
        new_camera: NewCameraArg,
        /// Also write the undistorted image's camera (OpenCV format) here.
        #[arg(long)]
        write_calib: Option<PathBuf>,
    },
    /// Print a calibration file's camera.
    Show {
        /// Calibration file (OpenCV, ROS or KITTI; detected).
        file: PathBuf,
        /// Image size WIDTHxHEIGHT, needed for KITTI files (they carry none).
        #[arg(long)]
        size: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a printable checkerboard PNG.
    RenderBoard {
        /// Inner corners COLSxROWS.
        #[arg(long, default_value = "9x6")]
        board: String,
        /// Pixels per square.
        #[arg(long, default_value_t = 100)]
        px_per_square: u32,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Render synthetic board views through a known camera (a self-check of the whole pipeline):
    /// PNGs, `truth.yaml` (the camera they were rendered with) and `truth_corners.json` (each
    /// view's true inner corners, pixels, row-major).
    SynthViews {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Number of views.
        #[arg(long, default_value_t = 20)]
        views: usize,
        /// Inner corners COLSxROWS.
        #[arg(long, default_value = "9x6")]
        board: String,
        /// Side of one square, millimetres.
        #[arg(long, default_value_t = 40.0)]
        square_mm: f64,
        /// Blur sigma, pixels.
        #[arg(long, default_value_t = 1.0)]
        blur_px: f64,
        /// Noise sigma, grey levels.
        #[arg(long, default_value_t = 2.0)]
        noise: f64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NewCameraArg {
    /// Same fx fy cx cy.
    Same,
    /// No black border (crop).
    CropValid,
    /// Every source pixel kept (black border).
    KeepAll,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Calibrate {
            images,
            board,
            square_mm,
            out,
            format,
            camera_name,
            estimate_k3,
            zero_tangential,
            fix_aspect_ratio,
            fix_principal_point,
            report,
        } => {
            let pattern: Checkerboard = board.parse()?;
            let board = Checkerboard::new(pattern.cols(), pattern.rows(), square_mm / 1000.0)?;
            let options = CalibrationOptions {
                fix_k3: !estimate_k3,
                zero_tangential,
                fix_aspect_ratio,
                fix_principal_point,
                ..CalibrationOptions::default()
            };
            let format = format.unwrap_or(CalibFormat::OpenCv);
            if format == CalibFormat::Kitti {
                anyhow::bail!(
                    "--out {}: a KITTI calib file has no lens distortion, which calibration estimates; \
                     write OpenCV YAML (--format opencv) or ROS camera_info (--format ros), and convert \
                     undistorted images' cameras with `undistort --write-calib`",
                    out.display()
                );
            }
            run_calibrate(&images, &board, &options, &out, format, &camera_name, report.as_deref())
        }
        Command::Undistort { calib, input, output, new_camera: policy, write_calib } => {
            let img = image::open(&input).with_context(|| format!("reading {}", input.display()))?.to_rgb8();
            // KITTI calib files carry no image size: the image gives it.
            let (k, _) =
                read_intrinsics(&calib, &ReadOptions::default().with_image_size(img.width(), img.height()))?;
            let policy = match policy {
                NewCameraArg::Same => NewCamera::Same,
                NewCameraArg::CropValid => NewCamera::CropValid,
                NewCameraArg::KeepAll => NewCamera::KeepAll,
            };
            let target = new_camera(&k, policy)?;
            let map = UndistortMap::new(&k, &target)?;
            let t = Instant::now();
            let out = map.remap_rgb(&img)?;
            eprintln!(
                "remapped {}x{} in {:.2} ms",
                img.width(),
                img.height(),
                t.elapsed().as_secs_f64() * 1e3
            );
            out.save(&output).with_context(|| format!("writing {}", output.display()))?;
            if let Some(path) = write_calib {
                write_intrinsics(&path, &target, CalibFormat::OpenCv, "undistorted")?;
            }
            Ok(())
        }
        Command::Show { file, size, json } => {
            let mut opts = ReadOptions::default();
            if let Some(s) = size {
                let (w, h) = s
                    .split_once(['x', 'X'])
                    .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
                    .context("--size must be WIDTHxHEIGHT")?;
                opts = opts.with_image_size(w, h);
            }
            let (k, format) = read_intrinsics(&file, &opts)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&k)?);
            } else {
                show(&k, format)?;
            }
            Ok(())
        }
        Command::RenderBoard { board, px_per_square, out } => {
            let board: Checkerboard = board.parse()?;
            board.render(px_per_square).save(&out).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({}x{} inner corners)", out.display(), board.cols(), board.rows());
            Ok(())
        }
        Command::SynthViews { out, views, board, square_mm, blur_px, noise } => {
            let pattern: Checkerboard = board.parse()?;
            let board = Checkerboard::new(pattern.cols(), pattern.rows(), square_mm / 1000.0)?;
            synth_views(&out, views, &board, blur_px, noise)
        }
    }
}

/// The files an `--images` argument names: a glob on the file name, a directory, or one file.
fn expand_images(spec: &str) -> anyhow::Result<Vec<PathBuf>> {
    let path = Path::new(spec);
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
    };
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_image(p)).collect()
    } else if spec.contains(['*', '?']) {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let pattern = path.file_name().and_then(|n| n.to_str()).context("the glob has no file-name part")?;
        std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| glob_match(pattern, n)))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    if files.is_empty() {
        bail!("no images match '{spec}'");
    }
    Ok(files)
}

/// `*` and `?` wildcard match of a whole file name.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn run_calibrate(
    images: &str,
    board: &Checkerboard,
    options: &CalibrationOptions,
    out: &Path,
    format: CalibFormat,
    camera_name: &str,
    report: Option<&Path>,
) -> anyhow::Result<()> {
    let files = expand_images(images)?;
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(ProgressStyle::with_template("detecting {bar:30} {pos}/{len} {msg}")?);
    let t_detect = Instant::now();
    let mut loaded = Vec::new();
    let mut size: Option<(u32, u32)> = None;
    for file in &files {
        bar.set_message(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let outcome = image::open(file).map_err(|e| e.to_string()).and_then(|img| {
            let img = img.to_luma8();
            match size {
                Some(s) if s != img.dimensions() => {
                    Err(format!("is {}x{}, the first image {}x{}", img.width(), img.height(), s.0, s.1))
                }
                _ => {
                    size = Some(img.dimensions());
                    Ok(img)
                }
            }
        });
        match outcome {
            Ok(img) => {
                let corners = detect(&img, board);
                if let Err(e) = &corners {
                    bar.suspend(|| eprintln!("  {}: {e}", file.display()));
                }
                loaded.push((file.clone(), img, corners.ok().map(|d| d.corners)));
            }
            Err(e) => bar.suspend(|| eprintln!("  {}: skipped, {e}", file.display())),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let detect_s = t_detect.elapsed().as_secs_f64();
    let (width, height) = size.context("no image could be read")?;
    let good: Vec<usize> = (0..loaded.len()).filter(|&i| loaded[i].2.is_some()).collect();
    eprintln!(
        "board found in {} of {} images ({:.0} ms per image)",
        good.len(),
        files.len(),
        1e3 * detect_s / files.len() as f64
    );
    let views: Vec<_> = good.iter().filter_map(|&i| loaded[i].2.clone()).collect();
    let t_cal = Instant::now();
    let c = calibrate(board, &views, width, height, options)?;
    let cal_ms = t_cal.elapsed().as_secs_f64() * 1e3;
    say!(
        "RMS reprojection error {:.4} px over {} views ({cal_ms:.1} ms, {} iterations)",
        c.rms_px,
        views.len(),
        c.iterations
    );
    for (j, &i) in good.iter().enumerate() {
        let flag = if c.outlier_views.contains(&j) { "  <- outlier: check this view" } else { "" };
        say!("  {:<40} {:.4} px{flag}", loaded[i].0.display(), c.view_rms_px[j]);
    }
    let k = &c.intrinsics;
    let s = &c.std_dev;
    say!("fx {:.3} +- {:.3}  fy {:.3} +- {:.3}", k.fx(), s.fx, k.fy(), s.fy);
    say!("cx {:.3} +- {:.3}  cy {:.3} +- {:.3}", k.cx(), s.cx, k.cy(), s.cy);
    let d = k.distortion().map_or([0.0; 5], Distortion::coefficients);
    for (i, name) in ["k1", "k2", "p1", "p2", "k3"].iter().enumerate() {
        say!("{name} {:+.6} +- {:.6}", d[i], s.distortion[i]);
    }
    write_intrinsics(out, k, format, camera_name)?;
    say!("wrote {} ({format})", out.display());
    if let Some(path) = report {
        let mut per_view = good.iter().enumerate();
        let views: Vec<ReportView<'_>> = loaded
            .iter()
            .enumerate()
            .map(|(i, (_, img, corners))| {
                let j = per_view.clone().find(|(_, g)| **g == i).map(|(j, _)| j);
                if j.is_some() {
                    per_view.next();
                }
                ReportView {
                    image: img,
                    corners: corners.as_deref(),
                    residuals_px: j.map_or(&[][..], |j| &c.residuals_px[j]),
                    rms_px: j.map(|j| c.view_rms_px[j]),
                    outlier: j.is_some_and(|j| c.outlier_views.contains(&j)),
                }
            })
            .collect();
        render(&views, 4).save(path).with_context(|| format!("writing {}", path.display()))?;
        say!("report: {} (residuals drawn x{})", path.display(), monovlm_calib::report::RESIDUAL_SCALE);
    }
    Ok(())
}

fn show(k: &Intrinsics, format: CalibFormat) -> anyhow::Result<()> {
    say!("format      {format}");
    say!("image       {}x{}", k.width(), k.height());
    say!("fx fy       {:.4} {:.4}", k.fx(), k.fy());
    say!("cx cy       {:.4} {:.4}", k.cx(), k.cy());
    let hfov = 2.0 * (f64::from(k.width()) / (2.0 * k.fx())).atan().to_degrees();
    let vfov = 2.0 * (f64::from(k.height()) / (2.0 * k.fy())).atan().to_degrees();
    say!("field       {hfov:.1} x {vfov:.1} degrees (pinhole)");
    match k.distortion() {
        Some(d) => say!("distortion  plumb_bob {:?}", d.coefficients()),
        None => say!("distortion  none"),
    }
    let (tx, ty) = k.offset_m();
    if tx != 0.0 || ty != 0.0 {
        say!("offset      tx {tx:.6} m  ty {ty:.6} m");
    }
    Ok(())
}

fn synth_views(out: &Path, n: usize, board: &Checkerboard, blur_px: f64, noise: f64) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let k = Intrinsics::new(1000.0, 1002.0, 641.3, 358.9, 1280, 720)?
        .with_distortion(Distortion::new(-0.28, 0.07, 0.0008, -0.0005, 0.0)?);
    let renderer = ViewRenderer::new(&k, 3)?;
    let bar = ProgressBar::new(n as u64);
    let mut truth = Vec::with_capacity(n);
    for i in 0..n {
        let f = i as f64;
        let pose = look_at_board(
            board,
            (0.55 + 0.03 * (i % 5) as f64) * board.square_m() / 0.04,
            0.45 * (f * 1.3).sin(),
            0.45 * (f * 0.7 + 1.0).cos(),
            0.4 * (f * 2.1).sin(),
            (0.06 * (f * 1.7).cos(), 0.04 * (f * 0.9).sin()),
        )?;
        let img = renderer.render(
            board,
            &pose,
            &Degradation { blur_sigma_px: blur_px, noise_sigma: noise, seed: i as u64 },
        );
        img.save(out.join(format!("view_{i:02}.png")))?;
        let corners: Vec<[f64; 2]> =
            true_corners(board, &k, &pose).iter().flatten().map(|p| [p.x, p.y]).collect();
        truth.push(corners);
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_intrinsics(&out.join("truth.yaml"), &k, CalibFormat::OpenCv, "synthetic")?;
    std::fs::write(out.join("truth_corners.json"), serde_json::to_string(&truth)?)?;
    eprintln!("wrote {n} views, truth.yaml and truth_corners.json to {}", out.display());
    Ok(())
}
