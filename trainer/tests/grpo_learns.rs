//! GRPO raises the reward of a tiny SFT-warmed model on the coloured-box set (stage-1 reward,
//! 2D IoU), with the KL to the reference staying bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use monovlm_trainer::grpo::reward::{RewardConfig, RewardKind};
use monovlm_trainer::grpo::{GrpoConfig, Reference, grounding_scorer, grpo_step};
use monovlm_trainer::model::Qwen25Vl;
use monovlm_trainer::train::optim::{AdamW, AdamWConfig};
use monovlm_trainer::train::sft::{SftConfig, train_sft, validate};
use tch::{Device, Kind};

#[test]
fn grpo_raises_the_reward_of_an_sft_warmed_model() {
    tch::set_num_threads(2);
    let tokenizer = common::tokenizer();
    let (mut model, ids) = common::tiny_model(&tokenizer, 7);
    let train = common::examples(&tokenizer, 0, 256, 11);
    let val = common::examples(&tokenizer, 1000, 32, 12);
    let sft = SftConfig {
        steps: 400,
        batch_size: 8,
        lr: 2e-3,
        warmup_steps: 20,
        eval_every: 0,
        max_new_tokens: 96,
        ..SftConfig::default()
    };
    train_sft(&mut model, &tokenizer, &train, &[], &sft, ids.pad, |_| {}).unwrap();
    let before = validate(&model, &tokenizer, &val, 96, ids.pad).unwrap();

    // The reference: a frozen copy of the warmed model.
    let dir = std::env::temp_dir().join(format!("monovlm-grpo-ref-{}", std::process::id()));
    let meta = monovlm_trainer::checkpoint::MonovlmMeta::new(&Default::default());
    let opts = monovlm_trainer::checkpoint::SaveOptions {
        dtype: Kind::Float,
        tokenizer_from: None,
        meta: &meta,
        train: None,
        max_shard_bytes: usize::MAX,
    };
    monovlm_trainer::checkpoint::save(&mut model, &dir, opts).unwrap();
    let reference = Reference::Frozen(Box::new(Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();

    let cfg = GrpoConfig {
        group_size: 8,
        prompts_per_step: 4,
        max_new_tokens: 96,
        updates_per_rollout: 2,
        ..GrpoConfig::default()
    };
    let reward = RewardConfig { kind: RewardKind::Iou2d, w_fmt: 0.1 };
    let mut opt = AdamW::new(model.params(), AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() });
    let steps = 40;
    let mut rewards = Vec::new();
    let mut max_kl: f64 = 0.0;
    let t0 = std::time::Instant::now();
    for step in 0..steps {
        let prompts: Vec<_> = (0..cfg.prompts_per_step)
            .map(|i| &train[(step * cfg.prompts_per_step + i) % train.len()])
            .collect();
        tch::manual_seed(1000 + step as i64);
        let mut score = grounding_scorer(&tokenizer, &reward);
        let m = grpo_step(
            &model,
            &reference,
            &mut opt,
            3e-4,
            &prompts,
            &[ids.im_end],
            &mut score,
            &cfg,
            step + 1,
        )
        .unwrap();
        if step % 5 == 0 {
            eprintln!(
                "step {}: reward {:.3} iou2d {:.3} kl {:.4} clip {:.3} entropy {:.3} len {:.1} zero-spread {} ({:.1} s)",
                m.step,
                m.reward,
                m.parts.iou_2d,
                m.kl,
                m.clip_frac,
                m.entropy,
                m.response_len,
                m.zero_spread_groups,
                t0.elapsed().as_secs_f64()
            );
        }
        rewards.push(m.reward);
        max_kl = max_kl.max(m.kl);
    }
    let after = validate(&model, &tokenizer, &val, 96, ids.pad).unwrap();
    let first: f64 = rewards[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = rewards[steps - 10..].iter().sum::<f64>() / 10.0;
    eprintln!(
        "rollout reward {first:.3} -> {last:.3}; greedy val before {before:?} after {after:?}; max KL {max_kl:.4}"
    );
    assert!(last > first + 0.03, "mean rollout reward did not rise: {first:.3} -> {last:.3}");
    assert!(max_kl < 0.5, "KL grew to {max_kl}");
}
