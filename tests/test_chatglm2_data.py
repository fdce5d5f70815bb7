"""ADGEN (ChatGLM2's content/summary format): label masks against hand-written golden tokens, source/target
truncation, and the exact ids ChatGLM2's own preprocessing gives (prefix + sp(prompt) + sp(summary) + eos)."""
import json

import pytest

from conftest import DATA, write_json
from tunekit.data import IGNORE_INDEX, DataError, build_dataset, load_records, tokenize_sample
from tunekit.families import FAMILIES

FAM = FAMILIES["chatglm2"]


def word_tokenizer(words):
    """One token per word/punctuation run; ChatGLM2's specials where the converted tokenizer has them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "[gMASK]", "<sop>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(words) - set(specials)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": specials[3:]})
    return tok


def adgen(content, summary, tmp_path):
    return load_records(write_json(tmp_path / "adgen.json", [{"content": content, "summary": summary}]))[0]


def golden(sample, pairs, **limits):
    toks = [(t, trained) for text, trained in pairs for t in text.split()]
    tok = word_tokenizer([t for t, _ in toks] + "[ Round 1 ] 问 ： 答 类型 # 裙 * 颜色 蓝色 这条 裙子 很 清新 。".split())
    [ex], truncated = tokenize_sample(sample, tok, FAM, limits.pop("max_length", 512), **limits)
    got = [(tok.convert_ids_to_tokens(i), lab != IGNORE_INDEX) for i, lab in zip(ex["input_ids"], ex["labels"])]
    assert got == toks
    assert all(lab in (i, IGNORE_INDEX) for i, lab in zip(ex["input_ids"], ex["labels"]))
    return ex, truncated


PROMPT = "[gMASK] <sop> [ Round 1 ] 问 ： 类型 # 裙 * 颜色 # 蓝色 答 ："


def test_adgen_prompt_masked_summary_and_eos_trained(tmp_path):
    sample = adgen("类型#裙*颜色#蓝色", "这条裙子很清新。", tmp_path)
    golden(sample, [(PROMPT, False), ("这条裙子很清新 。 </s>", True)])


def test_max_source_length_counts_the_prefix_and_cuts_the_prompt(tmp_path):
    sample = adgen("类型#裙*颜色#蓝色", "这条裙子很清新。", tmp_path)
    golden(sample, [("[gMASK] <sop> [ Round 1 ]", False), ("这条裙子很清新 。 </s>", True)], max_source_length=6)


def test_max_target_length_cuts_the_summary_but_keeps_eos(tmp_path):
    sample = adgen("类型#裙", "这条 裙子 很 清新 。", tmp_path)
    golden(sample, [("[gMASK] <sop> [ Round 1 ] 问 ： 类型 # 裙 答 ：", False), ("这条 裙子 </s>", True)],
           max_target_length=2)


def test_model_max_length_still_caps_everything(tmp_path):
    sample = adgen("类型#裙", "这条 裙子 很 清新 。", tmp_path)
    ex, truncated = golden(sample, [("[gMASK] <sop> [ Round 1 ] 问 ： 类型 # 裙 答 ：", False), ("这条", True)],
                           max_length=14)
    assert truncated


def test_ids_equal_chatglm2_preprocessing_on_the_real_tokenizer(tmp_path):
    """The converted fast tokenizer + data.py give ChatGLM2's own ids: [gMASK] sop + sp(prompt)[:64-2] +
    sp(summary)[:128] + [eos], labels -100 on the prompt."""
    from transformers import AutoTokenizer

    from tunekit.convert.chatglm2_tokenizer import SPTokenizer
    from tunekit.tiny.chatglm2 import build_default

    model = build_default()
    tok, sp = AutoTokenizer.from_pretrained(model), SPTokenizer(model / "tokenizer.model")
    records = [json.loads(line) for line in (DATA / "chatglm2_adgen.jsonl").read_text(encoding="utf-8").splitlines()]
    samples = load_records(str(DATA / "chatglm2_adgen.jsonl"))
    for rec, sample in zip(records[:40], samples):
        [ex], _ = tokenize_sample(sample, tok, FAM, 1024, max_source_length=64, max_target_length=128)
        a = sp.prefix_ids + sp.encode(sp.build_prompt(rec["content"]))[: 64 - 2]
        b = sp.encode(rec["summary"])[:128]
        assert ex["input_ids"] == a + b + [2]
        assert ex["labels"] == [IGNORE_INDEX] * len(a) + b + [2]


def test_adgen_record_errors_name_the_record(tmp_path):
    path = write_json(tmp_path / "bad.json", [{"content": "类型#裙", "summary": "好看"}, {"content": "x", "summary": ""}])
    with pytest.raises(DataError, match=r"record 1: 'summary' must be a non-empty string"):
        load_records(path)
    with pytest.raises(DataError, match="max_source_length must be a positive"):
        build_dataset(str(DATA / "chatglm2_adgen.jsonl"), None, FAM, 512, max_source_length=0)


def test_other_families_read_adgen_as_one_chat_turn(tmp_path):
    sample = adgen("类型#裙", "好看", tmp_path)
    assert sample["messages"] == [{"role": "user", "content": "类型#裙"}, {"role": "assistant", "content": "好看"}]
    assert FAMILIES["qwen"].source_template is None  # so qwen/llama2 render it with their chat template


def test_shipped_adgen_sample():
    lines = (DATA / "chatglm2_adgen.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(x) for x in lines]
    assert len(records) >= 100 and all(set(r) == {"content", "summary"} for r in records)
    assert all("类型#" in r["content"] for r in records)
    assert len({r["content"] for r in records}) == len(records)
