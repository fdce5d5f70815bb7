"""Chat templates.  The checkpoint's own (tokenizer_config.json / chat_template.jinja) is the truth; a named template
(chat_templates/NAME.jinja, --template) is only for a base tokenizer that has none.  One renderer for training and
inference, the per-turn labels of any template, and the Ollama TEMPLATE (chat_templates/NAME.go) of each name."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ArgumentError, DataError

DIR = Path(__file__).parent / "chat_templates"


@dataclass(frozen=True)
class Named:
    name: str
    end_of_turn: str                   # the token that ends an assistant turn
    tokens: tuple[str, ...] = ()       # special tokens the template writes (added to a base tokenizer that lacks them)
    system: str | None = None          # the system prompt the template puts first when a chat has none
    go: str | None = None              # the Ollama template file, when not NAME.go

    @property
    def jinja(self) -> str:
        return (DIR / f"{self.name}.jinja").read_text(encoding="utf-8")

    @property
    def ollama(self) -> str:
        return (DIR / f"{self.go or self.name}.go").read_text(encoding="utf-8")


CHATML = ("<|im_start|>", "<|im_end|>")
PHI = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
NAMED = {t.name: t for t in (
    Named("llama2", "</s>"),
    Named("llama3", "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    Named("llama3.1", "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    Named("chatml", "<|im_end|>", CHATML),
    Named("qwen", "<|im_end|>", CHATML, system="You are a helpful assistant.", go="chatml"),
    Named("mistral", "</s>"),
    Named("gemma", "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>")),
    Named("phi3", "<|end|>", PHI),
    Named("phi4", "<|end|>", PHI),
    Named("chatglm2", "</s>", ("[gMASK]", "<sop>")),
    Named("chatglm3", "</s>", ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>")),
)}


def apply(tokenizer, template: str | None, model: str) -> list[str]:
    """The tokenizer's chat template: its own, else --template (a name or a .jinja file); returns the template's special
    tokens that had to be added to the vocabulary.  Without either, conversations are refused when read (data.py)."""
    if not template:
        return []
    if tokenizer.chat_template:
        print(f"note: {model} has its own chat template, which is used; --template {template} is only for a "
              "tokenizer without one", flush=True)
        return []
    if template in NAMED:
        tokenizer.chat_template, tokens = NAMED[template].jinja, NAMED[template].tokens
    elif template.endswith(".jinja") and Path(template).is_file():
        tokenizer.chat_template, tokens = Path(template).read_text(encoding="utf-8"), ()
    else:
        raise ArgumentError(f"--template: {template!r} is neither a named template ({', '.join(NAMED)}) nor a .jinja "
                            "file")
    vocab = tokenizer.get_vocab()
    added = [t for t in tokens if t not in vocab]
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    return added


def named(tokenizer) -> str | None:
    """The name of the named template the tokenizer carries, if it carries one."""
    own = (tokenizer.chat_template or "").strip()
    return next((n for n, t in NAMED.items() if own and t.jinja.strip() == own), None)


def missing(model: str) -> DataError:
    return DataError(f"{model}: the tokenizer has no chat template, so conversations have no format to train in; pass "
                     f"--template with one of {', '.join(NAMED)} (or a .jinja file), the format you will chat in")


def render(tokenizer, messages: list[dict], generation: bool = False, where: str = "", **kw) -> str:
    """The template's text for a conversation.  A template that refuses a system turn (Gemma-2) gets it folded into
    the first user turn, as Gemma's own guidance (and Gemma-3's template) does."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kw)
    except TemplateError as e:
        if messages[0]["role"] == "system" and len(messages) > 1:
            first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            return render(tokenizer, [first] + messages[2:], generation, where, **kw)
        raise DataError(f"{where or 'this conversation'}: the model's chat template refuses it: {e}") from None


