"""Q-LoRA on a model too large to save (issue 15, bar 4: a 70B shape on one H200): finetune.py as it is, except that
the model is not loaded from disk but built in memory, its random weights drawn and quantized to NF4 one linear layer
at a time on the device (the bf16 70B, 138 GB, never exists whole; its NF4 form is ~37 GB).  The folder passed as the
checkpoint holds only config.json and the tokenizer (written here); everything after loading, LoRA on all linear
layers, the fused path, checkpointing, offload, the Trainer and the summary, is the recipe's.

    python bench/inmemory.py --shape llama2-70b --folder /tmp/llama2-70b-config recipes/llama2/qlora.json \
        --data_path DATA --output_dir OUT --max_steps 6 ...        # then OUT/run_summary.json: tokens/s, peak GiB

On a CPU (the CI test) the same code path runs on a tiny shape.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import shapes  # noqa: E402

shapes.SHAPES["llama2-70b"] = dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                   num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096,
                                   rms_norm_eps=1e-5)


def write_folder(folder: str, shape: str) -> None:
    """config.json and the tokenizer only: no weights."""
    from transformers import LlamaConfig

    Path(folder).mkdir(parents=True, exist_ok=True)
    LlamaConfig(**shapes.SHAPES[shape]).save_pretrained(folder)
    shapes.save_tokenizer(folder, shape)


def random_nf4_model(folder: str, dtype: torch.dtype, device: torch.device, double_quant: bool = True):
    """The config's model with random weights: built on the meta device, every decoder linear layer replaced by a
    bitsandbytes NF4 layer whose weight is drawn in `dtype` on `device` and quantized there at once; embeddings,
    norms and the head in `dtype`.  Marked as a 4-bit model, as from_pretrained would."""
    import bitsandbytes as bnb
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    head = model.get_output_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is head:
                continue
            weight = torch.empty(child.out_features, child.in_features, dtype=dtype, device=device)
            weight.normal_(0, 0.02, generator=generator)
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, compress_statistics=double_quant, quant_type="nf4",
                                      device="meta")
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=double_quant,
                                             quant_type="nf4").to(device)  # quantized here; the bf16 copy is freed
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(torch.zeros(child.out_features, dtype=dtype, device=device),
                                                requires_grad=False)
            setattr(parent, name, layer)
            del weight
    for parent in list(model.modules()):  # rotary embeddings: their frequencies computed again, off the meta device
        for name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                setattr(parent, name, type(child)(child.config).to(device))
    for module in model.modules():  # what is left on the meta device: embeddings, norms, head
        for key, p in list(module.named_parameters(recurse=False)):
            if p.is_meta:
                fresh = torch.empty(p.shape, dtype=dtype, device=device)
                if "norm" in type(module).__name__.lower():
                    fresh.fill_(1.0)
                else:
                    fresh.normal_(0, 0.02, generator=generator)
                setattr(module, key, torch.nn.Parameter(fresh, requires_grad=False))
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, f"still on the meta device: {left[:3]}"
    model.config.quantization_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=dtype)
    model.is_loaded_in_4bit = True
    return model


def main(argv: list[str]) -> None:
    argv = list(argv)
    values = {}
    for flag in ("--shape", "--folder"):
        i = argv.index(flag)
        values[flag] = argv[i + 1]
        del argv[i:i + 2]
    shape, folder = values["--shape"], values["--folder"]
    write_folder(folder, shape)
    import finetune
    from tunekit import model as tunekit_model

    def load_in_memory(model_args, lora_args, train_args, tokenizer, task, labels=None, head=None):
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        built = random_nf4_model(folder, tunekit_model.train_dtype(train_args), device,
                                 lora_args.bnb_4bit_use_double_quant)
        built.config.use_cache = False
        if torch.cuda.is_available():
            print(f"in-memory model built: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated", flush=True)
        return built

    tunekit_model.load_model = load_in_memory
    finetune.main([*argv, "--model_name_or_path", folder])


if __name__ == "__main__":
    main(sys.argv[1:])
