//! Training plumbing on the tiny fixture model: checkpoints round-trip (also sharded and in bf16),
//! LoRA adapters start as the identity, receive gradients, merge on save, and switch off to give
//! the base model; every trainable parameter receives a gradient.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use monovlm_runtime::preprocess::PreprocessConfig;
use monovlm_trainer::checkpoint::{self, MonovlmMeta, SaveOptions};
use monovlm_trainer::model::weights::read_tensors;
use monovlm_trainer::model::{LoraConfig, Qwen25Vl};
use monovlm_trainer::train::optim::{AdamW, AdamWConfig};
use monovlm_trainer::train::{Batch, Sequence, causal_lm_loss};
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen25vl/tiny_a")
}

fn inputs() -> (Vec<i64>, Tensor, Vec<[usize; 3]>) {
    let io = read_tensors(&[fixture().join("io.safetensors")]).unwrap();
    let tokens = Vec::try_from(io["input_ids"].reshape([-1])).unwrap();
    (tokens, io["pixel_values"].shallow_clone(), vec![[1, 8, 12]])
}

fn logits(model: &Qwen25Vl) -> Tensor {
    let (tokens, pixels, grids) = inputs();
    tch::no_grad(|| model.forward_logits(&tokens, Some(&pixels), &grids)).unwrap()
}

