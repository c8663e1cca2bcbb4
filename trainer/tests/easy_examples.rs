//! Zoomed crops around the described object: geometry kept, object enlarged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use monovlm_runtime::preprocess::PreprocessConfig;
use monovlm_runtime::protocol::PromptLayout;
use monovlm_trainer::data::mono3drefer::{Dataset, Split, Strictness};
use monovlm_trainer::data::synth::{self, SynthConfig};
use monovlm_trainer::train::grounding::{ExampleFormat, build_crop_examples};

#[test]
fn zoomed_crops_keep_the_geometry_and_enlarge_the_object() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("easy_examples_crops");
    let _ = std::fs::remove_dir_all(&root);
    synth::generate(&SynthConfig { images: 6, seed: 5, ..SynthConfig::default() }, &root, &|| {}).unwrap();
    let dataset = Dataset::load(&root, Strictness::Strict).unwrap();
    let tok = common::tokenizer();
    let format = ExampleFormat {
        preprocess: PreprocessConfig { max_pixels: 62720, ..PreprocessConfig::default() },
        layout: PromptLayout::TextFirst,
    };
    let records = dataset.records(Split::Train);
    let n = records.len() + 3; // cycles past the end
    let zoom = (2.0, 3.0);
    let crops = build_crop_examples(&dataset, Split::Train, &tok, &format, n, zoom, 1, || {}).unwrap();
    assert_eq!(crops.len(), n);
    let mut enlarged = 0;
    for (crop, record) in crops.iter().zip(records.iter().cycle()) {
        assert_eq!(crop.record.description, record.description);
        assert_eq!(crop.record.box3d, record.box3d, "a crop does not move the camera");
        let full = dataset.intrinsics(&record.image).unwrap();
        let k = &crop.image.intrinsics;
        let m = crop.image.resize_map;
        // Same aspect ratio as the frame (to the pixel), hence the same patch grid at these sizes.
        let crop_w = (f64::from(k.width()) + 0.5) / m.sx - 0.5;
        let crop_h = (f64::from(k.height()) + 0.5) / m.sy - 0.5;
        let aspect = f64::from(full.width()) / f64::from(full.height());
        assert!((crop_w / crop_h - aspect).abs() < 0.05, "{crop_w}x{crop_h} vs {aspect}");
        // The object's box, whole in the crop, sits at the same normalised image coordinates
        // ((u - cx) / fx) in the crop's model input as in the full frame: the intrinsics follow.
        let (b, c) = (record.label.bbox, crop.image.resize_map.map_box(&crop.record.label.bbox));
        let inside = (crop.record.label.bbox.width() - b.width()).abs() < 1e-9
            && (crop.record.label.bbox.height() - b.height()).abs() < 1e-9;
        if inside {
            for (u_full, u_crop) in [(b.x1, c.x1), (b.x2, c.x2)] {
                let (a, z) = ((u_full - full.cx()) / full.fx(), (u_crop - k.cx()) / k.fx());
                assert!((a - z).abs() < 2.0 / k.fx(), "{a} vs {z}");
            }
            for (v_full, v_crop) in [(b.y1, c.y1), (b.y2, c.y2)] {
                let (a, z) = ((v_full - full.cy()) / full.fy(), (v_crop - k.cy()) / k.fy());
                assert!((a - z).abs() < 2.0 / k.fy(), "{a} vs {z}");
            }
            let need = b.width().max(b.height() * aspect);
            if crop_w < f64::from(full.width()) - 1.0 && crop_w > 64.0 * aspect + 1.0 {
                // Not clamped: the crop is zoom.0..zoom.1 times what the object needs.
                assert!(
                    crop_w >= zoom.0 * need - 1.0 && crop_w <= zoom.1 * need + 1.0,
                    "{crop_w} for {need}"
                );
                enlarged += 1;
            }
        }
    }
    assert!(enlarged > n / 2, "only {enlarged} of {n} crops were zoomed");
    for bad in [(0.0, 2.0), (3.0, 2.0), (1.0, f64::INFINITY), (f64::NAN, 2.0)] {
        assert!(
            build_crop_examples(&dataset, Split::Train, &tok, &format, 1, bad, 1, || {}).is_err(),
            "{bad:?}"
        );
    }
}
