"""A model family's description (one instance per module in this package)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]           # config.json model_type values that default to this family
    lora_targets: tuple[str, ...]          # the default LoRA targets
    chat_template: str                     # used when the tokenizer has none
    special_tokens: dict = field(default_factory=dict)  # bos/eos/unk as the real tokenizer has them
    pad_token: str | None = None           # pad when the tokenizer has none; never the end-of-turn token
    add_bos_to_text: bool = False          # plain-text samples start with BOS (as Llama's tokenizer does)
    extra_special_tokens: tuple[str, ...] = ()  # the template's tokens, added to a base tokenizer that lacks them
    embedding_modules: tuple[str, ...] = ("embed_tokens", "lm_head")
    prefix_tokens: tuple[str, ...] = ()    # tokens every input starts with (ChatGLM2's [gMASK] <sop>)
    source_template: str | None = None     # ADGEN content/summary records: the prompt around `content` (data.py)
    original_model_type: str | None = None  # model_type of the original (remote-code) layout, converted first
    converter: str | None = None           # the module that converts that layout: python -m tunekit.convert MODEL
    classifier_head: str = "score"         # the head of its *ForSequenceClassification / *ForTokenClassification
    # Serving (tunekit/export.py): chat_template in Ollama's Go-template syntax (rendering .System and .Messages as
    # chat_template renders the messages, less the BOS the runtime adds), its SYSTEM default, and the stop strings
    # (the end-of-turn token first).  None: the family is not chatted with (bert), so not exported.
    ollama_template: str | None = None
    ollama_system: str | None = None
    stop_tokens: tuple[str, ...] = ()
