"""ChatGLM2/ChatGLM3 as transformers' native `glm` (after tunekit/convert/chatglm2.py): the [gMASK] <sop> prefix,
ChatGLM2's round prompt (chat_templates/chatglm2.jinja), ADGEN records."""
from .base import Family

FAMILY = Family(
    name="chatglm2",
    model_types=("glm",),
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    template="chatglm2",
    prefix_tokens=("[gMASK]", "<sop>"),
    source_template="[Round 1]\n\n问：{content}\n\n答：",
    original_model_type="chatglm",
    converter="tunekit.convert.chatglm2",
)
