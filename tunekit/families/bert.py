"""BERT-like encoders (model_type `bert`: BERT, MiniLM, ...) for the classification tasks: LoRA on query/value (the
seed's), the head `classifier` trained fully and saved with the adapter, [PAD] as pad, no chat template."""
from .base import Family

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    lora_targets=("query", "value"),
    chat_template="",  # encoders are not chatted with; causal_lm is not offered for them
    pad_token="[PAD]",
    embedding_modules=("word_embeddings",),
    classifier_head="classifier",
)
