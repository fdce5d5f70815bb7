"""Data files and record formats: .json/.jsonl in, one normalised sample per record out, {"messages": [...]} (roles
user/assistant/system) or {"text": str}; the format is found per record by its keys (FORMATS, data/README.md)."""
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


def _turns(key: str, role_key: str, content_key: str):
    def read(record, where: str) -> dict:
        turns = record[key]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: '{key}' must be a non-empty list of turns")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
                raise DataError(f"{where}: {key}[{i}] must be an object with '{role_key}' and '{content_key}'")
            role = ROLE_ALIASES.get(str(turn[role_key]).lower())
            if role is None:
                raise DataError(f"{where}: {key}[{i}] has {role_key}={turn[role_key]!r}; expected user, assistant or "
                                "system (human/gpt are accepted too)")
            if not isinstance(turn[content_key], str):
                raise DataError(f"{where}: {key}[{i}].{content_key} must be a string")
            messages.append({"role": role, "content": turn[content_key]})
        check_roles(messages, where)
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


def normalise(record, where: str) -> dict:
    """One record -> {"messages": [...]} or {"text": str}."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for keys, read in FORMATS:
        if all(k in record for k in keys):
            return read(record, where)
    names = ["+".join(f"'{k}'" for k in keys) for keys, _ in FORMATS]
    raise DataError(f"{where}: unknown record format (keys: {sorted(record)}); expected {', '.join(names[:-1])} or "
                    f"{names[-1]} (see data/README.md)")


def check_roles(messages: list[dict], where: str) -> None:
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(rest):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DataError(f"{where}: turns must alternate user/assistant after an optional system turn; "
                            f"turn {i + len(messages) - len(rest)} is {m['role']}, expected {want}")
    if not any(m["role"] == "assistant" for m in rest):
        raise DataError(f"{where}: no assistant turn, so nothing to learn from")


def load_records(path: str, max_samples: int | None = None, read=normalise) -> list[dict]:
    """The file's (first max_samples) records, each through `read(record, where)`."""
    raw = read_records(path)[:max_samples or None]
    if not raw:
        raise DataError(f"{path}: no records")
    return [read(r, f"{path} record {i}") for i, r in enumerate(raw)]


