"""ChatGLM2/ChatGLM3 tokenization without the checkpoint's remote code.

The original tokenizer is a plain SentencePiece BPE model (`tokenizer.model`: byte fallback, dummy prefix `▁`) with
the ChatGLM special tokens appended *after* the SentencePiece vocabulary:

    [MASK] n   [gMASK] n+1   [sMASK] n+2   sop n+3   eop n+4          (n = sp.vocab_size(): 64789 in ChatGLM2-6B)
    <|system|> n+5   <|user|> n+6   <|assistant|> n+7   <|observation|> n+8          (ChatGLM3 only)

Every input starts with the prefix `[gMASK] sop`, answers end with EOS `</s>` (2), padding is `<unk>` (0) on the
left.  `SPTokenizer` is that tokenizer on `sentencepiece` itself (exact by construction).  `export_fast` builds a
`tokenizers` (fast) tokenizer for the native `glm` model folder, and `check_against_sentencepiece` compares its ids
with sentencepiece on the user's own `tokenizer.model`: the export is refused on any mismatch.  In the fast tokenizer
`sop`/`eop` are named `<sop>`/`<eop>`, so the ordinary words "sop" and "eop" stay ordinary text, as they are for the
original tokenizer.

    python -m tunekit.convert.chatglm2_tokenizer TOKENIZER.model      # export and compare on the check texts
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ArgumentError
from ..templates import NAMED
from . import check_texts, first_difference

CHATGLM2_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_SPECIALS = CHATGLM2_SPECIALS + ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
FAST_NAMES = {"sop": "<sop>", "eop": "<eop>"}  # names in the fast tokenizer (see the module docstring)
PREFIX = ("[gMASK]", "sop")
ROUND = "[Round {n}]\n\n问：{query}\n\n答："

class TokenizerMismatch(ArgumentError):
    """The fast tokenizer does not give sentencepiece's ids."""


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise ArgumentError("ChatGLM2 tokenization needs sentencepiece: pip install -r requirements.txt") from None
    return sentencepiece


