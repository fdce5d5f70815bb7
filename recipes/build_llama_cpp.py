"""llama.cpp's own programs for checking an exported GGUF (`make install-llama-cpp`): llama-simple (greedy generation
that stops at the vocabulary's end-of-generation tokens) and llama-tokenize, compiled from the llama.cpp vendored in
the llama-cpp-python sdist that recipes/fetch_converter.py pins by sha256, the same source as the GGUF converter.

    python recipes/build_llama_cpp.py .venv/llama.cpp-bin

Built once: DEST/BUILD records the sdist's sha256 and the build settings, and while it matches nothing is fetched or
compiled again.  CPU only, static, GGML_NATIVE=OFF (SSE4.2/AVX/AVX2/FMA/F16C, no AVX-512 and no -march=native: the
binaries run on any x86-64 machine with AVX2, with or without AVX-512), only the two targets, two compile jobs.
Needs cmake and a C/C++ compiler; ninja when present, else make.  About 9.5 CPU-minutes.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_converter import SHA256, VERSION, fetch_sdist  # noqa: E402  the pinned sdist, one place

TARGETS = ("llama-simple", "llama-tokenize")
JOBS = 2
CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF", "-DGGML_CCACHE=OFF",
              "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
              "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_EXAMPLES=ON",
              # the version it reports: without these, cmake asks git, which finds the checkout this builds inside
              "-DLLAMA_BUILD_NUMBER=0", f"-DLLAMA_BUILD_COMMIT=llama-cpp-python-{VERSION}")
STAMP = "BUILD"


def key() -> dict:
    return {"sdist": f"llama-cpp-python {VERSION}", "sha256": SHA256, "targets": list(TARGETS),
            "cmake": list(CMAKE_ARGS)}


def built(dest: Path) -> bool:
    try:
        same = json.loads((dest / STAMP).read_text()) == key()
    except (OSError, ValueError):
        return False
    return same and all(os.access(dest / t, os.X_OK) for t in TARGETS)


def run(cmd: list, log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-25:])
        sys.exit(f"error: {cmd[0]} {cmd[1]} failed (exit {done.returncode}); the last lines of {log}:\n  {tail}")


def main(dest: str) -> None:
    dest = Path(dest)
    if built(dest):
        print(f"llama.cpp (llama-cpp-python {VERSION}) is already built in {dest}/: {', '.join(TARGETS)}")
        return
    missing = [tool for tool in ("cmake", "cc", "c++") if not shutil.which(tool)]
    if missing:
        sys.exit(f"error: building llama.cpp needs {', '.join(missing)} (Debian: apt-get install cmake g++)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-cpp-build-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        archive = fetch_sdist(tmp)
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        src = tmp / "llama.cpp"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                       and m.name != prefix + ".git"]  # a submodule's link to a repository that is not there
            for m in members:
                m.name = m.name[len(prefix):]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4, 3.10.12
            tar.extractall(src, members=members, **safe)
        archive.unlink()
        log = dest.parent / "llama.cpp-build.log"
        log.write_text("")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        print(f"building {', '.join(TARGETS)} from llama-cpp-python {VERSION}'s llama.cpp ({JOBS} jobs, several "
              f"minutes; log: {log}) ...", flush=True)
        run(["cmake", "-S", str(src), "-B", str(tmp / "build"), *generator, *CMAKE_ARGS], log)
        run(["cmake", "--build", str(tmp / "build"), "--target", *TARGETS, "--parallel", str(JOBS)], log)
        out = tmp / "bin"
        out.mkdir()
        for target in TARGETS:
            shutil.copy2(tmp / "build" / "bin" / target, out / target)
        shutil.copy2(src / "LICENSE", out / "LICENSE")
        (out / STAMP).write_text(json.dumps(key(), indent=1) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        out.rename(dest)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (children.ru_utime + children.ru_stime) / 60
    print(f"llama.cpp (llama-cpp-python {VERSION}) -> {dest}/: {', '.join(TARGETS)} "
          f"({(time.monotonic() - start) / 60:.1f} min, {cpu:.1f} CPU-min)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".venv/llama.cpp-bin")
