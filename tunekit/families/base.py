"""A model family: what a chat template cannot say about a checkpoint (one instance per module in this package)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]           # config.json model_type values that default to this family
    lora_targets: tuple[str, ...] = ("all-linear",)  # the default LoRA targets
    template: str | None = None            # the named template (tunekit/chat_templates/) of its chat checkpoints
    embedding_modules: tuple[str, ...] = ("embed_tokens", "lm_head")
    prefix_tokens: tuple[str, ...] = ()    # tokens every input starts with (ChatGLM2's [gMASK] <sop>)
    source_template: str | None = None     # ADGEN content/summary records: the prompt around `content` (data.py)
    original_model_type: str | None = None  # model_type of the original (remote-code) layout, converted first
    converter: str | None = None           # the module that converts that layout: python -m tunekit.convert MODEL
    classifier_head: str = "score"         # the head of its *ForSequenceClassification / *ForTokenClassification
    chat: bool = True                      # a causal LM that is chatted with and exported (not an encoder)
