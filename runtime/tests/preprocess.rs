//! `runtime::preprocess` against golden outputs of the real transformers code
//! (`scripts/reference/qwen_preprocess_fixture.py`: transformers 5.23 `Qwen2VLImageProcessorPil`,
//! Pillow 13 bicubic, `vision_utils` and `Qwen2_5_VLModel.get_rope_index` on torch 2.15).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use image::RgbImage;
use monovlm_calib::{Intrinsics, Point2, Point3};
use monovlm_runtime::Error;
use monovlm_runtime::preprocess::{
    MAX_ASPECT_RATIO, PATCH_ROW_LEN, PreprocessConfig, RESIZE_FACTOR_PX, ResizedImage, cu_seqlens,
    preprocess_image, preprocess_image_reusing, resize_bicubic, rope_index, smart_resize,
    vision_position_ids, window_index,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const FIXTURE_JSON: &str = include_str!("fixtures/qwen_preprocess.json");
const FIXTURE_TENSORS: &[u8] = include_bytes!("fixtures/qwen_preprocess.safetensors");

/// Resized 8-bit values differ from Pillow's by this many grey levels (at most). Zero: the resize is
/// Pillow's arithmetic step for step (same f64 coefficients, same 22-bit fixed point, same rounding).
const MAX_GREY_LEVEL_DIFF: u8 = 0;
/// `pixel_values` may differ from the processor's by this much. Zero: the normalisation is numpy's
/// f64 rescale then f32 `(x - mean) / std`, evaluated in the same order.
const PIXEL_VALUE_TOL: f32 = 0.0;
/// Row sums are f64 sums of the same f32 values in another order (numpy sums pairwise).
const ROW_SUM_TOL: f64 = 1e-9;

fn tensors() -> SafeTensors<'static> {
    SafeTensors::deserialize(FIXTURE_TENSORS).unwrap()
}

fn meta() -> Value {
    serde_json::from_str(FIXTURE_JSON).unwrap()
}

fn f32s(t: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = t.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(v.dtype(), Dtype::F32, "{name}");
    (
        v.shape().to_vec(),
        v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
    )
}

fn f64s(t: &SafeTensors<'_>, name: &str) -> Vec<f64> {
    let v = t.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(v.dtype(), Dtype::F64, "{name}");
    v.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn i64s(t: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<i64>) {
    let v = t.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(v.dtype(), Dtype::I64, "{name}");
    (
        v.shape().to_vec(),
        v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
    )
}

fn i32s(t: &SafeTensors<'_>, name: &str) -> Vec<i32> {
    let v = t.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(v.dtype(), Dtype::I32, "{name}");
    v.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn u8s(t: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<u8>) {
    let v = t.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(v.dtype(), Dtype::U8, "{name}");
    (v.shape().to_vec(), v.data().to_vec())
}

/// The fixture script's `pattern()`: wrapped gradient plus 6 bits of hashed noise.
fn pattern(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let px = |c: u32| {
            let mut h = x.wrapping_mul(2654435761).wrapping_add(y.wrapping_mul(40503)).wrapping_add(c * 97);
            h ^= h >> 15;
            h = h.wrapping_mul(2246822519);
            h ^= h >> 13;
            ((x * 3 + y * 5 + c * 85 + (h & 63)) & 255) as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    })
}

struct Case {
    name: String,
    width: u32,
    height: u32,
    config: PreprocessConfig,
    grid_thw: [usize; 3],
    resized: [usize; 2],
    full: bool,
    resized_full: bool,
}

fn cases() -> Vec<Case> {
    let m = meta();
    let u = |v: &Value| v.as_u64().unwrap() as usize;
    m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            width: u(&c["width"]) as u32,
            height: u(&c["height"]) as u32,
            config: PreprocessConfig {
                min_pixels: u(&c["min_pixels"]),
                max_pixels: u(&c["max_pixels"]),
                ..PreprocessConfig::default()
            },
            grid_thw: [u(&c["grid_thw"][0]), u(&c["grid_thw"][1]), u(&c["grid_thw"][2])],
            resized: [u(&c["resized"][0]), u(&c["resized"][1])],
            full: c["full"].as_bool().unwrap(),
            resized_full: c["resized_full"].as_bool().unwrap(),
        })
        .collect()
}