class SPTokenizer:
    """The ChatGLM2/3 tokenizer on sentencepiece: encode/decode, special ids, prefix, prompts, left padding."""

    def __init__(self, model_file, chatglm3: bool = False):
        spm = _sentencepiece()
        if not Path(model_file).is_file():
            raise ArgumentError(f"{model_file}: no such tokenizer.model (the ChatGLM2 SentencePiece model)")
        self.model_file = str(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        self.n_words = self.sp.vocab_size()
        self.specials = CHATGLM3_SPECIALS if chatglm3 else CHATGLM2_SPECIALS
        self.special_ids = {name: self.n_words + i for i, name in enumerate(self.specials)}
        self.eos_id, self.pad_id, self.bos_id = self.sp.eos_id(), self.sp.unk_id(), self.sp.bos_id()
        self.prefix_ids = [self.special_ids[t] for t in PREFIX]

    def __len__(self):
        return self.n_words + len(self.specials)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        """As ChatGLM2: special, EOS, BOS and pad ids decode to nothing."""
        skip = {self.eos_id, self.pad_id, self.bos_id}
        return self.sp.decode([int(i) for i in ids if int(i) < self.n_words and int(i) not in skip])

    @staticmethod
    def build_prompt(query: str, history=()) -> str:
        prompt = "".join(ROUND.format(n=i + 1, query=q) + f"{a}\n\n" for i, (q, a) in enumerate(history))
        return prompt + ROUND.format(n=len(history) + 1, query=query)

    def build_inputs(self, query: str, history=()) -> list[int]:
        return self.prefix_ids + self.encode(self.build_prompt(query, history))

    def pad(self, batch: list[list[int]], side: str = "left") -> dict:
        """Pad with <unk> (0), on the left for generation; returns torch tensors input_ids and attention_mask."""
        import torch

        n = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, ids in enumerate(batch):
            cols = slice(n - len(ids), n) if side == "left" else slice(0, len(ids))
            input_ids[i, cols] = torch.tensor(ids, dtype=torch.long)
            mask[i, cols] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


# ------------------------------------------------------------------------------------------------------ fast export
def _proto(model_file):
    _sentencepiece()
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(Path(model_file).read_bytes())
    return m


def export_fast(model_file, chatglm3: bool = False):
    """A PreTrainedTokenizerFast reproducing SPTokenizer (unchecked: use `fast_tokenizer`, which checks it)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    proto = _proto(model_file)
    if proto.trainer_spec.model_type != 2:  # 1 unigram, 2 BPE
        raise ArgumentError(f"{model_file}: not a SentencePiece BPE model (ChatGLM2/3 ship BPE); cannot export it")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # BPE merges in the order sentencepiece applies them: by the rank of the merged piece (scores fall with the id).
    merges = []
    normal = {p.piece for p in proto.pieces if p.type == 1}  # never merge into control, byte or unused pieces
    for piece, rank in vocab.items():
        if piece not in normal:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((rank, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(merges)]
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tk.normalizer = normalizers.Sequence(steps)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                   + ([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else []))
    specials = [FAST_NAMES.get(t, t) for t in (CHATGLM3_SPECIALS if chatglm3 else CHATGLM2_SPECIALS)]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    wanted = {t: len(proto.pieces) + i for i, t in enumerate(specials)}
    got = {t: tk.token_to_id(t) for t in specials}
    if got != wanted:
        raise ArgumentError(f"{model_file}: special tokens landed on {got}, expected {wanted}")
    gmask, sop = specials[1], specials[3]
    eos = proto.pieces[proto.trainer_spec.eos_id].piece
    tk.post_processor = processors.TemplateProcessing(
        single=f"{gmask} {sop} $A", pair=f"{gmask} {sop} $A $B:1 {eos}:1",
        special_tokens=[(gmask, wanted[gmask]), (sop, wanted[sop]), (eos, vocab[eos])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, unk_token=unk, pad_token=unk,
                                   padding_side="left", chat_template=NAMED["chatglm3" if chatglm3 else "chatglm2"].jinja,
                                   model_input_names=["input_ids", "attention_mask"])


def check_against_sentencepiece(fast, model_file, texts, chatglm3: bool = False) -> int:
    """Raise TokenizerMismatch unless `fast` gives sentencepiece's ids (bare and with the [gMASK] sop prefix) and
    the same vocabulary on every text; returns the number of texts compared."""
    ref = SPTokenizer(model_file, chatglm3=chatglm3)
    if len(fast) != len(ref):
        raise TokenizerMismatch(f"{model_file}: the fast tokenizer has {len(fast)} tokens, sentencepiece + ChatGLM "
                                f"specials {len(ref)}")
    sp_vocab = [ref.sp.id_to_piece(i) for i in range(ref.n_words)]
    fast_vocab = fast.convert_ids_to_tokens(list(range(ref.n_words)))
    bad = [i for i, (a, b) in enumerate(zip(sp_vocab, fast_vocab)) if a != b]
    if bad:
        i = bad[0]
        raise TokenizerMismatch(f"{model_file}: {len(bad)} vocabulary entries differ from sentencepiece's, e.g. id {i}: "
                                f"sentencepiece {sp_vocab[i]!r}, fast {fast_vocab[i]!r}; refusing the fast tokenizer")
    n = 0
    for lineno, text in enumerate(texts, 1):
        want = ref.encode(text)
        got = fast(text, add_special_tokens=False)["input_ids"]
        if got != want:
            at = first_difference(got, want)
            raise TokenizerMismatch(
                f"{model_file}: the fast tokenizer differs from sentencepiece on text {lineno} {text[:60]!r} at token "
                f"{at}: sentencepiece {want[at:at + 6]} ({ref.sp.id_to_piece(want[at:at + 6])}), fast "
                f"{got[at:at + 6]} ({fast.convert_ids_to_tokens(got[at:at + 6])}); refusing the fast tokenizer "
                "(train with the sentencepiece model itself, or report the text)")
        if fast(text)["input_ids"] != ref.prefix_ids + want:
            raise TokenizerMismatch(f"{model_file}: the fast tokenizer's [gMASK] sop prefix differs on text {lineno}")
        n += 1
    return n


def fast_tokenizer(model_file, chatglm3: bool = False, extra_texts=()):
    """The fast tokenizer, only if it matches sentencepiece on check_texts() (+ extra_texts); else TokenizerMismatch."""
    fast = export_fast(model_file, chatglm3=chatglm3)
    check_against_sentencepiece(fast, model_file, check_texts(extra_texts), chatglm3=chatglm3)
    return fast


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_file", help="a ChatGLM2/3 tokenizer.model: export the fast tokenizer and compare it")
    p.add_argument("--texts", help="a UTF-8 file: each line is compared too")
    p.add_argument("--chatglm3", action="store_true")
    a = p.parse_args(argv)
    extra = Path(a.texts).read_text(encoding="utf-8").splitlines() if a.texts else ()
    fast = export_fast(a.model_file, chatglm3=a.chatglm3)
    n = check_against_sentencepiece(fast, a.model_file, check_texts(extra), chatglm3=a.chatglm3)
    print(f"{a.model_file}: the fast tokenizer matches sentencepiece on {n} texts")


if __name__ == "__main__":
    main()
