"""Llama (model_type `llama`: Llama-2, Llama-3.x, SmolLM2): the seed's LoRA targets; Llama-2's chat format by name."""
from .base import Family

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILY = Family(name="llama2", model_types=("llama",), lora_targets=LINEAR, template="llama2")
