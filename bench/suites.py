"""The benchmark suites as data: the baseline runs, the recipe variants and the shapes of each; bench/run.py runs any
of them (`--suite NAME`).  The baseline run names are bench/baseline.py's RUNS."""
from __future__ import annotations

from dataclasses import dataclass, field

SEED_QV, QLORA_R16, LORA_R16 = "qlora-seed-qv-r64-bs4", "qlora-all-linear-r16-bs4", "lora-bf16-all-linear-r16-bs4"


@dataclass(frozen=True)
class Variant:
    """A run of `bash recipes/<family>/train.sh METHOD ... FLAGS` (or of `command`), named recipe-<family>-<method>
    <suffix>; --variants and --skip name it by its suffix without the dash, or by its method when it has none."""
    method: str
    suffix: str = ""
    flags: tuple[str, ...] = ()
    compare_with: str | None = None  # the baseline run of its ratio (default: the suite's first); it runs with it
    prefer: str | None = None  # ... unless this one ran too (qwen: the NF4 baseline, with --all-baselines)
    cuda: str = ""  # why it is skipped without CUDA (Triton kernels, varlen, NF4, GPTQ); "": it runs on a CPU
    gpu_flags: tuple[str, ...] = ()  # added on a GPU only
    # (total, warm-up) steps on a GPU instead of the suite's: a packed step of 16k tokens is ~13 of the baseline's
    # steps, so 30 timed steps would take minutes; 10 still time 160k tokens, ~3 of the baseline's 30 steps
    steps: tuple[int, int] | None = None
    # without --variants: "always", "cpu" (the CPU smoke's SDPA stand-ins) or "extra" (diagnostics, by name only);
    # a suite's default set must finish within 8 minutes on one GPU
    default: str = "always"
    gptq: bool = False  # trains on the GPTQ-Int4 pack of the checkpoint
    command: tuple[str, ...] = ()  # a command line instead of train.sh (the seed's own), then the flags
    overlays: tuple[str, ...] = ()  # argument files right after the method (recipes/lean.json)
    peer: str = ""  # a peer's run instead: bench/reference/peer_unsloth_sft.py MODE (pack16k, pack4k, padfree)
    vs_peer: str = ""  # the peer run (its MODE) this one's tokens/s and peak are divided by

    @property
    def key(self) -> str:
        if self.peer:
            return f"unsloth-{self.peer}"
        return self.suffix.strip("-") or self.method

    def name(self, family: str) -> str:
        if self.peer:
            return f"unsloth-sft-{self.peer}"
        return f"{self.method}-command{self.suffix}" if self.command else f"recipe-{family}-{self.method}{self.suffix}"


@dataclass(frozen=True)
class Suite:
    family: str  # recipes/<family>/
    baselines: tuple[str, ...]  # bench/baseline.py runs: the first is the suite's (ratios, reference, --repeat); the
    variants: tuple[Variant, ...]  # others run when a chosen variant needs one, or with --all-baselines
    shapes: tuple[str, ...] = ("llama2-7b", "tiny")  # bench/shapes.py; the first is the default
    workload: str = "text"  # the recipe's data (bench/run.py write_workload): text, conversations or adgen
    steps: tuple[int, int] = (50, 20)  # (total, warm-up) optimizer steps: 30 timed steps after 20 warm-up steps
    # variants run before the baselines: the first process on a fresh GPU runs slow, and this way that costs a
    # recipe, never the baseline (with none, a short unmeasured baseline run goes first on a GPU)
    baselines_after: int = 0
    ratios: bool = True  # False: the recipe's workload is not the baseline's lengths, so no ratio is taken
    merge: tuple[str, ...] = ()  # merge the first of these adapters that trained (); (): the first variant's, --merge
    merge_env: tuple[tuple[str, str], ...] = ()
    gptq: bool = False  # qwen: pack the checkpoint to GPTQ-Int4; check that the merge refuses it as the only base
    lengths: dict[str, tuple[int, ...]] = field(default_factory=dict)  # longctx: one sequence per length, ascending
    child_timeout: float = 420  # seconds before a child is killed


