//! The ONNX writer: files decode back to the messages built, external data loads in ONNX Runtime
//! and gives the same results as inline weights, and 4-bit `MatMulNBits` weights multiply like their
//! dequantized f32 matrix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::Path;

use monovlm_exporter::onnx::proto::ModelProto;
use monovlm_exporter::onnx::{DataType, Dim, ExternalData, GraphBuilder, MS_DOMAIN, Model, TensorData, attr};
use monovlm_exporter::quant::{BITS, BLOCK_SIZE, quantize_q4};
use monovlm_runtime::session::cpu_session;
use ort::value::Tensor;
use prost::Message;

const K: usize = 80; // two full blocks and a partial one
const N: usize = 24;
const ROWS: usize = 3;

fn weights() -> Vec<f32> {
    (0..N * K).map(|i| (((i * 7919) % 211) as f32 - 105.0) / 97.0).collect()
}

fn input() -> Vec<f32> {
    (0..ROWS * K).map(|i| (((i * 31) % 17) as f32 - 8.0) / 5.0).collect()
}

/// `y = x @ w^T` with `w` `[N, K]` given as a dense `[K, N]` initializer.
fn dense_model(w: &[f32]) -> Model {
    let mut b = GraphBuilder::new("dense");
    let x = b.input("x", DataType::Float, &[Dim::from("rows"), (K as i64).into()]).unwrap();
    let mut wt = vec![0.0f32; K * N];
    for n in 0..N {
        for k in 0..K {
            wt[k * N + n] = w[n * K + k];
        }
    }
    let w = b.initializer("w", TensorData::f32(&[K as i64, N as i64], &wt).unwrap()).unwrap();
    let y = b.op_named("MatMul", "", &[&x, &w], &["y"], Vec::new()).unwrap();
    b.output(&y[0], DataType::Float, &[Dim::from("rows"), (N as i64).into()]).unwrap();
    b.finish("test")
}

fn run(path: &Path, x: &[f32]) -> Vec<f32> {
    let mut s = cpu_session(path, 1).unwrap();
    let out = s.run(ort::inputs! {"x" => Tensor::from_array(([ROWS, K], x.to_vec())).unwrap()}).unwrap();
    out["y"].try_extract_tensor::<f32>().unwrap().1.to_vec()
}

#[test]
fn a_saved_model_decodes_to_what_was_built() {
    let model = dense_model(&weights());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let saved = model.save(&path, ExternalData::Auto).unwrap();
    assert!(saved.data_path.is_none());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, saved.bytes);
    let decoded = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, model.to_proto().unwrap(), "streamed file != one-message encoding");
    let graph = decoded.graph.unwrap();
    assert_eq!(graph.initializer[0].dims, vec![K as i64, N as i64]);
    assert_eq!(graph.initializer[0].raw_data.len(), K * N * 4);
    assert_eq!(decoded.opset_import.len(), 1);
    assert_eq!(decoded.opset_import[0].version, 21);
}

#[test]
fn external_data_runs_like_inline_data() {
    let model = dense_model(&weights());
    let dir = tempfile::tempdir().unwrap();
    let inline = dir.path().join("inline.onnx");
    let external = dir.path().join("external.onnx");
    model.save(&inline, ExternalData::Auto).unwrap();
    let saved = model.save(&external, ExternalData::Always).unwrap();
    let data = saved.data_path.expect("an external data file");
    assert_eq!(data.file_name().unwrap(), "external.onnx_data");
    assert!(std::fs::metadata(&external).unwrap().len() < 2048, "weights left the .onnx file");
    let x = input();
    assert_eq!(run(&inline, &x), run(&external, &x));
}

#[test]
fn matmul_nbits_multiplies_by_the_dequantized_weight() {
    let w = weights();
    let q = quantize_q4(&w, N, K);
    let dir = tempfile::tempdir().unwrap();
    let dense_path = dir.path().join("dense.onnx");
    dense_model(&q.dequantize()).save(&dense_path, ExternalData::Auto).unwrap();

    let mut b = GraphBuilder::new("q4");
    let x = b.input("x", DataType::Float, &[Dim::from("rows"), (K as i64).into()]).unwrap();
    let blocks = q.blocks() as i64;
    let packed = b
        .initializer(
            "w_q4",
            TensorData::u8(&[N as i64, blocks, (BLOCK_SIZE * BITS / 8) as i64], q.packed.clone()).unwrap(),
        )
        .unwrap();
    let scales =
        b.initializer("w_scales", TensorData::f32(&[N as i64 * blocks], &q.scales).unwrap()).unwrap();
    let y = b
        .op_named(
            "MatMulNBits",
            MS_DOMAIN,
            &[&x, &packed, &scales],
            &["y"],
            vec![
                attr::int("K", K as i64),
                attr::int("N", N as i64),
                attr::int("bits", BITS as i64),
                attr::int("block_size", BLOCK_SIZE as i64),
            ],
        )
        .unwrap();
    b.output(&y[0], DataType::Float, &[Dim::from("rows"), (N as i64).into()]).unwrap();
    let q_path = dir.path().join("q4.onnx");
    b.finish("test").save(&q_path, ExternalData::Auto).unwrap();

    let x = input();
    let (a, c) = (run(&dense_path, &x), run(&q_path, &x));
    let diff = a.iter().zip(&c).map(|(a, c)| (a - c).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "MatMulNBits vs dequantized MatMul: {diff}");
    // And quantization itself is close to the f32 weights.
    let exact = run(
        &{
            let p = dir.path().join("exact.onnx");
            dense_model(&w).save(&p, ExternalData::Auto).unwrap();
            p
        },
        &x,
    );
    let qerr = exact.iter().zip(&c).map(|(a, c)| (a - c).abs()).fold(0.0f32, f32::max);
    let scale = exact.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    assert!(qerr < 0.1 * scale, "4-bit error {qerr} of {scale}");
}
