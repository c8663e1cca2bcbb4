//! Export the tiny reference checkpoints and run the packages with ONNX Runtime against the golden
//! outputs of transformers 5.23 (`trainer/tests/fixtures/qwen25vl/*/io.safetensors`): image
//! features, prompt logits and 8 greedy tokens over the KV cache.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::{Path, PathBuf};

use monovlm_exporter::Precision;
use monovlm_exporter::package::{ExportOptions, GraphFiles, export};
use monovlm_exporter::validate::{
    Agreement, FP32_TOL, LOSSY_MAX_RELATIVE_ERROR, PackageSessions, Parity, Reference, agreement, parity,
};

/// fp32 parity bound for image features and logits, as the issue asks; the measured errors are
/// around 1e-6 (float reassociation between ONNX Runtime's kernels and PyTorch's).
/// Single-threaded sessions: deterministic and fair to the other tests running beside.
const THREADS: usize = 1;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl").join(name)
}

fn check(name: &str, opts: &ExportOptions) {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    let report = export(&fixture(name), &pkg, opts, &mut |_| {}).expect("export");
    assert!(report.total_bytes() > 0);
    let files = GraphFiles::for_precision(opts.precision);
    let reference = Reference::read(&fixture(name).join("io.safetensors")).unwrap();
    let mut decoders = vec![(pkg.join(&files.decoder), "fused")];
    if opts.with_plain_decoder {
        decoders.push((pkg.join(GraphFiles::plain_decoder(opts.precision)), "plain"));
    }
    for (decoder, label) in decoders {
        let mut sessions =
            PackageSessions::open(&pkg, &files, THREADS).unwrap().with_decoder(&decoder, THREADS).unwrap();
        let p = parity(&mut sessions, &reference).unwrap();
        println!(
            "{name} {label}: vision {:.2e}, logits {:.2e} (scale {:.2}), greedy logits {:.2e}, tokens {:?} / {:?}",
            p.vision_max_abs,
            p.logits_max_abs,
            p.logits_scale,
            p.greedy_logits_max_abs,
            p.tokens,
            p.reference_tokens
        );
        assert!(p.vision_max_abs < FP32_TOL, "{name} {label}: vision {}", p.vision_max_abs);
        assert!(
            p.logits_max_abs < FP32_TOL * p.logits_scale.max(1.0),
            "{name} {label}: logits {}",
            p.logits_max_abs
        );
        assert!(p.greedy_logits_max_abs < FP32_TOL * p.logits_scale.max(1.0), "{name} {label}");
        assert!(p.tokens_equal(), "{name} {label}: {:?} != {:?}", p.tokens, p.reference_tokens);
        assert!(p.within(FP32_TOL), "{name} {label}: `--validate`'s gate disagrees with the checks above");
    }
}

/// `--validate`'s gates: any NaN, a greedy-step logit drift or a flipped token fails fp32 parity;
/// a lossy package whose logits are noise, or NaN, fails.
#[test]
fn the_validate_gates_fail_on_nan_drift_and_noise() {
    let good = Parity {
        vision_max_abs: 1e-6,
        logits_max_abs: 1e-5,
        logits_scale: 8.0,
        greedy_logits_max_abs: 1e-5,
        tokens: vec![3, 4],
        reference_tokens: vec![3, 4],
    };
    assert!(good.within(FP32_TOL));
    let (vision_nan, _) = monovlm_exporter::validate::max_abs_diff(&[f32::NAN], &[0.0]);
    for bad in [
        Parity { vision_max_abs: vision_nan, ..good.clone() },
        Parity { greedy_logits_max_abs: 1e-2, ..good.clone() },
        Parity { tokens: vec![3, 5], ..good.clone() },
    ] {
        assert!(!bad.within(FP32_TOL), "{bad:?}");
    }
    let lossy = Agreement {
        prompts: 8,
        tokens: 64,
        equal_prefix_tokens: 10,
        identical_prompts: 0,
        logits_max_abs: 0.5,
        logits_scale: 4.0,
    };
    assert!((lossy.relative_logits_error() - 0.125).abs() < 1e-6);
    for bad in [
        Agreement { logits_max_abs: 2.0, ..lossy.clone() },
        Agreement { logits_max_abs: f32::INFINITY, ..lossy.clone() },
        Agreement { logits_scale: 0.0, ..lossy.clone() },
    ] {
        assert!(bad.relative_logits_error() >= LOSSY_MAX_RELATIVE_ERROR, "{bad:?}");
    }
}

#[test]
fn tiny_a_fp32_matches_transformers() {
    check("tiny_a", &ExportOptions { with_plain_decoder: true, ..ExportOptions::default() });
}

#[test]
fn tiny_b_fp32_matches_transformers() {
    check("tiny_b", &ExportOptions { with_plain_decoder: true, ..ExportOptions::default() });
}

