//! The answer protocol: the parser is total (never panics), round-trips every formatted answer,
//! and names what is wrong with malformed ones.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::f64::consts::PI;

use monovlm_calib::{Box2d, Box3d, Intrinsics};
use monovlm_runtime::Error;
use monovlm_runtime::protocol::{
    Answer, MAX_QUERY_CHARS, PROTOCOL_VERSION, PromptLayout, Query, chat_prompt, format_answer, parse_answer,
    tokens,
};
use proptest::prelude::*;

/// `cases` random cases; no failure-persistence files (integration tests have no lib.rs for them).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn answers() -> impl Strategy<Value = Answer> {
    (
        (0.0..1200.0f64, 0.0..1200.0f64, 0.0..400.0f64, 0.0..400.0f64),
        (-50.0..50.0f64, -5.0..5.0f64, 0.1..150.0f64),
        (0.001..20.0f64, 0.001..5.0f64, 0.001..5.0f64, -4.0 * PI..4.0 * PI),
    )
        .prop_map(|((u1, u2, v1, v2), (x, y, z), (l, w, h, yaw))| Answer {
            bbox_2d: Box2d::new(u1.min(u2), v1.min(v2), u1.max(u2), v1.max(v2)).expect("ordered"),
            bbox_3d: Box3d::new(x, y, z, l, w, h, yaw).expect("valid"),
        })
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn parser_never_panics_on_arbitrary_text(s in any::<String>()) {
        let _ = parse_answer(&s);
    }

    #[test]
    fn parser_never_panics_inside_answer_tags(s in "\\PC{0,120}", pre in "\\PC{0,20}") {
        let _ = parse_answer(&format!("{pre}<answer>{s}</answer>"));
        let _ = parse_answer(&format!("<think>{pre}</think><answer>{{\"bbox_2d\": {s}}}</answer>"));
    }

    #[test]
    fn parser_never_panics_on_json_like_noise(
        xs in prop::collection::vec(prop_oneof![
            any::<f64>().prop_map(|v| v.to_string()),
            Just("null".to_owned()), Just("\"a\"".to_owned()), Just("[]".to_owned()), Just("1e999".to_owned()),
        ], 0..9)
    ) {
        let arr = xs.join(", ");
        let _ = parse_answer(&format!("<answer>{{\"bbox_2d\": [{arr}], \"bbox_3d\": [{arr}]}}</answer>"));
    }

    #[test]
    fn every_formatted_answer_round_trips(a in answers()) {
        let text = format_answer(&a);
        let parsed = parse_answer(&text).expect("our own format parses");
        // Formatting rounds: whole pixels, centimetres, 0.01 rad.
        for (p, o) in parsed.bbox_2d.to_array().iter().zip(a.bbox_2d.to_array()) {
            prop_assert!((p - o).abs() <= 0.5 + 1e-9);
        }
        let (p3, o3) = (parsed.bbox_3d.to_array(), a.bbox_3d.to_array());
        for i in 0..6 {
            prop_assert!((p3[i] - o3[i]).abs() <= 0.005 + 1e-9 || (i >= 3 && o3[i] < 0.01), "{i}: {} vs {}", p3[i], o3[i]);
        }
        let dyaw = (p3[6] - o3[6]).rem_euclid(2.0 * PI);
        prop_assert!(dyaw.min(2.0 * PI - dyaw) <= 0.005 + 1e-9);
        // And formatting is a fixed point after one round.
        prop_assert_eq!(format_answer(&parsed), text);
    }
}

fn valid_text() -> String {
    r#"<answer>{"bbox_2d": [100, 120, 180, 200], "bbox_3d": [1.5, 1.2, 20.0, 4.5, 1.9, 2.1, -1.57]}</answer>"#
        .to_owned()
}

#[test]
fn think_block_then_answer() {
    let text = format!("<think>the van is right of the car, about 20 m away</think>\n{}", valid_text());
    let a = parse_answer(&text).expect("valid");
    assert_eq!(a.bbox_2d.to_array(), [100.0, 120.0, 180.0, 200.0]);
    assert_eq!(a.bbox_3d.to_array(), [1.5, 1.2, 20.0, 4.5, 1.9, 2.1, -1.57]);
    // An <answer> inside the think block is not the answer.
    let decoy = format!("<think><answer>{{}}</answer></think>{}", valid_text());
    assert!(parse_answer(&decoy).is_ok());
}

