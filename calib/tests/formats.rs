//! Intrinsics files: an OpenCV-written file (`scripts/reference/opencv_filestorage_fixture.py`), ROS
//! files in the layouts of `camera_calibration` and `camera_info_manager`, and a real KITTI calib.txt
//! parse to the expected values; every format round-trips; bad files give errors that name the file
//! and the field; no input, not even every prefix of every fixture, panics the parser.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::{Path, PathBuf};

use monovlm_calib::formats::{
    CalibFormat, ReadOptions, detect_format, format_intrinsics, parse_intrinsics, read_intrinsics,
    write_intrinsics,
};
use monovlm_calib::{Distortion, Error, Intrinsics};

/// The offset is written as `P[0][3] = -fx tx` and read back as `P[0][3] / -fx`: two roundings.
const OFFSET_REL_TOL: f64 = 4.0 * f64::EPSILON;
/// KITTI's layout (`%.12e`) keeps 13 significant digits.
const KITTI_REL_TOL: f64 = 1e-12;

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).expect("fixture")
}

/// A fresh directory for one test's files.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("formats").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

const FIXTURES: [&str; 4] = [
    "opencv_camera.yml",
    "ros_camera_calibration.yaml",
    "ros_camera_info_manager.yaml",
    "kitti_calib_000000.txt",
];

fn kitti_opts() -> ReadOptions {
    ReadOptions::default().with_image_size(1242, 375)
}

