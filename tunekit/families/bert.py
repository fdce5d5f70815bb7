"""BERT-like encoders (model_type `bert`: BERT, MiniLM, ...) for the classification tasks: LoRA on query/value (the
seed's), the head `classifier` trained fully and saved with the adapter; not chatted with."""
from .base import Family

FAMILY = Family(name="bert", model_types=("bert",), lora_targets=("query", "value"),
                embedding_modules=("word_embeddings",), classifier_head="classifier", chat=False)
