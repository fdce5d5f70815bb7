"""The seed-style baseline, this repository's own implementation.

Same semantics as the shared reference (`bench/reference/baseline_seed_style.py`, copied from
`/work/shared/gpu/baseline_seed_style.py`): HF `Trainer` + PEFT LoRA on a random-weight Llama-2-shaped model,
each batch padded to its longest sequence, gradient checkpointing, `prepare_model_for_kbit_training` for NF4,
`paged_adamw_32bit`, bf16, sequence lengths from a long-tailed chat distribution (median ~300, capped at 1024,
seed 0), batch 4, 20 warm-up steps then 30 timed steps. It reports real (non-pad) tokens per second over the timed
steps and the peak of `torch.cuda.max_memory_allocated` over them, one `RESULT {json}` line per run.

    python bench/baseline.py --shape llama2-7b                       # all three runs, in this process
    python bench/baseline.py --shape llama2-7b qlora-seed-qv-r64-bs4 # one run
    python bench/baseline.py --shape tiny                            # CPU smoke: fp32, no NF4, adamw_torch
    python bench/baseline.py --shape qwen2.5-7b lora-bf16-all-linear-r16-bs4   # a Qwen2 model (ChatML tokenizer)
    python bench/baseline.py --shape llama2-7b --prepare             # only build the checkpoint, print ENV {json}

Without CUDA (the `tiny` smoke test) there is no bitsandbytes: the NF4 runs load the model in fp32 instead, train
with `adamw_torch`, and say so in their result (`quantized: false`, `dtype: float32`).

The Qwen2 shapes (`qwen2.5-7b`, `tiny-qwen`) build a Qwen2 model with a byte-level BPE tokenizer carrying the ChatML
special tokens and template (for the recipe's conversations workload, `conversation_from_ids`); the baseline itself
trains on the same token-id lists as for Llama.

`bench/run.py` imports `SHAPES`, `RUNS`, `default_checkpoint`, `build_checkpoint`, `word_vocab`, `sample_workload`
and, for the qwen suite, `chatml_space_words` and `conversation_from_ids`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata

# ---------------------------------------------------------------------------------------------- configuration

SHAPES = {
    # Llama-2-7B, as the reference builds it.
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5),
    # A few-MB Llama for the CPU smoke test: same lengths (up to 1024), small vocabulary and width.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5),
    # Qwen2.5-7B (Qwen2 architecture: GQA with 4 KV heads, q/k/v biases, untied 152064-row head).
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    # A few-MB Qwen2 for the CPU smoke test of the qwen suite.
    "tiny-qwen": dict(vocab_size=4096, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    # Llama-3.1-8B for the long-context suite (GQA with 8 KV heads, 128k vocabulary, llama3 RoPE scaling to 128k).
    "llama3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                        rms_norm_eps=1e-5, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192}),
    # Its CPU smoke stand-in.
    "tiny-long": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384, rms_norm_eps=1e-5),
}
MODEL_TYPES = {"llama2-7b": "llama", "tiny": "llama", "qwen2.5-7b": "qwen2", "tiny-qwen": "qwen2",
               "llama3.1-8b": "llama", "tiny-long": "llama"}
# Qwen2 shapes: transformers 5 always loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which rebuilds the
# byte-level BPE pipeline from the saved vocabulary and merges (its pre-tokenizer splits digits apart), so a word-level
# "t{i} = token i" tokenizer cannot survive there. The Qwen2 shapes get a byte-level BPE instead in which every word of
# the workload is one token (see chatml_bpe_vocab): tokens 0..QWEN_WORDS_END-1 are the 256 byte symbols and words, then
# the ChatML special tokens (at Qwen2's own ids 151643..151645 for the 7B); the rest of the vocabulary is embedding
# rows no token uses, as in the real checkpoint.
QWEN_WORDS_END = {"qwen2.5-7b": 151643, "tiny-qwen": 4093}
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, turn start, end of turn (EOS)
WORD_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Tokens a rendered one-turn conversation adds to its words: "<|im_start|> system \n You ␣are ␣a ␣helpful
# ␣assistant . <|im_end|> \n" (11), "<|im_start|> user \n ... <|im_end|> \n" (5), "<|im_start|> assistant \n ...
# <|im_end|> \n" (5); checked against the tokenizer when the checkpoint is built.
CHATML_OVERHEAD = 21

FIRST_WORD_ID = 3  # ids 0, 1, 2 are <unk> (also the pad), <s> and </s>
NUM_SAMPLES = 256
WORKLOAD_SEED = 0
MEDIAN_LENGTH, LENGTH_SIGMA, MIN_LENGTH, MAX_LENGTH = 300, 0.7, 32, 1024
TOTAL_STEPS, WARMUP_STEPS = 50, 20  # 30 timed steps after 20 warm-up steps


@dataclass(frozen=True)
class RunSpec:
    name: str
    quantized: bool  # NF4 weights (bitsandbytes) + prepare_model_for_kbit_training
    target_modules: tuple[str, ...] | str
    rank: int
    alpha: int
    batch_size: int


RUNS = {spec.name: spec for spec in (
    RunSpec("qlora-seed-qv-r64-bs4", True, ("q_proj", "v_proj"), 64, 16, 4),
    RunSpec("qlora-all-linear-r16-bs4", True, "all-linear", 16, 32, 4),
    RunSpec("lora-bf16-all-linear-r16-bs4", False, "all-linear", 16, 32, 4),
)}


def tmp_root() -> str:
    return os.environ.get("TMPDIR", "/tmp")


def default_checkpoint(shape: str) -> str:
    """llama2-7b: the reference's own default folder, so both find the same checkpoint."""
    name = {"llama2-7b": "llama2-7b-random", "qwen2.5-7b": "qwen2.5-7b-random"}.get(
        shape, f"tunekit-bench-{shape}-random")
    return os.path.join(tmp_root(), name)


