"""Label masks per format against hand-written golden token/label pairs, truncation and drop counts, padding."""
import pytest
import torch

from conftest import DATA, write_json
from tunekit.templates import NAMED
from tunekit.tiny import TOKENS
from tunekit.data import IGNORE_INDEX, DataError, build_dataset, collator, load_records, tokenize_sample
from tunekit.families import FAMILIES


def word_tokenizer(family_name, words, template=True):
    """A word-level tokenizer whose ids are easy to reason about: one token per word or punctuation run; BOS on text
    as Llama's; template=False: a base tokenizer (no chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[family_name]
    tokens = TOKENS[family_name]
    specials = (["<unk>", "<s>", "</s>"] if family_name == "llama2" else list(tokens["extra"]))
    vocab = {t: i for i, t in enumerate(specials + sorted(set(words) - set(specials)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if family_name == "llama2":
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, chat_template=NAMED[fam.template].jinja if template else None,
                                  pad_token=tokens["pad"],
                                  **tokens["special"])
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def golden(family_name, sample, pairs, max_length=512):
    """pairs: [(space-separated tokens, trained?)] written by hand; text samples on a base tokenizer (no template)."""
    toks = [(t, trained) for text, trained in pairs for t in text.split()]
    tok = word_tokenizer(family_name, [t for t, _ in toks], template="text" not in sample)
    [ex], truncated = tokenize_sample(sample, tok, FAMILIES[family_name], max_length)
    got = [(tok.convert_ids_to_tokens(i), lab != IGNORE_INDEX) for i, lab in zip(ex["input_ids"], ex["labels"])]
    assert got == toks
    assert all(lab in (i, IGNORE_INDEX) for i, lab in zip(ex["input_ids"], ex["labels"]))
    return ex, truncated


def test_conversations_llama2_with_system_and_two_rounds():
    sample = load_records_from({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi there"},
        {"from": "assistant", "value": "Hello friend"}, {"from": "human", "value": "Bye"},
        {"from": "gpt", "value": "See you"}]})
    golden("llama2", sample, [
        ("<s> [ INST ] << SYS >> Be brief . <</ SYS >> Hi there [/ INST ]", False),
        ("Hello friend </s>", True),
        ("<s> [ INST ] Bye [/ INST ]", False),
        ("See you </s>", True),
    ])


def test_messages_qwen_chatml_default_system():
    sample = load_records_from({"messages": [{"role": "user", "content": "Hi there"},
                                             {"role": "assistant", "content": "Hello friend"}]})
    golden("qwen", sample, [
        ("<|im_start|> system You are a helpful assistant . <|im_end|> <|im_start|> user Hi there <|im_end|> "
         "<|im_start|> assistant", False),
        ("Hello friend <|im_end|>", True),
    ])


def test_alpaca_with_input():
    sample = load_records_from({"instruction": "Add the numbers", "input": "2 and 3", "output": "5"})
    golden("llama2", sample, [("<s> [ INST ] Add the numbers 2 and 3 [/ INST ]", False), ("5 </s>", True)])


def test_guanaco_text_two_rounds():
    sample = load_records_from({"text": "### Human: Hi there### Assistant: Hello friend### Human: Bye### Assistant: Ciao"})
    golden("llama2", sample, [
        ("<s> ### Human : Hi there ### Assistant :", False), ("Hello friend", True),
        ("### Human : Bye ### Assistant :", False), ("Ciao </s>", True),
    ])


def test_plain_text_learns_everything_and_eos():
    sample = load_records_from({"text": "Once upon a time"})
    golden("llama2", sample, [("<s>", False), ("Once upon a time </s>", True)])


def test_truncation_keeps_start():
    sample = load_records_from({"text": "### Human: a b c d### Assistant: e f g"})
    ex, truncated = golden("llama2", sample, [("<s> ### Human : a b c d ### Assistant :", False), ("e", True)],
                           max_length=12)
    assert truncated


def load_records_from(record, tmp=None):
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([record], f)
    return load_records(f.name)[0]


def test_shipped_samples_supervise_exactly_the_answers(tiny_llama2, tiny_qwen):
    """With the real (BPE) tiny tokenizers: the supervised tokens decode to the assistant turns plus end tokens."""
    from transformers import AutoTokenizer

    for model, path, family in [(tiny_qwen, "qwen_conversations.json", "qwen"),
                                (tiny_llama2, "messages.jsonl", "llama2"),
                                (tiny_llama2, "alpaca.json", "llama2")]:
        tok = AutoTokenizer.from_pretrained(model)
        fam = FAMILIES[family]
        for rec in load_records(str(DATA / path))[:20]:
            [ex], _ = tokenize_sample(rec, tok, fam, 4096)
            ids = torch.tensor(ex["input_ids"])
            labels = torch.tensor(ex["labels"])
            answers = [m["content"].strip() for m in rec["messages"] if m["role"] == "assistant"]
            supervised = tok.decode(ids[labels != IGNORE_INDEX])
            end = tok.eos_token
            assert supervised.count(end) == len(answers)
            for a in answers:
                assert a in supervised
            # exactly the ids of the tokenizer's own chat template (what inference sees; no double BOS)
            assert ex["input_ids"] == tok.apply_chat_template(rec["messages"], tokenize=True)["input_ids"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_right_and_keeps_eos_label_even_when_pad_is_eos(side):
    from types import SimpleNamespace

    tok = word_tokenizer("llama2", ["a"])
    tok.pad_token, tok.padding_side = tok.eos_token, side  # a left-padding tokenizer (generation's) is padded right
    eos = tok.eos_token_id
    feats = [{"input_ids": [5, 6, eos], "labels": [-100, 6, eos]}, {"input_ids": [7, eos], "labels": [7, eos]}]
    batch = collator(tok, SimpleNamespace(packing=False), False)(feats)
    assert batch["input_ids"].tolist() == [[5, 6, eos], [7, eos, eos]]
    assert batch["labels"].tolist() == [[-100, 6, eos], [7, eos, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert tok.padding_side == side  # the caller's tokenizer is left as it was


def test_samples_without_labels_are_dropped_and_counted(tiny_llama2, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama2)
    long_prompt = "word " * 300
    path = write_json(tmp_path / "d.json", [
        {"instruction": long_prompt, "input": "", "output": "short"},
        {"instruction": "ok", "input": "", "output": "fine"},
        {"instruction": "long answer", "input": "", "output": "x " * 300},
    ])
    ds = build_dataset(path, tok, FAMILIES["llama2"], max_length=64)
    assert (ds.stats.samples, ds.stats.truncated, ds.stats.dropped, len(ds)) == (3, 2, 1, 2)
    assert ds.stats.tokens == sum(len(ex["input_ids"]) for ex in ds)
    assert ds.stats.supervised_tokens == sum(x != IGNORE_INDEX for ex in ds for x in ex["labels"]) > 0


def test_lazy_preprocess_tokenizes_on_demand(tiny_llama2, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama2)
    tok.chat_template = None  # a base tokenizer: guanaco text is trained as text
    path = str(DATA / "llama2_guanaco.jsonl")
    eager = build_dataset(path, tok, FAMILIES["llama2"], 256)
    encoded = []

    def encode(sample, *args, **kwargs):
        encoded.append(sample)
        return tokenize_sample(sample, *args, **kwargs)

    lazy = build_dataset(path, tok, FAMILIES["llama2"], 256, lazy=True, encode=encode)
    assert not encoded and len(lazy) == len(eager) == lazy.stats.samples
    assert lazy[3] == eager[3] and lazy[3] == eager[3] and len(encoded) == 1  # encoded on first use, then cached
    assert lazy.stats.guanaco == eager.stats.guanaco == len(eager)  # the run's prompt format, known up front
    # a sample that loses every supervised token is kept (it cannot be dropped once training runs) and counted
    short = write_json(tmp_path / "d.json", [{"instruction": "word " * 300, "input": "", "output": "short"},
                                             {"instruction": "ok", "input": "", "output": "fine"}])
    tok.chat_template = NAMED["llama2"].jinja
    lazy = build_dataset(short, tok, FAMILIES["llama2"], 64, lazy=True)
    assert [all(x == IGNORE_INDEX for x in lazy[i]["labels"]) for i in range(2)] == [True, False]
    assert (lazy.stats.samples, lazy.stats.truncated, lazy.stats.dropped) == (2, 1, 1)


@pytest.mark.parametrize("content,message", [
    ('[{"conversations": [{"from": "bot", "value": "x"}]}]', r"record 0: conversations\[0\] has from='bot'"),
    ('[{"conversations": [{"from": "assistant", "value": "x"}]}]', "must alternate"),
    ('[{"question": "x"}]', "record 0: unknown record format"),
    ('[{"text": ""}]', "'text' must be a non-empty string"),
    ('[{"messages": [{"role": "user", "content": "hi"}]}]', "no assistant turn"),
    ('{"text": "a"}\n{"text": "b"}\n', "one record per line must be named .jsonl"),
])
def test_bad_records_name_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_records(str(path))


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match="bad.jsonl line 2: not valid JSON"):
        load_records(str(path))