# LoRA r=16, alpha=32 on every linear layer (the baseline's adapters), padding-free batches of a token budget.
FAST_R16 = ("--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", "all-linear", "--packing", "true",
            "--per_device_train_batch_size", "1", "--model_max_length", "1024")
BF16 = ("--q_lora", "false")
LIGER = ("--use_liger_kernel", "true")
SDPA = ("--attn_implementation", "sdpa")  # the recipes default to varlen: the SDPA variants say so
NO_LIGER = ("--use_liger_kernel", "false")
# flex attention (transformers' flex_attention with the packed block mask) ran at 22 s per 16k-token step on an
# H200 (2026-11-30): dropped for varlen, PyTorch's variable-length flash attention (tunekit/attention.py)
VARLEN_LIGER = ("--attn_implementation", "varlen", *LIGER)
ASYNC = ("--offload_activations_async", "true")  # TRL's OffloadActivations: pinned buffers, side stream
NO_GC = ("--gradient_checkpointing", "false")
NO_DROPOUT = ("--lora_dropout", "0")
# A CPU smoke run: no bitsandbytes, no bf16, and none of the GPU-only speed switches the recipes default to (a variant
# may set a token budget again)
CPU_FLAGS = ("--q_lora", "false", "--bf16", "false", "--use_cpu", "true", "--optim", "adamw_torch",
             "--attn_implementation", "sdpa", "--use_liger_kernel", "false", "--token_budget", "0")
BIG, MID, LOW = (16, 6), (26, 8), (30, 10)  # (total, warm-up) GPU steps of 16k-, 8k- and 4k-token variants
CUDA = "needs CUDA"


def budget(tokens: int) -> tuple[str, str]:
    return "--token_budget", str(tokens)


def lean(tokens: int, *more: str, attention: tuple[str, ...] = VARLEN_LIGER) -> tuple[str, ...]:
    """Issue 5's lean setting at a token budget: offloaded activations, 8-bit AdamW (not paged: its state stays in
    torch's allocator, so the peak counts it; the r=16 adapters' fp32 Adam state would be 0.3 GiB of a 4.9 GiB
    budget)."""
    return FAST_R16 + attention + ("--offload_activations", "true", "--optim", "adamw_bnb_8bit", *budget(tokens), *more)


# Issue 5's speed suites: the recipe with the fast switches against the baseline's all-linear r16 runs.  SDPA keeps
# packed samples apart with a dense [tokens x tokens] mask; varlen attends only inside each sample.
THROUGHPUT = (
    Variant("qlora", "-nf4-r16-packed", FAST_R16 + SDPA + NO_LIGER + budget(16384), steps=BIG, default="cpu"),
    Variant("qlora", "-nf4-r16-packed-varlen-liger", FAST_R16 + VARLEN_LIGER + budget(16384), cuda=CUDA, steps=BIG),
    Variant("qlora", "-nf4-r16-packed-varlen-liger-no-gc", FAST_R16 + VARLEN_LIGER + NO_GC + budget(8192), cuda=CUDA,
            steps=MID, default="extra"),
    Variant("qlora", "-nf4-r16-packed-8k-liger", FAST_R16 + SDPA + LIGER + budget(8192), cuda=CUDA, steps=MID,
            default="extra"),
    Variant("qlora", "-bf16-r16-packed", FAST_R16 + BF16 + SDPA + NO_LIGER + budget(16384), LORA_R16, steps=BIG,
            default="cpu"),
    Variant("qlora", "-bf16-r16-packed-varlen-liger", FAST_R16 + BF16 + VARLEN_LIGER + budget(16384), LORA_R16,
            cuda=CUDA, steps=BIG),
    Variant("qlora", "-bf16-r16-packed-varlen-liger-no-gc", FAST_R16 + BF16 + VARLEN_LIGER + NO_GC + budget(8192),
            LORA_R16, cuda=CUDA, steps=MID),
    # 6.51x at 64.7 GiB (H200): no-gc at 8k is faster for less memory
    Variant("qlora", "-bf16-r16-packed-varlen-liger-gc-half", FAST_R16 + BF16 + VARLEN_LIGER + budget(16384) + (
        "--gradient_checkpointing_fraction", "0.5"), LORA_R16, cuda=CUDA, steps=BIG, default="extra"),
    Variant("qlora", "-bf16-r16-packed-8k-liger", FAST_R16 + BF16 + SDPA + LIGER + budget(8192), LORA_R16, cuda=CUDA,
            steps=MID, default="extra"),
    # issue 14: the 16k default within Unsloth's 16k packed memory (7.03 GiB): async offload (TRL's since issue 21),
    # 8-bit AdamW, no dropout; not measured yet
    Variant("qlora", "-nf4-r16-packed-varlen-liger-async-adam8", FAST_R16 + VARLEN_LIGER + budget(16384) + ASYNC
            + ("--optim", "adamw_bnb_8bit", *NO_DROPOUT), cuda=CUDA, steps=BIG, default="extra"))
