"""Qwen2/2.5 (model_type `qwen2`), and Qwen-1 (`qwen`, remote code) through its conversion to native qwen2."""
from .base import Family
from .llama2 import LINEAR

FAMILY = Family(name="qwen", model_types=("qwen2",), lora_targets=LINEAR, template="qwen",
                original_model_type="qwen", converter="tunekit.convert.qwen")
