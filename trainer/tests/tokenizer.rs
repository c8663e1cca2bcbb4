//! The byte-level BPE for from-scratch models: trained on protocol text made here, it keeps every
//! Qwen special token whole, splits numbers into digits, decodes back exactly, respects its
//! vocabulary size and survives `tokenizer.json` save -> load.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use monovlm_calib::{Box2d, Box3d, Intrinsics};
use monovlm_runtime::protocol::{Answer, PromptLayout, Query, chat_prompt, format_answer, tokens};
use monovlm_trainer::Error;
use monovlm_trainer::data::mono3drefer::{Dataset, Strictness};
use monovlm_trainer::tokenizer::{
    MIN_VOCAB_SIZE, QWEN2_5_VL_CHAT_TEMPLATE, SPECIAL_TOKENS, TOKENIZER_CONFIG_FILE, Tokenizer,
    dataset_corpus, load, save, train_bpe,
};

/// The vocabulary size the tests train to: small, but far above the 270 fixed entries.
const VOCAB_SIZE: usize = 600;

const OBJECTS: [&str; 6] = ["car", "van", "pedestrian", "cyclist", "truck", "tram"];
const COLOURS: [&str; 5] = ["white", "red", "black", "silver", "blue"];
const PLACES: [&str; 4] = [
    "parked on the right",
    "in front of the camera",
    "on the left side of the road",
    "far away, behind a tree",
];

/// Unicode text (already NFC) that the protocol never writes but a tokenizer must survive.
const UNICODE: [&str; 4] =
    ["Straße in München, 3 km", "東京の白いバン", "naïve café — “quoted”", "🚗 → 🚲 ½ ²"];

fn intrinsics(i: usize) -> Intrinsics {
    Intrinsics::new(721.5377 + i as f64, 721.5377, 609.5593 - i as f64 * 0.3, 172.854, 1242, 375).unwrap()
}

fn query(i: usize) -> Query {
    let text = format!(
        "the {} {} {}",
        COLOURS[i % COLOURS.len()],
        OBJECTS[i % OBJECTS.len()],
        PLACES[(i / 3) % PLACES.len()]
    );
    Query::new(&text).unwrap()
}

fn answer(i: usize) -> Answer {
    let f = i as f64;
    Answer {
        bbox_2d: Box2d::new(10.0 + f, 20.0 + f * 0.5, 120.0 + f * 2.0, 90.0 + f).unwrap(),
        bbox_3d: Box3d::new(-5.0 + f * 0.137, 1.71, 6.0 + f * 0.413, 3.64, 1.67, 1.65, -3.0 + f * 0.029)
            .unwrap(),
    }
}

/// A few hundred prompts, answers and queries from the protocol's own functions.
fn corpus() -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..150 {
        out.push(chat_prompt(&query(i), &intrinsics(i), 1 + i % 8, PromptLayout::TextFirst));
        out.push(format_answer(&answer(i)));
        out.push(query(i).as_str().to_owned());
    }
    out.extend(UNICODE.iter().map(|s| (*s).to_owned()));
    out
}

/// The tokenizer the tests share (training takes a moment).
fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| train_bpe(corpus().into_iter(), VOCAB_SIZE, 2).unwrap())
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_special_token_is_one_id_never_split() {
    let tok = tokenizer();
    for (index, token) in SPECIAL_TOKENS.iter().enumerate() {
        let id = tok.token_to_id(token).unwrap();
        assert_eq!(id as usize, index, "{token} keeps its place in Qwen's order");
        assert_eq!(ids(tok, token), [id], "{token} alone");
        // Glued to text on both sides, it is still one token.
        let glued = ids(tok, &format!("van{token}46"));
        assert_eq!(glued.iter().filter(|&&i| i == id).count(), 1, "{token} inside text");
        assert_eq!(tok.decode(&glued, false).unwrap(), format!("van{token}46"));
    }
    // The prompt's markers are exactly its special tokens.
    let prompt = chat_prompt(&query(0), &intrinsics(0), 3, PromptLayout::TextFirst);
    let encoding = tok.encode(prompt.as_str(), false).unwrap();
    let count = |t: &str| encoding.get_tokens().iter().filter(|s| *s == t).count();
    assert_eq!(count(tokens::IM_START), 3);
    assert_eq!(count(tokens::IM_END), 2);
    assert_eq!(count(tokens::VISION_START), 1);
    assert_eq!(count(tokens::VISION_END), 1);
    assert_eq!(count(tokens::IMAGE_PAD), 3);
}

#[test]
fn numbers_are_single_digits() {
    let tok = tokenizer();
    let encoding = tok.encode("46.70", false).unwrap();
    assert_eq!(encoding.get_tokens(), ["4", "6", ".", "7", "0"]);
    let text = format!("{} fx=721.5 0123456789 -1.57", format_answer(&answer(7)));
    let encoding = tok.encode(text.as_str(), false).unwrap();
    for token in encoding.get_tokens() {
        if token.chars().any(|c| c.is_ascii_digit()) {
            assert_eq!(token.len(), 1, "{token:?} holds a digit and something else");
        }
    }
    for digit in '0'..='9' {
        assert!(tok.token_to_id(&digit.to_string()).is_some(), "digit {digit} has its own token");
    }
}

