//! The runtime's grounding path on packages the exporter writes from the tiny reference
//! checkpoints: greedy tokens equal transformers' (the golden `io.safetensors`, which the trainer's
//! model also matches), batched queries equal one-by-one decoding, TensorRT falls back to the CPU
//! with one logged reason, and a corrupt graph is reported against its file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use monovlm_calib::{Distortion, Intrinsics};
use monovlm_exporter::package::{ExportOptions, export};
use monovlm_exporter::validate::Reference;
use monovlm_runtime::Error;
use monovlm_runtime::decoding::Decoding;
use monovlm_runtime::grounder::{Generated, Grounder, GrounderOptions};
use monovlm_runtime::model_config::Qwen25VlConfig;
use monovlm_runtime::package::byte_level_tokenizer_json;
use monovlm_runtime::preprocess::{MERGE_UNIT, PATCH_SIZE_PX, Preprocessed};
use monovlm_runtime::protocol::Query;
use monovlm_runtime::session::{Device, SessionOptions, skipped_providers};
use monovlm_runtime::source::Frame;

/// `<|im_start|>` / `<|im_end|>` ids of the test tokenizer: free ids of the tiny vocabularies (512).
const IM_START_ID: i64 = 504;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl").join(name)
}

/// Exports a tiny fixture into `root/pkg` with a byte-level tokenizer.
fn package(root: &Path, name: &str) -> PathBuf {
    let out = root.join("pkg");
    export(&fixture(name), &out, &ExportOptions::default(), &mut |_| {}).unwrap();
    let cfg = Qwen25VlConfig::from_file(&out).unwrap();
    std::fs::write(out.join("tokenizer.json"), byte_level_tokenizer_json(&cfg, IM_START_ID)).unwrap();
    out
}

fn cpu(max_new_tokens: usize, batch_queries: bool) -> GrounderOptions {
    GrounderOptions {
        session: SessionOptions { devices: vec![Device::Cpu], intra_threads: 1, ..SessionOptions::default() },
        max_new_tokens,
        batch_queries,
        decoding: Decoding::Greedy,
    }
}

/// Greedy generation on the fixture's golden prompt, the package's config edited first.
fn golden_greedy(name: &str, edit_config: impl FnOnce(&mut serde_json::Value)) -> (Reference, Generated) {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), name);
    let config_path = pkg.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let reference = Reference::read(&fixture(name).join("io.safetensors")).unwrap();
    let mut grounder = Grounder::open(&pkg, cpu(reference.greedy_tokens.len(), true)).unwrap();
    // One image per prompt, as the runtime's prompts have (tiny_b's golden prompt holds two).
    assert_eq!(reference.grids.len(), 1, "{name}");
    let grid = reference.grids[0];
    let (w, h) = ((grid[2] * PATCH_SIZE_PX) as u32, (grid[1] * PATCH_SIZE_PX) as u32);
    let k = Intrinsics::new(100.0, 100.0, f64::from(w) / 2.0, f64::from(h) / 2.0, w, h).unwrap();
    let (intrinsics, resize_map) = k.resized(w, h).unwrap();
    let n = reference.pixel_values.len() / 1176;
    let pre = Preprocessed {
        pixel_values: ndarray::Array2::from_shape_vec((n, 1176), reference.pixel_values.clone()).unwrap(),
        grid_thw: grid,
        intrinsics,
        resize_map,
        num_image_tokens: grid.iter().product::<usize>() / MERGE_UNIT,
    };
    let generated = grounder.generate(&pre, std::slice::from_ref(&reference.input_ids)).unwrap();
    (reference, generated)
}

#[test]
fn tiny_a_checkpoint_to_package_to_runtime_greedy_equals_transformers() {
    let (reference, generated) = golden_greedy("tiny_a", |_| {});
    assert_eq!(generated.tokens[0], reference.greedy_tokens);
    assert!(!generated.stopped[0], "tiny_a's greedy tokens hold no end token");
}

/// Generation ends on any of the config's end tokens, not only `<|im_end|>` (hub Qwen2.5-VL ends
/// on `<|endoftext|>` too): here the golden answer's third token is made an end token.
#[test]
fn generation_stops_on_the_config_end_tokens() {
    let reference = Reference::read(&fixture("tiny_a").join("io.safetensors")).unwrap();
    let end = reference.greedy_tokens[2];
    assert!(!reference.greedy_tokens[..2].contains(&end));
    let (_, generated) =
        golden_greedy("tiny_a", |c| c["text_config"]["eos_token_id"] = serde_json::json!([504, end]));
    assert_eq!(generated.tokens[0], reference.greedy_tokens[..3]);
    assert!(generated.stopped[0]);
}

fn frame(w: u32, h: u32) -> Frame {
    let image = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8])
    });
    Frame { image, index: 3, name: "synthetic".into(), intrinsics: None, captured: std::time::Instant::now() }
}