fn batch(model: &Qwen25Vl) -> Batch {
    let (tokens, pixels, grids) = inputs();
    let seq = |target: Vec<i64>| Sequence {
        prompt: tokens.clone(),
        target,
        pixel_values: Some(pixels.shallow_clone()),
        grids: grids.clone(),
    };
    Batch::new(model, &[seq(vec![7, 8, 9, 504]), seq(vec![11, 504])], 505).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn save(model: &mut Qwen25Vl, dir: &std::path::Path, dtype: Kind, shard: usize) {
    let meta = MonovlmMeta::new(&PreprocessConfig::default());
    let opts = SaveOptions { dtype, tokenizer_from: None, meta: &meta, train: None, max_shard_bytes: shard };
    checkpoint::save(model, dir, opts).unwrap();
}

#[test]
fn every_trainable_parameter_receives_a_gradient() {
    let model = Qwen25Vl::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let loss = causal_lm_loss(&model, &batch(&model)).unwrap();
    loss.backward();
    let mut checked = 0;
    for p in model.params().trainable() {
        let g = p.tensor.grad();
        assert!(g.defined(), "{} has no gradient", p.name);
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{} has a zero gradient", p.name);
        checked += 1;
    }
    assert_eq!(checked, model.params().params().len());
}

#[test]
fn checkpoints_round_trip_single_sharded_and_bf16() {
    let tmp = tempdir("roundtrip");
    let mut model = Qwen25Vl::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let want = logits(&model);
    save(&mut model, &tmp.join("single"), Kind::Float, usize::MAX);
    save(&mut model, &tmp.join("sharded"), Kind::Float, 200_000);
    assert!(tmp.join("sharded/model.safetensors.index.json").exists());
    assert!(tmp.join("sharded/model-00002-of-00005.safetensors").exists());
    for sub in ["single", "sharded"] {
        let back = Qwen25Vl::load(&tmp.join(sub), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(max_diff(&logits(&back), &want), 0.0, "{sub}");
    }
    assert!(MonovlmMeta::read(&tmp.join("single")).unwrap().is_some());
    // An index naming a shard outside its directory is refused before anything is read.
    let index = tmp.join("sharded/model.safetensors.index.json");
    let good = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, good.replacen("model-00002-of-00005", "../single/model", 1)).unwrap();
    let err = Qwen25Vl::load(&tmp.join("sharded"), Device::Cpu, Kind::Float).err().unwrap().to_string();
    assert!(err.contains("is not a file name in the checkpoint directory"), "{err}");
    std::fs::write(&index, good).unwrap();
    // bf16 storage: loads back (in f32) close to the original.
    save(&mut model, &tmp.join("bf16"), Kind::BFloat16, usize::MAX);
    let back = Qwen25Vl::load(&tmp.join("bf16"), Device::Cpu, Kind::Float).unwrap();
    let d = max_diff(&logits(&back), &want);
    assert!(d > 0.0 && d < 0.1, "bf16 round trip differs by {d}");
    // Saving over an existing checkpoint replaces it and leaves no temporary directory behind.
    save(&mut model, &tmp.join("single"), Kind::Float, usize::MAX);
    let names: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn lora_trains_adapters_only_merges_on_save_and_switches_off() {
    let tmp = tempdir("lora");
    let mut model = Qwen25Vl::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let base = logits(&model);
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "qkv".into()],
    };
    model.attach_lora(&cfg).unwrap();
    // 2 text layers x (q, v) + 4 vision blocks x qkv = 8 adapters of 2 matrices.
    assert_eq!(model.params().trainable().count(), 16);
    assert_eq!(max_diff(&logits(&model), &base), 0.0, "B = 0: adapters start as the identity");
    let b = batch(&model);
    let mut opt = AdamW::new(model.params(), AdamWConfig::default());
    for _ in 0..3 {
        model.params().zero_grad();
        causal_lm_loss(&model, &b).unwrap().backward();
        for p in model.params().trainable() {
            assert!(p.tensor.grad().defined(), "{} has no gradient", p.name);
        }
        opt.step(model.params(), 1e-2).unwrap();
    }
    let tuned = logits(&model);
    assert!(max_diff(&tuned, &base) > 1e-3, "LoRA training changed nothing");
    for p in model.params().params().iter().filter(|p| !p.trainable) {
        assert!(
            !p.tensor.grad().defined() || p.tensor.grad().abs().max().double_value(&[]) == 0.0,
            "{}",
            p.name
        );
    }
    model.set_adapters_enabled(false);
    assert_eq!(max_diff(&logits(&model), &base), 0.0, "adapters off = the base model");
    model.set_adapters_enabled(true);
    save(&mut model, &tmp.join("merged"), Kind::Float, usize::MAX);
    let merged = Qwen25Vl::load(&tmp.join("merged"), Device::Cpu, Kind::Float).unwrap();
    let d = max_diff(&logits(&merged), &tuned);
    assert!(d < 1e-4, "merged checkpoint differs from the adapted model by {d}");
    // For scripts/reference/hf_load_check.py: the checkpoint and our logits, to load in transformers.
    if let Ok(out) = std::env::var("MONOVLM_HF_CHECK_DIR") {
        let out = PathBuf::from(out);
        save(&mut model, &out.join("checkpoint"), Kind::Float, usize::MAX);
        Tensor::write_safetensors(&[("logits", &tuned)], out.join("expected_logits.safetensors")).unwrap();
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("monovlm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Scoring G answers with the prompt encoded once equals scoring the G full sequences.
#[test]
fn shared_prompt_logprobs_equal_full_sequences() {
    use monovlm_trainer::train::target_logprobs;
    let model = Qwen25Vl::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let (tokens, pixels, grids) = inputs();
    let answers: Vec<Vec<i64>> = vec![vec![7, 8, 9, 504], vec![11], vec![3, 1, 4, 1, 5, 9]];
    let (shared, shared_ent) =
        tch::no_grad(|| model.answers_logprobs(&tokens, Some(&pixels), &grids, &answers, 0.7)).unwrap();
    let seqs: Vec<Sequence> = answers
        .iter()
        .map(|a| Sequence {
            prompt: tokens.clone(),
            target: a.clone(),
            pixel_values: Some(pixels.shallow_clone()),
            grids: grids.clone(),
        })
        .collect();
    let batch = Batch::new(&model, &seqs, 505).unwrap();
    let (full, full_ent) = tch::no_grad(|| target_logprobs(&model, &batch, 0.7)).unwrap();
    assert_eq!(shared.size(), [11]);
    assert!(max_diff(&shared, &full) < 1e-5, "{}", max_diff(&shared, &full));
    assert!(max_diff(&shared_ent, &full_ent) < 1e-5);
}