fn close(a: f64, b: f64, rel_tol: f64) -> bool {
    (a - b).abs() <= rel_tol * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn opencv_written_file_parses() {
    let (k, format) =
        read_intrinsics(&fixture_path("opencv_camera.yml"), &ReadOptions::default()).expect("valid");
    assert_eq!(format, CalibFormat::OpenCv);
    // The values of the generating script: OpenCV writes 17 significant digits, so they are exact.
    assert_eq!(
        (k.fx(), k.fy(), k.cx(), k.cy(), k.width(), k.height()),
        (912.3456789012345, 910.9876543210987, 641.2345678901234, 358.7654321098765, 1280, 720)
    );
    let d = k.distortion().expect("distorted").coefficients();
    assert_eq!(
        d,
        [
            -0.2843451234567891,
            0.0912345678901234,
            0.0012345678901234,
            -0.0006543210987654,
            -0.0123456789012345
        ]
    );
    assert_eq!(k.offset_m(), (0.0, 0.0));
}

#[test]
fn ros_camera_calibration_file_parses() {
    let (k, format) = read_intrinsics(&fixture_path("ros_camera_calibration.yaml"), &ReadOptions::default())
        .expect("valid");
    assert_eq!(format, CalibFormat::Ros);
    // camera_matrix, not projection_matrix (412.56219...), gives the focal lengths.
    assert_eq!((k.fx(), k.fy(), k.cx(), k.cy()), (485.07184, 484.97128, 321.93672, 239.52019));
    assert_eq!((k.width(), k.height()), (640, 480));
    let d = k.distortion().expect("distorted").coefficients();
    assert_eq!(d, [-0.287435, 0.079541, 0.000512, -0.000376, 0.0]);
    assert_eq!(k.offset_m(), (0.0, 0.0));
    assert!(k.offset_m().0.is_sign_positive(), "no -0.0 offset from a zero translation");
}

#[test]
fn ros_camera_info_manager_file_parses() {
    let (k, format) = read_intrinsics(&fixture_path("ros_camera_info_manager.yaml"), &ReadOptions::default())
        .expect("valid");
    assert_eq!(format, CalibFormat::Ros);
    assert_eq!((k.fx(), k.fy(), k.cx(), k.cy()), (435.2046, 435.2046, 367.4517, 252.2006));
    assert_eq!((k.width(), k.height()), (752, 480));
    assert_eq!(k.distortion().expect("distorted").coefficients(), [-0.3698, 0.1349, -0.0004, 0.0007, 0.0]);
    // The right camera of a stereo pair: tx = P[0][3] / -P[0][0] = the 8.75 cm baseline.
    assert_eq!(k.offset_m(), (-36.05875 / -412.1, 0.0));
    assert!((k.offset_m().0 - 0.0875).abs() < 1e-12);
}

#[test]
fn kitti_file_parses_with_an_image_size() {
    let (k, format) = read_intrinsics(&fixture_path("kitti_calib_000000.txt"), &kitti_opts()).expect("valid");
    assert_eq!(format, CalibFormat::Kitti);
    assert_eq!((k.fx(), k.fy(), k.cx(), k.cy()), (707.0493, 707.0493, 604.0814, 180.5066));
    assert_eq!((k.width(), k.height()), (1242, 375));
    assert_eq!(k.offset_m(), (45.75831 / -707.0493, -0.3454157 / -707.0493));
    // Another camera on request.
    let opts = ReadOptions { kitti_camera: 3, ..kitti_opts() };
    let (k3, _) = read_intrinsics(&fixture_path("kitti_calib_000000.txt"), &opts).expect("valid");
    assert_eq!(k3.offset_m().0, -334.1081 / -707.0493);
}

#[test]
fn formats_are_detected() {
    let expected = [CalibFormat::OpenCv, CalibFormat::Ros, CalibFormat::Ros, CalibFormat::Kitti];
    for (name, format) in FIXTURES.into_iter().zip(expected) {
        assert_eq!(detect_format(&fixture(name)), Some(format), "{name}");
    }
    let k = Intrinsics::new(500.0, 500.0, 320.0, 240.0, 640, 480).unwrap();
    for format in CalibFormat::ALL {
        assert_eq!(detect_format(&format_intrinsics(&k, format, "cam").unwrap()), Some(format));
    }
    // An OpenCV-like file without the header is read as OpenCV.
    let headerless = "image_width: 640\nimage_height: 480\ncamera_matrix:\n  rows: 3\n  cols: 3\n  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]\n";
    assert_eq!(detect_format(headerless), Some(CalibFormat::OpenCv));
    for text in ["", "\n\n  # nothing\n", "hello: world\n", "{\"fx\": 500}", "\u{0}\u{1}\u{2}"] {
        assert_eq!(detect_format(text), None, "{text:?}");
    }
}

#[test]
fn format_names_parse_and_print() {
    for format in CalibFormat::ALL {
        assert_eq!(format.to_string().parse::<CalibFormat>().unwrap(), format);
    }
    assert_eq!("OpenCV".parse::<CalibFormat>().unwrap(), CalibFormat::OpenCv);
    let err = "matlab".parse::<CalibFormat>().unwrap_err().to_string();
    assert!(
        err.contains("format") && err.contains("opencv, ros or kitti") && err.contains("matlab"),
        "{err}"
    );
}

/// Cameras with awkward floats: shortest-digit values, tiny and huge exponents, 4 and 5 coefficients.
fn cameras() -> Vec<Intrinsics> {
    let kitti_like = Intrinsics::new(721.5377, 721.5377, 609.5593, 172.854, 1242, 375)
        .unwrap()
        .with_offset_m(44.85728 / -721.5377, 0.2163791 / -721.5377)
        .unwrap();
    let awkward = Intrinsics::new(0.1 + 0.2, 1.0 / 3.0, -5e20, 1e-300, 1, u32::MAX)
        .unwrap()
        .with_offset_m(-1.2345678901234567e-5, 7.0)
        .unwrap()
        .with_distortion(Distortion::new(1e-7, -2e-17, 1.0 / 7.0, -0.0, 123456.789).unwrap());
    let four_coefficients = Intrinsics::new(1000.0, 1001.5, 959.5, 539.5, 1920, 1080)
        .unwrap()
        .with_distortion(Distortion::new(-0.3, 0.1, 0.001, -0.002, 0.0).unwrap());
    vec![kitti_like, awkward, four_coefficients]
}

fn assert_same(a: &Intrinsics, b: &Intrinsics, rel_tol: f64, what: &str) {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()), "{what}");
    let (pa, pb) = ([a.fx(), a.fy(), a.cx(), a.cy()], [b.fx(), b.fy(), b.cx(), b.cy()]);
    for (x, y) in pa.iter().zip(&pb) {
        if rel_tol == 0.0 {
            assert_eq!(x, y, "{what}: {pa:?} vs {pb:?}");
        } else {
            assert!(close(*x, *y, rel_tol), "{what}: {pa:?} vs {pb:?}");
        }
    }
    assert_eq!(a.distortion(), b.distortion(), "{what}");
    let ((ax, ay), (bx, by)) = (a.offset_m(), b.offset_m());
    let tol = rel_tol.max(OFFSET_REL_TOL);
    assert!(
        close(ax, bx, tol) && close(ay, by, tol),
        "{what}: offset {:?} vs {:?}",
        a.offset_m(),
        b.offset_m()
    );
}