/// int4 on random tiny weights: the package is a third of the fp32 size, runs, and passes
/// `--validate`'s gate (logit error under half the fp32 logits' scale). Random 96-wide layers have no redundancy for 4-bit weights to hide
/// in (their top-1/top-2 logit margins are ~0.04), so token agreement is reported (`--nocapture`),
/// not asserted.
#[test]
fn tiny_b_int4_runs_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let (fp32, int4) = (dir.path().join("fp32"), dir.path().join("int4"));
    export(&fixture("tiny_b"), &fp32, &ExportOptions::default(), &mut |_| {}).unwrap();
    let opts = ExportOptions { precision: Precision::Int4, ..ExportOptions::default() };
    let report = export(&fixture("tiny_b"), &int4, &opts, &mut |_| {}).unwrap();
    let decoder = report.files.iter().find(|f| f.path == "onnx/decoder_model_merged_q4.onnx").unwrap();
    let fp32_decoder = std::fs::metadata(fp32.join("onnx/decoder_model_merged.onnx")).unwrap().len();
    assert!(decoder.bytes * 3 < fp32_decoder, "int4 decoder {} B vs fp32 {fp32_decoder} B", decoder.bytes);

    let mut a = PackageSessions::open(&fp32, &GraphFiles::for_precision(Precision::Fp32), THREADS).unwrap();
    let mut b = PackageSessions::open(&int4, &GraphFiles::for_precision(Precision::Int4), THREADS).unwrap();
    let agree = agreement(&mut a, &mut b, 8, 4).unwrap();
    println!("tiny_b int4 vs fp32: {agree:?}");
    assert!(agree.relative_logits_error() < LOSSY_MAX_RELATIVE_ERROR, "{agree:?}");
}

/// fp16 graphs are written with f16 weights and f16 interfaces (pixel_values and logits stay f32).
/// They are not run here: ONNX Runtime 1.31.1's CPU provider crashes on the f16 decoder at full
/// optimisation (`scripts/reference/onnx_check.py` runs them at the extended level).
#[test]
fn fp16_graphs_have_f16_weights_and_interfaces() {
    use monovlm_exporter::onnx::proto::{DataType, ModelProto, NodeProto, TypeProtoValue};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    let opts = ExportOptions { precision: Precision::Fp16, ..ExportOptions::default() };
    export(&fixture("tiny_a"), &pkg, &opts, &mut |_| {}).unwrap();
    let files = GraphFiles::for_precision(Precision::Fp16);
    let elem = |m: &ModelProto, name: &str| {
        let g = m.graph.as_ref().unwrap();
        let v = g.input.iter().chain(&g.output).find(|v| v.name == name).unwrap();
        match v.r#type.as_ref().unwrap().value.as_ref().unwrap() {
            TypeProtoValue::TensorType(t) => t.elem_type,
        }
    };
    let decoder = ModelProto::decode(std::fs::read(pkg.join(&files.decoder)).unwrap().as_slice()).unwrap();
    assert_eq!(elem(&decoder, "inputs_embeds"), DataType::Float16 as i32);
    assert_eq!(elem(&decoder, "present.1.value"), DataType::Float16 as i32);
    assert_eq!(elem(&decoder, "logits"), DataType::Float as i32);
    let weights = decoder.graph.as_ref().unwrap().initializer.iter().filter(|t| t.raw_data.len() > 256);
    assert!(weights.clone().count() > 0 && weights.clone().all(|t| t.data_type == DataType::Float16 as i32));
    let vision =
        ModelProto::decode(std::fs::read(pkg.join(&files.vision_encoder)).unwrap().as_slice()).unwrap();
    assert_eq!(elem(&vision, "pixel_values"), DataType::Float as i32);
    assert_eq!(elem(&vision, "image_features"), DataType::Float16 as i32);
    // Every plain RMSNorm squares and averages in f32 (in f16, x^2 overflows above 256): the
    // ReduceMean's Mul reads a Cast to float.
    let with_plain = tempfile::tempdir().unwrap();
    let plain_pkg = with_plain.path().join("pkg");
    let opts = ExportOptions { with_plain_decoder: true, ..opts };
    export(&fixture("tiny_a"), &plain_pkg, &opts, &mut |_| {}).unwrap();
    let (mut norms, mut softmaxes) = (0, 0);
    for path in std::fs::read_dir(plain_pkg.join("onnx")).unwrap().map(|e| e.unwrap().path()) {
        if path.extension().is_none_or(|e| e != "onnx") {
            continue;
        }
        let m = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let nodes = &m.graph.as_ref().unwrap().node;
        let producer = |name: &str| nodes.iter().find(|n| n.output.iter().any(|o| o == name));
        for reduce in nodes.iter().filter(|n| n.op_type == "ReduceMean") {
            let square = producer(&reduce.input[0]).unwrap();
            assert_eq!(square.op_type, "Mul", "{}", path.display());
            let cast = producer(&square.input[0]).unwrap();
            let to = cast.attribute.iter().find(|a| a.name == "to").and_then(|a| a.i);
            assert_eq!(
                (cast.op_type.as_str(), to),
                ("Cast", Some(DataType::Float as i64)),
                "{}",
                path.display()
            );
            norms += 1;
        }
        // Every soft-max (the plain decoder's and the vision tower's attention) reads its scores
        // in f32, the mask added after the cast, and its probabilities are cast back to f16.
        for softmax in nodes.iter().filter(|n| n.op_type == "Softmax") {
            let add = producer(&softmax.input[0]).unwrap();
            assert_eq!(add.op_type, "Add", "{}", path.display());
            let cast_to = |n: &NodeProto| n.attribute.iter().find(|a| a.name == "to").and_then(|a| a.i);
            let cast = add.input.iter().filter_map(|i| producer(i)).find(|n| n.op_type == "Cast").unwrap();
            assert_eq!(cast_to(cast), Some(DataType::Float as i64), "{}", path.display());
            let back = nodes.iter().find(|n| n.input.first() == softmax.output.first()).unwrap();
            assert_eq!((back.op_type.as_str(), cast_to(back)), ("Cast", Some(DataType::Float16 as i64)));
            softmaxes += 1;
        }
    }
    assert!(norms > 0, "the plain decoder has RMSNorms");
    assert!(softmaxes > 0, "the plain decoder and the vision tower have soft-maxes");
}