fn camera_for(width: u32, height: u32) -> Intrinsics {
    let (w, h) = (width as f64, height as f64);
    Intrinsics::new(0.9 * w, 0.85 * w, 0.48 * w, 0.53 * h, width, height).unwrap()
}

#[test]
fn fixture_covers_the_cases_we_rely_on() {
    let m = meta();
    assert_eq!(m["versions"]["transformers"], "5.23.0");
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    for want in ["tiny", "small", "medium", "down", "tall", "strip", "kitti", "hd"] {
        assert!(names.iter().any(|n| n == want), "{want}");
    }
    assert!(m["smart_resize"].as_array().unwrap().len() > 1000);
}

#[test]
fn smart_resize_equals_transformers() {
    let m = meta();
    let mut checked = 0;
    for row in m["smart_resize"].as_array().unwrap() {
        let u = |k: &str| row[k].as_u64().unwrap() as usize;
        let (h, w, lo, hi) = (u("height"), u("width"), u("min_pixels"), u("max_pixels"));
        let got = smart_resize(h, w, RESIZE_FACTOR_PX, lo, hi);
        match &row["out"] {
            Value::Array(out) => {
                let want = (out[0].as_u64().unwrap() as usize, out[1].as_u64().unwrap() as usize);
                assert_eq!(got.unwrap(), want, "{h}x{w} in [{lo}, {hi}]");
            }
            _ => {
                assert!(row["error"].as_str().unwrap().contains("aspect ratio"));
                assert!(
                    matches!(got, Err(Error::AspectRatioTooLarge { width, height, max })
                        if width == w && height == h && max == MAX_ASPECT_RATIO),
                    "{h}x{w}: {got:?}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 1000);
}

#[test]
fn smart_resize_rounds_half_to_even_and_respects_bounds() {
    // 42 / 28 = 1.5 -> 2; 70 / 28 = 2.5 -> 2 (Python's round); 98 / 28 = 3.5 -> 4.
    assert_eq!(smart_resize(42, 70, 28, 0, usize::MAX).unwrap(), (56, 56));
    assert_eq!(smart_resize(98, 98, 28, 0, usize::MAX).unwrap(), (112, 112));
    // KITTI and 720p, the frames we run on.
    assert_eq!(smart_resize(375, 1242, 28, 56 * 56, 28 * 28 * 1280).unwrap(), (364, 1232));
    assert_eq!(smart_resize(720, 1280, 28, 56 * 56, 28 * 28 * 1280).unwrap(), (728, 1288));
    // Large frames shrink under max_pixels; results are multiples of 28.
    for (h, w) in [(1080, 1920), (3000, 4000), (2160, 3840), (4096, 4096)] {
        let (rh, rw) = smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280).unwrap();
        assert!(rh * rw <= 28 * 28 * 1280 && rh % 28 == 0 && rw % 28 == 0, "{h}x{w} -> {rh}x{rw}");
    }
}

#[test]
fn resize_is_pillow_bicubic() {
    let t = tensors();
    let mut max_diff_seen = 0u8;
    for case in cases() {
        let rgb = pattern(case.width, case.height);
        let [rh, rw] = case.resized;
        let ours = resize_bicubic(&rgb, rw as u32, rh as u32).unwrap();
        if case.resized_full {
            let (shape, want) = u8s(&t, &format!("{}.resized", case.name));
            assert_eq!(shape, vec![rh, rw, 3], "{}", case.name);
            let max_diff = ours.as_raw().iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            max_diff_seen = max_diff_seen.max(max_diff);
            assert_eq!(max_diff, MAX_GREY_LEVEL_DIFF, "{}: max diff in grey levels", case.name);
        }
        let (_, sums) = i64s(&t, &format!("{}.resized_row_sums", case.name));
        let ours_sums: Vec<i64> =
            ours.as_raw().chunks_exact(rw * 3).map(|r| r.iter().map(|&v| i64::from(v)).sum()).collect();
        assert_eq!(ours_sums, sums, "{}: resized row sums", case.name);
    }
    assert_eq!(max_diff_seen, MAX_GREY_LEVEL_DIFF);
}

#[test]
fn pixel_values_equal_transformers() {
    let t = tensors();
    for case in cases() {
        let rgb = pattern(case.width, case.height);
        let camera = camera_for(case.width, case.height);
        let p = preprocess_image(&rgb, &camera, &case.config).unwrap();
        let [gt, gh, gw] = case.grid_thw;
        assert_eq!(p.grid_thw, case.grid_thw, "{}", case.name);
        assert_eq!(p.pixel_values.dim(), (gt * gh * gw, PATCH_ROW_LEN), "{}", case.name);
        assert_eq!(p.num_image_tokens, gt * gh * gw / 4, "{}", case.name);
        assert_eq!(p.input_size_px(), (case.resized[1] as u32, case.resized[0] as u32), "{}", case.name);
        let ours = p.pixel_values.as_slice().unwrap();
        if case.full {
            let (shape, want) = f32s(&t, &format!("{}.pixel_values", case.name));
            assert_eq!(shape, vec![gt * gh * gw, PATCH_ROW_LEN]);
            for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= PIXEL_VALUE_TOL, "{}[{i}]: {a} vs {b}", case.name);
            }
        } else {
            let (_, rows) = i64s(&t, &format!("{}.sample_rows", case.name));
            let (_, want) = f32s(&t, &format!("{}.pixel_values_sample", case.name));
            for (k, &r) in rows.iter().enumerate() {
                let r = r as usize;
                let a = &ours[r * PATCH_ROW_LEN..(r + 1) * PATCH_ROW_LEN];
                let b = &want[k * PATCH_ROW_LEN..(k + 1) * PATCH_ROW_LEN];
                for (j, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!((x - y).abs() <= PIXEL_VALUE_TOL, "{} row {r} [{j}]: {x} vs {y}", case.name);
                }
            }
            let sums = f64s(&t, &format!("{}.row_sums", case.name));
            assert_eq!(sums.len(), gt * gh * gw);
            for (r, (row, want)) in ours.chunks_exact(PATCH_ROW_LEN).zip(&sums).enumerate() {
                let got: f64 = row.iter().map(|&v| f64::from(v)).sum();
                assert!((got - want).abs() <= ROW_SUM_TOL * want.abs().max(1.0), "{} row {r}", case.name);
            }
        }
    }
}

/// A reused buffer is fully overwritten: NaN garbage of the right shape, a buffer of another
/// shape (replaced), a non-standard layout (replaced) and none all give the fresh result, bit for bit.
#[test]
fn reusing_a_buffer_gives_the_fresh_result() {
    for case in cases() {
        let rgb = pattern(case.width, case.height);
        let camera = camera_for(case.width, case.height);
        let fresh = preprocess_image(&rgb, &camera, &case.config).unwrap();
        let bits = |a: &ndarray::Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let want = bits(&fresh.pixel_values);
        let dim = fresh.pixel_values.dim();
        let garbage = ndarray::Array2::from_elem(dim, f32::NAN);
        let wrong_shape = ndarray::Array2::from_elem((dim.0 + 4, dim.1), 7.0f32);
        let transposed = ndarray::Array2::from_elem((dim.1, dim.0), f32::NAN).reversed_axes();
        for (what, spare) in [
            ("garbage", Some(garbage)),
            ("wrong shape", Some(wrong_shape)),
            ("transposed", Some(transposed)),
            ("none", None),
        ] {
            let got = preprocess_image_reusing(&rgb, &camera, &case.config, spare).unwrap();
            assert_eq!(got.grid_thw, fresh.grid_thw, "{} {what}", case.name);
            assert!(got.pixel_values.is_standard_layout(), "{} {what}", case.name);
            assert!(bits(&got.pixel_values) == want, "{} {what}: pixel values differ", case.name);
        }
        // The camera loop's hand-back: the previous frame's buffer (same size, another image).
        let mut previous_frame = rgb.clone();
        image::imageops::invert(&mut previous_frame);
        let other = preprocess_image(&previous_frame, &camera, &case.config).unwrap();
        let got = preprocess_image_reusing(&rgb, &camera, &case.config, Some(other.pixel_values)).unwrap();
        assert!(bits(&got.pixel_values) == want, "{} after another frame", case.name);
    }
}

/// The compact training form gives the same patch rows and geometry as `preprocess_image`, bit for
/// bit, on every fixture size (so it equals transformers too), on a KITTI-size frame and with a
/// non-default normalisation; and it rejects what `preprocess_image` rejects.
#[test]
fn resized_image_patch_rows_equal_preprocess_image() {
    let bits = |a: &ndarray::Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let kitti = PreprocessConfig { max_pixels: 62_720, ..PreprocessConfig::default() };
    let odd_norm =
        PreprocessConfig { image_mean: [0.1, 0.5, 0.9], image_std: [0.2, 0.7, 1.3], ..kitti.clone() };
    let mut all: Vec<(String, u32, u32, PreprocessConfig)> =
        cases().into_iter().map(|c| (c.name, c.width, c.height, c.config)).collect();
    all.push(("kitti".into(), 1242, 375, kitti));
    all.push(("kitti, other mean/std".into(), 1242, 375, odd_norm));
    for (name, width, height, config) in all {
        let rgb = pattern(width, height);
        let camera = camera_for(width, height);
        let full = preprocess_image(&rgb, &camera, &config).unwrap();
        let compact = ResizedImage::new(&rgb, &camera, &config).unwrap();
        assert_eq!(compact.grid_thw, full.grid_thw, "{name}");
        assert_eq!(compact.num_image_tokens, full.num_image_tokens, "{name}");
        assert_eq!(compact.input_size_px(), full.input_size_px(), "{name}");
        assert_eq!(compact.intrinsics, full.intrinsics, "{name}");
        assert_eq!(compact.resize_map, full.resize_map, "{name}");
        let rows = compact.patch_rows();
        assert_eq!(rows.dim(), full.pixel_values.dim(), "{name}");
        assert!(bits(&rows) == bits(&full.pixel_values), "{name}: patch rows differ");
    }
    let camera = camera_for(64, 48);
    assert!(matches!(
        ResizedImage::new(&pattern(64, 40), &camera, &PreprocessConfig::default()),
        Err(Error::ImageSizeMismatch { .. })
    ));
    assert!(matches!(
        ResizedImage::new(&RgbImage::new(0, 0), &camera, &PreprocessConfig::default()),
        Err(Error::EmptyImage { .. })
    ));
    let nan_std = PreprocessConfig { image_std: [f64::NAN, 1.0, 1.0], ..PreprocessConfig::default() };
    assert!(matches!(
        ResizedImage::new(&pattern(64, 48), &camera, &nan_std),
        Err(Error::InvalidPreprocessConfig(_))
    ));
}

#[test]
fn index_tensors_equal_transformers() {
    let t = tensors();
    let m = meta();
    let (before, after) =
        (m["text_before"].as_u64().unwrap() as usize, m["text_after"].as_u64().unwrap() as usize);
    for case in cases() {
        let n = &case.name;
        let grid = [case.grid_thw];
        // Per-patch tensors are stored for grids up to 2,500 patches (fixture size).
        let key = format!("{n}.vision_position_ids");
        let stored = t.names().iter().any(|k| **k == key);
        assert!(stored || n == "hd", "{n}");
        if stored {
            let pos = vision_position_ids(&grid).unwrap();
            let (shape, want) = i64s(&t, &format!("{n}.vision_position_ids"));
            assert_eq!(pos.shape(), shape.as_slice(), "{n}");
            assert_eq!(pos.as_slice().unwrap(), want.as_slice(), "{n}: vision_position_ids");
        }

        let win = window_index(&grid).unwrap();
        let (_, want) = i64s(&t, &format!("{n}.window_index"));
        assert_eq!(win.window_index.to_vec(), want, "{n}: window_index");
        assert_eq!(
            win.cu_window_seqlens.to_vec(),
            i32s(&t, &format!("{n}.cu_window_seqlens")),
            "{n}: cu_window"
        );

        assert_eq!(
            cu_seqlens(&grid).unwrap().to_vec(),
            i32s(&t, &format!("{n}.cu_seqlens")),
            "{n}: cu_seqlens"
        );

        let rope = rope_index(before, case.grid_thw, after).unwrap();
        if stored {
            let (shape, want) = i64s(&t, &format!("{n}.rope_position_ids"));
            assert_eq!(rope.position_ids.shape(), shape.as_slice(), "{n}");
            assert_eq!(rope.position_ids.as_slice().unwrap(), want.as_slice(), "{n}: rope position ids");
        }
        let (_, delta) = i64s(&t, &format!("{n}.rope_delta"));
        assert_eq!(rope.rope_delta, delta[0], "{n}: rope delta");
    }
}

#[test]
fn window_index_hand_checked_unequal_windows() {
    // 112x168 px: grid 8x12 patches, 4x6 merged tokens, windows of 4x4 and 4x2 tokens.
    let w = window_index(&[[1, 8, 12]]).unwrap();
    let want: Vec<i64> =
        [0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 18, 19, 20, 21, 4, 5, 10, 11, 16, 17, 22, 23].into();
    assert_eq!(w.window_index.to_vec(), want);
    assert_eq!(w.cu_window_seqlens.to_vec(), vec![0, 64, 96]);
    // Two images: the second's indices continue after the first's tokens.
    let w2 = window_index(&[[1, 2, 2], [1, 2, 4]]).unwrap();
    assert_eq!(w2.window_index.to_vec(), vec![0, 1, 2]);
    assert_eq!(w2.cu_window_seqlens.to_vec(), vec![0, 4, 12]);
    assert_eq!(cu_seqlens(&[[1, 2, 2], [2, 2, 4]]).unwrap().to_vec(), vec![0, 4, 12, 20]);
}

#[test]
fn rope_index_hand_checked() {
    // 2 text tokens, a 4x6-patch image (2x3 tokens), 3 text tokens.
    let r = rope_index(2, [1, 4, 6], 3).unwrap();
    let want = [
        [0, 1, 2, 2, 2, 2, 2, 2, 5, 6, 7],
        [0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 7],
        [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 7],
    ];
    for (row, w) in want.iter().enumerate() {
        assert_eq!(r.position_ids.row(row).to_vec(), w.to_vec());
    }
    assert_eq!(r.rope_delta, 8 - 11);
}

#[test]
fn intrinsics_follow_the_resize() {
    let (w, h) = (1242, 375);
    let camera = Intrinsics::new(721.5377, 721.5377, 609.5593, 172.854, w, h).unwrap();
    let p = preprocess_image(&pattern(w, h), &camera, &PreprocessConfig::default()).unwrap();
    assert_eq!(p.input_size_px(), (1232, 364));
    for p_cam in [Point3::new(-3.0, 1.5, 12.0), Point3::new(8.0, -0.5, 40.0), Point3::new(0.1, 1.7, 5.0)] {
        let in_camera = camera.project(&p_cam).unwrap();
        let mapped = p.resize_map.map_point(&in_camera);
        let in_input = p.intrinsics.project(&p_cam).unwrap();
        assert!((mapped - in_input).norm() < 1e-9, "{p_cam:?}: {mapped:?} vs {in_input:?}");
        let back = p.resize_map.unmap_point(&in_input);
        assert!((back - in_camera).norm() < 1e-9);
    }
    // Pixel centres: the centre of the first camera pixel maps by the half-pixel rule.
    let m = p.resize_map.map_point(&Point2::new(0.0, 0.0));
    assert!((m.x - (0.5 * 1232.0 / 1242.0 - 0.5)).abs() < 1e-12);
}

#[test]
fn errors_are_typed() {
    let config = PreprocessConfig::default();
    // Zero-size images.
    assert!(matches!(smart_resize(0, 10, 28, 0, 100), Err(Error::EmptyImage { width: 10, height: 0 })));
    let empty = RgbImage::new(0, 10);
    let camera = camera_for(100, 100);
    assert!(matches!(preprocess_image(&empty, &camera, &config), Err(Error::EmptyImage { .. })));
    assert!(matches!(resize_bicubic(&pattern(4, 4), 0, 3), Err(Error::EmptyImage { .. })));
    // Absurd aspect ratio.
    let strip = pattern(2010, 10);
    let e = preprocess_image(&strip, &camera_for(2010, 10), &config).unwrap_err();
    assert!(matches!(e, Error::AspectRatioTooLarge { width: 2010, height: 10, .. }), "{e}");
    // Frame and intrinsics of different sizes.
    let e = preprocess_image(&pattern(64, 48), &camera_for(640, 480), &config).unwrap_err();
    assert!(matches!(e, Error::ImageSizeMismatch { image: (64, 48), camera: (640, 480) }), "{e}");
    // Bad settings.
    let bad_std = PreprocessConfig { image_std: [0.2, 0.0, 0.2], ..config.clone() };
    assert!(matches!(
        preprocess_image(&pattern(64, 48), &camera_for(64, 48), &bad_std),
        Err(Error::InvalidPreprocessConfig(_))
    ));
    let no_pixels = PreprocessConfig { min_pixels: 0, ..config };
    assert!(matches!(
        preprocess_image(&pattern(5, 5), &camera_for(5, 5), &no_pixels),
        Err(Error::InvalidPreprocessConfig(_))
    ));
    assert!(matches!(smart_resize(10, 10, 0, 0, 100), Err(Error::InvalidPreprocessConfig(_))));
    // Grids the encoder cannot take.
    assert!(matches!(window_index(&[[1, 3, 4]]), Err(Error::InvalidGrid { .. })));
    assert!(matches!(vision_position_ids(&[[0, 2, 2]]), Err(Error::InvalidGrid { .. })));
    assert!(matches!(rope_index(1, [1, 2, 5], 1), Err(Error::InvalidGrid { .. })));
    assert!(matches!(cu_seqlens(&[[1, 0, 2]]), Err(Error::InvalidGrid { .. })));
}

#[test]
fn tiny_and_odd_inputs_do_not_panic() {
    let config = PreprocessConfig::default();
    for (w, h) in [(1, 1), (1, 3), (3, 1), (2, 2), (5, 7), (199, 1), (13, 13), (30, 20)] {
        let p = preprocess_image(&pattern(w, h), &camera_for(w, h), &config).unwrap();
        let [_, gh, gw] = p.grid_thw;
        assert!(gh * gw * 14 * 14 >= config.min_pixels, "{w}x{h}: {:?}", p.grid_thw);
        assert!(gh >= 2 && gw >= 2 && gh % 2 == 0 && gw % 2 == 0, "{w}x{h}: {:?}", p.grid_thw);
        assert!(p.pixel_values.iter().all(|v| v.is_finite()));
    }
}
