"""Issue 24, bar 5: DPO speed on the GPU, the project's path against TRL's DPOTrainer defaults, in one run.

A Llama-2-7B-shaped checkpoint with random bf16 weights (built once under $TMPDIR, ~13.5 GB) and a Llama-2-style BPE
tokenizer with the Llama-2 chat template (tunekit.tiny's, 2,000 tokens: ids beyond it are embedding rows no token
uses, as in any real checkpoint); a synthetic preference set in TRL's conversational form (prompt = a user turn, chosen
/ rejected = an assistant turn each) of random words, with long-tailed (log-normal) lengths: prompt median 128 tokens,
answers median 192, the prompt plus the longer answer capped at --max_length once rendered, so TRL truncates nothing.
Exactly (warm-up + timed steps) x batch pairs: one epoch, every pair once, the same batches in every arm (the Trainer's
sampler, seed 42). Each arm runs in its own process:

  tunekit        `finetune.py --task dpo` (tunekit.train.main, in the child) with the NF4 recipe's switches that apply
                 to DPO (recipes/llama2/qlora.json): NF4 + double quant, LoRA r16 a32 on all linear layers without
                 dropout (fused LoRA), no fp32 upcast, gradient checkpointing, Liger kernels, async activation offload,
                 8-bit AdamW; and --precompute_ref_log_probs (the reference log-probs in one pass before training).
  trl-defaults   trl.DPOTrainer as its docs write it: the model path, quantization_config=BitsAndBytesConfig(NF4,
                 double quant, bf16 compute), peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
                 DPOConfig defaults except output_dir, batch 4, max_length 1024, max_steps, logging_steps 1,
                 report_to none and model_init_kwargs dtype bfloat16 (TRL's loader defaults to float32).
  tunekit-otf    the tunekit arm with the reference computed on the fly (as trl-defaults): what precompute buys.
  tunekit-nooffload  the tunekit arm without the activation offload: run at once if the tunekit arm fails otherwise
                 than for memory (or by name).
  trl-fp32       (only by name) trl-defaults with TRL's float32 default for the unquantized weights.

Padding-free batches are no option for either: TRL 1.16's DPOTrainer turns `padding_free` off with a warning (since its
DPO refactor) and tunekit refuses --packing / --token_budget for --task dpo, so both pad each batch (chosen and
rejected concatenated, padded to the longest). Liger's fused DPO loss is not in TRL 1.16 either (no `use_liger_loss`):
its DPO computes the per-token log-probs with its own chunked fused LM head (trl/kernels/chunked_logprob.py) in every
arm, so no (tokens x vocab) logits exist anywhere; `use_liger_kernel` there patches only the layers (RMSNorm, RoPE,
SwiGLU; fused_linear_cross_entropy forced off), when training starts, i.e. after TRL's precompute pass, so
tunekit/preference.py patches them before the trainer is built.

Both arms are measured by the same probes, installed on trl.DPOTrainer (measurement only): real (non-pad) tokens per
step from each batch's attention mask (chosen + rejected, prompt + answer), wall time per optimizer step (CUDA synced),
torch.cuda.max_memory_allocated per step (reset at each step's start), the logged loss of every step, and the
precompute's cost (hashing the model + the reference pass). Figures over the timed steps after the warm-up ones;
'with precompute' charges the precompute to the steps in proportion (one epoch: timed / all steps of it).

    python bench/dpo.py --smoke                 # CPU: 2-layer model, fp32, no NF4/Liger/offload/8-bit, 2 steps/arm
    OUT=$OUT python3 bench/dpo.py --deadline 420   # GPU (after installing .whl, see the end of bench/README.md)

Writes $OUT/dpo.json (or --out), each arm's log beside it, and on a GPU bench/results-dpo/<h100|h200>-dpo.json;
`python bench/report.py` renders bench/results-dpo/ into BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN2 = math.log(2)
ARMS = {
    "tunekit": dict(kind="tunekit", precompute=True, offload=True),
    "trl-defaults": dict(kind="trl", dtype="bfloat16"),
    "tunekit-otf": dict(kind="tunekit", precompute=False, offload=True),
    "tunekit-nooffload": dict(kind="tunekit", precompute=True, offload=False),
    "trl-fp32": dict(kind="trl", dtype=None),
}
DEFAULT_ARMS = "tunekit,trl-defaults,tunekit-otf"  # ours first: a fresh GPU's first process runs slow (bench/README)
FALLBACK = {"tunekit": "tunekit-nooffload"}  # run at once when the arm fails (not for lack of memory)
BASELINE = "trl-defaults"
LORA = dict(r=16, alpha=32, targets="all-linear")
# the NF4 recipe's switches that apply to DPO (recipes/llama2/qlora.json); packing, token_budget and varlen do not
TUNEKIT_GPU = ["--q_lora", "true", "--bnb_4bit_quant_type", "nf4", "--bnb_4bit_use_double_quant", "true",
               "--bf16", "true", "--use_liger_kernel", "true", "--optim", "adamw_bnb_8bit"]
# the CPU smoke: what cannot run there is left out (bitsandbytes 4-bit and 8-bit, Liger's Triton kernels, CUDA streams)
TUNEKIT_CPU = ["--use_cpu", "true", "--bf16", "false", "--optim", "adamw_torch"]
NOTES = [
    "TRL 1.16's DPOTrainer turns padding_free off with a warning (unavailable since its DPO refactor) and tunekit "
    "refuses --packing / --token_budget for --task dpo: both arms pad each batch (chosen and rejected concatenated, "
    "padded to the longest)",
    "TRL 1.16 has no use_liger_loss (Liger's fused DPO loss): every arm computes the per-token log-probs with TRL's "
    "chunked fused LM head (no tokens x vocab logits); use_liger_kernel patches RMSNorm, RoPE and SwiGLU only, when "
    "training starts; tunekit patches them before TRL computes a precomputed reference (tunekit/preference.py), so "
    "reference and policy share kernels (this bench's first H100 run, before that fix: the tunekit arm's first loss was "
    "ln 2 + 0.047)",
    "TRL casts the trainable LoRA weights of a 4-bit model to bf16 (its QLoRA rule) in every arm, tunekit's too",
    "'with the precompute' charges the precompute (TRL's hash of the model, then the reference pass over all pairs) "
    "to the timed steps in proportion (timed / all steps of the one epoch)",
]
SHAPE_7B = "llama2-7b"
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5)
# log-normal lengths in tokens (median, sigma) of the prompt's text and of each answer's; cap: prompt + longer answer
LENGTHS = dict(gpu=dict(prompt=(128, 0.9), answer=(192, 0.7), floor=8), smoke=dict(prompt=(24, 0.6),
                                                                                     answer=(32, 0.6), floor=4))


# ------------------------------------------------------------------------------------------------ the build (child)
def child_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                   [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one GPU per process: several would mean DataParallel
    return env


def tokenizer():
    """tunekit.tiny's Llama-2 tokenizer (sentencepiece-style BPE with byte fallback, <unk>/<s>/</s> = 0/1/2, Llama-2's
    chat template), trained offline on data/."""
    sys.path.insert(0, ROOT)
    from tunekit.convert import corpus
    from tunekit.families import FAMILIES
    from tunekit.tiny import DATA_DIR, train_tokenizer

    return train_tokenizer(FAMILIES["llama2"], list(corpus(DATA_DIR)))


def word_pool(tok) -> list[tuple[str, int]]:
    """Words to write with: the vocabulary's alphabetic pieces, each with the tokens it takes after a space (words
    tokenize independently: the pre-tokenizer splits at every space)."""
    words = sorted({w for w in (t.lstrip("▁") for t in tok.get_vocab()) if w.isascii() and w.isalpha()})
    return [(w, len(tok.encode(w, add_special_tokens=False))) for w in words]  # "▁w...", as after a space


def rendered(tok, messages) -> int:
    return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def make_records(tok, pairs: int, cap: int, spec: dict, seed: int = 0) -> tuple[list[dict], dict]:
    """The preference pairs and their lengths as TRL tokenizes them (prompt with the generation prompt; prompt +
    answer), the prompt plus the longer answer at most `cap` tokens."""
    rng, pool = random.Random(seed), word_pool(tok)

    def draw(median, sigma):
        return max(spec["floor"], int(rng.lognormvariate(math.log(median), sigma)))

    def text(tokens):
        words, n = [], 0
        while n < tokens:
            word, k = pool[rng.randrange(len(pool))]
            words.append(word)
            n += k
        return " ".join(words)

    records, rows = [], []
    for _ in range(pairs):
        prompt_tokens = min(draw(*spec["prompt"]), cap // 2)
        prompt = [{"role": "user", "content": text(prompt_tokens)}]
        p = rendered(tok, prompt)
        answers, lengths = [], []
        for _side in ("chosen", "rejected"):
            target = min(draw(*spec["answer"]), cap - p - 8)
            while True:  # shorten until the rendered pair fits the cap
                answer = [{"role": "assistant", "content": text(max(spec["floor"], target))}]
                n = rendered(tok, prompt + answer)
                if n <= cap:
                    break
                target -= n - cap + 2
            answers.append(answer)
            lengths.append(n)
        records.append({"prompt": prompt, "chosen": answers[0], "rejected": answers[1]})
        rows.append((p, lengths[0], lengths[1]))

    def summary(values):
        values = sorted(values)
        return dict(median=statistics.median(values), p90=values[int(0.9 * (len(values) - 1))], min=values[0],
                    max=values[-1], mean=round(statistics.fmean(values), 1))

    stats = dict(pairs=pairs, cap=cap, prompt_tokens=summary([r[0] for r in rows]),
                 prompt_chosen_tokens=summary([r[1] for r in rows]),
                 prompt_rejected_tokens=summary([r[2] for r in rows]),
                 pair_longest_tokens=summary([max(r[1], r[2]) for r in rows]),
                 real_tokens=sum(r[1] + r[2] for r in rows),
                 distribution=f"log-normal: prompt text median {spec['prompt'][0]} tokens (sigma {spec['prompt'][1]}),"
                              f" each answer median {spec['answer'][0]} (sigma {spec['answer'][1]}), at least "
                              f"{spec['floor']}; prompt + longer answer <= {cap} rendered; random words, Llama-2 chat "
                              "template")
    return records, stats


def build(a) -> dict:
    """Child: tokenizer, checkpoint (reused when there) and data; returns the device and the workload's stats."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import shapes

    cuda = torch.cuda.is_available() and not a.smoke
    out = dict(device=torch.cuda.get_device_name() if cuda else "cpu", cuda=torch.version.cuda if cuda else None)
    tok = tokenizer()
    folder = a.checkpoint
    if not os.path.exists(os.path.join(folder, "config.json")):
        started = time.time()
        dtype = torch.bfloat16 if cuda else torch.float32
        config = dict(shapes.SHAPES[SHAPE_7B]) if not a.smoke else dict(SMOKE_SHAPE, vocab_size=len(tok))
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)
        try:
            with torch.device("cuda" if cuda else "cpu"):
                model = LlamaForCausalLM(LlamaConfig(**config, bos_token_id=tok.bos_token_id,
                                                     eos_token_id=tok.eos_token_id))
        finally:
            torch.set_default_dtype(torch.float32)
        staging = folder + ".partial"  # a build cut short never looks finished
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        del model
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        out["checkpoint_build_s"] = round(time.time() - started, 1)
    else:
        out["checkpoint_build_s"] = 0.0
    records, stats = make_records(tok, a.pairs, a.max_length, LENGTHS["smoke" if a.smoke else "gpu"])
    with open(a.data, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    out.update(checkpoint=folder, vocab_used=len(tok), workload=stats)
    return out


# ------------------------------------------------------------------------------------------------ one arm (child)
def install_probes() -> dict:
    """The same measurement in every arm, on trl.DPOTrainer itself (tunekit's trainer subclasses it): tokens per
    step from each micro-batch's attention mask, a callback timing each optimizer step (synced) with its peak memory,
    and the time spent in the precompute (the model hash and the reference pass)."""
    import torch
    import trl
    import trl.trainer.dpo_trainer as dpo_module
    from transformers import TrainerCallback

    probe = dict(step_s=[], step_tokens=[], step_peak_gib=[], precompute_s=0.0, tokens=0, t=None, train_begin=None)
    cuda = torch.cuda.is_available()

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            probe["train_begin"] = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            if probe["t"] is None:
                probe["t"] = time.perf_counter()
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
                probe["step_peak_gib"].append(round(torch.cuda.max_memory_allocated() / 2**30, 3))
            now = time.perf_counter()
            probe["step_s"].append(round(now - probe["t"], 4))
            probe["step_tokens"].append(probe["tokens"])
            probe["tokens"], probe["t"] = 0, now

    init, step = trl.DPOTrainer.__init__, trl.DPOTrainer.training_step

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Probe())
        probe["trainer"] = self

    def training_step(self, *args, **kwargs):
        inputs = args[1] if len(args) > 1 else kwargs["inputs"]
        mask = inputs.get("attention_mask")
        probe["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return step(self, *args, **kwargs)

    def timed(fn):
        def wrapper(*args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if cuda:
                    torch.cuda.synchronize()
                probe["precompute_s"] += time.perf_counter() - t0
        return wrapper

    trl.DPOTrainer.__init__, trl.DPOTrainer.training_step = __init__, training_step
    trl.DPOTrainer._precompute_ref_logps = timed(trl.DPOTrainer._precompute_ref_logps)
    dpo_module.hash_module = timed(dpo_module.hash_module)  # only called for precompute_ref_log_probs
    return probe


def tunekit_argv(a, arm: dict, out_dir: str) -> list[str]:
    return ["--model_name_or_path", a.checkpoint, "--task", "dpo", "--data_path", a.data, "--output_dir", out_dir,
            "--overwrite_output_dir", "true", "--use_lora", "true", "--lora_r", str(LORA["r"]),
            "--lora_alpha", str(LORA["alpha"]), "--lora_dropout", "0", "--lora_target_modules", LORA["targets"],
            "--gradient_checkpointing", "true", *(TUNEKIT_CPU if a.smoke else TUNEKIT_GPU),
            "--offload_activations_async", "true" if arm["offload"] and not a.smoke else "false",
            "--precompute_ref_log_probs", "true" if arm["precompute"] else "false",
            "--per_device_train_batch_size", str(a.batch), "--gradient_accumulation_steps", "1",
            "--model_max_length", str(a.max_length), "--max_steps", str(a.warmup + a.steps),
            # TRL's DPO defaults where the speed does not depend on them, so that the losses compare step by step
            "--learning_rate", "1e-6", "--beta", "0.1", "--loss_type", "sigmoid", "--seed", "42",
            "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none"]


def run_tunekit(a, arm: dict, out_dir: str):
    sys.path.insert(0, ROOT)
    from tunekit.train import main

    return main(tunekit_argv(a, arm, out_dir))


def run_trl(a, arm: dict, out_dir: str):
    """TRL's own path, as a user writes it from TRL's docs; every DPOConfig value not named here is TRL's default."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    cuda = torch.cuda.is_available() and not a.smoke
    with open(a.data, encoding="utf-8") as f:
        train = datasets.Dataset.from_list([json.loads(line) for line in f])
    config = DPOConfig(output_dir=out_dir, per_device_train_batch_size=a.batch, max_length=a.max_length,
                       max_steps=a.warmup + a.steps, logging_steps=1, report_to="none",
                       model_init_kwargs={"dtype": trl_dtype(a, arm)} if trl_dtype(a, arm) else None,
                       **({} if cuda else dict(use_cpu=True, bf16=False)))
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16) if cuda else None
    trainer = DPOTrainer(model=a.checkpoint, args=config, train_dataset=train,
                         processing_class=AutoTokenizer.from_pretrained(a.checkpoint),
                         peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                                target_modules=LORA["targets"], task_type="CAUSAL_LM"),
                         quantization_config=quantization)
    trainer.train()
    return trainer


def trl_dtype(a, arm: dict) -> str | None:
    return arm["dtype"] and ("float32" if a.smoke else arm["dtype"])  # the smoke runs fp32 throughout


def resolved(trainer) -> dict:
    """What the arm really ran with, read back from the trainer and the model."""
    import torch

    args, model = trainer.args, trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    norm = getattr(getattr(base, "model", None), "norm", None)
    mlp = base.model.layers[0].mlp if hasattr(base, "model") else None
    fused = sum(1 for m in model.modules() if hasattr(m, "_unfused_forward"))  # tunekit/fused_lora.py's mark
    return dict(
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        padding_free=getattr(trainer, "padding_free", None), precompute_ref_log_probs=args.precompute_ref_log_probs,
        use_liger_kernel=args.use_liger_kernel, liger_kernel_config=args.liger_kernel_config,
        optim=str(args.optim), bf16=args.bf16, learning_rate=args.learning_rate, beta=args.beta,
        loss_type=args.loss_type, max_length=args.max_length, seed=args.seed,
        lr_scheduler_type=str(args.lr_scheduler_type), disable_dropout=args.disable_dropout,
        offload_activations_async=getattr(args, "offload_activations_async", None),
        activation_offloading=args.activation_offloading, attn_implementation=base.config._attn_implementation,
        quantized_4bit=bool(getattr(base, "is_loaded_in_4bit", False)),
        embed_dtype=str(base.get_input_embeddings().weight.dtype), lm_head_dtype=str(base.lm_head.weight.dtype),
        norm=f"{type(norm).__module__}.{type(norm).__name__}" if norm is not None else None,
        norm_forward=getattr(getattr(norm, "forward", None), "__qualname__", None),
        mlp_forward=getattr(getattr(mlp, "forward", None), "__qualname__", None),
        lora_dtype=sorted({str(p.dtype) for p in lora}), trainable_params=sum(p.numel() for p in lora),
        adapters=list(getattr(model, "peft_config", {}) or {}), ref_model=trainer.ref_model is not None,
        fused_lora_layers=fused or None, cuda=torch.cuda.is_available())


def arm_child(a) -> dict:
    arm = ARMS[a.child]
    t0 = time.perf_counter()
    probe = install_probes()
    out_dir = os.path.join(a.work, a.child)
    trainer = (run_tunekit if arm["kind"] == "tunekit" else run_trl)(a, arm, out_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    first = next((h for h in trainer.state.log_history if "loss" in h), {})
    w = a.warmup
    times, tokens, peaks = probe["step_s"], probe["step_tokens"], probe["step_peak_gib"]
    timed_s, timed_tokens = sum(times[w:]), sum(tokens[w:])
    share = len(times[w:]) / max(1, len(times))  # the precompute, charged to the timed steps pro rata
    result = dict(arm=a.child, kind=arm["kind"], steps=len(times) - w, warmup=w,
                  tokens_per_s=round(timed_tokens / timed_s, 1) if timed_s else None,
                  tokens_per_s_with_precompute=round(timed_tokens / (timed_s + probe["precompute_s"] * share), 1)
                  if timed_s else None,
                  timed_s=round(timed_s, 3), timed_real_tokens=timed_tokens, all_real_tokens=sum(tokens),
                  precompute_s=round(probe["precompute_s"], 2),
                  setup_s=round(probe["train_begin"] - t0, 1) if probe["train_begin"] else None,
                  step_s=times, step_tokens=tokens, losses=losses, first_loss=losses[0] if losses else None,
                  first_log={k: v for k, v in first.items() if isinstance(v, (int, float))},
                  resolved=resolved(trainer))
    if peaks:
        result.update(peak_gib=max(peaks[w:] or peaks), peak_gib_all_steps=max(peaks), step_peak_gib=peaks)
        import torch
        result["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    if arm["kind"] == "tunekit":
        rec = getattr(trainer, "recorder", None)  # tunekit's own count of the same steps: a cross-check
        result["tunekit_recorder_tokens"] = list(rec.step_tokens) if rec else None
        result["command"] = "python finetune.py " + shlex.join(tunekit_argv(a, arm, out_dir))
    return result


# ------------------------------------------------------------------------------------------------------------ runner
def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    got = {}
    for pkg in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "liger_kernel"):
        try:
            got[pkg] = version(pkg)
        except PackageNotFoundError:
            try:
                got[pkg] = version(pkg.replace("_", "-"))
            except PackageNotFoundError:
                got[pkg] = None
    return got


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def compare(runs: dict) -> dict:
    """Each arm against trl-defaults: tokens/s and peak ratios, whether they trained the same batches, and the first
    loss against ln 2 (policy = reference at step 1)."""
    out = {"first_loss_minus_ln2": {name: round(r["first_loss"] - LN2, 6) for name, r in runs.items()
                                    if r.get("first_loss") is not None}}
    base = runs.get(BASELINE)
    for name, r in runs.items():
        if name == BASELINE or not base or "tokens_per_s" not in r or "tokens_per_s" not in base:
            continue
        row = dict(tokens_per_s_ratio=round(r["tokens_per_s"] / base["tokens_per_s"], 3),
                   with_precompute_ratio=round(r["tokens_per_s_with_precompute"] / base["tokens_per_s"], 3),
                   same_batches=r["step_tokens"] == base["step_tokens"])
        if r.get("peak_gib") and base.get("peak_gib"):
            row.update(peak_ratio=round(r["peak_gib"] / base["peak_gib"], 3),
                       peak_diff_gib=round(r["peak_gib"] - base["peak_gib"], 3))
        out[f"{name}/{BASELINE}"] = row
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU: a 2-layer model, fp32, 1 warm-up + 1 timed step per arm")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, in order, of {', '.join(ARMS)}")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; smoke 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 1)")
    p.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    p.add_argument("--max_length", type=int, default=None, help="tokens (default 1024; smoke 256)")
    p.add_argument("--deadline", type=float, default=540, help="seconds: arms that no longer fit are skipped")
    p.add_argument("--work", default=None, help="checkpoint, data and run folders (default $TMPDIR/tunekit-bench-dpo)")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "out", "dpo-bench"))
    p.add_argument("--child", choices=["build", *ARMS], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.warmup = a.warmup if a.warmup is not None else (1 if a.smoke else 5)
    a.steps = a.steps if a.steps is not None else (1 if a.smoke else 20)
    a.max_length = a.max_length or (256 if a.smoke else 1024)
    if a.child:
        try:
            result = build(a) if a.child == "build" else arm_child(a)
        except Exception as e:  # an OOM is a result too
            print("RESULT " + json.dumps(dict(arm=a.child, error=f"{type(e).__name__}: {e}"[:800])), flush=True)
            raise
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    start = time.time()
    arms = [name for name in a.arms.split(",") if name]
    unknown = [name for name in arms if name not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}: choose from {', '.join(ARMS)}")
    tmp = os.environ.get("TMPDIR", "/tmp")
    a.work = a.work or os.path.join(tmp, "tunekit-bench-dpo" + ("-smoke" if a.smoke else ""))
    a.checkpoint = os.path.join(a.work, "tiny-llama" if a.smoke else SHAPE_7B)
    a.data = os.path.join(a.work, "pairs.jsonl")
    a.pairs = (a.warmup + a.steps) * a.batch
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    report = dict(bench="dpo", issue="24, bar 5", smoke=a.smoke, shape="tiny (2 layers)" if a.smoke else SHAPE_7B,
                  command=" ".join([os.path.basename(sys.executable)] + sys.argv), git_commit=git_commit(),
                  python=sys.version.split()[0], versions=versions(), warmup=a.warmup, steps=a.steps, batch=a.batch,
                  max_length=a.max_length, lora=f"r={LORA['r']} alpha={LORA['alpha']} {LORA['targets']}",
                  arms_run=arms, runs={}, skipped=[],
                  settings={name: describe(name, a) for name in arms},
                  notes=NOTES + ([] if not a.smoke else [
                      "CPU smoke: no quantization (bitsandbytes NF4 and 8-bit AdamW are left to the GPU), no Liger "
                      "kernels, no activation offload, fp32; the logic only, no figure to keep"]))
    paths = [os.path.join(a.out, "dpo.json")]

    def save(partial=True):
        report.update(partial=partial, elapsed_s=round(time.time() - start, 1),
                      finished_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                      comparison=compare(report["runs"]))
        for path in paths:
            with open(path, "w") as f:
                json.dump(report, f, indent=1)

    def launch(name, extra=(), need=0.0):
        left = a.deadline - (time.time() - start)
        if left < need:
            return dict(arm=name, skipped=f"deadline ({left:.0f} s left, {need:.0f} s needed)")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--checkpoint", a.checkpoint,
               "--data", a.data, "--work", a.work, "--pairs", str(a.pairs), "--warmup", str(a.warmup),
               "--steps", str(a.steps), "--batch", str(a.batch), "--max_length", str(a.max_length),
               *(["--smoke"] if a.smoke else []), *extra]
        log_path = os.path.join(a.out, f"dpo-{name}.log")
        t0 = time.time()
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT,
                                      timeout=max(1.0, left))
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout (deadline)"
        with open(log_path, errors="replace") as log:
            text = log.read()
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        r = json.loads(lines[-1][7:]) if lines else dict(arm=name, error=f"exit {rc}")
        if "error" in r or rc != 0:
            r.setdefault("error", f"exit {rc}")
            r["log_tail"] = text[-3000:]
        r["process_s"] = round(time.time() - t0, 1)
        return r

    built = launch("build")
    if "error" in built:
        report["build"] = built
        save(partial=False)
        print(f"build failed: {built['error']}\n{built.get('log_tail', '')}", file=sys.stderr)
        return 1
    report.update(device=built["device"], cuda=built["cuda"], checkpoint_build_s=built["checkpoint_build_s"],
                  build_process_s=built["process_s"], workload=built["workload"], vocab_used=built["vocab_used"])
    if not a.smoke:  # the copy to keep (the device's tree does not come back: keep $OUT/dpo.json under this name)
        paths.append(os.path.join(ROOT, "bench", "results-dpo", f"{short_name(built['device'])}-dpo.json"))
        os.makedirs(os.path.dirname(paths[1]), exist_ok=True)
    print(f"device {built['device']}; checkpoint {a.checkpoint} (built in {built['checkpoint_build_s']} s); "
          f"{a.pairs} pairs, {built['workload']['real_tokens']:,} real tokens", flush=True)
    save()
    need = 20.0 if a.smoke else 120.0  # a 7B arm: imports, NF4 load, compile, 25 steps
    queue = list(arms)
    while queue:
        name = queue.pop(0)
        r = launch(name, need=need)
        if "error" in r and name in FALLBACK and "out of memory" not in r.get("log_tail", "").lower():
            queue.insert(0, FALLBACK[name])
            report["arms_run"].insert(report["arms_run"].index(name) + 1, FALLBACK[name])
            report["settings"][FALLBACK[name]] = describe(FALLBACK[name], a)
        if "skipped" in r:
            report["skipped"].append(f"{name}: {r['skipped']}")
        else:
            report["runs"][name] = r
        print(f"{name:>13}: " + (
            f"{r['tokens_per_s']:>9,.1f} real tok/s ({r['tokens_per_s_with_precompute']:,.1f} with precompute "
            f"{r['precompute_s']} s)  peak {r.get('peak_gib', float('nan')):6.2f} GiB  first loss "
            f"{r['first_loss']:.6f}, last {r['losses'][-1]:.6f}  ({r['process_s']} s)"
            if r.get("tokens_per_s") else r.get("error") or r.get("skipped")), flush=True)
        if "error" in r:
            print(r.get("log_tail", "")[-1500:], flush=True)
        save()
    save(partial=False)
    print(json.dumps(report["comparison"], indent=1))
    print("wrote " + " and ".join(paths))
    failed = [name for name, r in report["runs"].items() if "error" in r]
    return 1 if failed else 0


def short_name(device: str) -> str:
    return "h200" if "H200" in device else "h100" if "H100" in device else device.split()[-1].lower()


def describe(name: str, a) -> dict:
    """The arm's settings in words and flags (the JSON's record of what each arm set)."""
    arm = ARMS[name]
    if arm["kind"] == "tunekit":
        return dict(path="python finetune.py --task dpo (tunekit.train.main)",
                    flags=shlex.join(tunekit_argv(a, arm, "OUT")))
    return dict(path="trl.DPOTrainer(model=PATH, args=DPOConfig(...), peft_config=LoraConfig(...), "
                     "quantization_config=BitsAndBytesConfig(...))",
                set=dict(output_dir="OUT", per_device_train_batch_size=a.batch, max_length=a.max_length,
                         max_steps=a.warmup + a.steps, logging_steps=1, report_to="none",
                         model_init_kwargs={"dtype": trl_dtype(a, arm)} if arm["dtype"] else "TRL's default (float32)",
                         **({} if not a.smoke else dict(use_cpu=True, bf16=False))),
                quantization=None if a.smoke else "BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', "
                                                  "bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=bfloat16)",
                lora=f"LoraConfig(r={LORA['r']}, lora_alpha={LORA['alpha']}, target_modules='{LORA['targets']}', "
                     "task_type='CAUSAL_LM')",
                defaults_kept="gradient_checkpointing=True, bf16=True, learning_rate=1e-6, beta=0.1, "
                              "loss_type=['sigmoid'], padding_free=False, precompute_ref_log_probs=False, "
                              "use_liger_kernel=False, activation_offloading=False, optim adamw_torch_fused "
                              "(transformers' default), seed 42")


if __name__ == "__main__":
    sys.exit(main())
