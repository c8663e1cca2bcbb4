//! The referring-pointer loss: its value against a hand computation, and SFT with it learns to
//! point at the object while the answers keep training.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use monovlm_trainer::train::pointer::{PointerHead, pointer_layer};
use monovlm_trainer::train::sft::{SftConfig, train_sft};
use tch::{Kind, Tensor};

#[test]
fn the_pointer_reads_the_middle_layer() {
    assert_eq!(pointer_layer(1), 0);
    assert_eq!(pointer_layer(2), 0);
    assert_eq!(pointer_layer(6), 2);
    assert_eq!(pointer_layer(28), 13);
}

#[test]
fn pointer_loss_is_the_cross_entropy_over_the_rows_image_tokens() {
    let tokenizer = common::tokenizer();
    let (model, ids) = common::tiny_model(&tokenizer, 1);
    tch::manual_seed(4);
    let head = PointerHead::new(&model).unwrap();
    let w = head.store.params()[0].tensor.detach();
    let d = model.config().text.hidden_size;
    // Two rows: image tokens at positions 1-4 of row 0 and 2-3 of row 1.
    let img = ids.image_pad;
    let input_ids = Tensor::from_slice(&[5, img, img, img, img, 6, 5, 6, img, img, 7, 7]).reshape([2, 6]);
    let residual = Tensor::randn([2, 6, d], (Kind::Float, tch::Device::Cpu)) * 3.0;
    let referred = vec![vec![1, 3], vec![0]];
    let got =
        head.loss(&[residual.shallow_clone(), residual.shallow_clone()], &input_ids, &referred).unwrap();
    // By hand: RMS-normalise, score, softmax over the row's image tokens, minus the log of the
    // mass on the referred ones.
    let score = |r: i64, p: i64| {
        let x = residual.get(r).get(p);
        let rms = (x.square().mean(Kind::Float).double_value(&[]) + 1e-6).sqrt();
        (x / rms).dot(&w).double_value(&[])
    };
    let row_loss = |r: i64, positions: &[i64], picked: &[usize]| {
        let s: Vec<f64> = positions.iter().map(|&p| score(r, p)).collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + s.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let mass: f64 = picked.iter().map(|&i| (s[i] - lse).exp()).sum();
        -mass.ln()
    };
    let want = 0.5 * (row_loss(0, &[1, 2, 3, 4], &referred[0]) + row_loss(1, &[2, 3], &referred[1]));
    assert!((got.double_value(&[]) - want).abs() < 1e-4, "{} vs {want}", got.double_value(&[]));
    // An index past the row's image tokens is an error, not a panic.
    assert!(head.loss(&[residual.shallow_clone()], &input_ids, &[vec![4], vec![0]]).is_err());
    assert!(head.loss(&[residual], &input_ids, &[vec![], vec![]]).is_err());
}

#[test]
fn sft_with_the_pointer_learns_to_point_at_the_object() {
    tch::set_num_threads(2);
    let tokenizer = common::tokenizer();
    let (mut model, ids) = common::tiny_model(&tokenizer, 7);
    let (train, _) = common::train_val(&tokenizer, 128, 0, 11);
    // The red box covers 36-72 px of 112: several of the 16 image tokens.
    assert!(train.iter().all(|e| !e.referred_tokens().is_empty() && e.referred_tokens().len() < 16));
    let cfg = SftConfig { steps: 200, lr: 2e-3, eval_every: 0, pointer_weight: 1.0, ..SftConfig::default() };
    let log = train_sft(&mut model, &tokenizer, &train, &[], &cfg, ids.pad, |_| {}).unwrap();
    let mean = |ls: &[monovlm_trainer::train::sft::SftLogLine],
                f: fn(&monovlm_trainer::train::sft::SftLogLine) -> f64| {
        ls.iter().map(f).sum::<f64>() / ls.len() as f64
    };
    let (p0, p1) =
        (mean(&log[..10], |l| l.pointer_loss.unwrap()), mean(&log[190..], |l| l.pointer_loss.unwrap()));
    let (a0, a1) = (mean(&log[..10], |l| l.loss), mean(&log[190..], |l| l.loss));
    // Uniform scores over 16 tokens with k referred give ln(16 / k), about 0.6-2; pointing gives 0.
    assert!(p1 < 0.3 * p0 && p1 < 0.3, "pointer loss {p0:.3} -> {p1:.3}");
    assert!(a1 < 0.5 * a0, "answer loss {a0:.3} -> {a1:.3}");
}