THROUGHPUT += (
    # issue 14, bar 2: the bf16 LoRA recipe (recipes/llama2/lora.json) as it ships (since session 4: no checkpointing,
    # 8k budget), and its earlier defaults (checkpointing, 16k)
    Variant("lora", "-bf16-r16-defaults", FAST_R16, LORA_R16, cuda=CUDA, steps=MID, default="extra"),
    Variant("lora", "-bf16-r16-gc-16k", FAST_R16 + ("--gradient_checkpointing", "true") + budget(16384), LORA_R16,
            cuda=CUDA, steps=BIG, default="extra"),
    Variant("lora", "-bf16-r16-gc-half", FAST_R16 + budget(16384) + (
        "--gradient_checkpointing", "true", "--gradient_checkpointing_fraction", "0.5"), LORA_R16,
            cuda=CUDA, steps=BIG, default="extra"))
LEAN = (
    Variant("qlora", "-nf4-r16-lean", FAST_R16 + SDPA + NO_LIGER + budget(4096) + ("--offload_activations", "true"),
            steps=LOW, default="cpu"),
    Variant("qlora", "-nf4-r16-lean-varlen-liger-adam8", lean(4096), cuda=CUDA, steps=LOW),
    Variant("qlora", "-nf4-r16-lean-2k-varlen-liger-adam8", lean(2048), cuda=CUDA, steps=LOW, default="extra"),
    Variant("qlora", "-nf4-r16-lean-3k-varlen-liger-adam8", lean(3072), cuda=CUDA, steps=LOW, default="extra"),
    # between the measured 3k (4.79 GiB, 2.19x) and 4k (5.05 GiB, 2.75x) of 2026-11-30
    Variant("qlora", "-nf4-r16-lean-3.5k-varlen-liger-adam8", lean(3584), cuda=CUDA, steps=LOW, default="extra"),
    # LoRA dropout (the recipe's 0.1) stores a dropped copy of each adapted layer's input for the backward; without
    # it the adapters read the input the base layer already holds.  Measured on an H200: 4k 4.78 GiB (3.01x,
    # recipes/lean.json), 5k 4.97 GiB, 6k 5.14 GiB; 4k with dropout 5.05 GiB
    Variant("qlora", "-nf4-r16-lean-nodrop-varlen-liger-adam8", lean(4096, *NO_DROPOUT), cuda=CUDA, steps=LOW),
    Variant("qlora", "-nf4-r16-lean-5k-nodrop-varlen-liger-adam8", lean(5120, *NO_DROPOUT), cuda=CUDA, steps=LOW),
    Variant("qlora", "-nf4-r16-lean-6k-nodrop-varlen-liger-adam8", lean(6144, *NO_DROPOUT), cuda=CUDA, steps=LOW),
    Variant("qlora", "-nf4-r16-lean-3.5k-nodrop-varlen-liger-adam8", lean(3584, *NO_DROPOUT), cuda=CUDA, steps=LOW,
            default="extra"),
    Variant("qlora", "-nf4-r16-lean-liger-adam8", lean(4096, attention=SDPA + LIGER), cuda=CUDA, steps=LOW,
            default="extra"),
    # issue 14: the lean setting with the async offload instead of save_on_cpu; not measured yet
    Variant("qlora", "-nf4-r16-lean-async-nodrop-varlen-liger-adam8", lean(4096, *NO_DROPOUT, *ASYNC), cuda=CUDA,
            steps=LOW, default="extra"))