def word_vocab(shape: str) -> int:
    """The end of the token ids the baseline's workload draws from (Llama: the whole vocabulary)."""
    return QWEN_WORDS_END.get(shape, SHAPES[shape]["vocab_size"])


# ---------------------------------------------------------------------------------------------- ChatML BPE

def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (what the ByteLevel pre-tokenizer emits)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def chatml_bpe_vocab(words_end: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens 0..words_end-1 and merges of a byte-level BPE in which the workload's words are single tokens.

    Words are letters only (digits are pre-tokenized one by one): each word after a space, "Ġ" + 1..4 letters, is one
    token, built by left-to-right merges that rank before any other merge, so nothing inside it merges first; the
    ChatML template's own words (system, user, assistant, You, ␣are, ␣a, ␣helpful, ␣assistant) are single tokens too.
    Every byte is a token, so any text still encodes."""
    tokens = byte_symbols()
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
    half = len(body) // 2

    def turn(part):
        return " ".join([WORD_LETTERS[part[0] % len(WORD_LETTERS)]] + [words[i % len(words)] for i in part[1:]])

    return {"conversations": [{"from": "user", "value": turn(body[:half])},
                              {"from": "assistant", "value": turn(body[half:])}]}


# ---------------------------------------------------------------------------------------------- checkpoint

def save_word_tokenizer(folder: str, vocab_size: int) -> None:
    """A word-level tokenizer where each word t{i} is token i, saved beside the weights (as the reference does)."""
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return
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
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tunekit.families import CHATML_TEMPLATE

    words_end, vocab_size = QWEN_WORDS_END[shape], SHAPES[shape]["vocab_size"]
    tokens, merges = chatml_bpe_vocab(words_end)
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab.update({token: words_end + k for k, token in enumerate(CHATML_SPECIALS)})
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
    staging = folder.rstrip("/") + ".tokenizer"
    shutil.rmtree(staging, ignore_errors=True)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            unk_token=None, bos_token=None, chat_template=CHATML_TEMPLATE).save_pretrained(staging)
    config_path = os.path.join(staging, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        tokenizer_config = json.load(f)
    tokenizer_config["tokenizer_class"] = "Qwen2Tokenizer"  # as the real checkpoint says (and loads as anyway)
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2, ensure_ascii=False)
    with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:  # AutoTokenizer reads model_type
        json.dump({"model_type": "qwen2"}, f)

    loaded = AutoTokenizer.from_pretrained(staging)
    words = chatml_space_words(words_end)
    for length in (MIN_LENGTH, 300, MAX_LENGTH):
        ids = list(range(FIRST_WORD_ID, FIRST_WORD_ID + length))
        messages = [{"role": "user" if t["from"] == "user" else "assistant", "content": t["value"]}
                    for t in conversation_from_ids(ids, words)["conversations"]]
        rendered = loaded.apply_chat_template(messages, tokenize=False)
        got = len(loaded(rendered, add_special_tokens=False)["input_ids"])
        if got != length:
            raise RuntimeError(f"{type(loaded).__name__}: a conversation meant to be {length} tokens renders to {got}")
    special_ids = [loaded.convert_tokens_to_ids(t) for t in CHATML_SPECIALS]
    if special_ids != [words_end, words_end + 1, words_end + 2] or loaded.eos_token != "<|im_end|>":
        raise RuntimeError(f"special tokens at {special_ids}, eos {loaded.eos_token}")
    os.remove(os.path.join(staging, "config.json"))
    for name in os.listdir(staging):
        shutil.move(os.path.join(staging, name), os.path.join(folder, name))
    os.rmdir(staging)


def save_tokenizer(folder: str, shape: str) -> None:
    if MODEL_TYPES[shape] == "qwen2":
        save_chatml_tokenizer(folder, shape)
    else:
        save_word_tokenizer(folder, SHAPES[shape]["vocab_size"])


def new_model(shape: str):
    """The shape's model with random weights (built in the current default dtype and device)."""
    config = SHAPES[shape]
    if MODEL_TYPES[shape] == "qwen2":
        from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

        end = QWEN_WORDS_END[shape]  # <|endoftext|>, <|im_start|>, <|im_end|> = end, end + 1, end + 2
        model = Qwen2ForCausalLM(Qwen2Config(**config, bos_token_id=end, eos_token_id=end + 2, pad_token_id=end))
        model.generation_config = GenerationConfig(bos_token_id=end, eos_token_id=end + 2, pad_token_id=end)
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**config))


