"""Everything a model family needs, in one place: LoRA targets, chat template, special tokens, tiny-model shape.

The family is chosen by `--family`, defaulting from the checkpoint's own config.json `model_type`, never its path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import ArgumentError
from .chatglm2_tokenizer import CHAT_TEMPLATE as CHATGLM2_CHAT_TEMPLATE

# Meta's Llama-2-chat format, as in the official tokenizer_config.json (BOS + [INST] per turn, EOS after each answer).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# ChatML as Qwen2 ships it (default system prompt when none is given).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]           # config.json model_type values that default to this family
    lora_targets: tuple[str, ...]          # what "all-linear" means here, and the default targets
    chat_template: str                     # used when the tokenizer has none
    special_tokens: dict = field(default_factory=dict)  # bos/eos/unk/pad as the real tokenizer has them
    pad_token: str | None = None           # pad when the tokenizer has none; never the end-of-turn token
    add_bos_to_text: bool = False          # plain-text samples start with BOS (as Llama's tokenizer does)
    extra_special_tokens: tuple[str, ...] = ()
    tiny_config: dict = field(default_factory=dict)  # shape of the embedded default model (besides vocab)
    embedding_modules: tuple[str, ...] = ("embed_tokens", "lm_head")
    prefix_tokens: tuple[str, ...] = ()    # tokens every input starts with (ChatGLM2's [gMASK] <sop>)
    source_template: str | None = None     # ADGEN content/summary records: the prompt around `content` (data.py)


FAMILIES = {
    "llama2": Family(
        name="llama2",
        model_types=("llama",),
        lora_targets=LLAMA_LINEAR,
        chat_template=LLAMA2_CHAT_TEMPLATE,
        special_tokens={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        pad_token="<unk>",  # Llama-2 has no pad token; <unk> is never a target, </s> is
        add_bos_to_text=True,
        tiny_config=dict(model_type="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         rms_norm_eps=1e-5, tie_word_embeddings=False),
    ),
    "qwen": Family(
        name="qwen",
        model_types=("qwen2",),
        lora_targets=LLAMA_LINEAR,
        chat_template=CHATML_TEMPLATE,
        special_tokens={"eos_token": "<|im_end|>"},
        pad_token="<|endoftext|>",
        extra_special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        tiny_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, tie_word_embeddings=False),
    ),
    # ChatGLM2/ChatGLM3 after tunekit/convert_chatglm2.py (native `glm`); its tiny default is built in the original
    # layout and converted (tunekit/tiny_chatglm2.py).
    "chatglm2": Family(
        name="chatglm2",
        model_types=("glm",),
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
        chat_template=CHATGLM2_CHAT_TEMPLATE,
        special_tokens={"eos_token": "</s>", "unk_token": "<unk>"},
        pad_token="<unk>",  # id 0, as ChatGLM2 pads
        prefix_tokens=("[gMASK]", "<sop>"),
        source_template="[Round 1]\n\n问：{content}\n\n答：",
    ),
}


# Original layouts that are converted to a native model first: model_type -> converter module.
CONVERTERS = {"chatglm": "tunekit.convert_chatglm2", "qwen": "tunekit.convert_qwen"}


def read_config(model_path: str) -> dict:
    cfg = Path(model_path) / "config.json"
    if not cfg.is_file():
        raise ArgumentError(f"--model_name_or_path: {model_path} has no config.json (is it a checkpoint folder?)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{cfg}: not valid JSON (line {e.lineno}: {e.msg})") from None


def resolve_family(model_path: str, family: str | None) -> str:
    """The explicit --family, else the one whose model_types hold the checkpoint's config.json model_type."""
    known = ", ".join(FAMILIES)
    if family:
        if family not in FAMILIES:
            raise ArgumentError(f"--family '{family}' is unknown; choose one of: {known}")
        return family
    model_type = read_config(model_path).get("model_type")
    if model_type in CONVERTERS:
        raise ArgumentError(f"{model_path}/config.json has model_type '{model_type}', an original layout that needs the "
                            f"checkpoint's own code: convert it first with `python -m {CONVERTERS[model_type]} "
                            f"{model_path}` (the recipes' train.sh does this for you)")
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam.name
    raise ArgumentError(f"{model_path}/config.json has model_type '{model_type}', which no family covers; "
                        f"pass --family (one of: {known}) if the architecture matches one")


def get_family(name: str) -> Family:
    return FAMILIES[name]
