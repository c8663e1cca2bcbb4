//! The prompt and answer protocol shared by the trainer and the runtime (DESIGN.md).
//!
//! The user turn carries the query and the intrinsics of the *model input* image; the answer is
//!
//! ```text
//! <answer>{"bbox_2d": [x1, y1, x2, y2], "bbox_3d": [x, y, z, l, w, h, yaw]}</answer>
//! ```
//!
//! optionally preceded by `<think>...</think>`. [`parse_answer`] is total: every string gives an
//! [`Answer`] or a typed [`Error`], never a panic; the trainer's format reward uses it too.

use monovlm_calib::{Box2d, Box3d, Intrinsics, wrap_angle};
use serde_json::Value;

use crate::error::{Error, Result};

/// Version of this protocol that new checkpoints and packages get, recorded in `monovlm.json`.
/// Versions differ in the [`PromptLayout`] only; the answer format is the same.
pub const PROTOCOL_VERSION: u32 = 2;

/// Where the image block sits in the user turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptLayout {
    /// Protocol v1: the image, then the text (the order of Qwen2.5-VL's own chat examples).
    ImageFirst,
    /// Protocol v2: the same text (intrinsics, query, answer format), then the image. Under causal
    /// attention the image tokens can then read the query, and the answer starts the same number
    /// of positions after the image for every query. A from-scratch model starts reading its image
    /// sooner this way (docs/results.md).
    TextFirst,
}

impl PromptLayout {
    /// The layout of protocol `version`.
    ///
    /// # Errors
    /// [`Error::UnsupportedProtocol`] for a version this code does not know.
    pub fn for_version(version: u32) -> Result<Self> {
        match version {
            1 => Ok(Self::ImageFirst),
            2 => Ok(Self::TextFirst),
            other => Err(Error::UnsupportedProtocol(other)),
        }
    }

    /// The protocol version with this layout.
    pub fn version(self) -> u32 {
        match self {
            Self::ImageFirst => 1,
            Self::TextFirst => 2,
        }
    }
}

/// The longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 512;

/// The system prompt of the Qwen2.5-VL chat template when none is given.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// Chat-template markers (Qwen2.5-VL family).
pub mod tokens {
    /// Starts a turn.
    pub const IM_START: &str = "<|im_start|>";
    /// Ends a turn; generation stops here.
    pub const IM_END: &str = "<|im_end|>";
    /// Opens an image.
    pub const VISION_START: &str = "<|vision_start|>";
    /// Closes an image.
    pub const VISION_END: &str = "<|vision_end|>";
    /// One image feature row (one 2x2 merged patch).
    pub const IMAGE_PAD: &str = "<|image_pad|>";
}

/// Decimal places of the 3D values in formatted answers (1 cm, 0.01 rad).
const DECIMALS_3D: i32 = 2;
/// The smallest size a formatted answer writes (one unit of the last decimal place).
const MIN_SIZE_3D: f64 = 0.01;

/// A validated referring expression: trimmed, non-empty, at most [`MAX_QUERY_CHARS`] characters,
/// white space folded to single spaces, no control characters and no chat-template markers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query(String);

impl Query {
    /// Validates and normalises a query.
    ///
    /// # Errors
    /// [`Error::EmptyQuery`], [`Error::QueryTooLong`] or [`Error::QueryForbidden`].
    ///
    /// # Example
    /// ```
    /// use monovlm_runtime::protocol::Query;
    /// let q = Query::new("  the white van\n parked on the right ")?;
    /// assert_eq!(q.as_str(), "the white van parked on the right");
    /// assert!(Query::new("<|im_end|>").is_err());
    /// # Ok::<(), monovlm_runtime::Error>(())
    /// ```
    pub fn new(text: &str) -> Result<Self> {
        if text.chars().any(|c| c.is_control() && !c.is_whitespace()) {
            return Err(Error::QueryForbidden { what: "control characters" });
        }
        let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if folded.is_empty() {
            return Err(Error::EmptyQuery);
        }
        let chars = folded.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(Error::QueryTooLong { chars, max: MAX_QUERY_CHARS });
        }
        if folded.contains("<|") || folded.contains("|>") {
            return Err(Error::QueryForbidden { what: "chat-template markers '<|' or '|>'" });
        }
        Ok(Self(folded))
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The text of the user turn (before or after the image, by [`PromptLayout`]): the intrinsics of
/// the model-input image, the query and the expected answer format.
pub fn user_text(query: &Query, model_input: &Intrinsics) -> String {
    format!(
        "Camera intrinsics of this {}x{} image: fx={:.1} fy={:.1} cx={:.1} cy={:.1}.\n\
         Find: {}\n\
         Answer with <answer>{{\"bbox_2d\": [x1, y1, x2, y2], \"bbox_3d\": [x, y, z, l, w, h, yaw]}}</answer>: \
         the 2D box in pixels of this image, the 3D box centre, length, width, height in metres in the camera \
         frame (x right, y down, z forward) and yaw in radians about the y axis.",
        model_input.width(),
        model_input.height(),
        model_input.fx(),
        model_input.fy(),
        model_input.cx(),
        model_input.cy(),
        query.as_str()
    )
}

/// The whole prompt in the Qwen2.5-VL chat template, with `image_tokens` `<|image_pad|>` rows (one
/// per merged patch: `grid_t * grid_h * grid_w / 4`) placed by `layout`, ending where the
/// assistant's answer begins.
pub fn chat_prompt(
    query: &Query,
    model_input: &Intrinsics,
    image_tokens: usize,
    layout: PromptLayout,
) -> String {
    use tokens::*;
    let image = format!("{VISION_START}{}{VISION_END}", IMAGE_PAD.repeat(image_tokens));
    let text = user_text(query, model_input);
    let (first, second) = match layout {
        PromptLayout::ImageFirst => (image, text),
        PromptLayout::TextFirst => (text, image),
    };
    format!(
        "{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{first}{second}{IM_END}\n{IM_START}assistant\n"
    )
}

/// A parsed answer: the 2D box in model-input pixels and the 3D box in the camera frame.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    /// 2D box, pixels of the model-input image.
    pub bbox_2d: Box2d,
    /// 3D box in the camera frame (metres, radians).
    pub bbox_3d: Box3d,
}

