"""The seed-style baseline, this repository's own implementation: the one copy of the seed's loop, with the shared
reference's semantics (`/work/shared/gpu/baseline_seed_style.py`): HF `Trainer` + PEFT LoRA on a random-weight model,
each batch padded to its longest sequence, gradient checkpointing, `prepare_model_for_kbit_training` for NF4,
`paged_adamw_32bit`, bf16, lengths from a long-tailed chat distribution (median ~300, capped at 1024, seed 0), batch 4,
20 warm-up steps then 30 timed ones; it reports real (non-pad) tokens per second over the timed steps and the peak of
`torch.cuda.max_memory_allocated` over them, one `RESULT {json}` line per run.  Without CUDA (the CPU smoke tests):
fp32, no NF4, `adamw_torch`, said so in the result (`quantized: false`, `dtype: float32`).

    python bench/baseline.py --shape llama2-7b [RUN ...]       # all three runs (or those named), in this process
    python bench/baseline.py --shape tiny --prepare            # only build the checkpoint (bench/shapes.py), print ENV
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from importlib import metadata

from shapes import CHATGLM2_SHAPES, FIRST_WORD_ID, SHAPES, build_checkpoint, default_checkpoint, tmp_root, word_vocab

NUM_SAMPLES = 256
WORKLOAD_SEED = 0
MEDIAN_LENGTH, LENGTH_SIGMA, MIN_LENGTH, MAX_LENGTH = 300, 0.7, 32, 1024
TOTAL_STEPS, WARMUP_STEPS = 50, 20  # 30 timed steps after 20 warm-up steps


# name: (NF4 weights + prepare_model_for_kbit_training, LoRA target modules, rank, alpha, batch size), the reference's
RUNS = {"qlora-seed-qv-r64-bs4": (True, ["q_proj", "v_proj"], 64, 16, 4),
        "qlora-all-linear-r16-bs4": (True, "all-linear", 16, 32, 4),
        "lora-bf16-all-linear-r16-bs4": (False, "all-linear", 16, 32, 4)}


def sample_workload(vocab_size: int = 32000, num_samples: int = NUM_SAMPLES, seed: int = WORKLOAD_SEED):
    """Token-id lists whose lengths follow a long-tailed chat-SFT distribution (median ~300, within 32..1024).

    The draws are the reference's, in its order (all lengths, then each sample's ids), so with vocab 32000 the
    samples are identical to its; a smaller vocabulary keeps the same lengths."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(num_samples, generator=generator)
    lengths = torch.exp(normal * LENGTH_SIGMA + math.log(MEDIAN_LENGTH)).clamp(MIN_LENGTH, MAX_LENGTH).long()
    return [torch.randint(FIRST_WORD_ID, vocab_size, (int(length),), generator=generator).tolist()
            for length in lengths]