#[test]
fn decode_inverts_encode() {
    let tok = tokenizer();
    let mut texts = vec![
        chat_prompt(&query(3), &intrinsics(3), 5, PromptLayout::TextFirst),
        format_answer(&answer(3)),
        format!("<think>the van is 12.5 m away</think>{}", format_answer(&answer(200))),
        "  two  spaces,\ttab and\nnewline\r\n".to_owned(),
        "unseen words: zyzzyva quixotic".to_owned(),
    ];
    texts.extend(UNICODE.iter().map(|s| (*s).to_owned()));
    texts.push("🦀 Ünïcödé never seen: ∮ E⋅da = Q, 𝔘𝔫𝔦".to_owned());
    for text in &texts {
        let ids = ids(tok, text);
        assert_eq!(&tok.decode(&ids, false).unwrap(), text);
    }
    // Skipping special tokens leaves the text between them.
    let prompt = chat_prompt(&query(1), &intrinsics(1), 2, PromptLayout::TextFirst);
    let plain = tok.decode(&ids(tok, &prompt), true).unwrap();
    assert!(!plain.contains("<|"));
    assert!(plain.contains(query(1).as_str()));
}

#[test]
fn image_pads_give_one_id_each() {
    let tok = tokenizer();
    let pad = tok.token_to_id(tokens::IMAGE_PAD).unwrap();
    for n in [1, 2, 7, 64, 300] {
        assert_eq!(ids(tok, &tokens::IMAGE_PAD.repeat(n)), vec![pad; n]);
        let prompt = chat_prompt(&query(n), &intrinsics(n), n, PromptLayout::TextFirst);
        assert_eq!(ids(tok, &prompt).iter().filter(|&&i| i == pad).count(), n);
    }
}

#[test]
fn vocabulary_size_is_respected() {
    let tok = tokenizer();
    let size = tok.get_vocab_size(true);
    assert!(size <= VOCAB_SIZE, "{size} > {VOCAB_SIZE}");
    assert!(size > MIN_VOCAB_SIZE, "no merges were learned ({size})");
    // Merges make the prompt's words much shorter than their bytes (numbers stay one digit a token).
    let prompt = chat_prompt(&query(5), &intrinsics(5), 1, PromptLayout::TextFirst);
    assert!(
        ids(tok, &prompt).len() * 3 < prompt.len(),
        "{} ids for {} bytes",
        ids(tok, &prompt).len(),
        prompt.len()
    );
    // A vocabulary too small to hold the bytes and special tokens is refused.
    let err = train_bpe(corpus().into_iter(), MIN_VOCAB_SIZE - 1, 2).unwrap_err();
    assert!(
        matches!(err, Error::VocabTooSmall { requested, min } if requested == MIN_VOCAB_SIZE - 1 && min == MIN_VOCAB_SIZE)
    );
    let smallest = train_bpe(corpus().into_iter(), MIN_VOCAB_SIZE, 2).unwrap();
    assert_eq!(smallest.get_vocab_size(true), MIN_VOCAB_SIZE);
}

#[test]
fn save_then_load_encodes_identically() {
    let tok = tokenizer();
    let dir = scratch("save_load");
    let files = save(tok, &dir).unwrap();
    let loaded = load(&dir).unwrap();
    let from_file = load(&files.tokenizer).unwrap();
    for text in corpus().iter().take(40).chain([&"🚗 46.70".to_owned()]) {
        let want = tok.encode(text.as_str(), false).unwrap();
        for other in [&loaded, &from_file] {
            let got = other.encode(text.as_str(), false).unwrap();
            assert_eq!(got.get_ids(), want.get_ids());
            assert_eq!(got.get_tokens(), want.get_tokens());
        }
    }
    assert_eq!(loaded.get_vocab_size(true), tok.get_vocab_size(true));
    // The HF file is a full byte-level BPE with the special tokens as added tokens.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.tokenizer).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "BPE");
    assert_eq!(json["decoder"]["type"], "ByteLevel");
    assert_eq!(json["normalizer"]["type"], "NFC");
    let added = json["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), SPECIAL_TOKENS.len());
    assert!(added.iter().all(|t| t["special"] == true));
    // The config carries the chat template.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(TOKENIZER_CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["chat_template"], QWEN2_5_VL_CHAT_TEMPLATE);
    assert_eq!(config["eos_token"], tokens::IM_END);
    // A missing or broken file is a typed error, not a panic.
    assert!(matches!(load(&dir.join("absent.json")), Err(Error::Io { .. })));
    std::fs::write(dir.join("broken.json"), "{\"model\": 3}").unwrap();
    assert!(matches!(load(&dir.join("broken.json")), Err(Error::Json { .. })));
}

#[test]
fn dataset_corpus_trains_a_tokenizer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mono3drefer_mini");
    let dataset = Dataset::load(&root, Strictness::Strict).unwrap();
    let corpus = dataset_corpus(&dataset).unwrap();
    let records = dataset.all_records().count();
    assert!(records > 0);
    assert!(corpus.len() >= 2 * records);
    assert!(corpus.iter().any(|s| s.starts_with(tokens::IM_START)));
    assert!(corpus.iter().any(|s| s.starts_with("<answer>")));
    let tok = train_bpe(corpus.clone().into_iter(), 400, 1).unwrap();
    for text in &corpus {
        assert_eq!(&tok.decode(&ids(&tok, text), false).unwrap(), text);
    }
}
