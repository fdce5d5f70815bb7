"""Import-time messages of libraries that say nothing about this run, kept off the screen: torchao (pulled in by peft
when the GPTQ stack is installed) logs every optional kernel it cannot load on a CPU torch, bitsandbytes (imported by
peft) warns on an AVX512-BF16 CPU that the hub-fetched `kernels` package is absent and uses its own CPU path, and
torch's pytree logs deprecations.  Called before those libraries load: by tunekit/cli.py at import, by the other commands' main()."""
from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("torchao", "bitsandbytes.backends.cpu.ops", "torch.utils._pytree")


def quiet_libraries() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")
    warnings.filterwarnings("ignore", module="torchao")
