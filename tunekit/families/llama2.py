"""Llama-2 (model_type `llama`): Meta's chat format, <unk> as pad, BOS on plain text."""
from .base import Family

# Meta's Llama-2-chat format, as in the official tokenizer_config.json (BOS + [INST] per turn, EOS after each answer).
CHAT_TEMPLATE = (
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

# The same in Ollama's Go template: the runtime adds the first BOS (add_bos_token), the template the later ones; the
# system prompt (Ollama passes it as .System and as a "system" message) opens the first user turn, as above.
OLLAMA_TEMPLATE = (
    "{{- $first := true }}{{- range .Messages }}"
    "{{- if eq .Role \"user\" }}{{ if not $first }}<s>{{ end }}[INST] "
    "{{ if and $first $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}{{ .Content }} [/INST]"
    "{{ $first = false }}"
    "{{- else if eq .Role \"assistant\" }} {{ .Content }} </s>"
    "{{- end }}{{- end }}"
)

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILY = Family(
    name="llama2",
    model_types=("llama",),
    lora_targets=LINEAR,
    chat_template=CHAT_TEMPLATE,
    special_tokens={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    pad_token="<unk>",  # Llama-2 has no pad token; <unk> is never a target, </s> is
    add_bos_to_text=True,
    ollama_template=OLLAMA_TEMPLATE,
    stop_tokens=("</s>",),
)