def build_checkpoint(folder: str, shape: str) -> dict:
    """Random-weight model of the given shape, saved once (bf16, built on the GPU when there is one)."""
    import torch

    if os.path.exists(os.path.join(folder, "config.json")):
        save_tokenizer(folder, shape)
        return {"checkpoint": folder, "built": False, "seconds": 0.0}
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
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


# ---------------------------------------------------------------------------------------------- workload

def sample_workload(vocab_size: int = 32000, num_samples: int = NUM_SAMPLES, seed: int = WORKLOAD_SEED):
    """Token-id lists whose lengths follow a long-tailed chat-SFT distribution (median ~300, within 32..1024).

    The draws are the reference's, in its order (all lengths, then each sample's ids), so with vocab 32000 the
    samples are identical to its; a smaller vocabulary keeps the same lengths."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(num_samples, generator=generator)
    lengths = torch.exp(normal * LENGTH_SIGMA + math.log(MEDIAN_LENGTH)).clamp(MIN_LENGTH, MAX_LENGTH).long()
    return [torch.randint(FIRST_WORD_ID, vocab_size, (int(length),), generator=generator).tolist()
            for length in lengths]


class TokenListDataset:
    """Each sample is a causal-LM example over its whole sequence."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        ids = self.samples[index]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}


class PadToLongestCollator:
    """Right-pads each batch to its longest sequence (pad id 0, labels -100 on padding)."""

    def __call__(self, features):
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.zeros(len(features), longest, dtype=torch.long)
        attention_mask = torch.zeros(len(features), longest, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"])
            attention_mask[row, :length] = 1
            labels[row, :length] = input_ids[row, :length]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ---------------------------------------------------------------------------------------------- one run

def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_timed_trainer_class(warmup_steps: int):
    """A Trainer that counts real tokens from step `warmup_steps` on, and a callback that starts the clock there."""
    import torch
    from transformers import Trainer, TrainerCallback

    class StartClockAfterWarmup(TrainerCallback):
        def __init__(self):
            self.started_at = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup_steps:
                synchronize()
                self.started_at = time.time()
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()

    class RealTokenCountingTrainer(Trainer):
        timed_real_tokens = 0

        def training_step(self, model, inputs, *args, **kwargs):
            if self.state.global_step >= warmup_steps:
                self.timed_real_tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    return RealTokenCountingTrainer, StartClockAfterWarmup


def load_model(checkpoint: str, spec: RunSpec, on_gpu: bool):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantize = spec.quantized and on_gpu
    started = time.time()
    if on_gpu:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=False) if quantize else None
        model = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=quantization,
                                                     dtype=torch.bfloat16, device_map={"": 0})
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    memory = f", mem {torch.cuda.memory_allocated() / 2**30:.1f} GiB" if on_gpu else ""
    print(f"[{spec.name}] loaded in {time.time() - started:.1f}s{memory}", flush=True)  # as the reference reports it
    model.config.use_cache = False
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    targets = list(spec.target_modules) if isinstance(spec.target_modules, tuple) else spec.target_modules
    lora = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.1, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora), quantize


