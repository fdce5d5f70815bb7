"""Library messages a user cannot act on, kept off the screen, each with its reason; called before those libraries
load.  Each filter names one message (or one logger's import-time chatter), so the warnings that say something print."""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

# Loggers whose records below ERROR are import-time chatter.
NOISY_LOGGERS = (
    "torchao",  # pulled in by peft when the GPTQ stack is installed: every optional kernel it cannot load on CPU torch
    "bitsandbytes.backends.cpu.ops",  # AVX512-BF16 CPU: the hub-fetched `kernels` package is absent (own path used)
    "torch.utils._pytree",  # deprecations of torchao's registrations
    "optimum.gptq.quantizer",  # each layer a GPTQ checkpoint leaves unquantized, at INFO
)

DROPPED = (  # (logger, start of the message)
    # imported whenever installed: a CPU run is what was asked for, and the run summary says whether a GPU was used
    ("DeepSpeed", "Setting accelerator to CPU"),
    # a GPTQ checkpoint's model has no loss type recorded; the default transformers picks is the causal-LM loss
    ("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized"),
    # tunekit/gptq.py loads a GPTQ checkpoint onto its process's device with a device_map: nothing left to move
    ("transformers.trainer", "The model is already on multiple devices"),
)

IGNORED_WARNINGS = (  # starts of Python warnings' messages
    # accelerate under a distributed CPU launch sets each process's threads to its physical cores: right, every run
    "OMP_NUM_THREADS/MKL_NUM_THREADS unset",
    # tunekit/gptq.py passes a GPTQConfig on purpose, for its loading attributes (the kernel backend) only
    "You passed `quantization_config` or equivalent parameters to `from_pretrained` but the model you're loading",
)


def quiet_libraries() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")
    warnings.filterwarnings("ignore", module="torchao")
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)
    for name, message in DROPPED:
        _drop(logging.getLogger(name), message)
    # transformers' LOAD REPORT when a classifier is built on a base checkpoint: its head is new by design.
    _drop(logging.getLogger("transformers.modeling_utils"), new_head_report)
    # tokenicer (imported by gptqmodel) calls logging.basicConfig(level=INFO) at import, which would print every
    # library's INFO records; a root handler set first makes that call a no-op.  It is Python's own last resort made
    # explicit: stderr, WARNING and up, the message alone.
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s")
        logging.getLogger().handlers[0].setLevel(logging.WARNING)
    # gptqmodel (imported by peft to test each layer it wraps, GPTQ or not) prints an ASCII banner, its versions and
    # the environment variables it sets through its own `logbar` logger, which sets itself to INFO when created (so
    # a level set here would not hold); its failures raise.
    logging.getLogger("logbar").disabled = True


class _Drop(logging.Filter):
    """Drops the records `matches` (a message start, or a function of the message).  A filter set on the library's
    logger stays when the library sets that logger up later, where a level would not (DeepSpeed sets its own)."""

    def __init__(self, matches):
        super().__init__()
        self.matches = matches

    def filter(self, record):
        message = record.getMessage()
        return not (message.startswith(self.matches) if isinstance(self.matches, str) else self.matches(message))


def _drop(logger: logging.Logger, matches) -> None:
    if not any(isinstance(f, _Drop) and f.matches == matches for f in logger.filters):
        logger.addFilter(_Drop(matches))


ANSI = re.compile(r"\x1b\[[0-9;]*m")
HEADS = ("classifier", "score")  # families/base.py classifier_head: the head of *ForSequence/TokenClassification
ROW = re.compile(r"^(\S+)\s*\|\s*([A-Z]+)\s*\|", re.M)


def new_head_report(message: str) -> bool:
    """A classifier's LOAD REPORT from a base checkpoint, missing only its new head (other rows: the base's unused
    weights); a classifier checkpoint missing its head, or a base missing any other weight, is still reported."""
    text = ANSI.sub("", message)
    head = re.match(r"(\w+For(?:Sequence|Token)Classification) LOAD REPORT from: (.*)", text)
    if head is None:
        return False
    cls, source = head.groups()
    try:
        architectures = json.loads((Path(source.strip()) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    if cls in architectures:
        return False
    rows = ROW.findall(text)
    missing = [key for key, status in rows if status == "MISSING"]
    return (bool(missing) and {status for _, status in rows} <= {"MISSING", "UNEXPECTED"}
            and all(key.split(".")[0] in HEADS for key in missing))