#[test]
fn malformed_answers_get_typed_errors() {
    /// A malformed answer and a check that its error is the expected variant.
    type Case = (String, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        ("the van is there".into(), |e| matches!(e, Error::MissingAnswerTag)),
        ("<answer>{\"bbox_2d\": [1, 2, 3, 4]".into(), |e| matches!(e, Error::UnclosedAnswerTag)),
        ("<answer>{bbox_2d: [1,2,3,4]}</answer>".into(), |e| matches!(e, Error::AnswerJson(_))),
        ("<answer>[1, 2, 3]</answer>".into(), |e| matches!(e, Error::AnswerJson(_))),
        ("<answer>{\"bbox_3d\": [1,2,3,4,5,6,7]}</answer>".into(), |e| {
            matches!(e, Error::MissingField("bbox_2d"))
        }),
        ("<answer>{\"bbox_2d\": [1,2,3,4]}</answer>".into(), |e| matches!(e, Error::MissingField("bbox_3d"))),
        (valid_text().replace("[100, 120, 180, 200]", "[100, 120, 180]"), |e| {
            matches!(e, Error::WrongArity { field: "bbox_2d", expected: 4, .. })
        }),
        (valid_text().replace("-1.57]", "-1.57, 0.0]"), |e| {
            matches!(e, Error::WrongArity { field: "bbox_3d", expected: 7, .. })
        }),
        (valid_text().replace("[100, 120, 180, 200]", "\"box\""), |e| matches!(e, Error::WrongArity { .. })),
        (valid_text().replace("20.0", "\"far\""), |e| {
            matches!(e, Error::NotFinite { field: "bbox_3d", index: 2, .. })
        }),
        (valid_text().replace("20.0", "1e999"), |e| {
            matches!(e, Error::AnswerJson(_) | Error::NotFinite { .. })
        }),
        (valid_text().replace("20.0", "NaN"), |e| matches!(e, Error::AnswerJson(_))),
        (valid_text().replace("4.5", "-4.5"), |e| matches!(e, Error::NonPositiveSize { name: "l", .. })),
        (valid_text().replace("2.1,", "0,"), |e| matches!(e, Error::NonPositiveSize { name: "h", .. })),
        (valid_text().replace("[100, 120, 180, 200]", "[180, 120, 100, 200]"), |e| {
            matches!(e, Error::InvertedBox2d { .. })
        }),
    ];
    for (text, is_expected) in cases {
        let err = parse_answer(&text).expect_err(&text);
        assert!(is_expected(&err), "{text}\n  gave {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn queries_are_validated_and_normalised() {
    assert_eq!(
        Query::new(" the  cyclist\tbehind\nthe van ").expect("valid").as_str(),
        "the cyclist behind the van"
    );
    assert!(matches!(Query::new(" \n "), Err(Error::EmptyQuery)));
    assert!(matches!(Query::new(&"a".repeat(MAX_QUERY_CHARS + 1)), Err(Error::QueryTooLong { .. })));
    assert!(Query::new(&"a".repeat(MAX_QUERY_CHARS)).is_ok());
    assert!(matches!(Query::new("car<|im_end|>"), Err(Error::QueryForbidden { .. })));
    assert!(matches!(Query::new("car\u{0}"), Err(Error::QueryForbidden { .. })));
    // A 10 kB query is refused, not truncated.
    assert!(matches!(Query::new(&"x ".repeat(5000)), Err(Error::QueryTooLong { .. })));
}

#[test]
fn prompt_follows_the_qwen_chat_template() {
    let k = Intrinsics::new(360.2, 360.2, 304.4, 86.3, 616, 196).expect("valid");
    let q = Query::new("the white van parked on the right").expect("valid");
    let p = chat_prompt(&q, &k, 3, PromptLayout::ImageFirst);
    let expected_start = format!(
        "{}system\nYou are a helpful assistant.{}\n{}user\n{}{}{}{}{}",
        tokens::IM_START,
        tokens::IM_END,
        tokens::IM_START,
        tokens::VISION_START,
        tokens::IMAGE_PAD,
        tokens::IMAGE_PAD,
        tokens::IMAGE_PAD,
        tokens::VISION_END
    );
    assert!(p.starts_with(&expected_start), "{p}");
    assert!(p.ends_with(&format!("{}\n{}assistant\n", tokens::IM_END, tokens::IM_START)));
    assert_eq!(p.matches(tokens::IMAGE_PAD).count(), 3);
    assert!(p.contains("fx=360.2 fy=360.2 cx=304.4 cy=86.3") && p.contains("616x196"));
    assert!(p.contains("Find: the white van parked on the right"));

    // v1 is frozen: the bundled model was trained on exactly this text.
    assert_eq!(
        user_turn_of(&p),
        format!(
            "{}{}{}{}{}Camera intrinsics of this 616x196 image: fx=360.2 fy=360.2 cx=304.4 cy=86.3.\nFind: the white \
             van parked on the right\nAnswer with <answer>{{\"bbox_2d\": [x1, y1, x2, y2], \"bbox_3d\": [x, y, z, l, \
             w, h, yaw]}}</answer>: the 2D box in pixels of this image, the 3D box centre, length, width, height in \
             metres in the camera frame (x right, y down, z forward) and yaw in radians about the y axis.",
            tokens::VISION_START,
            tokens::IMAGE_PAD,
            tokens::IMAGE_PAD,
            tokens::IMAGE_PAD,
            tokens::VISION_END
        )
    );

    // v2 moves the image block to the end of the user turn and changes nothing else.
    let v2 = chat_prompt(&q, &k, 3, PromptLayout::TextFirst);
    let image = format!("{}{}{}", tokens::VISION_START, tokens::IMAGE_PAD.repeat(3), tokens::VISION_END);
    let (u1, u2) = (user_turn_of(&p), user_turn_of(&v2));
    assert!(u1.starts_with(&image) && u2.ends_with(&image), "{u2}");
    assert_eq!(u1.replace(&image, ""), u2.replace(&image, ""), "the same text");
    assert_eq!(p.replace(&u1, ""), v2.replace(&u2, ""), "system and assistant parts are shared");
}

/// The user turn's content (between `user\n` and `<|im_end|>`).
fn user_turn_of(prompt: &str) -> String {
    let start = prompt.find("user\n").expect("a user turn") + "user\n".len();
    let end = prompt[start..].find(tokens::IM_END).expect("its end") + start;
    prompt[start..end].to_owned()
}

#[test]
fn protocol_versions_name_their_layouts() {
    assert_eq!(PromptLayout::for_version(1).unwrap(), PromptLayout::ImageFirst);
    assert_eq!(PromptLayout::for_version(2).unwrap(), PromptLayout::TextFirst);
    assert_eq!(PromptLayout::for_version(PROTOCOL_VERSION).unwrap().version(), PROTOCOL_VERSION);
    for v in [0, 3, 9] {
        let e = PromptLayout::for_version(v).unwrap_err();
        assert!(matches!(e, Error::UnsupportedProtocol(x) if x == v), "{e}");
    }
}
