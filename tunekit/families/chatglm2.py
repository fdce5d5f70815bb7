"""ChatGLM2/ChatGLM3 as transformers' native `glm` (after tunekit/convert/chatglm2.py): the [gMASK] <sop> prefix,
ChatGLM2's round prompt, ADGEN records, <unk> (id 0) as pad."""
from .base import Family

# The single-round prompt of ChatGLM2 (build_prompt); [gMASK] <sop> come first, the answer and </s> after.
CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% if loop.index0 > 0 %}{{ '\n\n' }}{% endif %}"
    "{{ '[Round ' ~ (loop.index0 // 2 + 1) ~ ']\n\n问：' ~ message['content'] ~ '\n\n答：' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] ~ eos_token }}"
    "{% else %}{{ raise_exception('ChatGLM2 has no ' ~ message['role'] ~ ' role: use user/assistant turns') }}"
    "{% endif %}{% endfor %}"
)

# The same in Ollama's Go template, which has no arithmetic: the round is the length of a string that grows by one
# character per user turn; system messages have no place in ChatGLM2's prompt and are left out.
OLLAMA_TEMPLATE = (
    "[gMASK]<sop>{{- $rounds := \"\" }}{{- range .Messages }}"
    "{{- if eq .Role \"user\" }}{{ if $rounds }}\n\n{{ end }}{{ $rounds = print $rounds \"x\" }}"
    "[Round {{ len $rounds }}]\n\n问：{{ .Content }}\n\n答："
    "{{- else if eq .Role \"assistant\" }}{{ .Content }}</s>"
    "{{- end }}{{- end }}"
)

# ChatGLM3's chat format (build_chat_input): [gMASK] sop, then <|role|> + "\n" + content per message, each part
# tokenized with its own dummy prefix (the space before the content gives exactly that), <|assistant|> to answer.
# Each assistant turn ends with </s> (2, one of ChatGLM3's stop ids) so fine-tuning teaches the model to stop.
CHATGLM3_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}"
    "{{ '<|' ~ message['role'] ~ '|>\n ' ~ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

FAMILY = Family(
    name="chatglm2",
    model_types=("glm",),
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    chat_template=CHAT_TEMPLATE,
    special_tokens={"eos_token": "</s>", "unk_token": "<unk>"},
    pad_token="<unk>",  # id 0, as ChatGLM2 pads
    prefix_tokens=("[gMASK]", "<sop>"),
    source_template="[Round 1]\n\n问：{content}\n\n答：",
    original_model_type="chatglm",
    converter="tunekit.convert.chatglm2",
    ollama_template=OLLAMA_TEMPLATE,
    stop_tokens=("</s>",),
)