#[test]
fn batched_queries_decode_like_one_by_one_and_results_are_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "tiny_b");
    let f = frame(224, 168);
    let k = Intrinsics::new(200.0, 200.0, 112.0, 84.0, 224, 168).unwrap();
    let queries = [
        Query::new("the car").unwrap(),
        Query::new("the white van parked on the right of the road").unwrap(),
    ];
    let batched = Grounder::open(&pkg, cpu(12, true)).unwrap().ground(&f, &queries, &k).unwrap();
    let mut one_by_one = Grounder::open(&pkg, cpu(12, false)).unwrap();
    let single = one_by_one.ground(&f, &queries, &k).unwrap();
    assert_eq!(batched.len(), 2);
    for (b, s) in batched.iter().zip(&single) {
        assert_eq!(b.text, s.text);
        assert_eq!(b.tokens, s.tokens);
        assert_eq!(b.provider, Device::Cpu);
        assert_eq!(b.frame_index, 3);
        // A random tiny model writes no answer: the parse error is reported, not raised.
        assert!(b.answer.is_some() || b.error.is_some());
    }
    let t = batched[0].timings;
    assert_eq!(t.batch, 2);
    assert!(t.vision_ms > 0.0 && t.prefill_ms > 0.0 && t.total_ms >= t.ort_ms);
    assert_eq!(single[0].timings.batch, 1);

    // Distorted intrinsics: the frame is undistorted first and grounding still runs.
    let kd = k.clone().with_distortion(Distortion::new(-0.2, 0.05, 0.001, -0.001, 0.0).unwrap());
    let r = one_by_one.ground(&f, &queries[..1], &kd).unwrap();
    assert_eq!(r.len(), 1);
    // A frame of another size than its intrinsics is an error, not a panic.
    assert!(one_by_one.ground(&frame(100, 80), &queries[..1], &k).is_err());
}

#[test]
fn consensus_decoding_runs_every_sample_and_rejects_bad_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "tiny_b");
    let f = frame(224, 168);
    let k = Intrinsics::new(200.0, 200.0, 112.0, 84.0, 224, 168).unwrap();
    let queries = [Query::new("the car").unwrap(), Query::new("the van on the right").unwrap()];
    let mut opts = cpu(6, true);
    opts.decoding = Decoding::Consensus { samples: 3, temperature: 1.0, top_p: 0.9, seed: 5 };
    let run = |opts: &GrounderOptions| {
        Grounder::open(&pkg, opts.clone()).unwrap().ground(&f, &queries, &k).unwrap()
    };
    let a = run(&opts);
    assert_eq!(a.len(), 2);
    for g in &a {
        assert_eq!(g.samples, 3);
        assert!(g.tokens >= 3 && g.tokens <= 18, "3 samples of 1..=6 tokens, got {}", g.tokens);
        assert_eq!(g.answer.is_some(), g.parsed_samples > 0, "an answer exactly when a sample parsed");
        assert_eq!(g.error.is_some(), g.answer.is_none());
    }
    assert_eq!(a[0].timings.batch, 6, "2 queries x 3 samples decode as one batch");
    // Each row draws from its own generator: one query at a time writes the same samples.
    let mut one_by_one = opts.clone();
    one_by_one.batch_queries = false;
    let c = run(&one_by_one);
    assert_eq!(c[0].timings.batch, 3);
    assert_eq!(
        a.iter().map(|g| (&g.text, g.tokens)).collect::<Vec<_>>(),
        c.iter().map(|g| (&g.text, g.tokens)).collect::<Vec<_>>(),
        "batched and one-by-one consensus decoding agree"
    );
    // Seeded: the same seed draws the same tokens.
    let b = run(&opts);
    assert_eq!(
        a.iter().map(|g| (&g.text, g.tokens)).collect::<Vec<_>>(),
        b.iter().map(|g| (&g.text, g.tokens)).collect::<Vec<_>>()
    );

    for bad in [
        Decoding::Consensus { samples: 0, temperature: 1.0, top_p: 1.0, seed: 0 },
        Decoding::Consensus { samples: 2, temperature: f32::NAN, top_p: 1.0, seed: 0 },
        Decoding::Consensus { samples: 2, temperature: 1.0, top_p: 0.0, seed: 0 },
    ] {
        opts.decoding = bad;
        let err = Grounder::open(&pkg, opts.clone()).unwrap_err();
        assert!(matches!(err, Error::InvalidOptions(_)), "{bad:?}: {err}");
    }
}

#[test]
fn tensorrt_on_a_cpu_only_onnx_runtime_falls_back_to_cpu_logging_once() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "tiny_a");
    let mut opts = cpu(4, true);
    opts.session.devices = vec![Device::TensorRt, Device::Cpu];
    opts.session.tensorrt.cache_dir = Some(tmp.path().join("trt"));
    let g = Grounder::open(&pkg, opts).unwrap();
    assert_eq!(g.providers(), [Device::Cpu; 3]);
    let skipped = skipped_providers();
    // Three graphs opened, one reason recorded (and logged) for TensorRT.
    assert_eq!(skipped.iter().filter(|(d, _)| *d == Device::TensorRt).count(), 1, "{skipped:?}");
}

#[test]
fn truncated_graphs_and_missing_tokenizers_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = package(tmp.path(), "tiny_a");
    let decoder = pkg.join("onnx/decoder_model_merged.onnx");
    let bytes = std::fs::read(&decoder).unwrap();
    std::fs::write(&decoder, &bytes[..bytes.len() / 3]).unwrap();
    let err = Grounder::open(&pkg, cpu(4, true)).unwrap_err().to_string();
    assert!(err.contains("decoder_model_merged.onnx") && err.contains("truncated or corrupt"), "{err}");
    std::fs::remove_file(pkg.join("tokenizer.json")).unwrap();
    let err = Grounder::open(&pkg, cpu(4, true)).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("missing"), "{err}");
}
