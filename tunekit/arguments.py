"""Command-line and JSON arguments: four dataclasses, one parser (JSON files, later ones winning, then flags), and the
checks that name an unknown key, a wrong type or an impossible combination before any model loads."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import functools
import json
import logging
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import transformers
from transformers import HfArgumentParser

from .errors import ArgumentError

logger = logging.getLogger(__name__)

# Flags that transformers (or the seed scripts) have renamed: old name -> current name.
ALIASES = {"evaluation_strategy": "eval_strategy", "max_seq_length": "model_max_length",
           "max_length": "model_max_length", "warmup_ratio": "warmup_steps",  # transformers 5: a float < 1 is a ratio
           "per_gpu_train_batch_size": "per_device_train_batch_size",
           "per_gpu_eval_batch_size": "per_device_eval_batch_size", "no_cuda": "use_cpu"}
# Flags that are gone: name -> what the unknown-key error says instead of a close match.
REMOVED = {"trainer": "--trainer was removed: training always uses the HF Trainer"}


def arg(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ModelArguments:
    _argument_group_name = "model"
    model_name_or_path: str | None = arg(None, "Checkpoint folder; a hub id is refused (fetch it first: hf download "
                                               "ID --local-dir DIR).")
    family: str | None = arg(None, "Model family (LoRA targets, conversions, ADGEN): llama2, qwen, chatglm2, bert; "
                                   "default: from config.json's model_type, any other model_type needs none.")
    template: str | None = arg(None, "Chat template for a tokenizer that has none (a base model): llama3, chatml, "
                                     "mistral, gemma, phi3, ... (tunekit/chat_templates/) or a .jinja file; a "
                                     "tokenizer's own template always wins.")
    task: str = arg("causal_lm", "causal_lm (next-token prediction on the assistant turns), seq_cls (one label per "
                                 "text), token_cls (one BIO tag per word), dpo and kto (preferences), reward (a "
                                 "reward model): tunekit/tasks.py.")
    attn_implementation: str = arg("sdpa", "sdpa, eager, flash_attention_2, ..., or varlen: PyTorch's variable-length "
                                           "flash attention for --packing on a CUDA GPU (tunekit/attention.py).")
    trust_remote_code: bool = arg(False, "Run code shipped in the model folder.")


@dataclass
class DataArguments:
    _argument_group_name = "data"
    data_path: str | None = arg(None, "Training data: .json or .jsonl.")
    eval_data_path: str | None = arg(None, "Optional evaluation data: .json or .jsonl.")
    lazy_preprocess: bool = arg(False, "Tokenize samples when first used, not upfront.")
    max_samples: int | None = arg(None, "Use only the first N training samples.")
    eval_on_train: bool = arg(False, "Evaluate on the (first --max_samples) training samples: a memorisation check, "
                                     "as the CPU default does (a tiny model cannot generalise in a minute).")
    labels: list[str] | None = arg(None, "Label names in id order; default: the training file's, sorted.")
    max_source_length: int | None = arg(None, "ADGEN records (chatglm2): cut the prompt, [gMASK] <sop> included, to "
                                              "this many tokens.")
    max_target_length: int | None = arg(None, "ADGEN records: cut the summary to this many tokens (EOS follows).")


@dataclass
class LoraArguments:
    _argument_group_name = "LoRA and quantization"
    use_lora: bool = arg(False, "Train LoRA adapters instead of all weights.")
    q_lora: bool = arg(False, "Q-LoRA: LoRA on a 4-bit base (bitsandbytes NF4/FP4, or a GPTQ checkpoint as it is).")
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = arg(None, "Names to adapt; default: the family's; 'all-linear': all, "
                                                      "resolved to explicit names.")
    lora_bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = arg(None, "Modules trained fully, saved with the adapter (embed_tokens ...).")
    use_dora: bool = False
    use_rslora: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = arg("auto", "auto: the training dtype.")
    bnb_4bit_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"
    init_adapter: str | None = arg(None, "Start from a trained adapter (an SFT run's output_dir) and train it further, "
                                         "e.g. DPO after SFT; its LoRA settings are the adapter's.")
    kbit_upcast: bool = arg(False, "PEFT's prepare_model_for_kbit_training: embeddings, norms and lm_head in fp32 "
                                   "(about half the speed); default: they stay in the compute dtype.")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    _argument_group_name = "transformers TrainingArguments"
    model_max_length: int = arg(2048, "Longer samples are truncated (and counted).")
    # Unlike transformers: non-reentrant checkpointing, a non-finite loss stops the run, nothing reported.
    gradient_checkpointing_kwargs: dict | str | None = field(default_factory=lambda: {"use_reentrant": False})
    logging_nan_inf_filter: bool = False
    label_names: list[str] | None = field(default_factory=lambda: ["labels"])
    report_to: None | str | list[str] = "none"
    overwrite_output_dir: bool = arg(False, "Replace a finished run (or another run's checkpoints) in --output_dir "
                                            "instead of refusing to.")
    resume_from_checkpoint: str | None = arg(None, "auto (the newest complete checkpoint of the same run, the default "
                                                   "when there is one) or a checkpoint folder.")
    packing: bool = arg(False, "Padding-free micro-batches, attention inside each sample: same loss and gradients.")
    offload_activations: bool = arg(False, "Keep the tensors saved for backward (with checkpointing: each layer's "
                                           "input) in pinned CPU memory: long sequences on one GPU, at some speed.")
    offload_activations_async: bool = arg(False, "As --offload_activations, copied on a side CUDA stream (TRL's "
                                                 "OffloadActivations, SFTTrainer's activation_offloading): CUDA only.")
    tiled_mlp_tokens: int = arg(0, "Run each decoder MLP over at most N tokens at a time, forward and backward: less "
                                   "peak memory at long sequences for one more MLP forward; not with ZeRO-3; 0 = off.")
    gradient_checkpointing_fraction: float = arg(1.0, "With --gradient_checkpointing: the share of decoder layers "
                                                      "(evenly spread) that recompute; below 1: faster, more memory.")
    fused_lora: bool = arg(True, "Plain LoRA layers (no dropout or DoRA; an nn.Linear or NF4 base) as one fused "
                                 "autograd function: same numbers, less memory traffic; off under ZeRO-3.")
    lora_upcast_inputs: bool = arg(False, "Let PEFT copy adapted inputs to fp32 under autocast too: memory, no gain.")
    eval_generation: bool = arg(False, "At the end: answer the eval prompts (greedy), score ROUGE-1/2/L and BLEU-4 "
                                       "into eval_metrics.json and eval_predictions.jsonl.")
    eval_max_new_tokens: int = arg(256, "With --eval_generation: tokens per answer.")
    token_budget: int = arg(0, "Micro-batches of up to N tokens (sum of lengths with --packing, longest x count "
                               "without) instead of --per_device_train_batch_size samples; 0 = off.")
    beta: float | None = arg(None, "dpo, kto: how far the policy may move from the reference (TRL's beta; default "
                                   "0.1); for --loss_type ipo, IPO's tau.")
    loss_type: str | None = arg(None, "dpo: sigmoid (DPO, the default) or ipo; kto: kto (the default) or "
                                      "apo_zero_unpaired (TRL's loss_type).")
    precompute_ref_log_probs: bool = arg(False, "dpo, kto: compute the reference log-probabilities once before "
                                                "training (no reference forward per step).")
    sft_weight: float | None = arg(None, "dpo: add TRL's 'sft' loss (the chosen answer's NLL) at this weight to the "
                                         "preference loss (RPO), so the preferred answer itself gets likelier.")


DATACLASSES = (ModelArguments, DataArguments, LoraArguments, TrainingArguments)


def _field_types() -> dict[str, object]:
    hints = {name: hint for cls in DATACLASSES for name, hint in typing.get_type_hints(cls).items()}
    return {f.name: hints[f.name] for cls in DATACLASSES for f in dataclasses.fields(cls) if f.init}


def _type_ok(value, hint) -> bool:
    """Whether a JSON value fits a dataclass field's type (a small, strict check: 1 is not a bool, '1' not an int)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (list, typing.List):
        (inner,) = typing.get_args(hint) or (object,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value) or _type_ok(value, inner)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint in (int, float, bool, str, type(None)):
        number = isinstance(value, int) and not isinstance(value, bool)
        return {int: number, float: number or isinstance(value, float), bool: isinstance(value, bool),
                str: isinstance(value, str), type(None): value is None}[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in [m.value for m in hint] or isinstance(value, hint)
    return True  # anything exotic: let the dataclass check it


def _describe(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")  # int, not <class 'int'>


def _canonical(key: str, where: str) -> str:
    name = key.replace("-", "_")
    if name in ALIASES:
        logger.warning("%s: '%s' is an old name, use '%s' (accepted for now)", where, key, ALIASES[name])
    return ALIASES.get(name, name)


def _unknown(where: str, what: str, name: str, known, prefix: str = "") -> ArgumentError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" ({REMOVED[name]})" if name in REMOVED else f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ArgumentError(f"{where}: unknown {what}{hint}; see `python finetune.py --help`")


def read_json_args(path: str, known: dict) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ArgumentError(f"{path}: argument file not found")
    try:
        config = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(config, dict):
        raise ArgumentError(f"{path}: must hold one JSON object of key: value arguments")
    out = {}
    for key, value in config.items():
        name = _canonical(key, path)
        if name not in known:
            raise _unknown(path, f"key '{key}'", name, known)
        if not _type_ok(value, known[name]):
            raise ArgumentError(f"{path}: key '{key}' must be {_describe(known[name])}, got {value!r}")
        out[name] = value
    return out


def _rewrite_cli(argv: list[str]) -> list[str]:
    out = []
    for tok in argv:
        flag, eq, val = tok[2:].partition("=")
        out.append("--" + _canonical(flag, "command line") + eq + val
                   if tok.startswith("--") and flag.replace("-", "_") in ALIASES else tok)
    return out


USAGE = """python finetune.py RECIPE.json [MORE.json ...] [--flag value ...]

Fine-tune a causal LM: full, LoRA or Q-LoRA (bitsandbytes NF4, or a GPTQ checkpoint), with the HF Trainer.  JSON
files set the arguments (later files win), flags override them.

  python finetune.py recipes/llama2/qlora.json --model_name_or_path /models/Llama-2-7b-hf --output_dir out/x
  bash recipes/qwen/train.sh qlora --learning_rate 1e-4       # the recipe launcher (torchrun, DeepSpeed)"""

# --help: the project's own options first, grouped; every transformers.TrainingArguments flag after them.
SPEED = ("packing", "token_budget", "gradient_checkpointing_fraction", "offload_activations", "lora_upcast_inputs",
         "use_liger_kernel", "gradient_checkpointing", "offload_activations_async", "tiled_mlp_tokens", "fused_lora")
OURS = ("model_max_length", "overwrite_output_dir", "resume_from_checkpoint", "eval_generation", "eval_max_new_tokens")
PREFERENCE = ("beta", "loss_type", "precompute_ref_log_probs", "sft_weight")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The snake_case flag names only (the kebab-case aliases still parse)."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        name = ", ".join(s for s in action.option_strings if "-" not in s[2:])
        return name if action.nargs == 0 else f"{name} {self._format_args(action, action.dest.upper())}"


class _Parser(HfArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one clear error
        raise ArgumentError(f"command line: {message}")


def make_parser() -> _Parser:
    parser = _Parser(DATACLASSES, usage=USAGE,
                     formatter_class=functools.partial(_HelpFormatter, width=120, max_help_position=36))
    groups = {g.title: g for g in parser._action_groups}
    trainer = groups["transformers TrainingArguments"]
    speed, ours = parser.add_argument_group("speed and memory"), parser.add_argument_group("run")
    preference = parser.add_argument_group("preference tasks (dpo, kto)")
    for action in list(trainer._group_actions):
        group = speed if action.dest in SPEED else ours if action.dest in OURS else \
            preference if action.dest in PREFERENCE else None
        if group is not None:
            trainer._group_actions.remove(action)
            group._group_actions.append(action)
    order = [groups["model"], groups["data"], groups["LoRA and quantization"], speed, ours, preference, trainer]
    parser._action_groups[:] = [g for g in parser._action_groups if g not in order] + order
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """JSON files + flags -> one namespace of every argument, checked against each other (files: the pre-flight's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known, defaults = _field_types(), {}
    while argv and not argv[0].startswith("-"):  # the JSON files, in order
        if not argv[0].endswith(".json"):
            raise ArgumentError(f"command line: '{argv[0]}' is neither a .json argument file nor a --flag")
        defaults.update(read_json_args(argv.pop(0), known))
    parser = make_parser()
    for action in parser._actions:  # bool fields also have a --no_x action with the same dest
        if action.dest in defaults:
            action.default, action.required = defaults[action.dest], False
    namespace, unknown = parser.parse_known_args(args=_rewrite_cli(argv))
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        name = flag.lstrip("-").split("=")[0].replace("-", "_")
        raise _unknown("command line", f"argument {flag}", name, known, "--")
    check(namespace)
    if not namespace.eval_data_path and not namespace.eval_on_train and (
            namespace.eval_on_start or str(namespace.eval_strategy) not in ("no", "IntervalStrategy.NO")):
        print(f"note: no --eval_data_path, so --eval_strategy {namespace.eval_strategy} is turned off")
        namespace.eval_strategy, namespace.eval_on_start = "no", False
    return namespace


def check(a) -> None:
    """Impossible combinations of arguments (a: the parsed namespace)."""
    if not a.model_name_or_path:
        raise ArgumentError("--model_name_or_path is required (a checkpoint folder)")
    if not a.data_path:
        raise ArgumentError("--data_path is required (a .json or .jsonl file, see data/README.md)")
    if not 0 < a.gradient_checkpointing_fraction <= 1:
        raise ArgumentError(f"--gradient_checkpointing_fraction {a.gradient_checkpointing_fraction} must be in (0, 1]; "
                            "for none, use --gradient_checkpointing false")
    if a.tiled_mlp_tokens < 0:
        raise ArgumentError(f"--tiled_mlp_tokens {a.tiled_mlp_tokens} must be >= 0 (0 = off)")
    if a.token_budget and a.token_budget < a.model_max_length:
        raise ArgumentError(f"--token_budget {a.token_budget} is smaller than --model_max_length "
                            f"{a.model_max_length}: a full-length sample would not fit; raise it or set 0")
    if a.q_lora and not a.use_lora:
        raise ArgumentError("--q_lora trains LoRA adapters on a 4-bit model: add --use_lora "
                            "(full fine-tuning of a quantized model is not possible)")
    if not a.use_lora:
        for key in ("modules_to_save", "lora_target_modules"):
            if getattr(a, key):
                raise ArgumentError(f"--{key} only applies with --use_lora")
        if a.use_dora or a.use_rslora:
            raise ArgumentError("--use_dora / --use_rslora only apply with --use_lora")
    if a.lora_r <= 0 or a.lora_alpha <= 0:
        raise ArgumentError("--lora_r and --lora_alpha must be positive")
    if not 0 <= a.lora_dropout < 1:
        raise ArgumentError("--lora_dropout must be in [0, 1)")
    if a.eval_generation and (a.task != "causal_lm" or not (a.eval_data_path or a.eval_on_train)):
        raise ArgumentError("--eval_generation scores generated answers: it needs --task causal_lm and an "
                            "--eval_data_path (or --eval_on_train)")
    if a.model_max_length < 2:
        raise ArgumentError("--model_max_length must be at least 2")


def build(namespace, **resolved) -> tuple:
    """The four dataclasses from a checked namespace; `resolved`: values the pre-flight worked out.  Building
    TrainingArguments starts torch.distributed under DeepSpeed, which is why the pre-flight comes first."""
    values, outputs = {**vars(namespace), **resolved}, []
    for cls in DATACLASSES:
        keys = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            outputs.append(cls(**{k: v for k, v in values.items() if k in keys}))
        except ValueError as e:  # raised by TrainingArguments.__post_init__ etc.
            raise ArgumentError(f"arguments: {e}") from None
    return tuple(outputs)


def to_jsonable(*dcs) -> dict:
    """Every argument as JSON has it (an enum as its value, what JSON lacks as its str), as finetune_args.json reads."""
    values = {f.name: getattr(dc, f.name) for dc in dcs for f in dataclasses.fields(dc) if not f.name.startswith("_")
              and f.init}
    return json.loads(json.dumps({k: getattr(v, "value", v) for k, v in values.items()}, default=str))
