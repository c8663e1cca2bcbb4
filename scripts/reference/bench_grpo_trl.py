#!/usr/bin/env python3
"""Speed anchor for the trainer's GRPO step: trl's GRPOTrainer on a random-init Qwen2, CPU, float32, ONE thread.

Hugging Face trl, text-only Qwen2ForCausalLM, no vLLM, one intra-op thread (OMP_NUM_THREADS=1, set_num_threads(1)).

What one "step" is: one optimizer step of GRPOTrainer (TrainerCallback, time.perf_counter from on_step_begin to
on_step_end). With num_iterations=1 every step samples a fresh rollout batch and then trains on it:
  generate  8 prompts x 8 samples = 64 completions (model.generate, KV cache, do_sample, temperature 1.0,
            top_p 1.0, top_k 0, exactly 32 new tokens: max_completion_length=32 and min_new_tokens=32, so no
            completion stops early and none is masked),
  reward    a trivial reward (fraction of even token ids in the completion), group-normalised advantages,
  reference one no-grad forward of the reference model (beta=0.01, k3 KL) over the 64 prompt+completion rows,
  update    forward + backward of the policy on the 64 rows (loss_type="dapo": token-mean over all completion
            tokens of the batch, as EasyR1; clip 0.2 / 0.3 = DAPO clip-higher; no dual clip in trl; trl's
            chunked log-prob kernel, which also computes the token entropies for its logs),
            grad-norm clipping 1.0, AdamW (lr 1e-5, constant schedule).
Also reported, per rollout: median_generate_s, the time in GRPOTrainer._generate (sampling and decoding), and
median_score_s, the rest of _generate_and_score_completions (rewards, advantages, the reference forward and, with
num_iterations=2, the old-log-prob forward); the update is the step minus both.
With num_iterations=2 a rollout batch is trained on twice: the first step of each pair also generates and runs an
extra no-grad forward for the old log-probs; the second only updates. Its JSON line adds the medians of both kinds
of step and of a whole rollout (the sum of its 2 steps); its median_step_s mixes the two kinds of step, so
median_rollout_s / 2 is the cost per optimizer step to compare.
Each run: 2 warm-up steps, then the median over --steps (default 6) measured steps; both are rounded up to whole
rollouts. Another process using the CPU slows a run down: each line records the 1-minute load average and
cpu_per_wall, the CPU time of this process over the wall time of the measured steps (about 1.0 when it had a core
to itself).

Models (random init, seed 0, sdpa attention, float32, tied embeddings, rope theta 1e6, saved to a temporary
directory so that trl loads the reference model from the same weights):
  2.9m  hidden 256, 4 layers, 4 heads / 2 kv heads (head_dim 64), intermediate 512, vocab 2048: 2,887,936 params
        (the text tower of the Rust ModelSize::bench_3m).
  100k  hidden 32, 2 layers, 2 heads / 1 kv head (head_dim 16), intermediate 64, vocab 2560: 100,640 params.
Tokenizer: a word-level `tokenizers` model whose vocabulary is <pad>=0, <eos>=1 and the words t2 .. t{V-1},
wrapped as a PreTrainedTokenizerFast (no chat template, no BOS). Each prompt is --prompt-tokens (default 32)
random words, so every prompt has exactly that many tokens and no padding is needed.

Versions: python 3.11, torch==2.13.0 (CUDA build, run on CPU), transformers==5.23.0, trl==1.16.0,
datasets==5.2.0, accelerate==1.15.0 (the .cache/pyhf environment; `pip install trl==1.16.0`).

Usage (one JSON line per run on stdout, also written as JSON lines to --json FILE; 1 to 1.5 minutes):
    .cache/pyhf/bin/python scripts/reference/bench_grpo_trl.py [--json out.jsonl]
        [--configs 2.9m 100k] [--iterations 1 2] [--steps 6] [--prompt-tokens 32]
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import datasets  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

torch.set_num_threads(1)

PAD, EOS = 0, 1
PROMPTS, GENERATIONS, NEW_TOKENS = 8, 8, 32
WARMUP = 2
CONFIGS = {
    "2.9m": dict(vocab_size=2048, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=512),
    "100k": dict(vocab_size=2560, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, intermediate_size=64),
}


def make_tokenizer(vocab_size):
    """Word-level tokenizer: <pad>, <eos>, t2 .. t{vocab_size-1}; words are split on whitespace."""
    vocab = {"<pad>": PAD, "<eos>": EOS, **{f"t{i}": i for i in range(2, vocab_size)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   padding_side="left", truncation_side="left")


def make_model(shape, path):
    """Random-init Qwen2ForCausalLM (seed 0) and its tokenizer, saved to `path`; returns the parameter count."""
    config = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=512, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}, bos_token_id=None,
                         eos_token_id=EOS, pad_token_id=PAD, use_cache=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(path)
    make_tokenizer(shape["vocab_size"]).save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def make_dataset(n, prompt_tokens, vocab_size, seed=0):
    rng = random.Random(seed)
    return datasets.Dataset.from_dict(
        {"prompt": [" ".join(f"t{rng.randrange(2, vocab_size)}" for _ in range(prompt_tokens)) for _ in range(n)]})


def even_token_reward(completions, completion_ids, **kwargs):
    """Fraction of even token ids in each completion (varies within a group, so advantages are non-zero)."""
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def time_method(obj, name, log):
    """Replaces obj.name by a wrapper that appends its wall time to `log`."""
    fn = getattr(obj, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        log.append(time.perf_counter() - t0)
        return result

    setattr(obj, name, timed)


class StepTimer(TrainerCallback):
    """Wall time (and CPU time of this process) of each optimizer step."""

    def __init__(self):
        self.t0, self.c0, self.times, self.cpu = None, None, [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.t0)
        self.cpu.append(time.process_time() - self.c0)


def bench(name, iterations, steps, prompt_tokens, workdir):
    shape = CONFIGS[name]
    model_dir = os.path.join(workdir, f"qwen2-{name}")
    params = make_model(shape, model_dir)
    warmup = -(-WARMUP // iterations) * iterations  # rounded up to whole rollouts
    total = warmup + -(-steps // iterations) * iterations
    args = GRPOConfig(
        output_dir=os.path.join(workdir, f"out-{name}-{iterations}"),
        use_cpu=True, bf16=False, fp16=False, seed=0,
        per_device_train_batch_size=PROMPTS * GENERATIONS, gradient_accumulation_steps=1,
        num_generations=GENERATIONS, max_completion_length=NEW_TOKENS,
        generation_kwargs={"min_new_tokens": NEW_TOKENS}, mask_truncated_completions=False,
        temperature=1.0, top_p=1.0, top_k=0,
        beta=0.01, loss_type="dapo", epsilon=0.2, epsilon_high=0.3, scale_rewards="group",
        num_iterations=iterations, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, max_steps=total, activation_checkpointing=False, use_vllm=False,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model_dir, reward_funcs=even_token_reward, args=args,
        train_dataset=make_dataset(PROMPTS * total, prompt_tokens, shape["vocab_size"]),
        processing_class=make_tokenizer(shape["vocab_size"]), callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # keeps stdout to the JSON lines
    assert trainer.ref_model is not None and not trainer.args.gradient_checkpointing
    generate_s, rollout_s = [], []
    time_method(trainer, "_generate", generate_s)  # sampling (model.generate) + decoding the completions
    time_method(trainer, "_generate_and_score_completions", rollout_s)  # + rewards, old/ref log-probs
    trainer.train()
    times = timer.times[warmup:]
    assert len(times) == total - warmup, (len(timer.times), total)
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    assert lengths and all(n == NEW_TOKENS for n in lengths), lengths  # every completion has exactly 32 tokens
    n = warmup // iterations  # warm-up rollouts
    out = {"bench": "trl_grpo", "config": name, "params": params, "prompts": PROMPTS, "generations": GENERATIONS,
           "new_tokens": NEW_TOKENS, "prompt_tokens": prompt_tokens, "num_iterations": iterations,
           "loss_type": args.loss_type, "beta": args.beta, "median_step_s": statistics.median(times),
           "min_step_s": min(times), "steps": len(times),
           "median_generate_s": statistics.median(generate_s[n:]),
           "median_score_s": statistics.median(r - g for r, g in zip(rollout_s[n:], generate_s[n:]))}
    if iterations > 1:
        rollouts = [times[i:i + iterations] for i in range(0, len(times), iterations)]
        out.update({"median_generate_step_s": statistics.median(r[0] for r in rollouts),
                    "median_reuse_step_s": statistics.median(t for r in rollouts for t in r[1:]),
                    "median_rollout_s": statistics.median(sum(r) for r in rollouts), "rollouts": len(rollouts)})
    out.update({"model": shape, "attn": "sdpa", "trl": trl.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
                "cpu_per_wall": sum(timer.cpu[warmup:]) / sum(times), "loadavg_1m": os.getloadavg()[0]})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the results as JSON lines to this file")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--iterations", nargs="+", type=int, default=[1, 2], help="num_iterations values to run")
    ap.add_argument("--steps", type=int, default=6, help="measured optimizer steps after 2 warm-up steps")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="tokens per prompt")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames inside trl
    datasets.disable_progress_bars()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-grpo-trl-") as workdir:
        for name in args.configs:
            for iterations in args.iterations:
                results.append(bench(name, iterations, args.steps, args.prompt_tokens, workdir))
                print(json.dumps(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)


if __name__ == "__main__":
    sys.exit(main())