def run(spec: RunSpec, checkpoint: str, vocab_size: int, total_steps: int = TOTAL_STEPS,
        warmup_steps: int = WARMUP_STEPS) -> dict:
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    started = time.time()
    model, quantized = load_model(checkpoint, spec, on_gpu)
    load_seconds = round(time.time() - started, 1)  # loading, k-bit preparation and adapters
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    optimizer = "paged_adamw_32bit" if on_gpu else "adamw_torch"
    args = TrainingArguments(
        output_dir=os.path.join(tmp_root(), f"tunekit-bench-out-{spec.name}"),
        per_device_train_batch_size=spec.batch_size, gradient_accumulation_steps=1, max_steps=total_steps,
        learning_rate=2e-4, bf16=on_gpu, use_cpu=not on_gpu, logging_steps=100, report_to=[],
        save_strategy="no", optim=optimizer, gradient_checkpointing=True, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer_class, clock_class = make_timed_trainer_class(warmup_steps)
    clock = clock_class()
    trainer = trainer_class(model=model, args=args, train_dataset=TokenListDataset(sample_workload(vocab_size)),
                            data_collator=PadToLongestCollator(), callbacks=[clock])
    trainer.train()
    synchronize()
    seconds = time.time() - clock.started_at
    tokens = trainer.timed_real_tokens
    result = dict(
        name=spec.name, steps=total_steps - warmup_steps, seconds=round(seconds, 2), real_tokens=tokens,
        tokens_per_s=round(tokens / seconds),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        device=torch.cuda.get_device_name(0) if on_gpu else "cpu", quantized=quantized,
        dtype="bfloat16" if on_gpu else "float32", optim=optimizer, trainable_params=trainable,
        load_seconds=load_seconds)
    print("RESULT", json.dumps(result), flush=True)
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------- environment

def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_environment() -> dict:
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "device_count": torch.cuda.device_count() if on_gpu else 0,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: package_version(name) for name in
           ("transformers", "peft", "accelerate", "bitsandbytes", "trl", "tokenizers", "deepspeed", "optimum",
            "gptqmodel")},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help=f"run names (default: all): {', '.join(RUNS)}")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: under $TMPDIR, built if missing)")
    parser.add_argument("--steps", type=int, default=TOTAL_STEPS, help="optimizer steps in all")
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="steps before the clock starts")
    parser.add_argument("--prepare", action="store_true", help="only build the checkpoint; print ENV {json}")
    parser.add_argument("--vocab-size", type=int,
                        help="run on an existing --checkpoint of any architecture (e.g. a converted ChatGLM2): token "
                             "ids are drawn below this size; nothing is built and --shape is ignored")
    args = parser.parse_args(argv)
    unknown = [name for name in args.runs if name not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {list(RUNS)}")
    if not 0 <= args.warmup < args.steps:
        parser.error("need 0 <= --warmup < --steps")

    if args.vocab_size and not (args.checkpoint and os.path.isfile(os.path.join(args.checkpoint, "config.json"))):
        parser.error("--vocab-size needs an existing --checkpoint folder")
    checkpoint = args.checkpoint or default_checkpoint(args.shape)
    environment = describe_environment()
    print(environment["device"], environment["torch"], flush=True)
    built = {"checkpoint": checkpoint, "built": False} if args.vocab_size else build_checkpoint(checkpoint, args.shape)
    vocab_size = args.vocab_size or word_vocab(args.shape)
    if args.prepare:
        print("ENV", json.dumps({**environment, "shape": args.shape, **built}), flush=True)
        return 0
    failures = 0
    for name in args.runs or list(RUNS):
        try:
            run(RUNS[name], checkpoint, vocab_size, args.steps, args.warmup)
        except Exception as error:  # keep going, like the reference; the runner reads FAILED lines
            failures += 1
            print("FAILED", name, repr(error)[:500], flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
