//! End to end: a tiny checkpoint -> `monovlm-export` (library) -> the runtime's `Grounder` gives
//! the same prompt tokens and the same greedy answer tokens as the trainer's own model
//! (`Qwen25Vl::generate` at temperature 0) on the same frame and query.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use monovlm_calib::Intrinsics;
use monovlm_exporter::Precision;
use monovlm_exporter::package::{ExportOptions, GraphFiles, export};
use monovlm_exporter::validate::PackageSessions;
use monovlm_runtime::grounder::{Grounder, GrounderOptions};
use monovlm_runtime::model_config::{
    ABS_POSITION_WEIGHT, DEFAULT_ABS_POSITION_PERIODS, Qwen25VlConfig, abs_position_code,
};
use monovlm_runtime::package::byte_level_tokenizer_json;
use monovlm_runtime::protocol::{self, Query};
use monovlm_runtime::session::{Device, SessionOptions};
use monovlm_runtime::source::Frame;
use monovlm_trainer::model::Qwen25Vl;
use monovlm_trainer::model::generate::{Prompt, Sampling};

/// `<|im_start|>` of the test tokenizer (`<|im_end|>` is the next id): free ids of the tiny vocab.
const IM_START_ID: i64 = 504;
/// Greedy tokens compared (the tiny random model rarely stops on its own).
const NEW_TOKENS: usize = 24;

fn checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl/tiny_a")
}

#[test]
fn runtime_ground_answers_like_the_trainer_greedy_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    export(&checkpoint(), &pkg, &ExportOptions::default(), &mut |_| {}).unwrap();
    let cfg = Qwen25VlConfig::from_file(&pkg).unwrap();
    std::fs::write(pkg.join("tokenizer.json"), byte_level_tokenizer_json(&cfg, IM_START_ID)).unwrap();

    let options = GrounderOptions {
        session: SessionOptions { devices: vec![Device::Cpu], intra_threads: 1, ..SessionOptions::default() },
        max_new_tokens: NEW_TOKENS,
        batch_queries: true,
        ..GrounderOptions::default()
    };
    let mut grounder = Grounder::open(&pkg, options).unwrap();
    let image = image::RgbImage::from_fn(196, 140, |x, y| {
        image::Rgb([(x * 9 % 256) as u8, (y * 13 % 256) as u8, ((x * y) % 256) as u8])
    });
    let k = Intrinsics::new(180.0, 180.0, 98.0, 70.0, 196, 140).unwrap();
    let query = Query::new("the red car behind the truck").unwrap();

    // Same prompt tokens as the trainer's tokenisation of the protocol's prompt.
    let (pre, _) = grounder.prepare(&image, &k).unwrap();
    let ids = grounder.prompt_tokens(&query, &pre).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(pkg.join("tokenizer.json")).unwrap();
    // A checkpoint without monovlm.json is exported with the current protocol (v2, text first).
    assert_eq!(grounder.package().layout, protocol::PromptLayout::TextFirst);
    let text =
        protocol::chat_prompt(&query, &pre.intrinsics, pre.num_image_tokens, grounder.package().layout);
    assert_eq!(ids, monovlm_trainer::train::grounding::encode(&tokenizer, &text).unwrap());

    // Same greedy tokens.
    let runtime = grounder.generate(&pre, std::slice::from_ref(&ids)).unwrap();
    let model = Qwen25Vl::load(&checkpoint(), tch::Device::Cpu, tch::Kind::Float).unwrap();
    let pixels = pre.pixel_values.iter().copied().collect::<Vec<f32>>();
    let rows = pre.pixel_values.nrows() as i64;
    let prompt = Prompt {
        tokens: ids,
        pixel_values: Some(tch::Tensor::from_slice(&pixels).reshape([rows, -1])),
        grids: vec![pre.grid_thw],
    };
    let sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: NEW_TOKENS,
        stop_tokens: vec![IM_START_ID + 1],
    };
    let (trainer, _) = model.generate(&prompt, 1, &sampling).unwrap();
    assert_eq!(runtime.tokens[0], trainer[0].tokens);

    // And `ground` (the public path) answers with those tokens.
    let frame =
        Frame { image, index: 0, name: "f".into(), intrinsics: None, captured: std::time::Instant::now() };
    let g = grounder.ground(&frame, &[query], &k).unwrap();
    assert_eq!(g[0].tokens, trainer[0].tokens.len());
    let ids_u32: Vec<u32> = trainer[0].tokens.iter().map(|&t| t as u32).collect();
    assert_eq!(g[0].text, tokenizer.decode(&ids_u32, true).unwrap());
}

