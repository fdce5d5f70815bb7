"""Classification tasks (seq_cls, token_cls): labels from the training file, heads trained and saved, identical
predictions on every reload, the seed's parameter count, and bad input as one clear error."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import finetune
from conftest import ROOT, cpu_flags, write_json
from test_bad_input import refused, tree

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "food", "service", "the", "was", "really"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT with a word-level tokenizer over WORDS (offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("models") / "bert"
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def sentiment(tmp_path, n=48, name="train.jsonl", labels=("positive", "negative")):
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        word = ["good", "great", "fine"][i % 3] if label == "positive" else ["bad", "awful", "poor"][i % 3]
        rows.append({"text": f"the {['movie', 'food', 'service'][i % 3]} was really {word}", "label": label})
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tagged(tmp_path, name="ner.jsonl", n=24):
    rows = [{"tokens": ["the", "food", "was", "good"], "tags": ["O", "B-X", "O", "O"]},
            {"tokens": ["the", "movie", "service", "was", "bad"], "tags": ["O", "B-X", "I-X", "O", "O"]}] * (n // 2)
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(model, data, out, task="seq_cls", *extra, **flags):
    flags.setdefault("max_steps", 12)
    return finetune.main(["--model_name_or_path", model, "--data_path", data, "--task", task, "--family", "bert",
                          "--use_lora", "--lora_r", "4", *cpu_flags(out, **flags), *extra])


def test_seq_cls_trains_and_saves_the_head_and_labels(tiny_bert, tmp_path):
    trainer = run(tiny_bert, sentiment(tmp_path), tmp_path / "out", "seq_cls",
                  "--eval_data_path", sentiment(tmp_path, 16, "eval.jsonl"), eval_strategy="steps", eval_steps=96,
                  max_steps=96)
    # judged on the held-out file, not on the batch losses (four rows each, with dropout: too noisy to compare);
    # an untrained head scores about 0.5 at a loss near ln 2
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals[-1]["eval_accuracy"] == 1.0 and evals[-1]["eval_loss"] < 0.2, evals
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"]["positive"] == 1
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(".classifier." in k for k in keys), keys  # the head, saved whole (modules_to_save)
    assert any("lora_A" in k and "query" in k for k in keys) and not any("lora_A" in k and "key." in k for k in keys)
    summary = json.loads((out / "run_summary.json").read_text())
    assert {"eval_accuracy", "eval_macro_f1"} <= set(summary["eval_metrics"])


def test_token_cls_labels_the_first_sub_token_and_reports_entity_f1(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    from tunekit.classify import encode_tokens

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    ex, truncated = encode_tokens({"tokens": ["the", "food", "was"], "tags": ["O", "B-X", "O"]}, tok,
                                  {"B-X": 0, "I-X": 1, "O": 2}, 32)
    assert ex["labels"] == [-100, 2, 0, 2, -100] and not truncated  # [CLS] the food was [SEP]
    trainer = run(tiny_bert, tagged(tmp_path), tmp_path / "out", "token_cls",
                  "--eval_data_path", tagged(tmp_path, "eval.jsonl", 8), eval_strategy="steps", eval_steps=12)
    metrics = json.loads((tmp_path / "out" / "run_summary.json").read_text())["eval_metrics"]
    assert {"eval_precision", "eval_recall", "eval_f1"} <= set(metrics)
    assert trainer.state.global_step == 12


def test_predict_gives_identical_outputs_on_every_load(tiny_bert, tmp_path):
    from tunekit import runfolder
    from tunekit.predict import predict

    run(tiny_bert, sentiment(tmp_path), tmp_path / "out")
    records = [{"text": "the food was really good"}, {"text": "the service was awful"}]
    outputs = []
    for _ in range(2):
        trained = runfolder.read(tmp_path / "out")
        model, tok = runfolder.load(trained)
        task = trained.task.name
        outputs.append(predict(model, tok, task, records))
    assert outputs[0] == outputs[1] and {o["prediction"] for o in outputs[0]} <= {"positive", "negative"}
    assert abs(sum(outputs[0][0]["probabilities"].values()) - 1) < 1e-5


def test_datasets_and_collators_pad_on_the_right_with_labels_masked(tiny_bert, tmp_path):
    """The examples as `datasets.Dataset`s with their stats, batched by transformers' collators: input_ids padded on
    the right (attention_mask 0 there), one label per text, per-token labels padded with -100."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tunekit.classify import build_datasets, collator

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    tok.padding_side = "left"  # padded on the right all the same
    data = write_json(tmp_path / "d.json", [{"text": "good", "label": "pos"},
                                            {"text": "the food was bad", "label": "neg"}])
    args = SimpleNamespace(data_path=data, eval_data_path=None, max_samples=None, labels=None)
    train, evals, labels = build_datasets("seq_cls", args, tok, 5)
    assert labels == ["neg", "pos"] and evals is None and list(train) == [
        {"input_ids": [2, 4, 3], "labels": 1}, {"input_ids": [2, 13, 11, 14, 3], "labels": 0}]
    assert (train.stats.samples, train.stats.truncated, train.stats.dropped, train.stats.tokens) == (2, 1, 0, 8)
    batch = collator(tok, "seq_cls")(list(train))
    assert batch["input_ids"].tolist() == [[2, 4, 3, 0, 0], [2, 13, 11, 14, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]
    tagged = [{"input_ids": [2, 4, 3], "labels": [-100, 1, -100]},
              {"input_ids": [2, 13, 11, 3], "labels": [-100, 0, 1, -100]}]
    batch = collator(tok, "token_cls")(tagged)
    assert batch["input_ids"].tolist() == [[2, 4, 3, 0], [2, 13, 11, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 1, -100, -100], [-100, 0, 1, -100]]
    assert tok.padding_side == "left"  # the caller's tokenizer is left as it was


def test_bert_base_lora_on_query_value_has_the_seeds_parameter_count():
    """The seed's printout: r=16 on query/value of BERT-base is 589,824 LoRA parameters (12 layers x 2 modules x
    16 x (768 + 768)); the head (768 x labels + labels) is counted separately."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForTokenClassification

    from tunekit.model import lora_parameter_counts

    config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        vocab_size=30522, num_labels=2)
    model = get_peft_model(BertForTokenClassification(config), LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], task_type="TOKEN_CLS",
        modules_to_save=["classifier"]))
    counts = lora_parameter_counts(model)
    assert counts == {"lora": 589_824, "head": 768 * 2 + 2}


RELOAD = """
import json, sys, torch
sys.path.insert(0, {root!r})
torch.manual_seed(int(sys.argv[2]))  # every process draws differently: what is saved must not depend on it
folder = sys.argv[1]
if json.load(open(folder + "/adapter_config.json"))["task_type"]:  # the supported way
    from tunekit import runfolder
    model, tok = runfolder.load(runfolder.read(folder))
else:  # the seed's way: LoRA weights only, onto a freshly built classifier whose head is drawn at random
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    base = json.load(open(folder + "/adapter_config.json"))["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
        base, config=AutoConfig.from_pretrained(folder)), folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
enc = tok(["the food was really good", "the service was awful"], padding=True, return_tensors="pt")
with torch.no_grad():
    print(json.dumps(model(**enc).logits.float().tolist()))
"""


def reload_logits(folder, seed):
    r = subprocess.run([sys.executable, "-c", RELOAD.format(root=str(ROOT)), str(folder), str(seed)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_qlora_decoder_classifier_reloads_identically_and_fails_without_its_head(tiny_llama2, tmp_path):
    """The Kaggle seed's failure: a Q-LoRA (bitsandbytes NF4, CPU) Llama classifier saved the supported way reloads
    in two fresh processes, each with another RNG seed, to identical logits; with the head forced out of the saved
    adapter (LoRA weights only, as the seed's torch.save did), two reloads differ, so this test can fail."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "cls"
    finetune.main(["--model_name_or_path", tiny_llama2, "--data_path", sentiment(tmp_path), "--task", "seq_cls",
                   "--use_lora", "--q_lora", "--lora_r", "4", *cpu_flags(out, max_steps=6)])
    assert reload_logits(out, 1) == reload_logits(out, 2)
    headless = tmp_path / "headless"
    headless.mkdir()
    for f in out.iterdir():
        if f.is_file():
            (headless / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(out / "adapter_model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".score." not in k}, str(headless / "adapter_model.safetensors"))
    cfg = json.loads((headless / "adapter_config.json").read_text())
    cfg.update(task_type=None, modules_to_save=None)
    (headless / "adapter_config.json").write_text(json.dumps(cfg))
    assert reload_logits(headless, 1) != reload_logits(headless, 2)


def test_an_adapter_without_its_head_is_refused(tmp_path, random_qv_adapter):
    from tunekit.checkpoints import validate_adapter
    from tunekit.errors import EmptyAdapterError
    from safetensors import safe_open

    with safe_open(str(Path(random_qv_adapter) / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    validate_adapter(random_qv_adapter, keys, trained=True)
    with pytest.raises(EmptyAdapterError, match="classification head 'score' is not in the adapter"):
        validate_adapter(random_qv_adapter, keys, trained=True, head="score")


@pytest.mark.parametrize("case", ["no label", "tags and tokens", "label only in eval", "chat file"])
def test_bad_classification_input_is_one_error_naming_file_and_record(tiny_bert, tmp_path, capsys, case):
    data, task, extra = sentiment(tmp_path), "seq_cls", []
    if case == "no label":
        data = write_json(tmp_path / "nolabel.json", [{"text": "the food was good", "label": "positive"},
                                                       {"text": "the food was bad"}])
        pattern = r"nolabel\.json record 1: --task seq_cls reads records"
    elif case == "tags and tokens":
        data, task = write_json(tmp_path / "tags.json", [{"tokens": ["the", "food"], "tags": ["O"]}]), "token_cls"
        pattern = r"tags\.json record 0: 2 tokens but 1 tags; give one tag per token"
    elif case == "label only in eval":
        evals = sentiment(tmp_path, 3, "eval.jsonl", labels=("positive", "neutral", "negative"))
        extra = ["--eval_data_path", evals]
        pattern = r"eval\.jsonl record 1: label 'neutral' is not among the training file's labels"
    else:
        data = str(ROOT / "data/messages.jsonl")
        pattern = r"messages\.jsonl record 0: --task seq_cls reads records .*this one has \['messages'\]"
    argv = ["--model_name_or_path", tiny_bert, "--data_path", data, "--task", task, "--family", "bert", "--use_lora",
            *extra, *cpu_flags(tmp_path / "out", max_steps=1)]
    refused(capsys, argv, pattern, tmp_path, tiny_bert)
    assert not (tmp_path / "out").exists()
