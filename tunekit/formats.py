"""Data files and record formats: .json/.jsonl in, one normalised sample per record out, {"messages": [...]} (roles
user/assistant/system) or {"text": str}; the format is found per record by its keys (FORMATS, data/README.md).
Preference records (PREFERENCE_FORMATS) become {"prompt": [...], "chosen": [one assistant turn], "rejected": [...]}
or, unpaired (KTO), {"prompt": [...], "completion": [...], "label": bool}: TRL's conversational form."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError

ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def read_records(path: str) -> list[dict]:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} line {line}: not valid UTF-8 (byte {e.start} is {raw[e.start:e.start + 1]!r}); "
                        "save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it must hold training records (see data/README.md)")
    if path.endswith(".jsonl"):
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        "a file with one record per line must be named .jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records (or use .jsonl, one record per line)")
    return data


def read_turn(turn, where: str, name: str, role_key: str = "role", content_key: str = "content") -> dict:
    """One turn {role, content} (or {from, value}) -> {"role": user|assistant|system, "content": str}."""
    if isinstance(turn, dict) and role_key not in turn and "from" in turn:  # ShareGPT's keys where OpenAI's were asked
        role_key, content_key = "from", "value"
    if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
        raise DataError(f"{where}: {name} must be an object with '{role_key}' and '{content_key}'")
    role = ROLE_ALIASES.get(str(turn[role_key]).lower())
    if role is None:
        raise DataError(f"{where}: {name} has {role_key}={turn[role_key]!r}; expected user, assistant or "
                        "system (human/gpt are accepted too)")
    if not isinstance(turn[content_key], str):
        raise DataError(f"{where}: {name}.{content_key} must be a string")
    return {"role": role, "content": turn[content_key]}


def _alternating(messages: list[dict], where: str, what: str) -> list[dict]:
    """The turns after an optional system turn, which must alternate user/assistant from a user turn."""
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(rest):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DataError(f"{where}: {what} must alternate user/assistant after an optional system turn; "
                            f"turn {i + len(messages) - len(rest)} is {m['role']}, expected {want}")
    return rest


def _turns(key: str, role_key: str, content_key: str):
    def read(record, where: str) -> dict:
        turns = record[key]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: '{key}' must be a non-empty list of turns")
        messages = [read_turn(turn, where, f"{key}[{i}]", role_key, content_key) for i, turn in enumerate(turns)]
        if not any(m["role"] == "assistant" for m in _alternating(messages, where, "turns")):
            raise DataError(f"{where}: no assistant turn, so nothing to learn from")
        return {"messages": messages}
    return read


def read_alpaca(record, where: str) -> dict:
    for k in ("instruction", "input", "output"):
        if not isinstance(record.get(k, ""), str):
            raise DataError(f"{where}: '{k}' must be a string")
    prompt = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]}


def read_adgen(record, where: str) -> dict:
    for k in ("content", "summary"):
        if not isinstance(record[k], str) or not record[k].strip():
            raise DataError(f"{where}: '{k}' must be a non-empty string (ADGEN records: content + summary)")
    return {"messages": [{"role": "user", "content": record["content"]},
                         {"role": "assistant", "content": record["summary"]}], "adgen": True}


def read_text(record, where: str) -> dict:
    if not isinstance(record["text"], str) or not record["text"].strip():
        raise DataError(f"{where}: 'text' must be a non-empty string")
    return {"text": record["text"]}


# (the keys that identify a format, its reader); the first row whose keys a record has wins.
FORMATS = (
    (("conversations",), _turns("conversations", "from", "value")),
    (("messages",), _turns("messages", "role", "content")),
    (("instruction", "output"), read_alpaca),
    (("content", "summary"), read_adgen),
    (("text",), read_text),
)


# ---------------------------------------------------------------- preference records (tunekit/preference.py)

def read_prompt(record, where: str) -> list[dict]:
    """'prompt' (a string: one user turn; or turns) or ShareGPT's 'conversations': the turns before the answer, which
    alternate user/assistant after an optional system turn and end with the user's."""
    key = "prompt" if "prompt" in record else "conversations"
    value = record[key]
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: '{key}' is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: '{key}' must be a string or a non-empty list of turns")
    messages = [read_turn(t, where, f"{key}[{i}]") for i, t in enumerate(value)]
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{where}: the prompt has no user turn, so there is nothing to answer")
    if _alternating(messages, where, "the prompt's turns")[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a user turn (the answers in 'chosen'/'rejected' follow it)")
    return messages


def read_answer(record, key: str, where: str) -> list[dict]:
    """A completion: a string, one assistant turn, or a list holding one (TRL's form) -> [assistant turn]."""
    value = record[key]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    turn = {"role": "assistant", "content": value} if isinstance(value, str) else read_turn(value, where, f"'{key}'")
    if turn["role"] != "assistant":
        raise DataError(f"{where}: '{key}' must be the assistant's answer, not a {turn['role']} turn")
    if not turn["content"].strip():
        raise DataError(f"{where}: '{key}' is empty")
    return [turn]


def _missing(record, where: str, needed: tuple, shape: str) -> None:
    """needed: keys, 'a|b' where either will do."""
    for key in needed:
        if not any(k in record for k in key.split("|")):
            name = " (or ".join(f"'{k}'" for k in key.split("|")) + ")" * key.count("|")
            raise DataError(f"{where}: {name} is missing; {shape} (see data/README.md)")


def read_pair(record, where: str) -> dict:
    _missing(record, where, ("prompt|conversations", "chosen", "rejected"),
             "a preference record is 'prompt' (or 'conversations'), 'chosen' and 'rejected'")
    sample = {"prompt": read_prompt(record, where), "chosen": read_answer(record, "chosen", where),
              "rejected": read_answer(record, "rejected", where)}
    if sample["chosen"][0]["content"].strip() == sample["rejected"][0]["content"].strip():
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same answer, so there is no preference to learn")
    return sample


def read_unpaired(record, where: str) -> dict:
    """KTO's record: one answer and whether it is desirable."""
    _missing(record, where, ("prompt|conversations", "completion", "label"),
             "an unpaired (KTO) record is 'prompt', 'completion' and 'label' (true: desirable)")
    if not isinstance(record["label"], bool):
        raise DataError(f"{where}: 'label' must be true or false (is the completion desirable?), got "
                        f"{record['label']!r}")
    return {"prompt": read_prompt(record, where), "completion": read_answer(record, "completion", where),
            "label": record["label"]}


# (a key that marks the kind, its reader): a record with 'chosen' or 'rejected' is a pair, with 'completion' unpaired
PREFERENCE_FORMATS = {"pair": (("chosen", "rejected"), read_pair), "unpaired": (("completion",), read_unpaired)}


def preference_kind(record) -> str | None:
    return next((kind for kind, (marks, _) in PREFERENCE_FORMATS.items()
                 if isinstance(record, dict) and any(k in record for k in marks)), None)


def normalise(record, where: str) -> dict:
    """One record -> {"messages": [...]} or {"text": str}; a preference pair is read as its prompt and chosen answer
    (what evaluate, generate and a training sample compare with)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if preference_kind(record) == "pair":
        sample = read_pair(record, where)
        return {"messages": sample["prompt"] + sample["chosen"]}
    for keys, read in FORMATS:
        if all(k in record for k in keys):
            return read(record, where)
    names = ["+".join(f"'{k}'" for k in keys) for keys, _ in FORMATS]
    raise DataError(f"{where}: unknown record format (keys: {sorted(record)}); expected {', '.join(names[:-1])} or "
                    f"{names[-1]} (see data/README.md)")


def load_records(path: str, max_samples: int | None = None, read=normalise) -> list[dict]:
    """The file's (first max_samples) records, each through `read(record, where)`."""
    raw = read_records(path)[:max_samples or None]
    if not raw:
        raise DataError(f"{path}: no records")
    return [read(r, f"{path} record {i}") for i, r in enumerate(raw)]