# ChatGLM2: the settings of the published LLaMA-Factory vs ChatGLM P-Tuning comparison (21.67 samples/s and 5.14 GB on
# an A100): r=32, every sample exactly 1024 tokens (ADGEN records cut by max_source_length 512 / max_target_length
# 511, + EOS), batches of samples (4 or 1, no token budget)
GLM = ("--model_max_length", "1024", "--max_source_length", "512", "--max_target_length", "511", "--lora_r", "32",
       "--logging_steps", "5", *budget(0))
# longctx: one unpadded sequence of batch 1, NF4 Q-LoRA r=32 on all linear layers, offloaded activations, Liger's
# chunked loss; SDPA's causal flash path, as measured (the recipes' packing defaults do not apply)
LONG = ("--lora_r", "32", "--lora_alpha", "64", "--lora_target_modules", "all-linear", "--lora_dropout", "0",
        "--per_device_train_batch_size", "1", "--gradient_checkpointing", "true", "--offload_activations", "true",
        "--logging_steps", "1", "--learning_rate", "1e-4", "--warmup_steps", "0", "--packing", "false", *budget(0),
        *SDPA)

# The seed's own qwen command line: torch.distributed.run + finetune.py + DeepSpeed ZeRO-2, GPTQ Q-LoRA, fp16, batch
# 1 x 2 accumulation (20 steps, timed over 6..20)
SEED = ("{python}", "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "6601", "finetune.py",
        "--model_name_or_path", "{model}", "--data_path", "{data}", "--fp16", "True", "--output_dir", "{output_dir}",
        "--num_train_epochs", "1", "--max_steps", "{steps}", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "2", "--evaluation_strategy", "no", "--save_strategy", "no",
        "--learning_rate", "1e-5", "--weight_decay", "0.1", "--adam_beta2", "0.95", "--warmup_ratio", "0.01",
        "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--report_to", "none", "--model_max_length", "1024",
        "--gradient_checkpointing", "True", "--lazy_preprocess", "True", "--deepspeed", "ds_configs/zero2.json",
        "--use_lora", "--q_lora")

# issue 14, bar 1: Unsloth's own SFT path (FastLanguageModel + its patched TRL SFTTrainer, packing) next to the recipe's
# NF4 defaults and the lean overlay, on the same checkpoint and lengths (r=16 a=32 all-linear, the baseline's
# adapters).  The Unsloth runs need its wheels in PEER_SITE (bench/gpu.sh installs a carried .whl-unsloth there) and
# bench/reference/peer_unsloth_sft.py (a copy of ../shared/gpu/peer_unsloth_sft.py); otherwise they are skipped.
UNSLOTH = "needs CUDA and the Unsloth wheels (PEER_SITE)"
PEERS = (
    Variant("qlora", "-nf4-r16-defaults", FAST_R16, cuda=CUDA, steps=BIG, vs_peer="pack16k"),
    Variant("qlora", "-nf4-r16-lean", FAST_R16, cuda=CUDA, steps=LOW, overlays=("recipes/lean.json",),
            vs_peer="pack4k"),
    Variant("qlora", "-nf4-r16-12k", FAST_R16 + budget(12288), cuda=CUDA, steps=BIG, vs_peer="pack16k",
            default="extra"),
    Variant("qlora", "-nf4-r16-lean-5k", FAST_R16 + budget(5120), cuda=CUDA, steps=LOW,
            overlays=("recipes/lean.json",), vs_peer="pack4k", default="extra"),
    # the defaults with the layer inputs kept on the GPU (no async offload): what the offload saves and costs
    Variant("qlora", "-nf4-r16-on-gpu", FAST_R16 + ("--offload_activations_async", "false"), cuda=CUDA, steps=BIG,
            vs_peer="pack16k", default="extra"),
    Variant("unsloth", peer="pack16k", cuda=UNSLOTH),
    Variant("unsloth", peer="pack4k", cuda=UNSLOTH))

