"""The benchmark's random-weight checkpoints: each shape's config, the tokenizer saved beside it, and the build.

Llama shapes get a word-level tokenizer where each word t{i} is token i, as the reference builds it.  transformers 5
loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which rebuilds the byte-level BPE from the saved vocabulary
and merges (digits split apart), so the Qwen2 shapes get a byte-level BPE in which every workload word is one token
(chatml_bpe_vocab): ids 0..QWEN_WORDS_END-1 are the 256 byte symbols and the words, then the ChatML special tokens (at
Qwen2's own ids 151643..151645 for the 7B); the rest are embedding rows no token uses, as in the real checkpoint.
ChatGLM2 shapes are written in the ORIGINAL layout by tunekit.tiny.chatglm2 (bench/run.py converts them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=1024)  # a few MB, the same lengths (up to 1024): the CPU smoke tests' shapes
QWEN2 = dict(model_type="qwen2", rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
SHAPES = {
    # Llama-2-7B, as the reference builds it.
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5),
    "tiny": dict(TINY, vocab_size=512, num_key_value_heads=4, rms_norm_eps=1e-5),
    # Qwen2.5-7B (Qwen2 architecture: GQA with 4 KV heads, q/k/v biases, untied 152064-row head).
    "qwen2.5-7b": dict(QWEN2, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768),
    "tiny-qwen": dict(QWEN2, **TINY, vocab_size=4096, num_key_value_heads=2),
    # Llama-3.1-8B for the long-context suite (GQA with 8 KV heads, 128k vocabulary, llama3 RoPE scaling to 128k).
    "llama3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                        rms_norm_eps=1e-5, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192}),
    "tiny-long": dict(TINY, vocab_size=512, num_key_value_heads=2, max_position_embeddings=16384, rms_norm_eps=1e-5),
}
# issue 14, bar 3: the Llama-3.1-8B shape with 4 of its 32 layers, for lengths whose two full-depth steps do not fit
# the device's 10-minute call (or whose offloaded layer inputs, 32 x tokens x 8 KiB, not its 128 GiB of host memory)
SHAPES["llama3.1-8b-4l"] = dict(SHAPES["llama3.1-8b"], num_hidden_layers=4)
SHAPES["llama3.1-8b-2l"] = dict(SHAPES["llama3.1-8b"], num_hidden_layers=2)  # the memory probe: one layer's peak
CHATGLM2_SHAPES = ("chatglm2-6b", "tiny-chatglm2")  # tunekit.tiny.chatglm2's CHATGLM2_6B and its default
QWEN_WORDS_END = {"qwen2.5-7b": 151643, "tiny-qwen": 4093}
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, turn start, end of turn (EOS)
WORD_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Tokens a rendered one-turn conversation adds to its words: "<|im_start|> system \n You ␣are ␣a ␣helpful
# ␣assistant . <|im_end|> \n" (11), "<|im_start|> user \n ... <|im_end|> \n" (5), "<|im_start|> assistant \n ...
# <|im_end|> \n" (5); checked against the tokenizer when the checkpoint is built.
CHATML_OVERHEAD = 21
FIRST_WORD_ID = 3  # ids 0, 1, 2 are <unk> (also the pad), <s> and </s>


def tmp_root() -> str:
    return os.environ.get("TMPDIR", "/tmp")


def default_checkpoint(shape: str) -> str:
    """llama2-7b: the reference's own default folder, so both find the same checkpoint."""
    name = {"llama2-7b": "llama2-7b-random", "qwen2.5-7b": "qwen2.5-7b-random"}.get(shape, f"tunekit-bench-{shape}-random")
    return os.path.join(tmp_root(), name)


def word_vocab(shape: str) -> int:
    """The end of the token ids the baseline's workload draws from (Llama: the whole vocabulary)."""
    return QWEN_WORDS_END.get(shape, SHAPES[shape]["vocab_size"])