#[test]
fn every_format_round_trips() {
    let dir = scratch_dir("round_trip");
    for (i, k) in cameras().iter().enumerate() {
        for format in [CalibFormat::OpenCv, CalibFormat::Ros] {
            let text = format_intrinsics(k, format, "front_camera").unwrap();
            let (back, detected) = parse_intrinsics(&text, "written", &ReadOptions::default())
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(detected, format);
            assert_same(k, &back, 0.0, &format!("camera {i} via {format}:\n{text}"));

            let path = dir.join(format!("camera{i}.{format}.yaml"));
            write_intrinsics(&path, k, format, "front_camera").unwrap();
            let (from_file, _) = read_intrinsics(&path, &ReadOptions::default()).unwrap();
            assert_eq!(from_file, back);
        }
    }
    // KITTI holds no distortion: the distortion-free camera round-trips, at 13 significant digits.
    let k = &cameras()[0];
    let path = dir.join("calib.txt");
    write_intrinsics(&path, k, CalibFormat::Kitti, "ignored").unwrap();
    let opts = ReadOptions::default().with_image_size(k.width(), k.height());
    let (back, format) = read_intrinsics(&path, &opts).unwrap();
    assert_eq!(format, CalibFormat::Kitti);
    assert_same(k, &back, KITTI_REL_TOL, "KITTI");
    // The other matrices are the documented placeholders.
    let text = std::fs::read_to_string(&path).unwrap();
    let calib = monovlm_calib::kitti::KittiCalib::parse(&text, "calib.txt").unwrap();
    let (fx, cx) = (k.fx(), k.cx());
    for cam in [0, 1, 3] {
        assert_eq!(calib.p[cam][0], [fx, 0.0, cx, 0.0], "P{cam} = K [I | 0]");
    }
    assert_eq!(calib.r0_rect, Some([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]));
    assert!(calib.tr_velo_to_cam.is_some() && calib.tr_imu_to_velo.is_some());

    // Only the final file is left: the temporary one was renamed over it.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    // Overwriting an existing file works.
    write_intrinsics(&path, k, CalibFormat::Kitti, "again").unwrap();
}

#[test]
fn a_distorted_camera_is_not_written_as_kitti() {
    let k = &cameras()[2];
    let err = format_intrinsics(k, CalibFormat::Kitti, "cam").unwrap_err().to_string();
    assert!(err.contains("distortion") && err.contains("undistort"), "{err}");
    let path = scratch_dir("kitti_distorted").join("calib.txt");
    let err = write_intrinsics(&path, k, CalibFormat::Kitti, "cam").unwrap_err().to_string();
    assert!(err.contains("calib.txt") && err.contains("distortion"), "{err}");
    assert!(!path.exists());
}

#[test]
fn camera_names_of_any_text_stay_valid_yaml() {
    let k = &cameras()[0];
    for name in ["", "true", "123", "front cam", "a: b # c", "quote \" and \\ back", "tab\tnew\nline", "ünï"]
    {
        for format in [CalibFormat::OpenCv, CalibFormat::Ros] {
            let text = format_intrinsics(k, format, name).unwrap();
            let parsed = parse_intrinsics(&text, "named", &ReadOptions::default());
            assert!(parsed.is_ok(), "{name:?} via {format}: {parsed:?}\n{text}");
        }
    }
}

