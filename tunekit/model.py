"""Loading the tokenizer and the model, and the three branches: full fine-tuning, LoRA, Q-LoRA (an unquantized
checkpoint quantized on load with bitsandbytes, or a GPTQ checkpoint trained as it is: tunekit/gptq.py)."""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from .errors import ArgumentError
from .families import Family, read_config

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "uint8": torch.uint8}


def train_dtype(train_args) -> torch.dtype:
    return torch.bfloat16 if train_args.bf16 else torch.float16 if train_args.fp16 else torch.float32


def load_tokenizer(model_args, family: Family):
    """(tokenizer, the special tokens a named --template needed that the vocabulary lacked, added to it)."""
    from transformers import AutoTokenizer

    from . import templates

    path = model_args.model_name_or_path
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError, TypeError) as e:  # no tokenizer files, or files that do not parse
        raise ArgumentError(f"--model_name_or_path: {path}: the tokenizer does not load "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); the folder needs tokenizer.json "
                            "or tokenizer.model with tokenizer_config.json") from None
    added = templates.apply(tok, getattr(model_args, "template", None), path)
    ends = {tok.eos_token, templates.answer_end(tok, templates.end_of_turn(tok, templates.named(tok)))}
    if tok.pad_token is None or tok.pad_token in ends:
        choose_pad(tok, ends)
    tok.padding_side = "right"  # training; generation uses a left-padded copy
    return tok, added


PAD_NAMES = ("pad", "reserved", "unused", "placeholder", "dummy")


def choose_pad(tok, ends) -> None:
    """A pad that is neither EOS nor an end-of-turn token (those are trained): the unk token, else an unused special
    token of the vocabulary (Llama-3's <|finetune_right_pad_id|>, a reserved one), else a new <pad> (rows resized)."""
    added = [t.content for t in tok.added_tokens_decoder.values() if t.special]
    special = [t for t in (tok.unk_token, *added) if t and t not in ends]
    pad = special[0] if tok.unk_token in special else next(
        (t for name in PAD_NAMES for t in special if name in t.lower()), None)
    how = "an unused special token of the vocabulary"
    if pad is None:
        tok.add_special_tokens({"pad_token": "<pad>"})
        pad, how = "<pad>", "added: the vocabulary has no unused special token"
    tok.pad_token = pad
    print(f"note: pad token {pad!r} ({how}; never EOS or an end-of-turn token)", flush=True)


def bnb_config(lora_args, compute_dtype, skip=None):
    from transformers import BitsAndBytesConfig  # bitsandbytes itself is imported by transformers on load

    if lora_args.bnb_4bit_compute_dtype != "auto":
        compute_dtype = DTYPES[lora_args.bnb_4bit_compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=lora_args.bnb_4bit_quant_type, bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=lora_args.bnb_4bit_use_double_quant, llm_int8_skip_modules=skip,
        bnb_4bit_quant_storage=DTYPES[lora_args.bnb_4bit_quant_storage])


def keep_portable_4bit(model) -> None:
    """Every 4-bit load keeps the portable layout: on an AVX512-BF16 CPU bitsandbytes repacks a weight in place at its
    first no-grad forward, into a layout that asserts on widths not divisible by 32 and is not the one saved."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def quantization_kwargs(model_args, lora_args, dtype, skip=None) -> dict:
    """from_pretrained kwargs of the quantized branches, else {}; skip: modules kept unquantized (a classifier head)."""
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
    return {"quantization_config": bnb_config(lora_args, dtype, skip)} if lora_args.q_lora else {}


def load_model(model_args, lora_args, train_args, tokenizer, task, labels=None, head=None):
    """labels (classification tasks): the head's label names, saved in the config as id2label/label2id."""
    # full fine-tuning keeps fp32 master weights (bf16/fp16 run under autocast)
    dtype = train_dtype(train_args) if lora_args.use_lora else torch.float32
    kwargs = quantization_kwargs(model_args, lora_args, dtype, skip=[head] if head else None)
    if labels:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={name: i for i, name in enumerate(labels)})
    if model_args.attn_implementation == "varlen":
        from .attention import register

        register()
    if kwargs and torch.cuda.is_available() and "device_map" not in kwargs:
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # one whole model per rank, not split
    if _zero3(train_args):
        # zero.Init takes the world size from deepspeed.comm, which --use_cpu (accelerate's gloo) does not start: it
        # would see one process and stop on its batch-size check, so wrap the group that exists
        import deepspeed
        import torch.distributed as dist

        if dist.is_initialized() and not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=dist.get_backend())
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


def prepare_kbit_model(model, lora_args, train_args):
    """Make a 4-bit model trainable, its frozen weights in the compute dtype (PEFT's prepare_model_for_kbit_training,
    --kbit_upcast, casts embeddings, norms and lm_head to fp32: half the speed on an H100); LoRA weights are fp32."""
    keep_portable_4bit(model)
    if lora_args.kbit_upcast:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=train_args.gradient_checkpointing_kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    if train_args.gradient_checkpointing:
        # reentrant checkpointing (harmless otherwise): without an input requiring grad, LoRA inside gets no gradient
        model.enable_input_require_grads()
    return model


