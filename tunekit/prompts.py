"""The prompt a model was trained with, for inference (chat, generate, evaluate, export): the same rendering as
training (tunekit/data.py), recorded beside the adapter in chat_format.json so a merged copy keeps it too.

  chat_template  conversations rendered by the tokenizer's own chat template (the family's, saved with the tokenizer)
  guanaco        text records "### Human: ...### Assistant: ..." (the Llama-2 seed's): the same markers, BOS first
                 where the family puts one on text; a turn ends at EOS or at the next "### Human:"
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import DataError
from .formats import normalise

FILE = "chat_format.json"
HUMAN, ASSISTANT = "### Human:", "### Assistant:"  # the guanaco markers: training splits text on them (data.py)
GUANACO_STOP = HUMAN


@dataclass(frozen=True)
class ChatFormat:
    kind: str = "chat_template"  # or "guanaco"
    family: str | None = None
    bos_on_text: bool = False

    def render(self, messages: list[dict], tokenizer) -> str:
        """The conversation so far (ending with a user turn) plus the cue for the assistant's answer."""
        if self.kind == "chat_template":
            from jinja2 import TemplateError

            try:
                return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TemplateError as e:  # e.g. a system turn for a family that has none
                raise DataError(f"the model's chat template refuses this conversation: {e}") from None
        text = tokenizer.bos_token if self.bos_on_text and tokenizer.bos_token else ""
        for m in messages:
            if m["role"] == "system":
                raise DataError("a guanaco-trained model has no system turn (its records are '### Human: ...')")
            text += f"{HUMAN} {m['content']}" if m["role"] == "user" else f"{ASSISTANT} {m['content']}"
        return text + ASSISTANT

    def stop_strings(self) -> list[str]:
        return [GUANACO_STOP] if self.kind == "guanaco" else []

    def clean(self, answer: str) -> str:
        """The answer without a stop string it ended on (generation keeps the stop string's tokens)."""
        for stop in self.stop_strings():
            if answer.endswith(stop):
                answer = answer[: -len(stop)]
        return answer.strip()


    def ollama(self, family) -> tuple[str, str | None, tuple[str, ...]]:
        """(TEMPLATE, SYSTEM, stops) of an Ollama Modelfile rendering this format as render() does: the family's
        template for a chat template, the same markers as above for guanaco text (the next turn ends an answer)."""
        if self.kind == "chat_template":
            return family.ollama_template, family.ollama_system, family.stop_tokens
        template = (f'{{{{- range .Messages }}}}{{{{- if eq .Role "user" }}}}{HUMAN} {{{{ .Content }}}}'
                    f'{{{{- else if eq .Role "assistant" }}}}{ASSISTANT} {{{{ .Content }}}}{{{{- end }}}}{{{{- end }}}}'
                    f'{ASSISTANT}')
        return template, None, tuple(self.stop_strings())


def from_stats(stats, family) -> ChatFormat:
    """A run's format, decided once from its training samples as they were rendered (the majority kind)."""
    kind = "guanaco" if stats.guanaco * 2 > stats.samples else "chat_template"
    return ChatFormat(kind, family.name, bool(family.add_bos_to_text))


def save(fmt: ChatFormat, folder) -> None:
    (Path(folder) / FILE).write_text(json.dumps(asdict(fmt), indent=2) + "\n")


def split_record(record, where: str) -> tuple[list[dict], str]:
    """Any training record -> (the conversation up to its last answer, that answer: the reference)."""
    from .data import GUANACO_TURN

    sample = normalise(record, where)
    if "text" in sample:
        parts = GUANACO_TURN.split(sample["text"])
        if len(parts) < 3:
            raise DataError(f"{where}: a plain 'text' record has no prompt to answer; use '### Human: ...### "
                            "Assistant: ...' text or a chat format (data/README.md)")
        roles = {"Human": "user", "Assistant": "assistant"}
        sample = {"messages": [{"role": roles[r], "content": b.strip()} for r, b in zip(parts[1::2], parts[2::2])]}
    messages = sample["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]
