//! When does a from-scratch model start reading its image? A controlled task for the `tiny` preset:
//! coloured boxes on a grey 448x140 image (our model-input size, 80 image tokens), the query names
//! the colour of one of them, the answer is that box in the protocol's format (the 3D box is the
//! same for every example, so only the 2D box depends on the image).
//!
//! Prints, after every evaluation, the image gain (answer loss with another image minus with the
//! example's own, nats per answer token; zero for a model that ignores its image) and the 2D
//! Acc@0.5 of greedy answers. docs/results.md (sessions 9 to 11) has the runs:
//!
//! ```text
//! cargo run --release -p monovlm-trainer --example reading_toy -- --steps 1200
//! cargo run --release -p monovlm-trainer --example reading_toy -- --easy-steps 800 --steps 1200
//! cargo run --release -p monovlm-trainer --example reading_toy -- --layout v2 --pointer 1
//! cargo run --release -p monovlm-trainer --example reading_toy -- --objects 3 --easy-steps 800
//! cargo run --release -p monovlm-trainer --example reading_toy -- --objects 3 --easy-objects 1 --easy-steps 800
//! cargo run --release -p monovlm-trainer --example reading_toy -- --objects 3 --abs-position
//! ```
//!
//! `--easy-steps N` first trains N steps on large boxes (60-130 px, 6-25% of the image), then on
//! the small ones (`--box-min`..`--box-max`, default 20-60 px, 1-5%: the share of a described
//! object in our driving scenes). `--easy-objects M` sets the boxes per image of that easy phase
//! (default `--objects`): with 1 it is easy in both factors, large and with nothing to pick.
//! `--abs-position` gives the image features an absolute position code (session 11: the lever
//! that makes picking among several boxes start).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use monovlm_calib::kitti::KittiLabel;
use monovlm_calib::synth::SplitMix64;
use monovlm_calib::{Box2d, Intrinsics};
use monovlm_runtime::model_config::DEFAULT_ABS_POSITION_PERIODS;
use monovlm_runtime::preprocess::{PreprocessConfig, ResizedImage};
use monovlm_runtime::protocol::{self, Answer, PromptLayout, Query, tokens};
use monovlm_trainer::data::mono3drefer::{Record, SampleKey};
use monovlm_trainer::model::Qwen25Vl;
use monovlm_trainer::model::presets::{ModelSize, SpecialIds};
use monovlm_trainer::tokenizer::train_bpe;
use monovlm_trainer::train::grounding::{Example, encode};
use monovlm_trainer::train::sft::{SftConfig, shuffle, train_sft};
use tch::{Device, Kind};

/// Image size: the nano model's input (62,720 pixels, a 16 x 5 grid of merged tokens).
const WIDTH_PX: u32 = 448;
const HEIGHT_PX: u32 = 140;
/// Tallest box drawn (pixels): the image is 140 tall.
const MAX_BOX_HEIGHT_PX: f64 = 130.0;
/// Box sides of the easy phase (pixels).
const EASY_BOX_PX: (f64, f64) = (60.0, MAX_BOX_HEIGHT_PX);
const BACKGROUND: [u8; 3] = [90, 90, 90];
const COLOURS: [(&str, [u8; 3]); 4] =
    [("red", [220, 40, 40]), ("blue", [40, 60, 220]), ("green", [40, 200, 60]), ("yellow", [230, 220, 40])];

#[derive(Debug, Parser)]
struct Args {
    /// Boxes per image (1-4, distinct colours); the query names one.
    #[arg(long, default_value_t = 1)]
    objects: usize,
    /// Smallest box side of the main phase (pixels).
    #[arg(long, default_value_t = 20.0)]
    box_min: f64,
    /// Largest box side of the main phase (pixels; heights at most `MAX_BOX_HEIGHT_PX`).
    #[arg(long, default_value_t = 60.0)]
    box_max: f64,
    /// Steps on large boxes (60-130 px) before the main phase; 0 = none.
    #[arg(long, default_value_t = 0)]
    easy_steps: usize,
    /// Boxes per image in the easy phase (default: `--objects`); 1 makes it an easy phase in both
    /// factors (large, and nothing to pick).
    #[arg(long)]
    easy_objects: Option<usize>,
    /// Steps of the main phase.
    #[arg(long, default_value_t = 1200)]
    steps: usize,
    /// Evaluate every N steps.
    #[arg(long, default_value_t = 200)]
    eval_every: usize,
    /// Weight of the referring-pointer loss (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pointer: f64,
    /// Prompt layout: v1 (image first) or v2 (text first).
    #[arg(long, default_value = "v1")]
    layout: String,
    /// Peak learning rate (both phases).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Training images per phase.
    #[arg(long, default_value_t = 256)]
    train_images: u64,
    /// Validation images per phase.
    #[arg(long, default_value_t = 40)]
    val_images: u64,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Add the absolute position code to the image features (`init --abs-position`).
    #[arg(long)]
    abs_position: bool,
}

