//! On a configuration no fixture covers (no grouped heads, other rotary sections, no full-attention
//! vision block, untied head), the fused decoder (`GroupQueryAttention`) and the plain-operator one
//! (explicit masks) compute the same logits, for a one-shot prompt and for a prompt prefilled in two
//! chunks over the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use monovlm_exporter::Precision;
use monovlm_exporter::package::{ExportOptions, GraphFiles, export};
use monovlm_exporter::synthetic::{bench_config, write_random_checkpoint};
use monovlm_exporter::validate::{PackageSessions, max_abs_diff, synthetic_prompt};
use monovlm_runtime::preprocess;

/// Two f32 implementations of the same function: reassociation-level differences only.
const TOL: f32 = 1e-4;

#[test]
fn fused_and_plain_decoders_agree_one_shot_and_chunked() {
    let mut cfg = bench_config();
    cfg.text.vocab_size = 600;
    cfg.text.hidden_size = 96;
    cfg.text.num_attention_heads = 3;
    cfg.text.num_key_value_heads = 3; // plain multi-head attention
    cfg.text.intermediate_size = 80; // not a multiple of the 4-bit block
    cfg.text.num_hidden_layers = 2;
    cfg.text.mrope_section = [4, 6, 6];
    cfg.vision.depth = 2;
    cfg.vision.hidden_size = 32;
    cfg.vision.num_heads = 2;
    cfg.vision.intermediate_size = 48;
    cfg.vision.fullatt_block_indexes = vec![];
    cfg.vision.out_hidden_size = 96;
    cfg.tie_word_embeddings = false;
    (cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id, cfg.video_token_id) =
        (590, 591, 592, 593);
    cfg.eos_token_ids = vec![594];
    cfg.pad_token_id = Some(595);

    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_random_checkpoint(&ckpt, &cfg, 3).unwrap();
    let pkg = tmp.path().join("pkg");
    let opts = ExportOptions { with_plain_decoder: true, ..ExportOptions::default() };
    export(&ckpt, &pkg, &opts, &mut |_| {}).unwrap();

    let files = GraphFiles::for_precision(Precision::Fp32);
    let mut fused = PackageSessions::open(&pkg, &files, 1).unwrap();
    let plain_path = pkg.join(GraphFiles::plain_decoder(Precision::Fp32));
    let mut plain = PackageSessions::open(&pkg, &files, 1).unwrap().with_decoder(&plain_path, 1).unwrap();

    let grid = [1, 6, 10]; // an 84x140 image: windows of 3x4 and 3x1 merged tokens
    let (ids, pixels) = synthetic_prompt(fused.config(), grid, 5);
    let a = fused.generate_greedy(&ids, &pixels, &[grid], 4).unwrap();
    let b = plain.generate_greedy(&ids, &pixels, &[grid], 4).unwrap();
    let (diff, scale) = max_abs_diff(&a.prefill_logits, &b.prefill_logits);
    assert!(diff < TOL * scale.max(1.0), "one-shot prompt: {diff} (scale {scale})");
    assert_eq!(a.tokens, b.tokens);

    // The same prompt in two chunks over the cache, through each decoder.
    let d = cfg.text.hidden_size as usize;
    let mut embeds = fused.embed(&ids).unwrap();
    let rows: Vec<usize> =
        ids.iter().enumerate().filter(|&(_, &t)| t == cfg.image_token_id).map(|(i, _)| i).collect();
    for (k, &r) in rows.iter().enumerate() {
        embeds[r * d..(r + 1) * d].copy_from_slice(&a.image_features[k * d..(k + 1) * d]);
    }
    let rope = preprocess::rope_index_tokens(&ids, cfg.image_token_id, &[grid]).unwrap();
    let s = ids.len();
    let split = s / 2;
    let positions = |range: std::ops::Range<usize>| -> Vec<i64> {
        (0..3)
            .flat_map(|row| range.clone().map(move |i| (row, i)))
            .map(|(row, i)| rope.position_ids[[row, i]])
            .collect()
    };
    for (label, sessions) in [("fused", &mut fused), ("plain", &mut plain)] {
        let mut cache = sessions.empty_cache().unwrap();
        let first = sessions.decode(embeds[..split * d].to_vec(), positions(0..split), &mut cache).unwrap();
        let second = sessions.decode(embeds[split * d..].to_vec(), positions(split..s), &mut cache).unwrap();
        assert_eq!(cache.len(), s);
        let chunked: Vec<f32> = first.into_iter().chain(second).collect();
        let (diff, scale) = max_abs_diff(&chunked, &a.prefill_logits);
        assert!(diff < TOL * scale.max(1.0), "{label}, chunked prefill: {diff} (scale {scale})");
    }
}
