//! The tokenizer: a byte-level BPE in the Hugging Face `tokenizer.json` format, built like Qwen2's.
//!
//! Pretrained checkpoints bring their own `tokenizer.json` ([`load`]); from-scratch (nano) models
//! get one from [`train_bpe`], trained on the protocol's own text ([`dataset_corpus`]):
//!
//! - normaliser NFC; pre-tokeniser Qwen2's split regex ([`QWEN2_SPLIT_REGEX`], which isolates every
//!   `\p{N}` character, so `46.70` is `4 6 . 7 0`) then byte-level without its own regex; decoder and
//!   post-processor byte-level. Any UTF-8 text encodes (no unknown token) and decodes back exactly
//!   when it is already NFC.
//! - the Qwen2.5-VL special tokens ([`SPECIAL_TOKENS`]) are single special tokens, never split and
//!   never learned from: they are cut out of the corpus before counting pairs. They take ids `0..14`
//!   in [`SPECIAL_TOKENS`] order (Qwen puts them after its 151643 learned tokens; only the strings
//!   matter to the chat template and the runtime, which look ids up by string).
//!
//! [`save`] writes `tokenizer.json` (loads with transformers'
//! `PreTrainedTokenizerFast(tokenizer_file=...)` and `AutoTokenizer.from_pretrained(dir)`) and a
//! `tokenizer_config.json` carrying Qwen2.5-VL's chat template.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use monovlm_runtime::protocol::{Answer, PromptLayout, Query, chat_prompt, format_answer, tokens};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::data::mono3drefer::Dataset;
use crate::error::{Error, Result};

/// The tokenizer type (re-exported so callers need no direct `tokenizers` dependency).
pub use tokenizers::Tokenizer;

/// The file name of the Hugging Face tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The file name of the transformers tokenizer configuration (chat template, special-token roles).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// End of a document; Qwen's padding token.
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// One video feature row (Qwen2.5-VL); unused by MonoVLM but reserved.
pub const VIDEO_PAD: &str = "<|video_pad|>";

/// The special tokens of Qwen2.5-VL's `tokenizer_config.json` (ids 151643..=151656 there), in
/// Qwen's order; [`train_bpe`] gives them ids `0..14` in this order.
pub const SPECIAL_TOKENS: [&str; 14] = [
    ENDOFTEXT,
    tokens::IM_START,
    tokens::IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    tokens::VISION_START,
    tokens::VISION_END,
    "<|vision_pad|>",
    tokens::IMAGE_PAD,
    VIDEO_PAD,
];

/// Qwen2's pre-tokeniser regex (its `tokenizer.json`): contractions, letter runs, **single** number
/// characters, punctuation runs, newlines and spaces.
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The chat template of Qwen2.5-VL (`chat_template.json` of the Qwen2.5-VL checkpoints).
/// [`monovlm_runtime::protocol::chat_prompt`] writes the same text for one image and one user turn.
pub const QWEN2_5_VL_CHAT_TEMPLATE: &str = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The number of byte-level symbols every vocabulary holds (one per byte value).
const BYTE_ALPHABET: usize = 256;

/// The smallest vocabulary [`train_bpe`] accepts: the special tokens and the 256 byte symbols.
pub const MIN_VOCAB_SIZE: usize = SPECIAL_TOKENS.len() + BYTE_ALPHABET;

/// `<|image_pad|>` rows per prompt in [`dataset_corpus`]: the pads are cut out before training, so
/// the count only has to be non-zero.
pub const CORPUS_IMAGE_TOKENS: usize = 4;

/// The pieces of `text` between special tokens (empty pieces dropped).
fn without_special_tokens(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    loop {
        let next = SPECIAL_TOKENS
            .iter()
            .filter_map(|t| rest.find(t).map(|at| (at, t.len())))
            .min_by_key(|&(at, _)| at);
        match next {
            Some((at, len)) => {
                if at > 0 {
                    pieces.push(rest[..at].to_owned());
                }
                rest = &rest[at + len..];
            }
            None => {
                if !rest.is_empty() {
                    pieces.push(rest.to_owned());
                }
                return pieces;
            }
        }
    }
}

