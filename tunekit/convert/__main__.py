"""The converters' one command line (tunekit/convert/__init__.py says what they do):

    tunekit convert MODEL [OUT]                      # prints the folder to train: MODEL itself if native
    tunekit convert --reverse NATIVE OUT [--original ORIGINAL]
    tunekit convert FILE.gguf [OUT]                  # a GGUF -> a plain transformers folder (tunekit/convert/gguf.py)
"""
from pathlib import Path

from ..noise import quiet_libraries

quiet_libraries()  # before the imports below pull in transformers and its optional libraries

from ..errors import ArgumentError, Parser, main_entry  # noqa: E402
from . import converter_for  # noqa: E402


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("src", help="an original ChatGLM2/3 or Qwen-1 folder, or a GGUF file (with --reverse: a native "
                                 "glm/qwen2 folder)")
    p.add_argument("out", nargs="?", help="output folder (default: .cache/converted/<name>-<native type>-<hash>)")
    p.add_argument("--reverse", action="store_true", help="native -> the original layout (needs OUT)")
    p.add_argument("--original", help="with --reverse: the original folder or its conversion (config, tokenizer files)")
    p.add_argument("--no_fast_tokenizer", action="store_true", help="ChatGLM2: weights and config only")
    p.add_argument("--check_texts", help="a UTF-8 file whose lines the converted tokenizer must also get right")
    p.add_argument("--max_shard_size", default="4GB")
    a = p.parse_args(argv)
    if not Path(a.src).exists():
        raise ArgumentError(f"SRC: {a.src} does not exist; pass a checkpoint folder")
    if Path(a.src).is_file():  # a single file is a GGUF checkpoint, or refused as not one
        from .gguf import default_out, import_gguf

        if a.reverse or a.original or a.no_fast_tokenizer or a.check_texts:
            p.error("a GGUF file takes only OUT and --max_shard_size")
        print(import_gguf(a.src, a.out or default_out(Path(a.src)), max_shard_size=a.max_shard_size))
        return
    module = converter_for(a.src, a.reverse)
    if a.reverse:
        if module is None or not a.out:
            p.error("--reverse needs a native glm or qwen2 folder and OUT")
        print(module.reverse(a.src, a.out, a.original, a.max_shard_size))
    elif module is None:
        print(a.src)  # already native (or no checkpoint): trained as it is
    else:
        extra = Path(a.check_texts).read_text(encoding="utf-8").splitlines() if a.check_texts else ()
        options = {"fast_tokenizer": False} if a.no_fast_tokenizer else {}
        print(module.convert(a.src, a.out, check_texts=extra, max_shard_size=a.max_shard_size, **options))


if __name__ == "__main__":
    main_entry(main)