#[test]
fn distortion_variants() {
    let ros = fixture("ros_camera_calibration.yaml");
    let opts = ReadOptions::default();
    let d_line = "  data: [-0.287435, 0.079541, 0.000512, -0.000376, 0.000000]";
    assert!(ros.contains(d_line));
    // Four coefficients: k3 = 0.
    let four = ros
        .replace(d_line, "  data: [-0.287435, 0.079541, 0.000512, -0.000376]")
        .replace("cols: 5", "cols: 4");
    let (k, _) = parse_intrinsics(&four, "four.yaml", &opts).unwrap();
    assert_eq!(k.distortion().unwrap().coefficients(), [-0.287435, 0.079541, 0.000512, -0.000376, 0.0]);
    // All zero, empty or absent: no distortion.
    let zero = ros.replace(d_line, "  data: [0, 0, 0, 0, 0]");
    assert_eq!(parse_intrinsics(&zero, "zero.yaml", &opts).unwrap().0.distortion(), None);
    let empty = ros.replace(d_line, "  data: []").replace("cols: 5", "cols: 0");
    assert_eq!(parse_intrinsics(&empty, "empty.yaml", &opts).unwrap().0.distortion(), None);
    let unnamed_empty = empty.replace("distortion_model: plumb_bob", "distortion_model: \"\"");
    assert_eq!(parse_intrinsics(&unnamed_empty, "empty.yaml", &opts).unwrap().0.distortion(), None);
    let start = ros.find("distortion_coefficients:").unwrap();
    let end = ros.find("rectification_matrix:").unwrap();
    let absent = format!("{}{}", &ros[..start], &ros[end..]);
    assert_eq!(parse_intrinsics(&absent, "absent.yaml", &opts).unwrap().0.distortion(), None);
    // No distortion_model: plumb_bob, as ROS's reader assumes.
    let no_model = ros.replace("distortion_model: plumb_bob\n", "");
    assert!(parse_intrinsics(&no_model, "no_model.yaml", &opts).unwrap().0.distortion().is_some());
    // OpenCV 5x1 column vector.
    let opencv = fixture("opencv_camera.yml");
    let column = opencv.replacen("   rows: 1\n   cols: 5", "   rows: 5\n   cols: 1", 1);
    assert_ne!(column, opencv);
    assert!(parse_intrinsics(&column, "column.yml", &opts).unwrap().0.distortion().is_some());
}

#[test]
fn number_forms_of_other_writers_parse() {
    // Old OpenCV (MSVC printf) writes 3-digit exponents; OpenCV writes `0.`; YAML allows `+`.
    let text = "%YAML:1.0\n---\nimage_width: 640\nimage_height: +480\ncamera_matrix: !!opencv-matrix\n   \
                rows: 3\n   cols: 3\n   dt: d\n   data: [ 6.5746697944293521e+002, 0., 3.1950000000000000e+002,\n       \
                0., 6.5746697944293521e+002, 2.395e2, 0., 0., 1. ]\n";
    let (k, _) = parse_intrinsics(text, "old.yml", &ReadOptions::default()).unwrap();
    assert_eq!((k.fx(), k.cx(), k.cy(), k.height()), (657.4669794429352, 319.5, 239.5, 480));
    assert_eq!(ReadOptions::default().kitti_camera, 2);
}

/// The message of the error of reading `text` as `bad.yml`, checked to name the file and `field`.
fn error_naming(text: &str, opts: &ReadOptions, field: &str) -> String {
    let err = parse_intrinsics(text, "bad.yml", opts).expect_err("a bad file");
    let msg = err.to_string();
    assert!(msg.contains("bad.yml") && msg.contains(field), "message should name bad.yml and {field}: {msg}");
    msg
}