/// An untrained tokenizer with Qwen2's normaliser, pre-tokeniser, post-processor and decoder.
fn qwen2_pipeline() -> Result<Tokenizer> {
    let split = Split::new(
        SplitPattern::Regex(QWEN2_SPLIT_REGEX.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::Tokenizer(format!("pre-tokeniser regex: {e}")))?;
    let pre_tokenizer = Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_post_processor(Some(ByteLevelProcessor::new(false, false, false)))
        .with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok(tokenizer)
}

/// Trains a byte-level BPE of at most `vocab_size` tokens (special tokens included) on `corpus`.
///
/// # Arguments
/// - `corpus`: training text; special-token strings in it are cut out first.
/// - `vocab_size`: the largest vocabulary, at least [`MIN_VOCAB_SIZE`]; the result is smaller when
///   the corpus runs out of pairs to merge.
/// - `min_frequency`: a pair seen fewer times is never merged.
///
/// # Errors
/// [`Error::VocabTooSmall`] below [`MIN_VOCAB_SIZE`]; [`Error::Tokenizer`] if training fails.
///
/// # Example
/// ```
/// use monovlm_trainer::tokenizer::train_bpe;
/// let corpus = ["the white van parked on the right", "the red car 46.70 m away"];
/// let tok = train_bpe(corpus.iter().map(|s| s.to_string()), 300, 1)?;
/// let ids = tok.encode("46.70", false).map_err(|e| monovlm_trainer::Error::Tokenizer(e.to_string()))?;
/// assert_eq!(ids.get_ids().len(), 5);
/// # Ok::<(), monovlm_trainer::Error>(())
/// ```
pub fn train_bpe(
    corpus: impl Iterator<Item = String>,
    vocab_size: usize,
    min_frequency: u64,
) -> Result<Tokenizer> {
    if vocab_size < MIN_VOCAB_SIZE {
        return Err(Error::VocabTooSmall { requested: vocab_size, min: MIN_VOCAB_SIZE });
    }
    let special: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let bpe_trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = qwen2_pipeline()?;
    // Collected so the iterator is `Send` whatever the caller's is.
    let pieces: Vec<String> = corpus.flat_map(|text| without_special_tokens(&text)).collect();
    tokenizer
        .train(&mut TrainerWrapper::from(bpe_trainer), pieces.into_iter())
        .map_err(|e| Error::Tokenizer(format!("training: {e}")))?;
    Ok(tokenizer)
}

/// The training text of a nano model from a Mono3DRefer-layout dataset: for every record of every
/// split, its description, the chat prompt asking for it (with [`CORPUS_IMAGE_TOKENS`] image pads,
/// the intrinsics of its image) and its formatted answer.
///
/// Records whose description is not a valid [`Query`] contribute the description and answer only.
///
/// # Errors
/// As [`Dataset::intrinsics`] (an image or calibration file is missing or malformed).
pub fn dataset_corpus(dataset: &Dataset) -> Result<Vec<String>> {
    let mut intrinsics = HashMap::new();
    let mut corpus = Vec::new();
    for record in dataset.all_records() {
        corpus.push(record.description.clone());
        if let Ok(query) = Query::new(&record.description) {
            let k = match intrinsics.entry(record.image.clone()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => slot.insert(dataset.intrinsics(&record.image)?),
            };
            corpus.push(chat_prompt(&query, k, CORPUS_IMAGE_TOKENS, PromptLayout::TextFirst));
        }
        let answer = Answer { bbox_2d: record.label.bbox, bbox_3d: record.box3d };
        corpus.push(format_answer(&answer));
    }
    Ok(corpus)
}

/// The `tokenizer_config.json` that goes with a tokenizer from [`train_bpe`]: Qwen2.5-VL's chat
/// template and special-token roles (`<|im_end|>` ends a turn, `<|endoftext|>` pads).
pub fn tokenizer_config() -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": QWEN2_5_VL_CHAT_TEMPLATE,
        "eos_token": tokens::IM_END,
        "pad_token": ENDOFTEXT,
        "bos_token": null,
        "unk_token": null,
        "additional_special_tokens": SPECIAL_TOKENS
            .iter()
            .filter(|t| **t != ENDOFTEXT && **t != tokens::IM_END)
            .collect::<Vec<_>>(),
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "split_special_tokens": false,
        "errors": "replace",
    })
}

/// The files [`save`] wrote.
#[derive(Clone, Debug)]
pub struct TokenizerFiles {
    /// `DIR/tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `DIR/tokenizer_config.json`.
    pub config: PathBuf,
}

/// Writes `dir/tokenizer.json` and `dir/tokenizer_config.json` (creating `dir`).
///
/// # Errors
/// [`Error::Io`] if `dir` or a file cannot be written; [`Error::Tokenizer`] if serialising fails.
pub fn save(tokenizer: &Tokenizer, dir: &Path) -> Result<TokenizerFiles> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let files =
        TokenizerFiles { tokenizer: dir.join(TOKENIZER_FILE), config: dir.join(TOKENIZER_CONFIG_FILE) };
    let json = tokenizer.to_string(true).map_err(|e| Error::Tokenizer(format!("serialising: {e}")))?;
    std::fs::write(&files.tokenizer, json).map_err(|e| Error::io(&files.tokenizer, e))?;
    let config = serde_json::to_string_pretty(&tokenizer_config())
        .map_err(|e| Error::Json { path: files.config.clone(), message: e.to_string() })?;
    std::fs::write(&files.config, config).map_err(|e| Error::io(&files.config, e))?;
    Ok(files)
}

/// Reads a Hugging Face `tokenizer.json`: `path` is the file or the folder holding it.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::Json`] if it is not a valid tokenizer.
pub fn load(path: &Path) -> Result<Tokenizer> {
    let file = if path.is_dir() { path.join(TOKENIZER_FILE) } else { path.to_owned() };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    Tokenizer::from_str(&text).map_err(|e| Error::Json { path: file, message: e.to_string() })
}
