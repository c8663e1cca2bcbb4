//! The whole command-line chain on a small synthetic dataset (data synth, tokenizer, init,
//! curriculum), and exact resumption: a run killed with SIGKILL in the middle of a stage and
//! resumed with --resume ends with the same metrics, evaluation and weights as an uninterrupted run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_monovlm-train");

fn run(args: &[&str], cwd: &Path) {
    let out = Command::new(BIN).args(args).current_dir(cwd).output().unwrap();
    assert!(out.status.success(), "monovlm-train {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

const CURRICULUM: &str = r#"
seed = 3
checkpoint_every = 2
val_examples = 4
val_max_new_tokens = 48

[[stage]]
name = "warm"
kind = "sft"
steps = 10
lr = 2e-3
batch_size = 4

[[stage]]
name = "grpo-2d"
kind = "grpo"
steps = 2
lr = 1e-4
reward = { kind = "iou2d" }
grpo = { group_size = 4, prompts_per_step = 2, max_new_tokens = 48 }
"#;

/// `metrics.jsonl` by (stage, step), the last line of a step winning (steps redone after a
/// resume are written again), without the timing fields.
fn metrics(dir: &Path) -> BTreeMap<(u64, u64), serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (v["stage"].as_u64().unwrap(), v["step"].as_u64().unwrap());
        let obj = v.as_object_mut().unwrap();
        obj.retain(|k, _| !k.starts_with("time_") && !k.ends_with("_per_s") && k != "step_s");
        out.insert(key, v);
    }
    out
}

/// Starts `monovlm-train ARGS` and kills it (SIGKILL) once `OUT/checkpoint` holds progress of
/// stage `stage` at step `min_step` or later.
fn kill_at_checkpoint(args: &[&str], root: &Path, out: &str, stage: u64, min_step: u64) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = root.join(out).join("checkpoint/train/state.json");
    let t0 = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&state) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if v["progress"]["stage"] == stage && v["progress"]["step"].as_u64().unwrap_or(0) >= min_step {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no mid-stage checkpoint appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The chain up to an initial checkpoint in `root`: data, tokenizer, `base`.
fn prepare(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    run(&["data", "synth", "--out", "data", "--images", "30", "--seed", "4"], root);
    run(&["tokenizer", "--data", "data", "--vocab-size", "500", "--out", "tok"], root);
    run(&["init", "--tokenizer", "tok", "--preset", "tiny", "--max-pixels", "25088", "--out", "base"], root);
}

/// Writes `curriculum` as `c.toml` in a [prepared](prepare) `root`, runs it uninterrupted into
/// `straight`, then again into `killed`, killed once it checkpointed `(stage, min_step)`; returns
/// the killed run's arguments (without `--resume`).
fn straight_and_killed(
    root: &Path,
    curriculum: &str,
    extra: &[&'static str],
    stage: u64,
    min_step: u64,
) -> Vec<&'static str> {
    std::fs::write(root.join("c.toml"), curriculum).unwrap();
    let mut common = vec![
        "curriculum",
        "--config",
        "c.toml",
        "--data",
        "data",
        "--base",
        "base",
        "--train-examples",
        "24",
        "--threads",
        "1",
    ];
    common.extend_from_slice(extra);
    let mut straight = common.clone();
    straight.extend(["--out", "straight"]);
    run(&straight, root);
    let mut killed = common;
    killed.extend(["--out", "killed"]);
    kill_at_checkpoint(&killed, root, "killed", stage, min_step);
    killed
}

/// Asserts the two runs logged the same `steps` metrics and wrote the same final weights in
/// `stage_dir`.
fn assert_same_end(root: &Path, steps: usize, stage_dir: &str) {
    let (a, b) = (metrics(&root.join("straight")), metrics(&root.join("killed")));
    assert_eq!(a.len(), steps);
    assert_eq!(a, b, "per-step metrics differ after resuming");
    let weights = |d: &str| std::fs::read(root.join(d).join(stage_dir).join("model.safetensors")).unwrap();
    assert!(weights("straight") == weights("killed"), "final weights differ");
}

#[test]
fn killed_and_resumed_run_equals_an_uninterrupted_one() {
    let root = std::env::temp_dir().join(format!("monovlm-resume-{}", std::process::id()));
    prepare(&root);
    // Killed once a mid-stage checkpoint exists (step >= 4 of the SFT stage).
    let args = straight_and_killed(&root, CURRICULUM, &[], 0, 4);
    assert!(!root.join("killed/stage-0-warm").exists(), "killed inside the first stage");
    // A second start without --resume refuses to overwrite the run.
    let refused = Command::new(BIN).args(&args).current_dir(&root).output().unwrap();
    assert!(!refused.status.success());
    // Nor does a resume with another curriculum: its steps would not be the ones counted.
    let other = CURRICULUM.replace("steps = 10", "steps = 11");
    std::fs::write(root.join("other.toml"), &other).unwrap();
    let mut wrong = args.clone();
    wrong[2] = "other.toml";
    wrong.push("--resume");
    let refused = Command::new(BIN).args(&wrong).current_dir(&root).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("differs from the curriculum"));
    let mut resume = args.clone();
    resume.push("--resume");
    run(&resume, &root);

    assert_same_end(&root, 12, "stage-1-grpo-2d");
    let eval = |d: &str| std::fs::read_to_string(root.join(d).join("eval.jsonl")).unwrap();
    assert_eq!(eval("straight"), eval("killed"));
    for png in ["plots/stage-0-warm.png", "plots/stage-1-grpo-2d.png", "summary.md"] {
        assert!(root.join("killed").join(png).exists(), "{png}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

const LORA_CURRICULUM: &str = r#"
seed = 5
checkpoint_every = 2
val_examples = 4
val_max_new_tokens = 48
lora_rank = 4
lora_alpha = 8.0

[[stage]]
name = "grpo-2d"
kind = "grpo"
steps = 6
lr = 1e-3
reward = { kind = "iou2d" }
grpo = { group_size = 4, prompts_per_step = 2, max_new_tokens = 48 }
"#;

/// A LoRA run killed inside its GRPO stage resumes from the saved adapters (the checkpoint's
/// weights have them merged), and ends bit for bit where an uninterrupted run does; in bf16, which
/// the stage's checkpoint keeps.
#[test]
fn a_lora_stage_killed_midway_resumes_exactly() {
    let root = std::env::temp_dir().join(format!("monovlm-resume-lora-{}", std::process::id()));
    prepare(&root);
    let mut args = straight_and_killed(&root, LORA_CURRICULUM, &["--dtype", "bf16"], 0, 2);
    assert!(!root.join("killed/stage-0-grpo-2d").exists(), "killed inside the stage");
    args.push("--resume");
    run(&args, &root);
    assert_same_end(&root, 6, "stage-0-grpo-2d");
    let config = std::fs::read_to_string(root.join("killed/stage-0-grpo-2d/config.json")).unwrap();
    assert!(config.contains("\"dtype\": \"bfloat16\""), "{config}");
    std::fs::remove_dir_all(&root).unwrap();
}
