"""ChatGLM2 tokenizer without remote code: sentencepiece itself (special ids, prefix, prompt, left padding), and the
fast export, whose ids must equal sentencepiece's on mixed Chinese-English text and which is refused on a mismatch."""
import json
import shutil

import pytest

from conftest import DATA
from tunekit.convert.chatglm2_tokenizer import (SPTokenizer, TokenizerMismatch, check_against_sentencepiece,
                                                export_fast, fast_tokenizer)
from tunekit.tiny.chatglm2 import train_tiny


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("sp") / "tokenizer.model")


def _edit(model_file, out, edit):
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(model_file.read_bytes())
    edit(m)
    out.write_bytes(m.SerializeToString())
    return out


@pytest.fixture(scope="module")
def sp_64789(sp_model, tmp_path_factory):
    """The tiny model padded with never-produced (UNUSED) pieces to ChatGLM2-6B's 64789, so specials get real ids."""
    def pad(m):
        for i in range(64789 - len(m.pieces)):
            m.pieces.add(piece=f"<unused{i}>", score=-1e9, type=5)
    return _edit(sp_model, tmp_path_factory.mktemp("sp64789") / "tokenizer.model", pad)


def mixed_lines():
    """A few hundred lines of mixed Chinese/English text from data/ (ADGEN, conversations, alpaca, guanaco)."""
    lines = []
    for path in sorted(DATA.glob("*.json*")):
        text = path.read_text(encoding="utf-8")
        lines += [line.strip() for line in text.splitlines() if line.strip()][:80]
    lines += ["ChatGLM2 的 tokenizer 把 English words 和中文混在一起 encode。", "价格 ¥199，尺码 S/M/L，material: 100% cotton",
              "  前导空格 and trailing  ", "tab\t分隔\tvalues", "多行\n文本\nlines", "sop 和 eop 只是普通单词"]
    return lines


def test_special_ids_prefix_and_prompt(sp_64789):
    tok = SPTokenizer(sp_64789)
    assert tok.n_words == 64789
    assert tok.special_ids["[gMASK]"] == 64790 and tok.special_ids["sop"] == 64792 and tok.special_ids["eop"] == 64793
    assert (tok.eos_id, tok.pad_id) == (2, 0)
    prompt = tok.build_prompt("你好")
    assert prompt == "[Round 1]\n\n问：你好\n\n答："
    ids = tok.build_inputs("你好")
    assert ids[:2] == [64790, 64792] and ids[2:] == tok.sp.encode(prompt)
    assert tok.build_prompt("再见", [("你好", "你好！")]) == "[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：再见\n\n答："
    assert tok.sp.encode("\n")[-1] == 13  # byte fallback: <0x0A> right after <unk> <s> </s>, as in ChatGLM2
    assert tok.decode(ids + [2, 0]) == prompt  # specials, eos and pad decode to nothing


def test_left_padding_for_generation(sp_model):
    tok = SPTokenizer(sp_model)
    batch = tok.pad([tok.build_inputs("你好"), tok.build_inputs("介绍一下这件连衣裙的设计")])
    short = len(tok.build_inputs("你好"))
    n = batch["input_ids"].shape[1]
    assert batch["input_ids"][0, : n - short].eq(0).all() and batch["attention_mask"][0, : n - short].eq(0).all()
    assert batch["input_ids"][0, n - short:].tolist() == tok.build_inputs("你好")
    fast = fast_tokenizer(sp_model)
    assert fast.padding_side == "left" and fast.pad_token_id == 0 and fast.eos_token_id == 2


def test_fast_ids_equal_sentencepiece_on_mixed_text(sp_64789):
    lines = mixed_lines()
    assert len(lines) >= 300 and any("的" in x for x in lines) and any("the" in x for x in lines)
    sp = SPTokenizer(sp_64789)
    fast = export_fast(sp_64789)
    for line in lines:
        ids = sp.encode(line)
        assert fast(line, add_special_tokens=False)["input_ids"] == ids, line
        assert fast(line)["input_ids"] == [64790, 64792] + ids, line
        assert fast.decode(ids) == sp.decode(ids), line
    assert check_against_sentencepiece(fast, sp_64789, lines) == len(lines)
    assert fast.convert_tokens_to_ids(["[gMASK]", "<sop>", "<eop>"]) == [64790, 64792, 64793]
    # the chat template renders ChatGLM2's prompt, and its ids are [gMASK] sop + sentencepiece's
    text = fast.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert fast(text, add_special_tokens=False)["input_ids"] == sp.build_inputs("你好")


def test_altered_vocabulary_is_refused(sp_model, tmp_path):
    # a fast tokenizer made from another vocabulary (two pieces swapped) against the user's tokenizer.model
    def swap(m):
        m.pieces[300].piece, m.pieces[301].piece = m.pieces[301].piece, m.pieces[300].piece
    other = _edit(sp_model, tmp_path / "swapped.model", swap)
    with pytest.raises(TokenizerMismatch, match="vocabulary entries differ"):
        check_against_sentencepiece(export_fast(other), sp_model, mixed_lines())

    # a tokenizer.model whose merge priorities (scores) the export cannot reproduce: refused at conversion time
    def reverse_scores(m):
        for p in m.pieces:
            if p.type == 1:
                p.score = -p.score
    altered = _edit(sp_model, tmp_path / "altered.model", reverse_scores)
    with pytest.raises(TokenizerMismatch, match="differs from sentencepiece on text"):
        fast_tokenizer(altered)


def test_conversion_refuses_a_mismatching_tokenizer(tmp_path):
    from tunekit.convert.chatglm2 import convert
    from tunekit.tiny.chatglm2 import build_original

    src = build_original(tmp_path / "src")
    def reverse_scores(m):
        for p in m.pieces:
            if p.type == 1:
                p.score = -p.score
    _edit(src / "tokenizer.model", src / "tokenizer.model", reverse_scores)
    with pytest.raises(TokenizerMismatch):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    out = convert(src, tmp_path / "weights-only", fast_tokenizer=False)  # the weights still convert on request
    assert not (out / "tokenizer.json").exists() and (out / "tokenizer.model").is_file()
    assert json.loads((out / "tunekit_conversion.json").read_text())["fast_tokenizer"] is False
    shutil.rmtree(out)


def test_chatglm3_folder_gets_role_tokens_stop_ids_and_its_chat_format(tmp_path):
    """ChatGLM3 is told apart by its tokenizer files (read as text, never run): 9 specials, eos [2, <|user|>,
    <|observation|>], and the chat prompt build_chat_input makes: [gMASK] sop <|user|> sp("\\n") sp(q) <|assistant|>."""
    from transformers import AutoTokenizer

    from tunekit.convert.chatglm2 import convert
    from tunekit.tiny.chatglm2 import build_original

    src = build_original(tmp_path / "chatglm3")
    (src / "tokenization_chatglm.py").write_text('# role tokens: "<|system|>", "<|user|>", "<|assistant|>", '
                                                 '"<|observation|>"\nraise SystemExit("never run")\n')
    out = convert(src, tmp_path / "native")
    sp = SPTokenizer(src / "tokenizer.model", chatglm3=True)
    n = sp.n_words
    assert json.loads((out / "tunekit_conversion.json").read_text())["variant"] == "chatglm3"
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == [2, n + 6, n + 8]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]) == \
        [n + 5, n + 6, n + 7, n + 8]
    ids = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids == sp.prefix_ids + [n + 6] + sp.encode("\n") + sp.encode("你好") + [n + 7]