SUITES = {
    # the recipe as it is, and with the seed's adapters (q,v r=64, single quantization), against the seed's run
    "llama2-qlora": Suite("llama2", (SEED_QV, QLORA_R16, LORA_R16), (
        Variant("qlora"),
        Variant("qlora", "-qv-r64-single-quant", ("--lora_target_modules", "q_proj", "v_proj",
                                                  "--no_bnb_4bit_use_double_quant")))),
    "throughput": Suite("llama2", (QLORA_R16, LORA_R16), THROUGHPUT, baselines_after=len(THROUGHPUT)),
    "lean": Suite("llama2", (QLORA_R16,), LEAN, baselines_after=len(LEAN)),
    "peers": Suite("llama2", (QLORA_R16,), PEERS, baselines_after=len(PEERS)),
    # how long one sequence can be for NF4 Q-LoRA on one GPU: ascending lengths until one fails or time runs out (a
    # length passes when both losses are finite; published on 80 GB: 28,454 tokens for HF + FlashAttention 2, 342,733
    # for Unsloth)
    "longctx": Suite("llama2", (), (Variant("qlora", flags=LONG, gpu_flags=LIGER + ("--bf16", "true")),),
                     shapes=("llama3.1-8b", "tiny-long"), steps=(2, 0),
                     lengths={"llama3.1-8b": (131072, 196608, 262144, 327680), "tiny-long": (2048, 4096)}),
    # issue 14, bar 3: the same with the MLP tiled in 8k-token chunks and the async offload, towards 500,000 tokens
    # in 80 GiB (not measured yet)
    "longctx-tiled": Suite("llama2", (), (Variant("qlora", "-tiled-async", flags=LONG + ASYNC + (
        "--tiled_mlp_tokens", "8192"), gpu_flags=LIGER + ("--bf16", "true")),),
        shapes=("llama3.1-8b", "tiny-long", "llama3.1-8b-4l", "llama3.1-8b-2l"), steps=(2, 0), child_timeout=540,
        lengths={"llama3.1-8b": (262144, 393216, 500000), "tiny-long": (2048, 4096), "llama3.1-8b-4l": (500000,),
                 "llama3.1-8b-2l": (500000,)}),
    # a Qwen2.5-7B-shaped bf16 checkpoint and its GPTQ-Int4 pack: the lora recipe first, then the baseline, the NF4 and
    # GPTQ recipes, the seed's command line on the GPTQ pack; its adapter merged into the bf16 checkpoint (BASE)
    "qwen": Suite("qwen", (LORA_R16, QLORA_R16), (
        Variant("lora"),
        Variant("qlora", prefer=QLORA_R16, cuda="needs CUDA (bitsandbytes NF4)"),
        Variant("qlora-gptq", prefer=QLORA_R16, cuda="needs CUDA (GPTQ kernels)", gptq=True),
        Variant("seed", command=SEED, prefer=QLORA_R16, cuda="needs CUDA (DeepSpeed + GPTQ)", gptq=True, steps=(20, 5))),
        shapes=("qwen2.5-7b", "tiny-qwen"), workload="conversations", baselines_after=1, gptq=True,
        merge=("seed", "qlora-gptq", "lora"), merge_env=(("BASE", "{checkpoint}"), ("NO_SAMPLE", "1")),
        child_timeout=240),
    # issue 4, bar 5: a ChatGLM2-6B-shaped checkpoint in the ORIGINAL layout, converted by the recipe, trained in the
    # two published settings, merged, sampled and written back in the original layout; the baseline runs on the
    # converted checkpoint with its own lengths, beside the recipe (no ratio: the workloads differ)
    "chatglm2": Suite("chatglm2", (LORA_R16, QLORA_R16), (
        Variant("lora", flags=("--per_device_train_batch_size", "4", *GLM)),
        Variant("qlora", flags=("--per_device_train_batch_size", "1", *GLM), compare_with=QLORA_R16)),
        shapes=("chatglm2-6b", "tiny-chatglm2"), workload="adgen", steps=(40, 10), ratios=False, merge=("lora",)),
}
