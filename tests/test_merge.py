"""Merging: merged logits equal base+adapter logits (with an adapter that is not a no-op), the double-wrap mistake
is caught, quantized bases are refused, the output is a plain transformers model written atomically."""
import json

import pytest
import torch

from tunekit.arguments import ArgumentError
from tunekit.merge import merge
from tunekit.runfolder import load_adapter


@pytest.fixture
def random_adapter(tiny_llama2, tmp_path):
    """An adapter with random (non-zero) A and B: init_lora_weights=False, so merge checks are not vacuous."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama2)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                     init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    out = tmp_path / "adapter"
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama2).save_pretrained(out)
    return str(out)


PROBE = torch.tensor([[1, 40, 41, 300, 301, 500, 2], [1, 7, 8, 9, 10, 11, 12]])


def adapter_logits(base_path, adapter):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        model = load_adapter(AutoModelForCausalLM.from_pretrained(base_path), adapter).eval()
        return model(input_ids=PROBE).logits


def test_merged_model_equals_adapter_model(tiny_llama2, random_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    report = merge(random_adapter, str(tmp_path / "merged"), dtype="float32", max_shard_size="100KB")
    want = adapter_logits(tiny_llama2, random_adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()  # plain transformers, from disk
    with torch.no_grad():
        got = merged(input_ids=PROBE).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama2)(input_ids=PROBE).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (want - base).abs().max() > 1e-2  # the adapter is not a no-op, so the check means something
    assert report["probe_max_abs_diff"] < 1e-4
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) > 1
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= files
    assert not any(f.endswith(".bin") for f in files)
    assert not any(n.startswith(".") for n in (p.name for p in tmp_path.iterdir()))  # no temporary left behind


def test_double_wrap_is_caught(tiny_llama2, random_adapter):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama2),
                             LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(ArgumentError, match="already carries LoRA layers"):
        load_adapter(wrapped, random_adapter)
    with pytest.raises(ArgumentError, match="already carries LoRA layers"):
        load_adapter(wrapped.base_model.model, random_adapter)


def test_quantized_base_is_refused(tiny_llama2, random_adapter, tmp_path):
    import shutil

    q = tmp_path / "int4"
    shutil.copytree(tiny_llama2, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArgumentError, match="is quantized \\(gptq\\).*original unquantized model with --base"):
        merge(random_adapter, str(tmp_path / "m"), base=str(q))
    assert not (tmp_path / "m").exists()


def test_existing_output_is_not_overwritten_unless_asked(random_adapter, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ArgumentError, match="already exists; pass --overwrite"):
        merge(random_adapter, str(out), dtype="float32")
    assert (out / "keep.txt").read_text() == "mine"
    merge(random_adapter, str(out), dtype="float32", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


@pytest.mark.parametrize("room", [True, False])
def test_bf16_merge_runs_in_fp32_where_it_fits_and_is_saved_in_bf16(room, tiny_llama2, random_adapter, tmp_path,
                                                                    monkeypatch):
    """A bf16 merge computes W + BA in fp32 when 1.25x the fp32 model fits (one rounding, checked to 1e-4),
    otherwise in bf16 (checked to 5%); either way the saved weights are bf16."""
    import tunekit.merge as merge_module
    from safetensors.torch import load_file

    if not room:
        monkeypatch.setattr(merge_module, "available_bytes", lambda device: 0)
    report = merge(random_adapter, str(tmp_path / "merged"), dtype="bfloat16")
    assert report["merged_in"] == ("float32" if room else "bfloat16")
    assert report["probe_relative_diff"] < (1e-4 if room else 5e-2)
    weights = {}
    for shard in (tmp_path / "merged").glob("*.safetensors"):
        weights.update(load_file(shard))
    assert weights and {t.dtype for t in weights.values()} == {torch.bfloat16}
    # the fp32 merge rounds once: its weights equal the fp32 merged weights rounded to bf16
    if room:
        merge(random_adapter, str(tmp_path / "merged32"), dtype="float32")
        full = {}
        for shard in (tmp_path / "merged32").glob("*.safetensors"):
            full.update(load_file(shard))
        assert all(torch.equal(weights[k], full[k].to(torch.bfloat16)) for k in weights)


def test_a_killed_writers_leftovers_go_with_the_next_write(tmp_path):
    """merge and export write into .NAME.tmp-PID-... beside the target; a process killed mid-write leaves it (13 GB
    for a 7B merge): the next write of that target removes it, and never one whose writer still runs."""
    import os
    import subprocess

    from tunekit.atomic import atomic_folder

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".merged.tmp-{dead.pid}-x1"
    (leftover / "shard").mkdir(parents=True)
    running = tmp_path / f".merged.tmp-{os.getppid()}-x2"
    running.mkdir()
    with atomic_folder(tmp_path / "merged") as tmp:
        (tmp / "model.safetensors").write_text("weights")
    assert not leftover.exists() and running.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "merged"]
