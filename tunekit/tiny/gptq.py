"""GPTQ-Int4 checkpoints for tests and benchmarks: pack a float checkpoint by round-to-nearest.

    python -m tunekit.tiny.gptq SRC OUT [--group_size 32] [--device cuda]

`pack_rtn` writes the GPTQ v1 layout (`checkpoint_format: "gptq"`) without calibration: symmetric 4-bit
round-to-nearest per group of `group_size` input columns (qwen.md, Appendix, option 3).  For one module with weight
W [out, in] and g = i // group_size:

    qweight int32 [in/8, out]      input row i = 8p + j in bits 4j..4j+3 of qweight[p, o]
    qzeros  int32 [in/gs, out/8]   zero - 1 in every nibble (v1): 0x77777777; a v2 file would hold 0x88888888
    scales  fp16  [in/gs, out]     2 * absmax / 15 of the group
    g_idx   int32 [in]             i // group_size
    W[o, i] ~= scales[g, o] * (q[i, o] - 8)

`quantize_rtn` handles a partial last group (in % group_size != 0: ceil(in / gs) groups, as gptqmodel's buffers),
but only TorchLinear loads one (TritonV2Linear and TorchAtenLinear refuse it; TritonV2Linear also needs in and out
features divisible by 32), so `pack_rtn` leaves such modules unquantized (the tiny Qwen2's gate/up/down_proj:
intermediate 176) and lists the packed ones in the config's `modules_in_block_to_quantize`.  Quality is RTN's, not GPTQ's: fine for tests and speed benchmarks.

"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from ..atomic import atomic_folder
from ..errors import ArgumentError
from ..gptq import QUANT_BUFFERS

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INDEX = "model.safetensors.index.json"
V1_ZEROS_4BIT = 0x77777777  # v1 stores zero - 1 = 7 in each of the 8 nibbles


def quantize_rtn(weight, group_size: int = 32):
    """W [out, in] (any float dtype, any device) -> (qweight, qzeros, scales, g_idx) in the GPTQ v1 layout, same device.
    Rows whose group is all zero get the smallest normal fp16 scale (and quantize to exactly zero)."""
    import torch

    out_f, in_f = weight.shape
    if in_f % 8 or out_f % 8:
        raise ValueError(f"4-bit GPTQ packing needs in and out features divisible by 8, got [{out_f}, {in_f}]")
    groups = -(-in_f // group_size)
    pad = groups * group_size - in_f
    w = weight.detach().float()
    wg = torch.nn.functional.pad(w, (0, pad)).view(out_f, groups, group_size)
    scales = (wg.abs().amax(-1) * (2 / 15)).clamp_(min=torch.finfo(torch.float16).tiny).to(torch.float16)  # [out, g]
    s = scales.float().unsqueeze(-1)  # quantize against the fp16 scale the kernel will use
    q = (torch.round(wg / s) + 8).clamp_(0, 15).to(torch.int32).view(out_f, groups * group_size)[:, :in_f]
    q = q.t().contiguous().view(in_f // 8, 8, out_f)  # [in/8, 8, out]
    qweight = q[:, 0].clone()
    for j in range(1, 8):
        qweight.bitwise_or_(q[:, j] << (4 * j))  # int32 shifts wrap: the top nibble lands in the sign bit
    qzeros = torch.full((groups, out_f // 8), V1_ZEROS_4BIT, dtype=torch.int32, device=weight.device)
    g_idx = torch.arange(in_f, dtype=torch.int32, device=weight.device) // group_size
    return qweight, qzeros, scales.t().contiguous(), g_idx


def dequantize(qweight, qzeros, scales, g_idx, v1: bool = True):
    """Inverse of quantize_rtn (any zero point): W [out, in] in fp32.  For tests and checks."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)
    q = ((qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 15).reshape(-1, qweight.shape[1])  # [in, out]
    z = ((qzeros.unsqueeze(-1) >> shifts.view(1, 1, 8)) & 15).reshape(qzeros.shape[0], -1) + (1 if v1 else 0)
    g = g_idx.long()
    return ((q - z[g]).float() * scales[g].float()).t()


def _is_target(name: str, tensor, modules) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in modules and tensor.dim() == 2


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, generation config, chat template, README...: every plain file but the weights and config.json."""
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json" and f.name != INDEX and f.suffix not in (".safetensors", ".bin",
                                                                                              ".pt", ".pth"):
            shutil.copy2(f, dst / f.name)


def _packable(src: Path, shards, modules, group_size: int) -> tuple:
    """The requested module names whose every weight every training kernel loads: in % group_size == 0 (TritonV2Linear
    and TorchAtenLinear refuse a partial last group, TorchLinear accepts one) and in, out % 32 == 0 (TritonV2Linear,
    the GPU's auto_trainable kernel).  Others stay unquantized, with a note: in the tiny Qwen2 (intermediate 176)
    gate/up/down_proj; every linear layer of a real Qwen2/Llama shape is packed."""
    from safetensors import safe_open

    bad = {}
    for shard in shards:
        with safe_open(str(src / shard), framework="pt", device="cpu") as f:
            for name in f.keys():
                parts = name.split(".")
                if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in modules:
                    shape = f.get_slice(name).get_shape()
                    if len(shape) == 2 and (shape[1] % group_size or shape[1] % 32 or shape[0] % 32):
                        bad[parts[-2]] = shape
    if bad:
        print(f"note: not quantizing {dict(sorted(bad.items()))} ([out, in]: every kernel needs in to be a multiple "
              f"of group_size {group_size} and of 32, out of 32)")
    kept = tuple(m for m in modules if m not in bad)
    if not kept:
        raise ArgumentError(f"{src}: no module of {list(modules)} can be packed with group_size {group_size}")
    return kept


def gptq_config_dict(bits: int, group_size: int, modules) -> dict:
    """The config.json `quantization_config` of a v1 RTN checkpoint.  transformers 5.17's GPTQConfig reads the format
    from `checkpoint_format` (legacy key, wins) or `format`; optimum 2.3.0's GPTQQuantizer from `format`; both are
    written, with the same value, as transformers' own save_pretrained does.  `modules_in_block_to_quantize` keeps
    optimum from swapping a block's other linear layers for empty quantized ones."""
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False, "sym": True,
            "checkpoint_format": "gptq", "format": "gptq", "true_sequential": True,
            "modules_in_block_to_quantize": [list(modules)],
            "meta": {"quantizer": ["tunekit:pack_rtn"]}}


def pack_rtn(src_dir, out_dir, bits: int = 4, group_size: int = 32, modules=LINEAR, device: str = "cpu",
             overwrite: bool = False) -> Path:
    """Pack a float safetensors checkpoint folder into a GPTQ v1 4-bit checkpoint folder (see the module docstring).

    Streams one tensor at a time (each quantized on `device`, e.g. "cuda", its results moved back to the CPU) and
    writes one output shard per input shard, so peak host memory is about one input shard; the output appears
    atomically (written to a temporary sibling folder, renamed when complete)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if bits != 4:
        raise ArgumentError(f"pack_rtn: only 4-bit packing is implemented (got bits={bits})")
    if group_size <= 0 or group_size % 8:
        raise ArgumentError(f"pack_rtn: group_size must be a positive multiple of 8 (got {group_size})")
    src, out = Path(src_dir), Path(out_dir)
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization_config"):
        raise ArgumentError(f"{src} is already quantized ({config['quantization_config'].get('quant_method')})")
    index_path = src / INDEX
    if index_path.is_file():
        shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    elif (src / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise ArgumentError(f"{src}: no model.safetensors or {INDEX} (pack_rtn reads safetensors checkpoints only)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (overwrite=True, --overwrite)")

    modules = _packable(src, shards, modules, group_size)

    weight_map, total_size, packed = {}, 0, 0
    with atomic_folder(out) as tmp:
        for shard in shards:
            tensors = {}
            with safe_open(str(src / shard), framework="pt", device="cpu") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    if _is_target(name, t, modules):
                        prefix = name[: -len(".weight")]
                        parts = quantize_rtn(t.to(device, non_blocking=True), group_size)
                        for key, value in zip(QUANT_BUFFERS, parts):
                            tensors[f"{prefix}.{key}"] = value.cpu()
                        packed += 1
                    else:
                        tensors[name] = t  # embeddings, norms, lm_head, biases: as they are
                    del t
            save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
            for name, t in tensors.items():
                weight_map[name] = shard
                total_size += t.numel() * t.element_size()
            del tensors
        if not packed:
            raise ArgumentError(f"{src}: no 2-D '<module>.weight' tensor for modules {list(modules)}")
        if index_path.is_file():
            (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map},
                                                indent=2))
        config["quantization_config"] = gptq_config_dict(bits, group_size, modules)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _copy_side_files(src, tmp)
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="float safetensors checkpoint folder")
    p.add_argument("out", help="GPTQ v1 checkpoint folder to write")
    p.add_argument("--group_size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="where to quantize: cpu, cuda, cuda:1 ...")
    p.add_argument("--modules", nargs="+", default=list(LINEAR))
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    start = time.perf_counter()
    out = pack_rtn(a.src, a.out, group_size=a.group_size, modules=tuple(a.modules), device=a.device,
                   overwrite=a.overwrite)
    print(f"{out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
