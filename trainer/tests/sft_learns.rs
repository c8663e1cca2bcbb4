//! A tiny model trained from scratch by SFT learns to box one coloured object: its loss falls and
//! its greedy answers, parsed by the protocol, box most held-out images (2D Acc@0.5 > 25%), and its
//! answers come to depend on the image (another image's answer loss is higher).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use monovlm_trainer::train::sft::{SftConfig, train_sft, validate};

/// Held by each test of this file: libtorch's intra-op thread pool is shared, and training beside
/// another test's tensor work splits its reductions differently, so the trained model (hence its
/// metrics) would depend on what ran alongside. Alone, a run is deterministic on a given machine:
/// here it scores format 97.5% / 2D Acc@0.5 77.5% every time, and 92.5% / 92.5% beside the other
/// test.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn sft_learns_to_box_a_coloured_object() {
    let _alone = ALONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::set_num_threads(2);
    let tokenizer = common::tokenizer();
    let (mut model, ids) = common::tiny_model(&tokenizer, 7);
    let (train, val) = common::train_val(&tokenizer, 256, 40, 11);
    let before = validate(&model, &tokenizer, &val[..4], 96, ids.pad).unwrap();
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
    // Observed 2D Acc@0.5 64-98% over earlier runs with different seeds and kernels, then 57.5% and
    // 30% in two clean-clone CI runs of the same commit (final loss 0.083 and 0.118). Those runs
    // trained beside the other test of this file, which changes libtorch's reductions (see
    // `ALONE`); on 40 val images the 2D accuracy swings widely with such changes. Run alone here it
    // is 77.5%. The bar is what every run cleared, far above the 0% of the untrained model; the
    // image-gain check below is the sharper one (0.23-0.49 nats/token in those runs).
    assert!(val_metrics.format_pct >= 95.0, "{val_metrics:?}");
    assert!(val_metrics.acc2d_050_pct > 25.0, "{val_metrics:?}");
    // The boxes come from the image: another image makes the same answers much less likely.
    let image = val_metrics.image.unwrap();
    assert_eq!(image.examples, val.len());
    assert!(image.gain() > 0.1, "{image:?}");
    assert!(image.gain() > before.image.unwrap().gain() + 0.1, "before {:?}, after {image:?}", before.image);
}

#[test]
fn image_reliance_pairs_other_scenes_and_is_independent_of_the_batch_size() {
    use monovlm_trainer::train::grounding::{Example, image_reliance};
    let _alone = ALONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::set_num_threads(2);
    let tokenizer = common::tokenizer();
    let (model, ids) = common::tiny_model(&tokenizer, 3);
    let examples = common::examples(&tokenizer, 0, 6, 5);
    let one = image_reliance(&model, &examples, ids.pad, 1).unwrap();
    let all = image_reliance(&model, &examples, ids.pad, 6).unwrap();
    assert_eq!(one.examples, 6);
    assert!(one.answer_loss.is_finite() && one.answer_loss_other_image.is_finite(), "{one:?}");
    // A token-weighted mean: batching (and its padding) changes nothing.
    assert!((one.answer_loss - all.answer_loss).abs() < 1e-4, "{one:?} vs {all:?}");
    assert!((one.answer_loss_other_image - all.answer_loss_other_image).abs() < 1e-4, "{one:?} vs {all:?}");
    // One scene only: nothing to swap in.
    let same_scene: Vec<Example> = examples
        .iter()
        .map(|e| Example {
            record: e.record.clone(),
            prompt: e.prompt.clone(),
            target: e.target.clone(),
            image: std::sync::Arc::clone(&examples[0].image),
        })
        .collect();
    assert!(image_reliance(&model, &same_scene, ids.pad, 4).is_err());
    assert!(image_reliance(&model, &examples, ids.pad, 0).is_err());
}
