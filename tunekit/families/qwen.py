"""Qwen2/2.5 (model_type `qwen2`), and Qwen-1 (`qwen`, remote code) through its conversion to native qwen2."""
from .base import Family
from .llama2 import LINEAR

# ChatML as Qwen2 ships it (default system prompt when none is given).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The same in Ollama's Go template; Ollama puts SYSTEM first when a chat has no system message, as the default above.
OLLAMA_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)

FAMILY = Family(
    name="qwen",
    model_types=("qwen2",),
    lora_targets=LINEAR,
    chat_template=CHATML_TEMPLATE,
    special_tokens={"eos_token": "<|im_end|>"},
    pad_token="<|endoftext|>",
    extra_special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    original_model_type="qwen",
    converter="tunekit.convert.qwen",
    ollama_template=OLLAMA_TEMPLATE,
    ollama_system="You are a helpful assistant.",
    stop_tokens=("<|im_end|>", "<|endoftext|>"),
)
