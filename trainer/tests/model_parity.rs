//! Parity of our Qwen2.5-VL with Hugging Face transformers 5.23 on tiny config-built models
//! (fixtures from `scripts/reference/qwen_model_fixture.py`): vision embeddings, 3-row positions,
//! prefill logits, and 8 greedy tokens with the logits of each decoding step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use monovlm_trainer::model::Qwen25Vl;
use monovlm_trainer::model::generate::{Prompt, Sampling};
use monovlm_trainer::model::weights::read_tensors;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen25vl").join(name)
}

fn io(name: &str) -> HashMap<String, Tensor> {
    read_tensors(&[fixture(name).join("io.safetensors")]).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn grids(io: &HashMap<String, Tensor>) -> Vec<[usize; 3]> {
    let g = &io["image_grid_thw"];
    let v: Vec<i64> = Vec::try_from(g.reshape([-1])).unwrap();
    v.chunks(3).map(|c| [c[0] as usize, c[1] as usize, c[2] as usize]).collect()
}

fn check(name: &str) {
    tch::set_num_threads(1);
    let model = Qwen25Vl::load(&fixture(name), Device::Cpu, Kind::Float).unwrap();
    let io = io(name);
    let grids = grids(&io);
    let tokens: Vec<i64> = Vec::try_from(io["input_ids"].reshape([-1])).unwrap();

    let vision = model.image_features(&io["pixel_values"], &grids).unwrap();
    let d_vision = max_abs_diff(&vision, &io["vision_embeds"]);
    assert!(d_vision < 1e-5, "{name}: vision embeddings differ by {d_vision}");

    let (pos, delta) = model.position_ids(&tokens, &grids).unwrap();
    assert_eq!(max_abs_diff(&pos.unsqueeze(1), &io["position_ids"]), 0.0, "{name}: position ids");
    assert_eq!(delta, io["rope_deltas"].int64_value(&[0, 0]), "{name}: rope delta");

    let logits = tch::no_grad(|| model.forward_logits(&tokens, Some(&io["pixel_values"]), &grids)).unwrap();
    let expected = &io["logits"];
    let scale = expected.abs().max().double_value(&[]);
    let d_logits = max_abs_diff(&logits, expected);
    assert!(d_logits < 1e-4 * scale.max(1.0), "{name}: prefill logits differ by {d_logits} (scale {scale})");

    let prompt =
        Prompt { tokens: tokens.clone(), pixel_values: Some(io["pixel_values"].shallow_clone()), grids };
    let sampling = Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: 8, stop_tokens: vec![] };
    let (out, _) = model.generate(&prompt, 1, &sampling).unwrap();
    let expected_tokens: Vec<i64> = Vec::try_from(&io["greedy_tokens"]).unwrap();
    assert_eq!(out[0].tokens, expected_tokens, "{name}: greedy tokens");
    // Each step's log-probability equals log_softmax of transformers' step logits at the token,
    // over the ids an answer may hold (`<|image_pad|>` and `<|video_pad|>` are never sampled).
    let banned = Tensor::from_slice(&[model.config().image_token_id, model.config().video_token_id]);
    let step_logp =
        io["greedy_logits"].index_fill(-1, &banned, f64::NEG_INFINITY).log_softmax(-1, Kind::Float);
    for (i, (&tok, &lp)) in out[0].tokens.iter().zip(&out[0].logprobs).enumerate() {
        let want = step_logp.double_value(&[i as i64, tok]);
        assert!((want - f64::from(lp)).abs() < 1e-4, "{name}: step {i} logprob {lp} vs {want}");
    }
    eprintln!(
        "{name}: vision max diff {d_vision:.2e}, prefill logits max diff {d_logits:.2e} (scale {scale:.1})"
    );
}

#[test]
fn tiny_a_one_image_two_unequal_windows_matches_transformers() {
    check("tiny_a");
}

#[test]
fn tiny_b_two_images_four_unequal_windows_untied_head_matches_transformers() {
    check("tiny_b");
}

