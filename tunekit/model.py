"""Loading the tokenizer and the model, and the three branches: full fine-tuning, LoRA, Q-LoRA.

Q-LoRA's branch is chosen from the checkpoint's own config.json: an unquantized checkpoint is quantized on load with
bitsandbytes (NF4/FP4); a checkpoint whose `quantization_config` says GPTQ is trained as it is (tunekit/gptq.py).
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .errors import ArgumentError
from .families import Family, read_config

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "uint8": torch.uint8}


def train_dtype(train_args) -> torch.dtype:
    return torch.bfloat16 if train_args.bf16 else torch.float16 if train_args.fp16 else torch.float32


def load_tokenizer(model_args, family: Family):
    """(tokenizer, the family's special tokens it lacked and that were added to it)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_args.model_name_or_path,
                                            trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError, TypeError) as e:  # no tokenizer files, or files that do not parse
        raise ArgumentError(f"--model_name_or_path: {model_args.model_name_or_path}: the tokenizer does not load "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); the folder needs tokenizer.json "
                            "or tokenizer.model with tokenizer_config.json") from None
    if not tok.chat_template and family.chat_template:  # e.g. a base (non-chat) checkpoint: use the family's, and save it with the adapter
        tok.chat_template = family.chat_template
    # A base tokenizer may lack the template's special tokens (ChatML's <|im_start|>/<|im_end|>): add them; the
    # model's embeddings are resized and trained fully (build_model), and the end-of-turn token becomes EOS.
    vocab = tok.get_vocab()
    added = [t for t in family.extra_special_tokens if t not in vocab]
    if added:
        tok.add_special_tokens({"additional_special_tokens": added})
        if family.special_tokens.get("eos_token") in added:
            tok.eos_token = family.special_tokens["eos_token"]
    if tok.pad_token is None:
        vocab = tok.get_vocab()
        stand_in = family.pad_token if family.pad_token in vocab else tok.unk_token
        if stand_in is None:  # EOS is no pad: generation would learn to stop nowhere (the pad is masked out of the labels)
            raise ArgumentError(
                f"{model_args.model_name_or_path}/tokenizer_config.json: the tokenizer has no pad token, and neither "
                f"the {family.name} family's pad {family.pad_token!r} nor an unk token exists to stand in for it; set "
                "\"pad_token\" in tokenizer_config.json to an unused special token of this vocabulary (not the EOS "
                "token)")
        tok.pad_token = stand_in
    tok.padding_side = "right"  # training; generation uses a left-padded copy
    return tok, added


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def bnb_config(lora_args, compute_dtype, skip=None):
    from transformers import BitsAndBytesConfig  # bitsandbytes itself is imported by transformers on load

    if lora_args.bnb_4bit_compute_dtype != "auto":
        compute_dtype = DTYPES[lora_args.bnb_4bit_compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=lora_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=lora_args.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=DTYPES[lora_args.bnb_4bit_quant_storage],
        llm_int8_skip_modules=skip,
    )


def keep_portable_4bit(model) -> None:
    """On an AVX512-BF16 CPU, bitsandbytes repacks a 4-bit weight in place at its first no-grad forward (an eval step,
    generation): the packed layout asserts on widths not divisible by 32, and the weight is no longer the one saved or
    sharded. Every 4-bit load (training, generate, predict) keeps the portable layout."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def quantization_kwargs(model_args, lora_args, dtype, skip=None) -> dict:
    """from_pretrained kwargs for the quantized branches; {} for full fine-tuning and LoRA.  skip: modules kept
    unquantized (a classifier's head, which is trained fully)."""
    existing = read_config(model_args.model_name_or_path).get("quantization_config")
    if existing:
        method = existing.get("quant_method", "?")
        if not lora_args.q_lora:
            raise ArgumentError(f"{model_args.model_name_or_path} is already quantized ({method}): "
                                "train it with --use_lora --q_lora")
        if method == "gptq":  # trained as it is, with a kernel that has a backward pass
            from .gptq import gptq_load_kwargs

            return gptq_load_kwargs(existing, on_gpu=torch.cuda.is_available())
        if method == "bitsandbytes":
            return {}  # pre-quantized bitsandbytes checkpoint: loads as saved
        raise ArgumentError(f"{model_args.model_name_or_path}: quantization method '{method}' is not supported")
    if lora_args.q_lora:
        return {"quantization_config": bnb_config(lora_args, dtype, skip)}
    return {}


def load_model(model_args, lora_args, train_args, tokenizer, task, labels=None, head=None):
    """labels (classification tasks): the head's label names, saved in the config as id2label/label2id."""
    dtype = train_dtype(train_args)
    if not lora_args.use_lora:
        dtype = torch.float32  # full fine-tuning keeps fp32 master weights; bf16/fp16 run under autocast
    kwargs = quantization_kwargs(model_args, lora_args, dtype, skip=[head] if head else None)
    if labels:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={name: i for i, name in enumerate(labels)})
    if model_args.attn_implementation == "varlen":
        from .attention import register

        register()
    if kwargs and torch.cuda.is_available() and "device_map" not in kwargs:
        kwargs["device_map"] = {"": _local_rank()}  # one whole model per rank; "auto" would split it across GPUs
    if _zero3(train_args):
        _deepspeed_comm()
    model = task.model_class().from_pretrained(
        model_args.model_name_or_path, dtype=dtype, attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code, **kwargs)
    model.config.use_cache = False  # training never reuses a KV cache
    if labels and model.config.pad_token_id is None:  # a decoder classifier pools the last token that is not pad
        model.config.pad_token_id = tokenizer.pad_token_id
    resize_embeddings(model, tokenizer)
    return model


