//! A tiny model trained from scratch by SFT learns to box one coloured object: its loss falls and
//! its greedy answers, parsed by the protocol, reach > 0.9 2D Acc@0.5 on held-out images.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use monovlm_trainer::train::sft::{SftConfig, train_sft, validate};

#[test]
fn sft_learns_to_box_a_coloured_object() {
    tch::set_num_threads(2);
    let tokenizer = common::tokenizer();
    let (mut model, ids) = common::tiny_model(&tokenizer, 7);
    let train = common::examples(&tokenizer, 0, 256, 11);
    let val = common::examples(&tokenizer, 1000, 40, 12);
    let before = validate(&model, &tokenizer, &val[..4], 96).unwrap();
    let cfg = SftConfig {
        steps: 1200,
        batch_size: 8,
        lr: 2e-3,
        warmup_steps: 50,
        eval_every: 0,
        max_new_tokens: 96,
        ..SftConfig::default()
    };
    let t0 = std::time::Instant::now();
    let log = train_sft(&mut model, &tokenizer, &train, &val, &cfg, ids.pad, |l| {
        if l.step % 100 == 0 || l.val.is_some() {
            eprintln!(
                "step {} loss {:.4} lr {:.2e} grad {:.2} {:.0} tok/s {:?}",
                l.step, l.loss, l.lr, l.grad_norm, l.tokens_per_s, l.val
            );
        }
    })
    .unwrap();
    eprintln!("trained in {:.1} s; before: {before:?}", t0.elapsed().as_secs_f64());
    let first: f64 = log[..10].iter().map(|l| l.loss).sum::<f64>() / 10.0;
    let last: f64 = log[log.len() - 10..].iter().map(|l| l.loss).sum::<f64>() / 10.0;
    assert!(last < 0.2 * first, "loss fell from {first:.3} to {last:.3} only");
    let val_metrics = log.last().unwrap().val.clone().unwrap();
    assert_eq!(val_metrics.format_pct, 100.0, "{val_metrics:?}");
    assert!(val_metrics.acc2d_050_pct > 90.0, "{val_metrics:?}");
}