/// Rounds to `decimals` places, never giving `-0`.
fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let r = (v * scale).round() / scale;
    if r == 0.0 { 0.0 } else { r }
}

/// The answer as the model should write it: 2D box in whole pixels, 3D values to 0.01 (sizes at
/// least 0.01, yaw wrapped to `(-pi, pi]` after rounding).
///
/// `parse_answer(&format_answer(a))` gives `a` rounded the same way.
pub fn format_answer(answer: &Answer) -> String {
    let b2 = answer.bbox_2d.to_array().map(|v| round_to(v, 0));
    let mut b3 = answer.bbox_3d.to_array().map(|v| round_to(v, DECIMALS_3D));
    // Sizes stay positive after rounding, or the parser would reject our own answer.
    for size in &mut b3[3..6] {
        *size = size.max(MIN_SIZE_3D);
    }
    b3[6] = round_to(wrap_angle(b3[6]), DECIMALS_3D);
    let join = |vals: &[f64], decimals: usize| {
        vals.iter().map(|v| format!("{v:.decimals$}")).collect::<Vec<_>>().join(", ")
    };
    format!(
        "<answer>{{\"bbox_2d\": [{}], \"bbox_3d\": [{}]}}</answer>",
        join(&b2, 0),
        join(&b3, DECIMALS_3D as usize)
    )
}

/// The `n` finite numbers of array field `field` of `obj`.
fn numbers<const N: usize>(obj: &serde_json::Map<String, Value>, field: &'static str) -> Result<[f64; N]> {
    let value = obj.get(field).ok_or(Error::MissingField(field))?;
    let arr = value.as_array().filter(|a| a.len() == N).ok_or_else(|| Error::WrongArity {
        field,
        expected: N,
        got: match value {
            Value::Array(a) => format!("{} values", a.len()),
            other => truncate(&other.to_string(), 40),
        },
    })?;
    let mut out = [0.0; N];
    for (index, (slot, v)) in out.iter_mut().zip(arr).enumerate() {
        *slot = v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| Error::NotFinite {
            field,
            index,
            got: truncate(&v.to_string(), 40),
        })?;
    }
    Ok(out)
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Parses a model's output into an [`Answer`].
///
/// Takes the first `<answer>...</answer>` after any `<think>...</think>` block; the content must be
/// a JSON object with `bbox_2d` (4 finite numbers, `x2 >= x1`, `y2 >= y1`) and `bbox_3d` (7 finite
/// numbers, `l, w, h > 0`). Other keys are ignored; yaw is wrapped to `(-pi, pi]`.
///
/// # Errors
/// A typed [`Error`] for each way an answer can be malformed (missing tags, bad JSON, wrong arity,
/// non-finite values, non-positive sizes, inverted 2D box).
///
/// # Example
/// ```
/// use monovlm_runtime::protocol::parse_answer;
/// let a = parse_answer(r#"<think>the van</think><answer>{"bbox_2d": [10, 20, 50, 60],
///     "bbox_3d": [1.5, 1.2, 20.0, 4.5, 1.9, 2.1, -1.57]}</answer>"#)?;
/// assert_eq!(a.bbox_3d.z, 20.0);
/// assert!(parse_answer("the van is on the right").is_err());
/// # Ok::<(), monovlm_runtime::Error>(())
/// ```
pub fn parse_answer(text: &str) -> Result<Answer> {
    const OPEN: &str = "<answer>";
    const CLOSE: &str = "</answer>";
    let after_think = text.find("</think>").map_or(text, |i| &text[i + "</think>".len()..]);
    let start = after_think.find(OPEN).ok_or(Error::MissingAnswerTag)? + OPEN.len();
    let len = after_think[start..].find(CLOSE).ok_or(Error::UnclosedAnswerTag)?;
    let body = after_think[start..start + len].trim();
    let value: Value = serde_json::from_str(body).map_err(|e| Error::AnswerJson(e.to_string()))?;
    let obj = value.as_object().ok_or_else(|| Error::AnswerJson("expected a JSON object".to_owned()))?;

    let [x1, y1, x2, y2] = numbers::<4>(obj, "bbox_2d")?;
    if x2 < x1 || y2 < y1 {
        return Err(Error::InvertedBox2d { x1, y1, x2, y2 });
    }
    let [x, y, z, l, w, h, yaw] = numbers::<7>(obj, "bbox_3d")?;
    for (name, value) in [("l", l), ("w", w), ("h", h)] {
        if value <= 0.0 {
            return Err(Error::NonPositiveSize { name, value });
        }
    }
    Ok(Answer { bbox_2d: Box2d::new(x1, y1, x2, y2)?, bbox_3d: Box3d::new(x, y, z, l, w, h, yaw)? })
}
