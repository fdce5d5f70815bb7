"""llama.cpp's GGUF converter for tunekit/export.py (`make install-gguf`): the llama-cpp-python sdist pinned below,
found on the package index pip uses and checked against its sha256, of which only the converter's python is kept:
convert_hf_to_gguf.py, its sibling conversion/ package, gguf-py/, the chat templates some conversions read
(models/templates/) and the licence.  Nothing is built or compiled.

    python recipes/fetch_converter.py .venv/llama.cpp

Plain HTTP rather than `pip download`: pip prepares an sdist's metadata before saving it, and this one's build backend
(scikit-build-core) wants CMake for that.  Standard library only; the tests never fetch anything.
"""
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

VERSION = "0.3.36"  # llama.cpp as vendored by llama-cpp-python 0.3.36 (76.6 MB sdist)
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/", "LICENSE")


def index_url() -> str:
    """PIP_INDEX_URL, else pip's configured index-url, else pip's default index."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        from pip._internal.configuration import Configuration
        from pip._internal.models.index import PyPI

        config = Configuration(isolated=False)
        config.load()
        url = dict(config.items()).get("global.index-url") or PyPI.simple_url
    return url.rstrip("/")


def sdist_url() -> str:
    page = f"{index_url()}/llama-cpp-python/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=120) as r:
        body = r.read().decode()
        json_api = "json" in r.headers.get("Content-Type", "")
    links = [f["url"] for f in json.loads(body)["files"]] if json_api else re.findall(r'href="([^"]+)"', body)
    for link in links:
        if urllib.parse.urlsplit(link).path.endswith("/" + SDIST):
            return urllib.parse.urljoin(page, link.split("#")[0])
    sys.exit(f"error: {SDIST} is not on {page}")


def fetch_sdist(folder: Path) -> Path:
    """folder/SDIST, downloaded and checked against the pinned sha256 (recipes/build_llama_cpp.py uses it too)."""
    archive = Path(folder) / SDIST
    with urllib.request.urlopen(sdist_url(), timeout=600) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHA256:
        sys.exit(f"error: {SDIST} has sha256 {digest}, not the pinned {SHA256}")
    return archive


def main(dest: str) -> None:
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="llama-cpp-", dir=dest.parent) as tmp:
        archive = fetch_sdist(Path(tmp))
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        out = Path(tmp) / "llama.cpp"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                       and m.name[len(prefix):].startswith(KEEP)]
            for m in members:
                m.name = m.name[len(prefix):]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4, 3.10.12
            tar.extractall(out, members=members, **safe)
        if not (out / "convert_hf_to_gguf.py").is_file():
            sys.exit(f"error: {SDIST} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        shutil.rmtree(dest, ignore_errors=True)
        out.rename(dest)
    print(f"llama.cpp's converter (llama-cpp-python {VERSION}) -> {dest}/convert_hf_to_gguf.py")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".venv/llama.cpp")