def pad_to_longest(features):
    """Right-pads each batch to its longest sequence (pad id 0, labels -100 on padding)."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.zeros(len(features), longest, dtype=torch.long)
    attention_mask = torch.zeros(len(features), longest, dtype=torch.long)
    labels = torch.full((len(features), longest), -100, dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        input_ids[row, :length] = torch.tensor(feature["input_ids"])
        attention_mask[row, :length] = 1
        labels[row, :length] = input_ids[row, :length]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def timed_trainer(warmup_steps: int, **kwargs):
    """A Trainer that counts real tokens from step `warmup_steps` on, with a callback that starts the clock there."""
    import torch
    from transformers import Trainer, TrainerCallback

    class StartClockAfterWarmup(TrainerCallback):
        started_at = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup_steps:
                cuda = torch.cuda.is_available()
                if cuda:
                    torch.cuda.synchronize()
                self.started_at = time.time()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()

    class RealTokenCountingTrainer(Trainer):
        timed_real_tokens = 0

        def training_step(self, model, inputs, *args, **kw):
            if self.state.global_step >= warmup_steps:
                self.timed_real_tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kw)

    clock = StartClockAfterWarmup()
    return RealTokenCountingTrainer(callbacks=[clock], **kwargs), clock


def load_model(checkpoint: str, name: str, on_gpu: bool):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized, targets, rank, alpha, _ = RUNS[name]
    quantize = quantized and on_gpu
    started = time.time()
    if on_gpu:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=False) if quantize else None
        model = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=quantization,
                                                     dtype=torch.bfloat16, device_map={"": 0})
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    memory = f", mem {torch.cuda.memory_allocated() / 2**30:.1f} GiB" if on_gpu else ""
    print(f"[{name}] loaded in {time.time() - started:.1f}s{memory}", flush=True)  # as the reference reports it
    model.config.use_cache = False
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.1, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), quantize


def run(name: str, checkpoint: str, vocab_size: int, total_steps: int = TOTAL_STEPS,
        warmup_steps: int = WARMUP_STEPS) -> dict:
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    started = time.time()
    model, quantized = load_model(checkpoint, name, on_gpu)
    load_seconds = round(time.time() - started, 1)  # loading, k-bit preparation and adapters
    optimizer = "paged_adamw_32bit" if on_gpu else "adamw_torch"
    args = TrainingArguments(
        output_dir=os.path.join(tmp_root(), f"tunekit-bench-out-{name}"), per_device_train_batch_size=RUNS[name][4],
        gradient_accumulation_steps=1, max_steps=total_steps, learning_rate=2e-4, bf16=on_gpu, use_cpu=not on_gpu,
        logging_steps=100, report_to=[], save_strategy="no", optim=optimizer, gradient_checkpointing=True,
        dataloader_num_workers=0, disable_tqdm=True)
    dataset = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids} for ids in sample_workload(vocab_size)]
    trainer, clock = timed_trainer(warmup_steps, model=model, args=args, train_dataset=dataset,
                                   data_collator=pad_to_longest)
    trainer.train()
    if on_gpu:
        torch.cuda.synchronize()
    seconds, tokens = time.time() - clock.started_at, trainer.timed_real_tokens
    result = dict(
        name=name, steps=total_steps - warmup_steps, seconds=round(seconds, 2), real_tokens=tokens,
        tokens_per_s=round(tokens / seconds),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        device=torch.cuda.get_device_name(0) if on_gpu else "cpu", quantized=quantized,
        dtype="bfloat16" if on_gpu else "float32", optim=optimizer,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad), load_seconds=load_seconds)
    print("RESULT", json.dumps(result), flush=True)
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def describe_environment() -> dict:
    import torch

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    on_gpu = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
            "device_count": torch.cuda.device_count() if on_gpu else 0, "cuda": torch.version.cuda,
            "python": platform.python_version(), "torch": torch.__version__,
            **{name: version(name) for name in ("transformers", "peft", "accelerate", "bitsandbytes", "trl",
                                                "tokenizers", "deepspeed", "optimum", "gptqmodel")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help=f"run names (default: all): {', '.join(RUNS)}")
    parser.add_argument("--shape", choices=sorted([*SHAPES, *CHATGLM2_SHAPES]), default="llama2-7b")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: under $TMPDIR, built if missing)")
    parser.add_argument("--steps", type=int, default=TOTAL_STEPS, help="optimizer steps in all")
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="steps before the clock starts")
    parser.add_argument("--prepare", action="store_true", help="only build the checkpoint; print ENV {json}")
    parser.add_argument("--vocab-size", type=int, help="train on an existing --checkpoint of any architecture (e.g. "
                                                       "a converted ChatGLM2): ids are drawn below this; nothing is built")
    args = parser.parse_args(argv)
    if set(args.runs) - set(RUNS):
        parser.error(f"unknown run(s) {sorted(set(args.runs) - set(RUNS))}; known: {list(RUNS)}")
    if not 0 <= args.warmup < args.steps or args.vocab_size and not os.path.isfile(f"{args.checkpoint}/config.json"):
        parser.error("need 0 <= --warmup < --steps; --vocab-size needs an existing --checkpoint folder")
    checkpoint = args.checkpoint or default_checkpoint(args.shape)
    environment = describe_environment()
    print(environment["device"], environment["torch"], flush=True)
    built = {"checkpoint": checkpoint, "built": False} if args.vocab_size else build_checkpoint(checkpoint, args.shape)
    if args.prepare:
        print("ENV", json.dumps({**environment, "shape": args.shape, **built}), flush=True)
        return 0
    failures = 0
    for name in args.runs or list(RUNS):
        try:
            run(name, checkpoint, args.vocab_size or word_vocab(args.shape), args.steps, args.warmup)
        except Exception as error:  # keep going, like the reference; the runner reads FAILED lines
            failures += 1
            print("FAILED", name, repr(error)[:500], flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