def resize_embeddings(model, tokenizer) -> None:
    """Room for the tokens the tokenizer gained (never fewer rows: a checkpoint's padded rows stay)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))


def _quant_method(config) -> str:
    qc = config.quantization_config
    return (qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", "")) or ""


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "quantization_method", None) or getattr(model.config, "quantization_config", None))


def prepare_kbit_model(model, lora_args, train_args):
    """Make a 4-bit model trainable.  PEFT's prepare_model_for_kbit_training casts every non-quantized weight
    (embeddings, norms, lm_head) to fp32, so the whole residual stream runs in fp32: half the speed on an H100.
    Here the frozen weights stay in the compute dtype; the LoRA weights are fp32 (PEFT's autocast_adapter_dtype)."""
    keep_portable_4bit(model)
    if lora_args.kbit_upcast:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=train_args.gradient_checkpointing_kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    if train_args.gradient_checkpointing:
        # Only needed by reentrant checkpointing, harmless otherwise: gives the checkpointed blocks an input that
        # requires grad, or reentrant checkpointing gives the LoRA weights inside them no gradient.
        model.enable_input_require_grads()
    return model


def linear_module_names(model, skip=()) -> list[str]:
    """Leaf names of every linear-like layer except the output head (nn.Linear, bnb 4-bit, GPTQ kernels)."""
    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is head or not name or name.split(".")[-1] in skip:
            continue
        if isinstance(module, nn.Linear) or hasattr(module, "qweight"):
            names.add(name.split(".")[-1])
    return sorted(names)


def resolve_targets(model, requested, family: Family, skip=()) -> list[str]:
    present = linear_module_names(model, skip)
    if not requested:
        targets = [t for t in family.lora_targets if t in present]
    elif requested == ["all-linear"]:
        targets = present
    else:
        targets = list(requested)
    missing = [t for t in targets if t not in present]
    if missing or not targets:
        raise ArgumentError(f"--lora_target_modules: {missing or targets} not found among this model's linear "
                            f"layers: {present}")
    return targets


def apply_lora(model, lora_args, train_args, family: Family, task, modules_to_save=None):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ArgumentError("the model already carries LoRA layers; load a trained adapter with "
                            "PeftModel.from_pretrained on a bare base model, never after get_peft_model")
    if is_quantized(model):
        model = prepare_kbit_model(model, lora_args, train_args)
    elif train_args.gradient_checkpointing:
        model.enable_input_require_grads()
    head = [task.head(family)] if task.head(family) else []
    targets = resolve_targets(model, lora_args.lora_target_modules, family, skip=head)
    modules_to_save = head + [m for m in modules_to_save or () if m not in head] or None
    config = LoraConfig(
        r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, lora_dropout=lora_args.lora_dropout,
        target_modules=targets, bias=lora_args.lora_bias, modules_to_save=modules_to_save,
        use_dora=lora_args.use_dora, use_rslora=lora_args.use_rslora, task_type=task.peft_task_type)
    # the adapter's initial weights from the run's seed alone: how many draws loading took (ZeRO-3's zero.Init
    # initializes every base weight before loading it, a plain load none) must not change them
    torch.manual_seed(train_args.seed)
    model = get_peft_model(model, config)
    if not train_args.lora_upcast_inputs:
        skip_lora_input_upcast(model)
    if getattr(train_args, "fused_lora", False) and not _zero3(train_args):  # ZeRO-3: weights exist only in hooks
        from .fused_lora import fuse_lora_layers

        fuse_lora_layers(model)
    return model


def _zero3(train_args) -> bool:
    from .preflight import zero_stage

    return zero_stage(getattr(train_args, "deepspeed", None)) == 3


def _deepspeed_comm() -> None:
    """ZeRO-3 shards the weights while from_pretrained builds them (deepspeed.zero.Init), reading the world size from
    deepspeed.comm.  With --use_cpu, accelerate starts torch.distributed (gloo) but not deepspeed.comm, and zero.Init
    would then see one process and stop on its batch-size check: wrap the group that exists."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized() and not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend())


def _upcast_only_outside_autocast(module, args):
    """PEFT casts an adapted layer's input to the LoRA weights' dtype (fp32) before lora_A.  Under autocast to the
    input's own dtype the matmul casts that copy straight back, so it changes no number and only costs memory (an
    fp32 copy, then a bf16 one saved for backward, per adapted layer).  Decided per call: a forward outside autocast
    (generation, DataParallel replicas) still gets the cast it needs."""
    if args and torch.is_tensor(args[0]):
        device = args[0].device.type
        module.cast_input_dtype_enabled = not (torch.is_autocast_enabled(device)
                                               and torch.get_autocast_dtype(device) == args[0].dtype)


def skip_lora_input_upcast(model) -> int:
    """Installs the check above on every LoRA layer (what --lora_upcast_inputs false does); returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.register_forward_pre_hook(_upcast_only_outside_autocast)
    return len(layers)