/// One image with `objects` boxes of sides in `side_px`; the first colour drawn is the described
/// one, and is drawn last so that it is whole.
fn example(
    id: u64,
    rng: &mut SplitMix64,
    tokenizer: &tokenizers::Tokenizer,
    objects: usize,
    side_px: (f64, f64),
    layout: PromptLayout,
) -> Result<Example> {
    let mut colours: Vec<usize> = (0..COLOURS.len()).collect();
    shuffle(&mut colours, rng);
    let (w_img, h_img) = (f64::from(WIDTH_PX), f64::from(HEIGHT_PX));
    let boxes: Vec<Box2d> = (0..objects)
        .map(|_| {
            let w = rng.range(side_px.0, side_px.1).round();
            let h = rng.range(side_px.0, side_px.1.min(MAX_BOX_HEIGHT_PX)).round();
            let (x1, y1) = (rng.range(0.0, w_img - w).round(), rng.range(0.0, h_img - h).round());
            Box2d { x1, y1, x2: x1 + w, y2: y1 + h }
        })
        .collect();
    let mut img = image::RgbImage::from_pixel(WIDTH_PX, HEIGHT_PX, image::Rgb(BACKGROUND));
    for (i, b) in boxes.iter().enumerate().rev() {
        for y in b.y1 as u32..b.y2 as u32 {
            for x in b.x1 as u32..b.x2 as u32 {
                img.put_pixel(x, y, image::Rgb(COLOURS[colours[i]].1));
            }
        }
    }
    let bbox = boxes[0];
    let description = format!("the {} box", COLOURS[colours[0]].0);
    let k = Intrinsics::new(400.0, 400.0, w_img / 2.0, h_img / 2.0, WIDTH_PX, HEIGHT_PX)?;
    let pre = PreprocessConfig {
        min_pixels: 56 * 56,
        max_pixels: (WIDTH_PX * HEIGHT_PX) as usize,
        ..PreprocessConfig::default()
    };
    let image = Arc::new(ResizedImage::new(&img, &k, &pre)?);
    let label = KittiLabel {
        class: "Car".into(),
        truncated: 0.0,
        occluded: 0,
        alpha: 0.0,
        bbox,
        hwl_m: [1.5, 1.6, 3.9],
        location_m: [0.0, 1.5, 10.0],
        rotation_y: 0.0,
        score: None,
    };
    let record = Record::new("000000", SampleKey { instance_id: id, ann_id: 0 }, "car", &description, label)?;
    let query = Query::new(&record.description)?;
    let prompt = protocol::chat_prompt(&query, &image.intrinsics, image.num_image_tokens, layout);
    let answer = Answer { bbox_2d: image.resize_map.map_box(&bbox), bbox_3d: record.box3d };
    let target = format!("{}{}", protocol::format_answer(&answer), tokens::IM_END);
    Ok(Example { prompt: encode(tokenizer, &prompt)?, target: encode(tokenizer, &target)?, record, image })
}

