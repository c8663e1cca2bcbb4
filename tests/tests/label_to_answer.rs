//! Across crates: a KITTI ground-truth object becomes the answer the model is trained to write for a
//! resized model-input image, is parsed back, and is mapped to camera pixels as the runtime will do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use monovlm_calib::kitti::{KittiCalib, parse_labels};
use monovlm_calib::{iou_2d, iou_3d};
use monovlm_runtime::protocol::{Answer, PromptLayout, Query, chat_prompt, format_answer, parse_answer};

/// `training/calib/000000.txt`, P2 only (the rest is not needed here).
const P2_000000: &str = "P0: 7.070493e+02 0 6.040814e+02 0 0 7.070493e+02 1.805066e+02 0 0 0 1 0
P1: 7.070493e+02 0 6.040814e+02 -3.797842e+02 0 7.070493e+02 1.805066e+02 0 0 0 1 0
P2: 7.070493e+02 0 6.040814e+02 4.575831e+01 0 7.070493e+02 1.805066e+02 -3.454157e-01 0 0 1 4.981016e-03
P3: 7.070493e+02 0 6.040814e+02 -3.341081e+02 0 7.070493e+02 1.805066e+02 2.330660e+00 0 0 1 3.201153e-03
";

/// Two objects in KITTI's label format: frame 000000's pedestrian, and the Mono3DRefer example
/// record's car (its `label_2` list written as a KITTI line).
const LABELS: &str = "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01
Car 0.00 0 -1.58 587.00 173.30 614.10 200.10 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59";

#[test]
fn ground_truth_survives_the_answer_protocol_through_a_resize() {
    let camera = KittiCalib::parse(P2_000000, "000000.txt").unwrap().intrinsics(2, 1224, 370).unwrap();
    // The model sees a smaller image (multiples of 28, as the Qwen2.5-VL processor makes them).
    let (model_input, map) = camera.resized(616, 196).unwrap();
    let query = Query::new("the pedestrian on the right").unwrap();
    let prompt = chat_prompt(&query, &model_input, 4, PromptLayout::TextFirst);
    assert!(prompt.contains("616x196"));

    for label in parse_labels(LABELS, "labels").unwrap() {
        let box3d = label.box3d().unwrap();
        let truth = Answer { bbox_2d: map.map_box(&label.bbox), bbox_3d: box3d };
        let parsed = parse_answer(&format!("<think>...</think>{}", format_answer(&truth))).unwrap();

        // 3D: rounding to centimetres and 0.01 rad leaves the box essentially unchanged.
        assert!(iou_3d(&parsed.bbox_3d, &box3d) > 0.97, "{}: {:?}", label.class, parsed.bbox_3d);
        // 2D: whole pixels of the half-size image are within ~1 camera pixel after mapping back.
        let back = map.unmap_box(&parsed.bbox_2d);
        for (b, t) in back.to_array().iter().zip(label.bbox.to_array()) {
            assert!((b - t).abs() <= 1.01, "{}: {back:?} vs {:?}", label.class, label.bbox);
        }
        // The 3D box, projected with the model-input intrinsics and mapped back, lands where the
        // camera intrinsics project it.
        let via_model = map.unmap_box(&box3d.project_to_box2d(&model_input).unwrap());
        let direct = box3d.project_to_box2d(&camera).unwrap();
        assert!(iou_2d(&via_model, &direct) > 0.999);
    }
}