def resolve_targets(model, requested, family: Family, skip=()) -> list[str]:
    """The given names, else the family's ('all-linear': every linear layer but the output head), checked against the
    leaf names of linear layers."""
    head, leaf = model.get_output_embeddings(), lambda name: name.split(".")[-1]
    present = sorted({leaf(name) for name, m in model.named_modules() if name and m is not head
                      and leaf(name) not in skip and (isinstance(m, nn.Linear) or hasattr(m, "qweight"))})
    requested = requested or list(family.lora_targets)
    if requested != ["all-linear"] and requested == list(family.lora_targets):
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
    if getattr(model, "is_quantized", False):  # set by transformers' quantized loading (bitsandbytes, GPTQ)
        model = prepare_kbit_model(model, lora_args, train_args)
    elif train_args.gradient_checkpointing:
        model.enable_input_require_grads()
    head = [task.head(family)] if task.head(family) else []
    if lora_args.init_adapter:  # trained further as it is: its targets, rank and fully trained modules
        return _after_lora(load_adapter(model, lora_args.init_adapter, is_trainable=True), train_args)
    targets = resolve_targets(model, lora_args.lora_target_modules, family, skip=head)
    modules_to_save = head + [m for m in modules_to_save or () if m not in head] or None
    config = LoraConfig(r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, lora_dropout=lora_args.lora_dropout,
                        target_modules=targets, bias=lora_args.lora_bias, modules_to_save=modules_to_save,
                        use_dora=lora_args.use_dora, use_rslora=lora_args.use_rslora, task_type=task.peft_task_type)
    # the adapter's initial weights from the seed alone, however many draws loading took (ZeRO-3's zero.Init: all)
    torch.manual_seed(train_args.seed)
    return _after_lora(get_peft_model(model, config), train_args)


def _after_lora(model, train_args):
    if not train_args.lora_upcast_inputs:
        skip_lora_input_upcast(model)
    if getattr(train_args, "fused_lora", False) and not _zero3(train_args):  # ZeRO-3: weights exist only in hooks
        from .fused_lora import fuse_lora_layers

        fuse_lora_layers(model)
    return model


def _zero3(train_args) -> bool:
    from .preflight import zero_stage

    return zero_stage(getattr(train_args, "deepspeed", None)) == 3


def _upcast_only_outside_autocast(module, args):
    """PEFT's cast of an adapted layer's input to the fp32 LoRA dtype only where it changes a number: not under
    autocast to the input's own dtype (the matmul casts it straight back); decided per call."""
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
    """(expected trainable parameters, adapted layers): r × (in + out) per layer, DoRA, biases, fully trained ones."""
    from peft.tuners.lora import LoraLayer

    total, layers = 0, 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            base = module.get_base_layer()
            fan_in, fan_out = base.in_features, base.out_features
            # the layer's own rank and DoRA: an --init_adapter's are its own, not the flags'
            r, dora = module.r["default"], module.use_dora["default"]
            total += r * (fan_in + fan_out) + (fan_out if dora else 0)
            if lora_args.lora_bias == "lora_only" and getattr(base, "bias", None) is not None:
                total += fan_out
            layers += 1
    for name, p in model.named_parameters():
        if "modules_to_save" in name and p.requires_grad:
            total += p.numel()
        elif lora_args.lora_bias == "all" and name.endswith(".bias") and "lora_" not in name:
            total += p.numel()
    return total, layers


def lora_parameter_counts(model) -> dict:
    """Trainable parameters split into the LoRA matrices and the fully trained modules (a classifier's head)."""
    counts = {"lora": 0, "head": 0}
    for name, p in model.named_parameters():
        if p.requires_grad:
            counts["head" if "modules_to_save" in name else "lora"] += p.numel()
    return counts


def build_model(model_args, lora_args, train_args, tokenizer, family: Family, task, added_tokens=(), labels=None):
    """The model to train and its parameter report, checked against the LoRA arithmetic (added_tokens: rows trained)."""
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
    if getattr(model, "quantization_method", None) == "gptq":
        from .gptq import check_trainable_kernels

        check_trainable_kernels(model)  # a kernel without a backward pass would train nothing, silently
    trainable, total = model.num_parameters(only_trainable=True), model.num_parameters()  # 4-bit: unpacked count
    report = {"trainable_params": trainable, "all_params": total}
    line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    if lora_args.use_lora:
        expected, layers = expected_trainable(model, lora_args)
        if expected != trainable:
            raise RuntimeError(f"trainable parameters {trainable:,} != expected {expected:,} from r × (in + out) over "
                               f"{layers} adapted layers: some weights are unexpectedly trainable or frozen")
        report.update(adapted_layers=layers, **{f"{k}_params": v for k, v in lora_parameter_counts(model).items()})
        line += (f" || = r × (in + out) over {layers} adapted layers (LoRA {report['lora_params']:,}, fully trained "
                 f"modules {report['head_params']:,})")
    if trainable == 0:
        raise RuntimeError("nothing to train: no parameter requires a gradient")
    print(line, flush=True)
    return model, report


def load_adapter(base_model, adapter_dir: str, is_trainable: bool = False):
    """PeftModel.from_pretrained on a bare base model.  On a model already wrapped by get_peft_model the adapter
    would load as nothing, silently, so that is refused; so are adapter weights that do not load."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(base_model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in base_model.modules()):
        raise ArgumentError("the base model already carries LoRA layers (get_peft_model was called on it): load the "
                            "adapter onto a freshly loaded base model instead")
    with warnings.catch_warnings(record=True) as caught:  # PEFT only warns when adapter weights do not load
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)
    for w in caught:
        if "missing adapter keys" in str(w.message):
            raise ArgumentError(f"{adapter_dir}: some adapter weights were not loaded, so the model would silently "
                                f"behave more like its base: {str(w.message)[:300]}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model
