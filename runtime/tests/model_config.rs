//! `config.json` with our absolute position code (`vision_config.monovlm_abs_position_periods`):
//! it round-trips, standard configs stay standard, bad periods are named, and the code is the
//! documented formula.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use monovlm_runtime::model_config::{DEFAULT_ABS_POSITION_PERIODS, Qwen25VlConfig, abs_position_code};

fn tiny() -> Qwen25VlConfig {
    Qwen25VlConfig::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/qwen25vl/tiny_a"),
    )
    .unwrap()
}

#[test]
fn abs_position_periods_round_trip_and_standard_configs_carry_none() {
    let cfg = tiny();
    assert!(cfg.vision.abs_position_periods.is_empty());
    let json = cfg.to_json("float32");
    assert!(json["vision_config"].get("monovlm_abs_position_periods").is_none());

    let mut ours = cfg.clone();
    ours.vision.abs_position_periods = DEFAULT_ABS_POSITION_PERIODS.to_vec();
    let json = ours.to_json("float32");
    assert_eq!(json["vision_config"]["monovlm_abs_position_periods"][5], 128.0);
    assert_eq!(Qwen25VlConfig::from_json(&json).unwrap(), ours);
}

#[test]
fn bad_abs_position_periods_are_named() {
    let mut json = tiny().to_json("float32");
    for bad in [serde_json::json!([4.0, -8.0]), serde_json::json!([0]), serde_json::json!("4,8")] {
        json["vision_config"]["monovlm_abs_position_periods"] = bad.clone();
        let e = Qwen25VlConfig::from_json(&json).unwrap_err().to_string();
        assert!(e.contains("monovlm_abs_position_periods"), "{bad}: {e}");
    }
}

#[test]
fn abs_position_code_is_sines_then_cosines_of_row_then_column() {
    // Row 2, column 3, periods 4 and 8: angles pi, pi/2 (row), 3pi/2, 3pi/4 (column).
    let code = abs_position_code(2.0, 3.0, &[4.0, 8.0]);
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let want = [0.0, 1.0, -1.0, h, -1.0, 0.0, 0.0, -h];
    assert_eq!(code.len(), want.len());
    for (i, (a, b)) in code.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-12, "value {i}: {a} vs {b}");
    }
    // The code repeats after the longest period (128 merged tokens, 3,584 pixels), and not before.
    let repeat = abs_position_code(128.0, 0.0, &DEFAULT_ABS_POSITION_PERIODS);
    let first = abs_position_code(0.0, 0.0, &DEFAULT_ABS_POSITION_PERIODS);
    assert!(repeat.iter().zip(&first).all(|(a, b)| (a - b).abs() < 1e-9));
    let codes: Vec<Vec<f64>> =
        (0..128).map(|r| abs_position_code(f64::from(r), 0.0, &DEFAULT_ABS_POSITION_PERIODS)).collect();
    for (i, a) in codes.iter().enumerate() {
        for b in &codes[i + 1..] {
            assert!(a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) > 1e-3);
        }
    }
}