/// Our absolute position code (`VisionConfig::abs_position_periods`; not in transformers, so no
/// golden fixture): the trainer adds `abs_position_code(row, col) @ W^T` to each merged token, and
/// the exported vision graph gives the trainer's image features.
#[test]
fn abs_position_code_is_the_formula_and_exports_with_the_trainers_features() {
    let mut cfg = Qwen25VlConfig::from_file(&checkpoint()).unwrap();
    let periods = DEFAULT_ABS_POSITION_PERIODS.to_vec();
    cfg.vision.abs_position_periods = periods.clone();
    let mut model = Qwen25Vl::random(&cfg, tch::Device::Cpu, tch::Kind::Float, 3).unwrap();
    // Two images (merged grids 5x7 and 3x4), so that rows and columns restart per image.
    let grids = [[1, 10, 14], [1, 6, 8]];
    let patches: i64 = grids.iter().map(|g| (g[0] * g[1] * g[2]) as i64).sum();
    tch::manual_seed(5);
    let pixels = tch::Tensor::randn([patches, 1176], (tch::Kind::Float, tch::Device::Cpu));
    let features = model.image_features(&pixels, &grids).unwrap().detach();

    // The exported graph, through ONNX Runtime.
    let tmp = tempfile::tempdir().unwrap();
    let (ck, pkg) = (tmp.path().join("ck"), tmp.path().join("pkg"));
    let meta = monovlm_trainer::checkpoint::MonovlmMeta::new(&Default::default());
    let opts = monovlm_trainer::checkpoint::SaveOptions {
        dtype: tch::Kind::Float,
        tokenizer_from: None,
        meta: &meta,
        train: None,
        max_shard_bytes: usize::MAX,
    };
    monovlm_trainer::checkpoint::save(&mut model, &ck, opts).unwrap();
    export(&ck, &pkg, &ExportOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(Qwen25VlConfig::from_file(&pkg).unwrap().vision.abs_position_periods, periods);
    let files = GraphFiles::for_precision(Precision::Fp32);
    let mut sessions = PackageSessions::open(&pkg, &files, 1).unwrap();
    let flat: Vec<f32> = pixels.reshape([-1]).try_into().unwrap();
    let onnx = sessions.image_features(&flat, &grids).unwrap();
    let ours: Vec<f32> = features.reshape([-1]).try_into().unwrap();
    let worst = onnx.iter().zip(&ours).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "exported features differ by {worst}");

    // Without the projection the features move by exactly the code's projection.
    let w = model.params().get(ABS_POSITION_WEIGHT).unwrap().tensor.shallow_clone();
    let w_rows: Vec<Vec<f32>> = (0..w.size()[0]).map(|r| w.get(r).detach().try_into().unwrap()).collect();
    let mut zeroed = w.shallow_clone();
    tch::no_grad(|| {
        let _ = zeroed.zero_();
    });
    let plain: Vec<f32> =
        model.image_features(&pixels, &grids).unwrap().detach().reshape([-1]).try_into().unwrap();
    let d = w_rows.len();
    let mut merged = 0;
    for g in grids {
        let cols = g[2] / 2;
        for m in 0..(g[1] / 2) * cols {
            let code = abs_position_code((m / cols) as f64, (m % cols) as f64, &periods);
            for (j, row) in w_rows.iter().enumerate() {
                let shift: f64 = code.iter().zip(row).map(|(c, w)| c * f64::from(*w)).sum();
                let got = f64::from(ours[merged * d + j] - plain[merged * d + j]);
                assert!((got - shift).abs() < 1e-4, "token {merged} ({g:?}) dim {j}: {got} vs {shift}");
            }
            merged += 1;
        }
    }
    assert_eq!(merged * d, ours.len());
}