def expected_trainable(model, lora_args) -> tuple[int, int]:
    """(expected trainable parameters, adapted layers): r × (in + out) per adapted layer, plus DoRA magnitudes,
    biases and fully trained modules."""
    from peft.tuners.lora import LoraLayer

    r, total, layers = lora_args.lora_r, 0, 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            base = module.get_base_layer()
            fan_in, fan_out = base.in_features, base.out_features
            total += r * (fan_in + fan_out) + (fan_out if lora_args.use_dora else 0)
            if lora_args.lora_bias == "lora_only" and getattr(base, "bias", None) is not None:
                total += fan_out
            layers += 1
    for name, p in model.named_parameters():
        if "modules_to_save" in name and p.requires_grad:
            total += p.numel()
        elif lora_args.lora_bias == "all" and name.endswith(".bias") and "lora_" not in name:
            total += p.numel()
    return total, layers


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # packed: two 4-bit values per byte
            n *= 2 * (p.element_size() if hasattr(p, "element_size") else 1)
        total += n
    return trainable, total


def lora_parameter_counts(model) -> dict:
    """Trainable parameters split into the LoRA matrices and the fully trained modules (a classifier's head)."""
    counts = {"lora": 0, "head": 0}
    for name, p in model.named_parameters():
        if p.requires_grad:
            counts["head" if "modules_to_save" in name else "lora"] += p.numel()
    return counts


def build_model(model_args, lora_args, train_args, tokenizer, family: Family, task, added_tokens=(), labels=None):
    """The model to train, with its trainable-parameter report (checked against the LoRA arithmetic).
    added_tokens: the special tokens load_tokenizer added (their embedding rows must be trained); labels: a
    classifier's label names."""
    model = load_model(model_args, lora_args, train_args, tokenizer, task, labels, head=task.head(family))
    modules_to_save = lora_args.modules_to_save
    if lora_args.use_lora and added_tokens and not modules_to_save:
        modules_to_save = list(family.embedding_modules)  # new tokens need trained embedding rows
        print(f"note: added {list(added_tokens)} to the tokenizer, so {modules_to_save} "
              "are trained fully and saved with the adapter")
    if lora_args.use_lora:
        model = apply_lora(model, lora_args, train_args, family, task, modules_to_save)
    if train_args.tiled_mlp_tokens:  # after PEFT or not: the patched forward finds the LoRA layers at call time
        from .tiling import apply_tiled_mlp

        if not apply_tiled_mlp(model, train_args.tiled_mlp_tokens):
            raise ArgumentError("--tiled_mlp_tokens: this model has no MLP module to tile (a class named *MLP with a "
                                "down_proj, as Llama, Qwen2 and GLM have); set it to 0")
    if getattr(model.config, "quantization_config", None) and _quant_method(model.config) == "gptq":
        from .gptq import check_trainable_kernels

        check_trainable_kernels(model)  # a kernel without a backward pass would train nothing, silently
    trainable, total = count_parameters(model)
    report = {"trainable_params": trainable, "all_params": total}
    line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    if lora_args.use_lora:
        expected, layers = expected_trainable(model, lora_args)
        if expected != trainable:
            raise RuntimeError(f"trainable parameters {trainable:,} != expected {expected:,} from r × (in + out) over "
                               f"{layers} adapted layers: some weights are unexpectedly trainable or frozen")
        line += f" || = r × (in + out) over {layers} adapted layers"
        report["adapted_layers"] = layers
        report.update({f"{k}_params": v for k, v in lora_parameter_counts(model).items()})
        line += f" (LoRA {report['lora_params']:,}, fully trained modules {report['head_params']:,})"
    if trainable == 0:
        raise RuntimeError("nothing to train: no parameter requires a gradient")
    print(line, flush=True)
    return model, report
