"""The seed-style baseline, this repository's own implementation.

Same semantics as the shared reference (`bench/reference/baseline_seed_style.py`, copied from
`/work/shared/gpu/baseline_seed_style.py`): HF `Trainer` + PEFT LoRA on a random-weight Llama-2-shaped model,
each batch padded to its longest sequence, gradient checkpointing, `prepare_model_for_kbit_training` for NF4,
`paged_adamw_32bit`, bf16, sequence lengths from a long-tailed chat distribution (median ~300, capped at 1024,
seed 0), batch 4, 20 warm-up steps then 30 timed steps. It reports real (non-pad) tokens per second over the timed
steps and the peak of `torch.cuda.max_memory_allocated` over them, one `RESULT {json}` line per run.

    python bench/baseline.py --shape llama2-7b                       # all three runs, in this process
    python bench/baseline.py --shape llama2-7b qlora-seed-qv-r64-bs4 # one run
    python bench/baseline.py --shape tiny                            # CPU smoke: fp32, no NF4, adamw_torch
    python bench/baseline.py --shape llama2-7b --prepare             # only build the checkpoint, print ENV {json}

Without CUDA (the `tiny` smoke test) there is no bitsandbytes: the NF4 runs load the model in fp32 instead, train
with `adamw_torch`, and say so in their result (`quantized: false`, `dtype: float32`).

`bench/run.py` imports `SHAPES`, `RUNS`, `default_checkpoint`, `build_checkpoint` and `sample_workload`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata

# ---------------------------------------------------------------------------------------------- configuration

SHAPES = {
    # Llama-2-7B, as the reference builds it.
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5),
    # A few-MB Llama for the CPU smoke test: same lengths (up to 1024), small vocabulary and width.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5),
}

FIRST_WORD_ID = 3  # ids 0, 1, 2 are <unk> (also the pad), <s> and </s>
NUM_SAMPLES = 256
WORKLOAD_SEED = 0
MEDIAN_LENGTH, LENGTH_SIGMA, MIN_LENGTH, MAX_LENGTH = 300, 0.7, 32, 1024
TOTAL_STEPS, WARMUP_STEPS = 50, 20  # 30 timed steps after 20 warm-up steps


@dataclass(frozen=True)
class RunSpec:
    name: str
    quantized: bool  # NF4 weights (bitsandbytes) + prepare_model_for_kbit_training
    target_modules: tuple[str, ...] | str
    rank: int
    alpha: int
    batch_size: int


RUNS = {spec.name: spec for spec in (
    RunSpec("qlora-seed-qv-r64-bs4", True, ("q_proj", "v_proj"), 64, 16, 4),
    RunSpec("qlora-all-linear-r16-bs4", True, "all-linear", 16, 32, 4),
    RunSpec("lora-bf16-all-linear-r16-bs4", False, "all-linear", 16, 32, 4),
)}


def tmp_root() -> str:
    return os.environ.get("TMPDIR", "/tmp")


def default_checkpoint(shape: str) -> str:
    """llama2-7b: the reference's own default folder, so both find the same checkpoint."""
    name = "llama2-7b-random" if shape == "llama2-7b" else f"tunekit-bench-{shape}-random"
    return os.path.join(tmp_root(), name)


# ---------------------------------------------------------------------------------------------- checkpoint

def save_word_tokenizer(folder: str, vocab_size: int) -> None:
    """A word-level tokenizer where each word t{i} is token i, saved beside the weights (as the reference does)."""
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(FIRST_WORD_ID, vocab_size)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_level, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<unk>").save_pretrained(folder)


def build_checkpoint(folder: str, shape: str) -> dict:
    """Random-weight Llama of the given shape, saved once (bf16, built on the GPU when there is one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = SHAPES[shape]
    if os.path.exists(os.path.join(folder, "config.json")):
        save_word_tokenizer(folder, config["vocab_size"])
        return {"checkpoint": folder, "built": False, "seconds": 0.0}
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**config))
    finally:
        torch.set_default_dtype(torch.float32)
    staging = folder + ".partial"  # a build cut short never looks finished
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    save_word_tokenizer(staging, config["vocab_size"])
    os.replace(staging, folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    seconds = round(time.time() - started, 1)
    print(f"saved random {shape} checkpoint to {folder} in {seconds}s", flush=True)
    return {"checkpoint": folder, "built": True, "seconds": seconds}


# ---------------------------------------------------------------------------------------------- workload

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


class TokenListDataset:
    """Each sample is a causal-LM example over its whole sequence."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        ids = self.samples[index]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}


