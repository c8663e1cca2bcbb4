//! Shared by the learning tests: a synthetic set of images holding one red box, with answers in
//! the protocol's format, and a tokenizer for it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, missing_docs)]

use std::sync::Arc;

use monovlm_calib::kitti::KittiLabel;
use monovlm_calib::synth::SplitMix64;
use monovlm_calib::{Box2d, Intrinsics};
use monovlm_runtime::preprocess::{PreprocessConfig, ResizedImage};
use monovlm_runtime::protocol::{self, Answer, PromptLayout, Query, tokens};
use monovlm_trainer::data::mono3drefer::{Record, SampleKey};
use monovlm_trainer::model::Qwen25Vl;
use monovlm_trainer::model::presets::{ModelSize, SpecialIds};
use monovlm_trainer::tokenizer::train_bpe;
use monovlm_trainer::train::grounding::{Example, encode};
use tch::{Device, Kind};

pub const SIDE: u32 = 112;

pub fn example(i: u64, rng: &mut SplitMix64, tokenizer: &tokenizers::Tokenizer) -> Example {
    let (w, h) = (rng.range(36.0, 72.0).round(), rng.range(36.0, 72.0).round());
    let (x1, y1) = (rng.range(0.0, f64::from(SIDE) - w).round(), rng.range(0.0, f64::from(SIDE) - h).round());
    let bbox = Box2d { x1, y1, x2: x1 + w, y2: y1 + h };
    let mut img = image::RgbImage::from_pixel(SIDE, SIDE, image::Rgb([90, 90, 90]));
    for y in y1 as u32..(y1 + h) as u32 {
        for x in x1 as u32..(x1 + w) as u32 {
            img.put_pixel(x, y, image::Rgb([220, 40, 40]));
        }
    }
    let k = Intrinsics::new(100.0, 100.0, 56.0, 56.0, SIDE, SIDE).unwrap();
    let pre = PreprocessConfig { min_pixels: 56 * 56, max_pixels: 112 * 112, ..PreprocessConfig::default() };
    let image = Arc::new(ResizedImage::new(&img, &k, &pre).unwrap());
    let label = KittiLabel {
        class: "Car".into(),
        truncated: 0.0,
        occluded: 0,
        alpha: 0.0,
        bbox,
        hwl_m: [1.5, 1.6, 3.9],
        location_m: [0.0, 1.5, 10.0],
        rotation_y: 0.0,
        score: None,
    };
    let record =
        Record::new("000000", SampleKey { instance_id: i, ann_id: 0 }, "car", "the red box", label).unwrap();
    let query = Query::new(&record.description).unwrap();
    let prompt =
        protocol::chat_prompt(&query, &image.intrinsics, image.num_image_tokens, PromptLayout::ImageFirst);
    let answer = Answer { bbox_2d: image.resize_map.map_box(&bbox), bbox_3d: record.box3d };
    let target = format!("{}{}", protocol::format_answer(&answer), tokens::IM_END);
    Example {
        prompt: encode(tokenizer, &prompt).unwrap(),
        target: encode(tokenizer, &target).unwrap(),
        record,
        image,
    }
}

/// A BPE for the protocol's text (single-digit numbers, Qwen special tokens).
pub fn tokenizer() -> tokenizers::Tokenizer {
    let corpus: Vec<String> = (0..200)
        .map(|i| {
            let k = Intrinsics::new(100.0, 100.0, 56.0, 56.0, SIDE, SIDE).unwrap();
            let q = Query::new("the red box").unwrap();
            format!(
                "{} <answer>{{\"bbox_2d\": [{i}, 1, 2, 3], \"bbox_3d\": [0.00, 0.75, 10.00, 3.90, 1.60, 1.50, 0.00]}}</answer>",
                protocol::chat_prompt(&q, &k, 4, PromptLayout::ImageFirst)
            )
        })
        .collect();
    train_bpe(corpus.into_iter(), 400, 2).unwrap()
}

/// A random tiny model for `tokenizer` and its special ids.
pub fn tiny_model(tokenizer: &tokenizers::Tokenizer, seed: i64) -> (Qwen25Vl, SpecialIds) {
    let ids = SpecialIds::of(tokenizer).unwrap();
    let config = ModelSize::tiny().config(i64::from(tokenizer.get_vocab_size(true) as u32), &ids);
    (Qwen25Vl::random(&config, Device::Cpu, Kind::Float, seed).unwrap(), ids)
}

/// `n` examples from `seed`, instance ids from `first_id`.
pub fn examples(tokenizer: &tokenizers::Tokenizer, first_id: u64, n: u64, seed: u64) -> Vec<Example> {
    let mut rng = SplitMix64::new(seed);
    (first_id..first_id + n).map(|i| example(i, &mut rng, tokenizer)).collect()
}

/// `n_train` then `n_val` examples drawn from one stream seeded by `seed` (instance ids from 0 and
/// from 1000): the validation images are new ones.
pub fn train_val(
    tokenizer: &tokenizers::Tokenizer,
    n_train: u64,
    n_val: u64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let mut rng = SplitMix64::new(seed);
    let train = (0..n_train).map(|i| example(i, &mut rng, tokenizer)).collect();
    let val = (1000..1000 + n_val).map(|i| example(i, &mut rng, tokenizer)).collect();
    (train, val)
}
