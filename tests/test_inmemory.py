"""bench/inmemory.py (issue 15, bar 4: a 70B-shaped Q-LoRA run that no disk could hold): the model is built in memory,
every decoder linear layer NF4 with random weights, and trained by finetune.py as it is.  Here on a tiny shape on the
CPU (bitsandbytes quantizes there too); on an H200: `python bench/inmemory.py --shape llama2-70b ...`."""
import math
import sys

import torch

from conftest import DATA, ROOT

sys.path.insert(0, str(ROOT / "bench"))
import inmemory  # noqa: E402


def test_random_nf4_model_is_4bit_and_runs(tmp_path):
    import bitsandbytes as bnb

    folder = str(tmp_path / "cfg")
    inmemory.write_folder(folder, "tiny")
    assert not list((tmp_path / "cfg").glob("*.safetensors"))  # config and tokenizer only
    model = inmemory.random_nf4_model(folder, torch.float32, torch.device("cpu"))
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * model.config.num_hidden_layers  # q k v o gate up down, every layer
    assert all(m.weight.bnb_quantized and m.weight.quant_state is not None for m in four_bit)
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    ids = torch.randint(3, model.config.vocab_size, (1, 16))
    loss = model(input_ids=ids, labels=ids).loss
    assert math.isfinite(loss.item()) and loss.item() > 1  # random weights: about log(vocab)


def test_inmemory_qlora_trains_through_finetune(tmp_path, monkeypatch):
    import json

    from tunekit import model as tunekit_model

    monkeypatch.setattr(tunekit_model, "load_model", tunekit_model.load_model)  # restored after the test
    out = tmp_path / "out"
    inmemory.main(["--shape", "tiny", "--folder", str(tmp_path / "cfg"), str(ROOT / "recipes/llama2/qlora.json"),
                   str(ROOT / "recipes/cpu-tiny.json"), "--data_path", str(DATA / "llama2_guanaco.jsonl"),
                   "--output_dir", str(out), "--eval_data_path", "", "--eval_strategy", "no", "--eval_on_start",
                   "false", "--eval_on_train", "false", "--max_steps", "4", "--attn_implementation", "sdpa",
                   "--packing", "true", "--token_budget", "1024", "--model_max_length", "512", "--use_liger_kernel",
                   "false", "--optim", "adamw_torch", "--logging_steps", "1", "--learning_rate", "5e-3"])
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_loss"] < summary["first_loss"]
    assert (out / "adapter_model.safetensors").is_file()
