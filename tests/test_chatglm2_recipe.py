"""`make chatglm2-lora` end to end on the embedded default: tiny ORIGINAL-layout ChatGLM2 + sentencepiece model,
converted, LoRA-trained, merged and sampled, written back in the original layout.
The original-layout result, run through the clean-room reference forward, gives the merged native model's logits."""
import json
import os
import subprocess
import sys

import torch

from conftest import ROOT
from test_chatglm2 import reference_logits
from tunekit.convert.chatglm2 import load_weights


def test_lora_recipe_end_to_end_and_back_to_the_original_layout(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from test_make_targets import make

    adapter = tmp_path / "adapter"
    r = make("chatglm2-lora", OUTPUT=adapter)  # train.sh, then merge.sh into adapter-merged (and -merged-chatglm2)
    assert "real tokens/s" in r.stdout and "--- trained answer" in r.stdout
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"])
    base = cfg["base_model_name_or_path"]
    assert json.loads((ROOT / base / "config.json").read_text())["model_type"] == "glm"
    assert json.loads((ROOT / base / "tunekit_conversion.json").read_text())["direction"] == "chatglm->glm"

    merged = tmp_path / "adapter-merged"

    # make chatglm2-eval: ADGEN-style scores of the adapter's answers on the shipped held-out ADGEN sample
    r = subprocess.run([sys.executable, "-m", "tunekit.evaluate", str(adapter), "--generate", "--data",
                        "data/chatglm2_adgen_eval.jsonl", "--limit", "3", "--max_new_tokens", "16"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    metrics = json.loads((adapter / "eval_metrics.json").read_text())
    assert metrics["samples"] == 3 and "ChatGLM2 ADGEN" in metrics["scoring"]
    assert {"rouge-1", "rouge-2", "rouge-l", "bleu-4", "perplexity"} <= set(metrics)
    rows = [json.loads(x) for x in (adapter / "eval_predictions.jsonl").read_text().splitlines()]
    assert [x["reference"] for x in rows] == [json.loads(x)["summary"] for x in
                                              (ROOT / "data/chatglm2_adgen_eval.jsonl").read_text().splitlines()[:3]]

    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "类型#裙*颜色#白色"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert ids["input_ids"][0, :2].tolist() == tok.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    with torch.no_grad():
        native = model(**ids).logits
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    original = tmp_path / "adapter-merged-chatglm2"
    ocfg = json.loads((original / "config.json").read_text())
    assert ocfg["model_type"] == "chatglm" and (original / "tokenizer.model").is_file()
    # the merge keeps the padded vocabulary rows (ChatGLM2-6B: 65024 rows for 64794 tokens)
    padded = json.loads((ROOT / base / "config.json").read_text())["vocab_size"]
    assert padded > len(tok) and ocfg["padded_vocab_size"] == padded == model.config.vocab_size
    want = reference_logits(load_weights(original), ocfg, ids["input_ids"])
    assert (native - want).abs().max().item() < 1e-5