class PadToLongestCollator:
    """Right-pads each batch to its longest sequence (pad id 0, labels -100 on padding)."""

    def __call__(self, features):
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


# ---------------------------------------------------------------------------------------------- one run

def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_timed_trainer_class(warmup_steps: int):
    """A Trainer that counts real tokens from step `warmup_steps` on, and a callback that starts the clock there."""
    import torch
    from transformers import Trainer, TrainerCallback

    class StartClockAfterWarmup(TrainerCallback):
        def __init__(self):
            self.started_at = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup_steps:
                synchronize()
                self.started_at = time.time()
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()

    class RealTokenCountingTrainer(Trainer):
        timed_real_tokens = 0

        def training_step(self, model, inputs, *args, **kwargs):
            if self.state.global_step >= warmup_steps:
                self.timed_real_tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    return RealTokenCountingTrainer, StartClockAfterWarmup


def load_model(checkpoint: str, spec: RunSpec, on_gpu: bool):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantize = spec.quantized and on_gpu
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
    print(f"[{spec.name}] loaded in {time.time() - started:.1f}s{memory}", flush=True)  # as the reference reports it
    model.config.use_cache = False
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    targets = list(spec.target_modules) if isinstance(spec.target_modules, tuple) else spec.target_modules
    lora = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.1, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora), quantize


def run(spec: RunSpec, checkpoint: str, vocab_size: int, total_steps: int = TOTAL_STEPS,
        warmup_steps: int = WARMUP_STEPS) -> dict:
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    started = time.time()
    model, quantized = load_model(checkpoint, spec, on_gpu)
    load_seconds = round(time.time() - started, 1)  # loading, k-bit preparation and adapters
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    optimizer = "paged_adamw_32bit" if on_gpu else "adamw_torch"
    args = TrainingArguments(
        output_dir=os.path.join(tmp_root(), f"tunekit-bench-out-{spec.name}"),
        per_device_train_batch_size=spec.batch_size, gradient_accumulation_steps=1, max_steps=total_steps,
        learning_rate=2e-4, bf16=on_gpu, use_cpu=not on_gpu, logging_steps=100, report_to=[],
        save_strategy="no", optim=optimizer, gradient_checkpointing=True, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer_class, clock_class = make_timed_trainer_class(warmup_steps)
    clock = clock_class()
    trainer = trainer_class(model=model, args=args, train_dataset=TokenListDataset(sample_workload(vocab_size)),
                            data_collator=PadToLongestCollator(), callbacks=[clock])
    trainer.train()
    synchronize()
    seconds = time.time() - clock.started_at
    tokens = trainer.timed_real_tokens
    result = dict(
        name=spec.name, steps=total_steps - warmup_steps, seconds=round(seconds, 2), real_tokens=tokens,
        tokens_per_s=round(tokens / seconds),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        device=torch.cuda.get_device_name(0) if on_gpu else "cpu", quantized=quantized,
        dtype="bfloat16" if on_gpu else "float32", optim=optimizer, trainable_params=trainable,
        load_seconds=load_seconds)
    print("RESULT", json.dumps(result), flush=True)
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------- environment

def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_environment() -> dict:
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "device_count": torch.cuda.device_count() if on_gpu else 0,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: package_version(name) for name in
           ("transformers", "peft", "accelerate", "bitsandbytes", "trl", "tokenizers")},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help=f"run names (default: all): {', '.join(RUNS)}")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: under $TMPDIR, built if missing)")
    parser.add_argument("--steps", type=int, default=TOTAL_STEPS, help="optimizer steps in all")
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="steps before the clock starts")
    parser.add_argument("--prepare", action="store_true", help="only build the checkpoint; print ENV {json}")
    args = parser.parse_args(argv)
    unknown = [name for name in args.runs if name not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {list(RUNS)}")
    if not 0 <= args.warmup < args.steps:
        parser.error("need 0 <= --warmup < --steps")

    checkpoint = args.checkpoint or default_checkpoint(args.shape)
    environment = describe_environment()
    print(environment["device"], environment["torch"], flush=True)
    built = build_checkpoint(checkpoint, args.shape)
    if args.prepare:
        print("ENV", json.dumps({**environment, "shape": args.shape, **built}), flush=True)
        return 0
    failures = 0
    for name in args.runs or list(RUNS):
        try:
            run(RUNS[name], checkpoint, SHAPES[args.shape]["vocab_size"], args.steps, args.warmup)
        except Exception as error:  # keep going, like the reference; the runner reads FAILED lines
            failures += 1
            print("FAILED", name, repr(error)[:500], flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