/// A BPE for the prompts and answers of this task.
fn tokenizer(layout: PromptLayout) -> Result<tokenizers::Tokenizer> {
    let k = Intrinsics::new(400.0, 400.0, 224.0, 70.0, WIDTH_PX, HEIGHT_PX)?;
    let corpus = (0..200)
        .map(|i| {
            let q = Query::new(&format!("the {} box", COLOURS[i % COLOURS.len()].0))?;
            Ok(format!(
                "{} <answer>{{\"bbox_2d\": [{i}, 1, 2, 3], \"bbox_3d\": [0.00, 0.75, 10.00, 3.90, 1.60, 1.50, 0.00]}}</answer>",
                protocol::chat_prompt(&q, &k, 4, layout)
            ))
        })
        .collect::<Result<Vec<String>>>()?;
    Ok(train_bpe(corpus.into_iter(), 400, 2)?)
}

/// One training phase: boxes per image, their sides (pixels), steps, and the data seed.
struct Phase {
    name: &'static str,
    objects: usize,
    side_px: (f64, f64),
    steps: usize,
    seed: u64,
}

/// Trains one phase and prints its evaluations.
fn phase(
    spec: &Phase,
    model: &mut Qwen25Vl,
    tokenizer: &tokenizers::Tokenizer,
    pad: i64,
    args: &Args,
    layout: PromptLayout,
) -> Result<()> {
    let Phase { name, objects, side_px, steps, seed } = *spec;
    let mut rng = SplitMix64::new(seed);
    let mut draw = |ids: std::ops::Range<u64>| {
        ids.map(|i| example(i, &mut rng, tokenizer, objects, side_px, layout)).collect::<Result<Vec<_>>>()
    };
    let train = draw(0..args.train_images)?;
    let val = draw(1_000_000..1_000_000 + args.val_images)?;
    let cfg = SftConfig {
        steps,
        batch_size: 8,
        lr: args.lr,
        warmup_steps: 50,
        eval_every: args.eval_every,
        max_new_tokens: 96,
        pointer_weight: args.pointer,
        ..SftConfig::default()
    };
    let t0 = std::time::Instant::now();
    train_sft(model, tokenizer, &train, &val, &cfg, pad, |l| {
        if let Some(v) = &l.val {
            let gain = v.image.as_ref().map_or(f64::NAN, |i| i.gain());
            println!(
                "{name} step {:5}  loss {:.4}  image gain {gain:.4}  2D Acc@0.5 {:5.1}%  format {:5.1}%  ({:.0} s)",
                l.step,
                l.loss,
                v.acc2d_050_pct,
                v.format_pct,
                t0.elapsed().as_secs_f64()
            );
        }
    })?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let easy_objects = args.easy_objects.unwrap_or(args.objects);
    for (flag, n) in [("--objects", args.objects), ("--easy-objects", easy_objects)] {
        if !(1..=COLOURS.len()).contains(&n) {
            bail!("{flag} {n}: 1 to {}", COLOURS.len());
        }
    }
    if !(args.box_min >= 1.0 && args.box_min <= args.box_max && args.box_max < f64::from(HEIGHT_PX)) {
        bail!("box sides {}..{}: need 1 <= min <= max < {HEIGHT_PX}", args.box_min, args.box_max);
    }
    let layout = match args.layout.as_str() {
        "v1" => PromptLayout::ImageFirst,
        "v2" => PromptLayout::TextFirst,
        other => bail!("--layout {other}: v1 or v2"),
    };
    tch::set_num_threads(args.threads);
    let tokenizer = tokenizer(layout)?;
    let ids = SpecialIds::of(&tokenizer)?;
    let vocab = i64::try_from(tokenizer.get_vocab_size(true)).context("vocabulary size")?;
    let mut config = ModelSize::tiny().config(vocab, &ids);
    if args.abs_position {
        config.vision.abs_position_periods = DEFAULT_ABS_POSITION_PERIODS.to_vec();
    }
    let mut model = Qwen25Vl::random(&config, Device::Cpu, Kind::Float, 7)?;
    if args.easy_steps > 0 {
        let easy = Phase {
            name: "easy",
            objects: easy_objects,
            side_px: EASY_BOX_PX,
            steps: args.easy_steps,
            seed: 5,
        };
        phase(&easy, &mut model, &tokenizer, ids.pad, &args, layout)?;
    }
    let side_px = (args.box_min, args.box_max);
    let main = Phase { name: "main", objects: args.objects, side_px, steps: args.steps, seed: 11 };
    phase(&main, &mut model, &tokenizer, ids.pad, &args, layout)
}