#[test]
fn bad_files_give_errors_naming_file_and_field() {
    let opencv = fixture("opencv_camera.yml");
    let ros = fixture("ros_camera_calibration.yaml");
    let kitti = fixture("kitti_calib_000000.txt");
    let opts = ReadOptions::default();

    // Missing fields.
    let start = opencv.find("camera_matrix:").unwrap();
    let end = opencv.find("distortion_coefficients:").unwrap();
    let no_k = format!("{}{}", &opencv[..start], &opencv[end..]);
    let msg = error_naming(&no_k, &opts, "camera_matrix");
    assert!(msg.contains("missing"), "{msg}");
    let msg = error_naming(&ros.replace("image_width: 640\n", ""), &opts, "image_width");
    assert!(msg.contains("missing"), "{msg}");
    error_naming(
        &ros.replace("  rows: 3\n  cols: 3\n  data: [485", "  cols: 3\n  data: [485"),
        &opts,
        "camera_matrix.rows",
    );

    // NaN and infinity, as OpenCV (`.Nan`), C (`nan`) and YAML (`.inf`) write them.
    let msg = error_naming(&opencv.replace("912.34567890123446", ".Nan"), &opts, "camera_matrix.data[0]");
    assert!(msg.contains("finite") && msg.contains("line 17"), "{msg}");
    error_naming(&ros.replace("-0.287435", "nan"), &opts, "distortion_coefficients.data[0]");
    error_naming(&ros.replace("0.079541", "-.inf"), &opts, "distortion_coefficients.data[1]");
    error_naming(&opencv.replace("image_width: 1280", "image_width: nan"), &opts, "image_width");
    let kitti_nan = kitti.replacen("7.070493000000e+02", "nan", 3);
    let msg = kitti_nan_error(&kitti_nan);
    assert!(msg.contains("P0") && msg.contains("finite"), "{msg}");

    // Wrong matrix sizes.
    let k_2x3 = ros.replacen("  rows: 3\n  cols: 3\n  data: [485.07184,   0.     , 321.93672,\n           0.     , 484.97128, 239.52019,\n           0.     ,   0.     ,   1.     ]",
        "  rows: 2\n  cols: 3\n  data: [485.07184, 0, 321.93672, 0, 484.97128, 239.52019]", 1);
    assert_ne!(k_2x3, ros);
    let msg = error_naming(&k_2x3, &opts, "camera_matrix");
    assert!(msg.contains("3x3") && msg.contains("2x3"), "{msg}");
    let msg = error_naming(
        &ros.replacen("  rows: 3\n  cols: 3", "  rows: 3\n  cols: 4", 1),
        &opts,
        "camera_matrix.data",
    );
    assert!(msg.contains("12 values, got 9"), "{msg}");
    error_naming(&ros.replace("  rows: 3\n  cols: 4", "  rows: 4\n  cols: 3"), &opts, "projection_matrix");
    error_naming(&opencv.replace("image_height: 720", "image_height: -720"), &opts, "image_height");
    error_naming(&opencv.replace("912.34567890123446, 0.,", "912.34567890123446, 0.5,"), &opts, "skew");
    error_naming(&opencv.replace("912.34567890123446", "-912.3"), &opts, "camera_matrix");

    // Other distortion models are rejected, not truncated.
    let rational = ros
        .replace("plumb_bob", "rational_polynomial")
        .replace("cols: 5", "cols: 8")
        .replace("-0.000376, 0.000000]", "-0.000376, 0.000000, 0.01, 0.002, 0.0003]");
    let msg = error_naming(&rational, &opts, "distortion_model");
    assert!(msg.contains("plumb_bob") && msg.contains("rational_polynomial"), "{msg}");
    let eight = opencv
        .replacen("   cols: 5", "   cols: 8", 1)
        .replace("-0.012345678901234501 ]", "-0.012345678901234501, 0.1, 0.2, 0.3 ]");
    let msg = error_naming(&eight, &opts, "distortion_coefficients");
    assert!(msg.contains("got 8") && msg.contains("not truncated"), "{msg}");
    error_naming(&ros.replace("plumb_bob", "equidistant"), &opts, "distortion_model");

    // Empty files, binary garbage, text that is no intrinsics file.
    let msg = error_naming("", &opts, "format");
    assert!(msg.contains("empty"), "{msg}");
    error_naming("  \n# only a comment\n", &opts, "format");
    error_naming("\u{0}\u{7f}PNG\r\n\u{1a}\n", &opts, "format");
    let written_ros = format_intrinsics(&cameras()[0], CalibFormat::Ros, "cam").unwrap();
    error_naming(&written_ros, &kitti_opts().with_format(CalibFormat::Kitti), "missing P0"); // other keys are skipped, so no P0..P3
    error_naming(&kitti, &ReadOptions::default().with_format(CalibFormat::OpenCv), "image_width");
    let dir = scratch_dir("garbage");
    let path = dir.join("bad.yml");
    std::fs::write(&path, [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0xff, 0xfe, 0x00]).unwrap();
    let msg = read_intrinsics(&path, &opts).unwrap_err().to_string();
    assert!(msg.contains("bad.yml") && msg.contains("encoding") && msg.contains("UTF-8"), "{msg}");
    let missing = read_intrinsics(&dir.join("absent.yml"), &opts).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("absent.yml"));

    // KITTI without an image size, or with a camera that does not exist.
    let msg = error_naming(&kitti, &opts, "image_size");
    assert!(msg.contains("KITTI"), "{msg}");
    error_naming(&kitti, &ReadOptions { kitti_camera: 4, ..kitti_opts() }, "P4");

    // YAML outside the subset: the error names the line.
    error_naming(
        &ros.replace("  rows: 3\n  cols: 3\n  data: [485", "\trows: 3\n  cols: 3\n  data: [485"),
        &opts,
        "line 8",
    );
    let msg = error_naming(&ros.replace("]\ndistortion_model", "\ndistortion_model"), &opts, "camera_matrix");
    assert!(msg.contains("the ']' closing the '[' of line 10"), "{msg}");
    error_naming(
        &ros.replace("  cols: 3\n  data: [485", "  cols: 3\n  data: [[485"),
        &opts,
        "camera_matrix.data",
    );
    error_naming(
        &ros.replace("image_height: 480", "image_height: 480\nimage_height: 480"),
        &opts,
        "image_height",
    );
    error_naming(&ros.replace("image_height: 480", "- 480"), &opts, "line 5");
    error_naming(&ros.replace("camera_name: usb_cam", "camera_name: \"usb_cam"), &opts, "camera_name");
    error_naming(&ros.replace("image_height: 480", "image_height: {a: 1}"), &opts, "image_height");
    error_naming(&format!("{ros}---\n{ros}"), &opts, "single YAML document");
}