def chatml_bpe_vocab(words_end: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens 0..words_end-1 and merges of a byte-level BPE in which the workload's words are single tokens.

    Words are letters only (digits are pre-tokenized one by one): each word after a space, "Ġ" + 1..4 letters, is one
    token, built by left-to-right merges that rank before any other merge, so nothing inside it merges first; the
    ChatML template's own words (system, user, assistant, You, ␣are, ␣a, ␣helpful, ␣assistant) are single tokens too.
    Every byte is a token (GPT-2's printable stand-ins, in byte order), so any text still encodes."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    others = iter(range(256, 512))
    tokens = [chr(b) if b in printable else chr(next(others)) for b in range(256)]
    known, space_merges, plain_merges = set(tokens), [], []

    def add_chain(word: str, merges: list) -> None:
        for end in range(2, len(word) + 1):
            if word[:end] not in known:
                known.add(word[:end])
                tokens.append(word[:end])
                merges.append((word[:end - 1], word[end - 1]))

    for word in ("system", "user", "assistant", "You"):
        add_chain(word, plain_merges)
    for word in ("Ġare", "Ġa", "Ġhelpful", "Ġassistant"):
        add_chain(word, space_merges)
    level = ["Ġ"]
    while len(tokens) < words_end:  # "Ġ" + 1 letter, + 2 letters, ... breadth first, until the words are all there
        level = [prefix + letter for prefix in level for letter in WORD_LETTERS]
        for word in level:
            if len(tokens) >= words_end:
                break
            add_chain(word, space_merges)
    if len(tokens) != words_end:
        raise ValueError(f"{len(tokens)} tokens for {words_end} word ids")
    return tokens, space_merges + plain_merges


def chatml_space_words(words_end: int) -> list[str]:
    """The words the recipe workload is written with (each one token after a space), without the "Ġ"."""
    return [token[1:] for token in chatml_bpe_vocab(words_end)[0] if token.startswith("Ġ") and len(token) > 1]


def conversation_from_ids(ids: list[int], words: list[str]) -> dict:
    """A one-turn conversation whose ChatML rendering is exactly len(ids) tokens (len(ids) > CHATML_OVERHEAD + 1):
    the user says the first half of the words, the assistant the rest; each turn starts with one letter (a word
    right after a newline has no space before it) followed by space-separated words."""
    body = ids[:len(ids) - CHATML_OVERHEAD]

    def turn(part):
        return " ".join([WORD_LETTERS[part[0] % len(WORD_LETTERS)]] + [words[i % len(words)] for i in part[1:]])

    return {"conversations": [{"from": "user", "value": turn(body[:len(body) // 2])},
                              {"from": "assistant", "value": turn(body[len(body) // 2:])}]}


def save_word_tokenizer(folder: str, vocab_size: int) -> None:
    """A word-level tokenizer where each word t{i} is token i, saved beside the weights (as the reference does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(FIRST_WORD_ID, vocab_size)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_level, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<unk>").save_pretrained(folder)


def save_chatml_tokenizer(folder: str, shape: str) -> None:
    """The Qwen2 shapes' tokenizer: Qwen2's byte-level BPE pipeline over chatml_bpe_vocab, with the ChatML special
    tokens <|endoftext|> (pad), <|im_start|>, <|im_end|> (EOS) and chat template, so the qwen family's template path
    renders and masks conversations as it does for the real Qwen2.5 tokenizer. Checks that it loads back through
    AutoTokenizer (as Qwen2Tokenizer) and renders a conversation to exactly the intended number of tokens."""
    sys.path.insert(0, str(ROOT))
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tunekit.templates import NAMED

    words_end, vocab_size = QWEN_WORDS_END[shape], SHAPES[shape]["vocab_size"]
    tokens, merges = chatml_bpe_vocab(words_end)
    vocab = {**{token: i for i, token in enumerate(tokens)},
             **{token: words_end + k for k, token in enumerate(CHATML_SPECIALS)}}
    if len(vocab) > vocab_size:
        raise ValueError(f"a tokenizer of {len(vocab)} tokens does not fit a vocabulary of {vocab_size}")
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([  # Qwen2Tokenizer's own
        pre_tokenizers.Split(Regex(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""),
                             behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(list(CHATML_SPECIALS))  # already in the vocabulary: they keep the ids above
    staging = Path(folder.rstrip("/") + ".tokenizer")
    shutil.rmtree(staging, ignore_errors=True)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            unk_token=None, bos_token=None, chat_template=NAMED["qwen"].jinja).save_pretrained(staging)
    config = staging / "tokenizer_config.json"  # the class the real checkpoint names (and loads as anyway)
    config.write_text(json.dumps({**json.loads(config.read_text(encoding="utf-8")), "tokenizer_class": "Qwen2Tokenizer"},
                                 indent=2, ensure_ascii=False), encoding="utf-8")
    (staging / "config.json").write_text(json.dumps({"model_type": "qwen2"}))  # AutoTokenizer reads model_type

    loaded, words = AutoTokenizer.from_pretrained(staging), chatml_space_words(words_end)
    for length in (32, 300, 1024):  # the workload's shortest, median and longest
        ids = list(range(FIRST_WORD_ID, FIRST_WORD_ID + length))
        messages = [{"role": "user" if t["from"] == "user" else "assistant", "content": t["value"]}
                    for t in conversation_from_ids(ids, words)["conversations"]]
        got = len(loaded(loaded.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])
        if got != length:
            raise RuntimeError(f"{type(loaded).__name__}: a conversation meant to be {length} tokens renders to {got}")
    special_ids = [loaded.convert_tokens_to_ids(t) for t in CHATML_SPECIALS]
    if special_ids != [words_end, words_end + 1, words_end + 2] or loaded.eos_token != "<|im_end|>":
        raise RuntimeError(f"special tokens at {special_ids}, eos {loaded.eos_token}")
    (staging / "config.json").unlink()
    for path in staging.iterdir():
        shutil.move(path, Path(folder) / path.name)
    staging.rmdir()


def save_tokenizer(folder: str, shape: str) -> None:
    if shape in CHATGLM2_SHAPES or os.path.exists(os.path.join(folder, "tokenizer.json")):
        return  # the ChatGLM2 builder writes its own tokenizer.model
    if SHAPES[shape].get("model_type") == "qwen2":
        save_chatml_tokenizer(folder, shape)
    else:
        save_word_tokenizer(folder, SHAPES[shape]["vocab_size"])


def new_model(shape: str):
    """The shape's model with random weights (built in the current default dtype and device)."""
    config = dict(SHAPES[shape])
    if config.pop("model_type", "llama") == "qwen2":
        from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

        end = QWEN_WORDS_END[shape]  # <|endoftext|>, <|im_start|>, <|im_end|> = end, end + 1, end + 2
        model = Qwen2ForCausalLM(Qwen2Config(**config, bos_token_id=end, eos_token_id=end + 2, pad_token_id=end))
        model.generation_config = GenerationConfig(bos_token_id=end, eos_token_id=end + 2, pad_token_id=end)
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**config))


def build_checkpoint(folder: str, shape: str) -> dict:
    """Random-weight model of the given shape, saved once (bf16, built on the GPU when there is one); a ChatGLM2 one
    is converted too (`python -m tunekit.convert`, cached), its native folder and vocabulary size returned."""
    built = build_once(folder, shape)
    if shape in CHATGLM2_SHAPES:
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "tunekit.convert", folder], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, check=True)  # its errors go to our stderr, the runner's log
        converted = done.stdout.strip().splitlines()[-1]
        built.update(converted=converted, convert_s=round(time.time() - started, 1),
                     vocab_size=json.loads((Path(converted) / "config.json").read_text())["vocab_size"])
    return built


def build_once(folder: str, shape: str) -> dict:
    import torch

    if os.path.exists(os.path.join(folder, "config.json")):
        save_tokenizer(folder, shape)
        return {"checkpoint": folder, "built": False, "seconds": 0.0}
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if shape in CHATGLM2_SHAPES:  # the original THUDM layout, tokenizer.model included
        sys.path.insert(0, str(ROOT))
        from tunekit.tiny.chatglm2 import CHATGLM2_6B, build_original

        build_original(folder, dtype=dtype, device=device, **(CHATGLM2_6B if shape == "chatglm2-6b" else {}))
    else:
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = new_model(shape)
        finally:
            torch.set_default_dtype(torch.float32)
        staging = folder + ".partial"  # a build cut short never looks finished
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        save_tokenizer(staging, shape)
        os.replace(staging, folder)
        del model
    if device == "cuda":
        torch.cuda.empty_cache()
    seconds = round(time.time() - started, 1)
    print(f"saved random {shape} checkpoint to {folder} in {seconds}s", flush=True)
    return {"checkpoint": folder, "built": True, "seconds": seconds}
