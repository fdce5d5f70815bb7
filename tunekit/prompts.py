"""The prompt a model was trained with, for inference (chat, generate, evaluate, export): the same rendering as
training (tunekit/data.py), recorded beside the adapter in chat_format.json so a merged copy keeps it too.

  chat_template  conversations rendered by the tokenizer's chat template (its own, or --template's, saved with it)
  guanaco        text records "### Human: ...### Assistant: ..." (the Llama-2 seed's) on a tokenizer without a chat
                 template: the same markers, BOS first where the tokenizer puts one; a turn ends at EOS or "### Human:"
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import templates
from .errors import DataError
from .formats import normalise

FILE = "chat_format.json"
HUMAN, ASSISTANT = "### Human:", "### Assistant:"  # the guanaco markers: training splits text on them (data.py)


@dataclass(frozen=True)
class ChatFormat:
    kind: str = "chat_template"  # or "guanaco"
    family: str | None = None
    bos_on_text: bool = False
    stop: tuple[str, ...] = ()  # the end-of-turn strings that ended the trained answers
    template: str | None = None  # the named template a tokenizer without its own trained in (--template)

    def render(self, messages: list[dict], tokenizer) -> str:
        """The conversation so far (ending with a user turn) plus the cue for the assistant's answer."""
        if self.kind == "chat_template":
            return templates.render(tokenizer, messages, True)
        text = tokenizer.bos_token if self.bos_on_text and tokenizer.bos_token else ""
        for m in messages:
            if m["role"] == "system":
                raise DataError("a guanaco-trained model has no system turn (its records are '### Human: ...')")
            text += f"{HUMAN if m['role'] == 'user' else ASSISTANT} {m['content']}"
        return text + ASSISTANT

    def stop_strings(self) -> list[str]:
        return [HUMAN] if self.kind == "guanaco" else []  # a guanaco answer ends where the next human turn starts

    def clean(self, answer: str) -> str:
        """The answer without a stop string it ended on (generation keeps the stop string's tokens)."""
        for stop in self.stop_strings():
            if answer.endswith(stop):
                answer = answer[: -len(stop)]
        return answer.strip()

    def ollama(self, tokenizer) -> tuple[str, str | None, tuple[str, ...]] | None:
        """(TEMPLATE, SYSTEM, stops) of an Ollama Modelfile rendering this format as render() does: the named
        template's whose rendering the chat template has; the same markers as above for guanaco text.  None: no
        named template renders as this chat template does."""
        if self.kind == "chat_template":
            found = templates.identify(tokenizer)
            if found is None:
                return None
            named, system = found
            return named.ollama, system, tuple(dict.fromkeys((named.end_of_turn, *self.stop)))
        template = (f'{{{{- range .Messages }}}}{{{{- if eq .Role "user" }}}}{HUMAN} {{{{ .Content }}}}'
                    f'{{{{- else if eq .Role "assistant" }}}}{ASSISTANT} {{{{ .Content }}}}{{{{- end }}}}{{{{- end }}}}'
                    f'{ASSISTANT}')
        return template, None, tuple(self.stop_strings())


def from_stats(stats, family) -> ChatFormat:
    """A run's format, decided once from its training samples as they were rendered (the majority kind)."""
    kind = "guanaco" if stats.guanaco * 2 > stats.samples else "chat_template"
    return ChatFormat(kind, family.name, stats.bos_on_text, tuple(stats.stop), stats.template)


def save(fmt: ChatFormat, folder) -> None:
    (Path(folder) / FILE).write_text(json.dumps(asdict(fmt), indent=2) + "\n")


def split_record(record, where: str) -> tuple[list[dict], str]:
    """Any training record -> (the conversation up to its last answer, that answer: the reference)."""
    from .data import guanaco_messages

    sample = normalise(record, where)
    messages = guanaco_messages(sample["text"]) if "text" in sample else sample["messages"]
    if messages is None:
        raise DataError(f"{where}: a plain 'text' record has no prompt to answer; use '### Human: ...### "
                        "Assistant: ...' text or a chat format (data/README.md)")
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]