fn kitti_nan_error(text: &str) -> String {
    let err = parse_intrinsics(text, "bad.yml", &kitti_opts()).expect_err("NaN");
    let msg = err.to_string();
    assert!(msg.contains("bad.yml"), "{msg}");
    msg
}

#[test]
fn hostile_nesting_is_an_error_not_a_stack_overflow() {
    let mut text = String::new();
    for depth in 0..20_000 {
        text += &format!("{}k{depth}:\n", " ".repeat(depth));
    }
    let msg = parse_intrinsics(&text, "deep.yml", &ReadOptions::default().with_format(CalibFormat::Ros))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("deep.yml") && msg.contains("nested"), "{msg}");
}

/// Parses `text` in every way; only a panic fails.
fn parse_every_way(text: &str) {
    let _ = parse_intrinsics(text, "fuzz", &ReadOptions::default());
    let _ = parse_intrinsics(text, "fuzz", &kitti_opts());
    for format in CalibFormat::ALL {
        let _ = parse_intrinsics(text, "fuzz", &kitti_opts().with_format(format));
    }
    let _ = detect_format(text);
}

fn fuzz_corpus() -> Vec<String> {
    let mut corpus: Vec<String> = FIXTURES.iter().map(|n| fixture(n)).collect();
    for format in CalibFormat::ALL {
        corpus.push(format_intrinsics(&cameras()[0], format, "front \"cam\"").unwrap());
    }
    corpus
}

#[test]
fn every_prefix_of_every_file_parses_without_panic() {
    for text in fuzz_corpus() {
        for (end, _) in text.char_indices() {
            parse_every_way(&text[..end]);
        }
        assert!(parse_intrinsics(&text, "whole", &kitti_opts()).is_ok());
        assert!(parse_intrinsics("", "empty", &kitti_opts()).is_err());
    }
}

#[test]
fn mutated_files_parse_without_panic() {
    /// Bytes that matter to the parsers, plus one that breaks UTF-8 (replaced by U+FFFD).
    const SPICE: &[u8] = b"[]{}:#\"' \n\t-!%.,0e+nN\\\xff|>&*";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*: deterministic, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for text in fuzz_corpus() {
        for _ in 0..400 {
            let mut bytes = text.clone().into_bytes();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                let b = SPICE[(next() % SPICE.len() as u64) as usize];
                match next() % 3 {
                    0 => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            parse_every_way(&String::from_utf8_lossy(&bytes));
        }
    }
}
