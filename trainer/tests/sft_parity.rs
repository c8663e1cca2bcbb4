//! Five SFT steps from the same initial weights match transformers + torch (fixture from
//! `scripts/reference/qwen_sft_fixture.py`): AdamW, warm-up + cosine schedule, gradient clipping,
//! answer-only shifted loss, on a padded batch of two sequences with an image each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use monovlm_runtime::model_config::canonical_tensor_name;
use monovlm_trainer::model::weights::read_tensors;
use monovlm_trainer::model::{IGNORE_INDEX, Qwen25Vl};
use monovlm_trainer::train::optim::{AdamW, AdamWConfig, CosineSchedule, clip_grad_norm};
use monovlm_trainer::train::{Batch, Sequence, causal_lm_loss};
use tch::{Device, Kind};

#[test]
fn five_sft_steps_match_torch() {
    tch::set_num_threads(1);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen25vl/tiny_a");
    let model = Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let io = read_tensors(&[dir.join("io.safetensors")]).unwrap();
    let fx = read_tensors(&[dir.join("sft.safetensors")]).unwrap();
    let grid: Vec<i64> = Vec::try_from(io["image_grid_thw"].reshape([-1])).unwrap();
    let grid = [grid[0] as usize, grid[1] as usize, grid[2] as usize];

    let ids = &fx["input_ids"];
    let labels = &fx["labels"];
    let mut seqs = Vec::new();
    for r in 0..2 {
        let row: Vec<i64> = Vec::try_from(ids.get(r)).unwrap();
        let lab: Vec<i64> = Vec::try_from(labels.get(r)).unwrap();
        let first = lab.iter().position(|&x| x != IGNORE_INDEX).unwrap();
        let end = lab.iter().rposition(|&x| x != IGNORE_INDEX).unwrap() + 1;
        seqs.push(Sequence {
            prompt: row[..first].to_vec(),
            target: row[first..end].to_vec(),
            pixel_values: Some(io["pixel_values"].shallow_clone()),
            grids: vec![grid],
        });
    }
    let batch = Batch::new(&model, &seqs, 505).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(batch.input_ids.reshape([-1])).unwrap(),
        Vec::<i64>::try_from(ids.reshape([-1])).unwrap()
    );
    assert_eq!(batch.target_tokens(), 21);

    let schedule = CosineSchedule { peak_lr: 1e-3, warmup_steps: 2, total_steps: 5 };
    let mut opt =
        AdamW::new(model.params(), AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
    let want_loss: Vec<f32> = Vec::try_from(&fx["losses"]).unwrap();
    let want_norm: Vec<f32> = Vec::try_from(&fx["grad_norms"]).unwrap();
    let want_lr: Vec<f32> = Vec::try_from(&fx["lrs"]).unwrap();
    for step in 0..5 {
        model.params().zero_grad();
        let loss = causal_lm_loss(&model, &batch).unwrap();
        loss.backward();
        let norm = clip_grad_norm(model.params(), 1.0).unwrap();
        let lr = schedule.lr(step);
        let l = loss.double_value(&[]);
        eprintln!(
            "step {step}: loss {l:.6} (torch {:.6}), grad norm {norm:.5} (torch {:.5}), lr {lr}",
            want_loss[step], want_norm[step]
        );
        assert!((l - f64::from(want_loss[step])).abs() < 1e-4, "step {step} loss {l} vs {}", want_loss[step]);
        assert!(
            (norm - f64::from(want_norm[step])).abs() < 1e-3,
            "step {step} grad norm {norm} vs {}",
            want_norm[step]
        );
        assert!((lr - f64::from(want_lr[step])).abs() < 1e-9);
        opt.step(model.params(), lr).unwrap();
    }
    let mut worst = (0.0f64, String::new());
    let mut compared = 0;
    for (name, want) in fx.iter().filter_map(|(k, v)| k.strip_prefix("final.").map(|n| (n, v))) {
        let ours = &model.params().get(&canonical_tensor_name(name)).unwrap().tensor;
        let d = (ours.detach() - want).abs().max().double_value(&[]);
        if d > worst.0 {
            worst = (d, name.to_owned());
        }
        compared += 1;
    }
    eprintln!("final weights: {compared} tensors, max abs diff {:.2e} ({})", worst.0, worst.1);
    assert_eq!(compared, model.params().params().len());
    assert!(worst.0 < 1e-4, "final weights differ by {} at {}", worst.0, worst.1);
}