def end_of_turn(tokenizer, template: str | None = None) -> list[str]:
    """The strings that end an answer: the tokenizer's EOS, the model's generation_config.json eos ids, a named
    template's end-of-turn token."""
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    path = Path(str(tokenizer.name_or_path)) / "generation_config.json"
    ids = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    for i in [ids] if isinstance(ids, int) else ids or []:
        stops.append(tokenizer.convert_ids_to_tokens(i))
    if template in NAMED:
        stops.append(NAMED[template].end_of_turn)
    return list(dict.fromkeys(s for s in stops if s))


def _answer(tokenizer, before: list[dict], reply: dict, stops, where: str) -> str:
    """What the model writes after the generation prompt for `reply`, through its end-of-turn token.  Rendered without
    the system turn, which some templates move to the last user turn (Mistral) and none puts inside an answer."""
    context = [m for m in before if m["role"] != "system"]
    prompt = render(tokenizer, context, True, where)
    full = render(tokenizer, context + [reply], False, where)
    if not full.startswith(prompt):
        raise DataError(f"{where}: the chat template renders the conversation before an answer differently once the "
                        "answer follows it, so the answer cannot be told apart; use a template that does not")
    text = full[len(prompt):]
    ends = [text.find(s) + len(s) for s in stops if s in text]
    if not ends:
        raise DataError(f"{where}: the chat template ends an answer with none of the model's end-of-turn tokens "
                        f"{stops}, so the model would never learn to stop; pass a template that ends turns with one")
    return text[:min(ends)]


def answer_end(tokenizer, stops) -> str | None:
    """The end-of-turn token the chat template ends an answer with (None without a template)."""
    if not tokenizer.chat_template:
        return None
    try:
        text = _answer(tokenizer, PROBES[0][:1], PROBES[0][1], stops, "")
    except DataError:
        return None
    return next((s for s in stops if text.endswith(s)), None)


def examples(messages: list[dict], tokenizer, stops, where: str) -> list[list[tuple[str, bool]]]:
    """A conversation as (text, trained?) segments: each assistant answer and its end-of-turn token trained, exactly as
    inference prompts for it.  One example when the full rendering holds every turn as inference sees it (most
    templates); otherwise one per answer, its prompt as the template gives it at inference (Qwen3, whose history drops
    earlier <think> blocks; Mistral with a system turn, which only the last user turn carries)."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    prompts = [render(tokenizer, messages[:i], True, where) for i in turns]
    answers = [_answer(tokenizer, messages[:i], messages[i], stops, where) for i in turns]
    full = render(tokenizer, messages[:turns[-1] + 1], False, where)
    if all(full.startswith(p + a) for p, a in zip(prompts, answers)):
        segs, done = [], 0
        for p, a in zip(prompts, answers):
            segs += [(full[done:len(p)], False), (a, True)]
            done = len(p) + len(a)
        return [segs + [(full[done:], False)]]
    return [[(p, False), (a, True)] for p, a in zip(prompts, answers)]


PROBES = ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2?"}],
          [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])


def identify(tokenizer) -> tuple[Named, str | None] | None:
    """(the named template the tokenizer's own renders as on the probe chats, its default system prompt), or None."""
    def prompt(**kw):
        try:
            return [render(tokenizer, p, True, **kw) for p in PROBES]
        except DataError as e:  # a template refusing a role: both must refuse it
            return str(e)

    own, system = prompt(), _default_system(tokenizer)
    for named in NAMED.values():
        if own == prompt(chat_template=named.jinja):
            return named, named.system
        if system and own == prompt(chat_template=named.jinja, default_system=system):
            return named, system
    return None


def _default_system(tokenizer) -> str | None:
    """The system prompt the template puts first when a chat has none (ChatML models each have their own)."""
    user = [{"role": "user", "content": "Hi"}]
    mark = "\x01"
    try:
        with_mark = render(tokenizer, [{"role": "system", "content": mark}] + user, True)
        without = render(tokenizer, user, True)
    except DataError:
        return None
    head, tail = with_mark.split(mark, 1) if mark in with_mark else (None, None)
    if head is None or not (without.startswith(head) and without.endswith(tail)) or len(without) <= len(head + tail):
        return None
    return without[len(head):len(without) - len(tail)]
