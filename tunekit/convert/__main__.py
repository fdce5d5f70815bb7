"""python -m tunekit.convert MODEL [OUT] | --reverse NATIVE OUT --original ORIGINAL: see tunekit/convert/__init__.py.
A folder that needs no conversion is printed as it is (what recipes/launch.sh relies on)."""
import argparse
import sys

from . import __doc__ as doc, converter_for

if __name__ == "__main__":
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("src", nargs="?")
    for option in ("--original", "--check_texts", "--max_shard_size"):
        p.add_argument(option)
    src = p.parse_known_args()[0].src
    reverse = "--reverse" in sys.argv
    module = converter_for(src, reverse) if src else None
    if module is not None:
        module.main(sys.argv[1:])
    elif src and not reverse:
        print(src)  # already native (or no checkpoint): trained as it is
    else:
        sys.exit(f"error: {src or 'MODEL'}: not a ChatGLM2/3 or Qwen-1 checkpoint folder (original or native)\n{doc}")