/// G samples sharing one prefill decode as the same model would one by one: with greedy decoding
/// every sample equals the single greedy continuation.
#[test]
fn shared_prefill_samples_equal_single_decoding() {
    let model = Qwen25Vl::load(&fixture("tiny_a"), Device::Cpu, Kind::Float).unwrap();
    let io = io("tiny_a");
    let tokens: Vec<i64> = Vec::try_from(io["input_ids"].reshape([-1])).unwrap();
    let prompt = Prompt { tokens, pixel_values: Some(io["pixel_values"].shallow_clone()), grids: grids(&io) };
    let greedy = Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: 8, stop_tokens: vec![] };
    let (one, _) = model.generate(&prompt, 1, &greedy).unwrap();
    let (four, stats) = model.generate(&prompt, 4, &greedy).unwrap();
    for c in &four {
        assert_eq!(c.tokens, one[0].tokens);
    }
    assert_eq!(stats.new_tokens, 32);
    // A stop token ends a sample and is kept as its last token.
    let stop_at = one[0].tokens[3];
    let first = one[0].tokens.iter().position(|&t| t == stop_at).unwrap();
    let stopping = Sampling { stop_tokens: vec![stop_at], ..greedy };
    let (stopped, _) = model.generate(&prompt, 2, &stopping).unwrap();
    assert!(stopped[0].stopped);
    assert_eq!(stopped[0].tokens, one[0].tokens[..=first].to_vec());
}

/// A hub `config.json` (text fields at the top level, `rope_scaling` of type `mrope`, as
/// Qwen2.5-VL-3B/7B and MiMo-VL-7B ship) and transformers 5's in-memory tensor names
/// (`model.language_model.*`, `model.visual.*`) load into the same model.
#[test]
fn hub_config_layout_and_transformers5_tensor_names_load_the_same_model() {
    use monovlm_trainer::model::weights::write_tensors;
    let src = fixture("tiny_b");
    let dir = std::env::temp_dir().join(format!("monovlm-hub-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let v5: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut hub = v5.clone();
    let text = hub.as_object_mut().unwrap().remove("text_config").unwrap();
    let rope = text["rope_parameters"].clone();
    for (k, v) in text.as_object().unwrap() {
        if k != "rope_parameters" && k != "model_type" {
            hub[k] = v.clone();
        }
    }
    hub["rope_theta"] = rope["rope_theta"].clone();
    hub["rope_scaling"] = serde_json::json!({"type": "mrope", "mrope_section": rope["mrope_section"]});
    std::fs::write(dir.join("config.json"), serde_json::to_string(&hub).unwrap()).unwrap();
    let tensors = read_tensors(&[src.join("model.safetensors")]).unwrap();
    let renamed: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let name = if let Some(rest) = name.strip_prefix("visual.") {
                format!("model.visual.{rest}")
            } else if let Some(rest) = name.strip_prefix("model.") {
                format!("model.language_model.{rest}")
            } else {
                name
            };
            (name, t)
        })
        .collect();
    write_tensors(&dir, &renamed, Kind::Float, usize::MAX).unwrap();
    let a = Qwen25Vl::load(&src, Device::Cpu, Kind::Float).unwrap();
    let b = Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(a.config(), b.config());
    let io = io("tiny_b");
    let tokens: Vec<i64> = Vec::try_from(io["input_ids"].reshape([-1])).unwrap();
    let g = grids(&io);
    let la = tch::no_grad(|| a.forward_logits(&tokens, Some(&io["pixel_values"]), &g)).unwrap();
    let lb = tch::no_grad(|| b.forward_logits(&tokens, Some(&io["pixel_values"]), &g)).unwrap();
    assert_eq!(max_abs_diff(&la, &lb), 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint that disagrees with its config fails with an error naming the tensor.
#[test]
fn truncated_or_mismatched_checkpoints_name_the_tensor() {
    use monovlm_trainer::model::weights::write_tensors;
    let src = fixture("tiny_a");
    let dir = std::env::temp_dir().join(format!("monovlm-bad-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        read_tensors(&[src.join("model.safetensors")]).unwrap().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let load_err = |t: &[(String, Tensor)]| {
        write_tensors(&dir, t, Kind::Float, usize::MAX).unwrap();
        Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap_err().to_string()
    };
    let missing: Vec<_> = tensors
        .iter()
        .filter(|(n, _)| n != "model.norm.weight")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    assert!(load_err(&missing).contains("model.norm.weight"));
    let mut wrong: Vec<_> = missing.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    wrong.push(("model.norm.weight".into(), Tensor::ones([63], (Kind::Float, Device::Cpu))));
    let e = load_err(&wrong);
    assert!(e.contains("model.norm.weight") && e.contains("[63]"), "{e}");
    let mut extra: Vec<_> = tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    extra.push(("model.layers.2.mlp.up_proj.weight".into(), Tensor::ones([1], (Kind::Float, Device::Cpu))));
    assert!(load_err(&extra).contains("model.layers.2.mlp.up_proj.weight"));
    // Truncated file.
    write_tensors(&dir, &tensors, Kind::Float, usize::MAX).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
