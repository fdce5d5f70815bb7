"""Export for serving (tunekit/export.py): the merged tiny Llama-2 converts to GGUF with llama.cpp's own converter and
the file carries the training chat template, its EOS (the end-of-turn token) and the merged weights; the Ollama
Modelfile stops at that token, and its TEMPLATE, rendered the way Ollama renders it, gives exactly the prompt the
training template gives, for every family; adapters with whole modules are warned about and refused; a missing
converter and an unconvertible tokenizer (the tiny Qwen2's synthetic vocabulary) are one clear error, nothing written.

The converter comes from `make install-gguf` (the tests never fetch it); without it these tests skip, except in CI."""
import json
import os
import re
import shutil
import sys

import pytest

from tunekit.errors import ArgumentError, ConversionError
from tunekit.export import DEFAULT_CONVERTER, export, main, modelfile
from tunekit.templates import NAMED, examples, render
from tunekit.prompts import ChatFormat

needs_converter = pytest.mark.skipif(not DEFAULT_CONVERTER.is_file() and not os.environ.get("CI"),
                                     reason="llama.cpp's converter is not installed: make install-gguf")

TWO_TURNS = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
             {"role": "user", "content": "And another?"}]
WITH_SYSTEM = [{"role": "system", "content": "Answer in one word."}] + TWO_TURNS


# --- Ollama's prompt, rendered as Ollama renders it -------------------------------------------------------------
# A test-only interpreter of the subset of Go's text/template that the families' Ollama templates use (trim markers,
# `range`, `if`/`else if`/`else`, `:=`/`=` variables with Go's scoping, `.Field`/`$.Field`, (pipelines), eq (any arity)/not/and/print/len);
# anything else raises, so a template that leaves this subset fails here instead of passing untested.
ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[()]|[^\s()]+')
FUNCS = {"eq": lambda a, *b: a in b, "not": lambda a: not a, "len": len,
         "and": lambda *a: next((x for x in a if not x), a[-1]),
         "print": lambda *a: "".join(a) if all(isinstance(x, str) for x in a) else pytest.fail("print of non-strings")}


def go_parse(items, i=0):
    nodes = []
    while i < len(items):
        kind, s = items[i]
        i += 1
        word = s.split()[0] if kind == "action" else None
        if kind == "text":
            nodes.append(("text", s))
        elif word in ("end", "else"):
            return nodes, i, s
        elif word == "if":
            branches, cond = [], s[3:]
            while True:
                body, i, end = go_parse(items, i)
                branches.append((cond, body))
                if end == "end":
                    break
                cond = end[8:] if end.startswith("else if ") else "true"
            nodes.append(("if", branches))
        elif word == "range":
            body, i, end = go_parse(items, i)
            assert end == "end", f"range closed by {end!r}"
            nodes.append(("range", s[6:], body))
        else:
            nodes.append(("expr", s))
    return nodes, i, None


def go_eval(s, dot, scopes, root):
    def value(tok):
        if isinstance(tok, list):  # a parenthesised pipeline
            return call(tok)
        if tok.startswith('"'):
            return json.loads(tok)
        if tok in ("true", "false"):
            return tok == "true"
        if tok.startswith("$."):
            return root[tok[2:]]
        if tok.startswith("$"):
            return next(scope[tok] for scope in reversed(scopes) if tok in scope)
        if tok.startswith("."):
            return dot[tok[1:]]
        raise AssertionError(f"operand {tok!r} is outside the tested subset")

    def call(toks):
        if toks[0] in FUNCS:
            return FUNCS[toks[0]](*map(value, toks[1:]))
        assert len(toks) == 1, f"{s!r} is outside the tested subset"
        return value(toks[0])

    def nest(toks):
        out = []
        while toks:
            tok = toks.pop(0)
            if tok == ")":
                return out
            out.append(nest(toks) if tok == "(" else tok)
        return out

    toks = TOKEN.findall(s)
    if len(toks) > 2 and toks[1] in (":=", "="):
        target = scopes[-1] if toks[1] == ":=" else next(sc for sc in reversed(scopes) if toks[0] in sc)
        target[toks[0]] = go_eval(" ".join(toks[2:]), dot, scopes, root)
        return None
    return call(nest(toks))


def go_exec(nodes, dot, scopes, root, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            v = go_eval(node[1], dot, scopes, root)
            out.append("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
        elif node[0] == "if":
            for cond, body in node[1]:
                if go_eval(cond, dot, scopes, root):
                    go_exec(body, dot, scopes + [{}], root, out)
                    break
        else:  # range: `.` is each element in turn, variables declared inside live one iteration
            for item in go_eval(node[1], dot, scopes, root):
                go_exec(node[2], item, scopes + [{}], root, out)


def go_render(template, root):
    items, pos, trim_next = [], 0, False
    for m in ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text
        items += [("text", text.rstrip(" \t\r\n") if m.group(1) else text), ("action", m.group(2))]
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    items.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    nodes, _, end = go_parse(items)
    assert end is None, f"unbalanced {end!r}"
    out = []
    go_exec(nodes, root, [{}], root, out)
    return "".join(out)


def ollama_prompt(modelfile_text, messages):
    """What Ollama's chat endpoint feeds the model: the Modelfile's SYSTEM first when the chat has no system message
    (server/routes.go), .System = the system messages joined, .Messages = all of them (template/template.go)."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile_text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', modelfile_text, re.S | re.M)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system.group(1)}] + messages
    root = {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return go_render(template, root)


def test_the_go_subset_follows_go():
    """Outputs Go's text/template gives for these (trim markers eat all adjacent whitespace; `=` inside range
    changes the outer variable; a `:=` inside if is gone after its end)."""
    assert go_render("a  {{- \"b\" -}}  \n c{{ if true }} d {{- end }}", {}) == "abc d"
    assert go_render('{{ $n := "" }}{{ range .L }}{{ $n = print $n "x" }}{{ len $n }}{{ end }}', {"L": [1, 2, 3]}) \
        == "123"
    assert go_render('{{ $a := "o" }}{{ if true }}{{ $a := "i" }}{{ $a }}{{ end }}{{ $a }}', {}) == "io"
    assert go_render("{{ if and .A .B }}y{{ else if not .A }}n{{ else }}e{{ end }}", {"A": "s", "B": ""}) == "e"
    with pytest.raises(AssertionError, match="outside the tested subset"):
        go_render("{{ index .L 0 }}", {"L": [1]})


def training_prompt(tokenizer, messages):
    """The training template's prompt for generation, less the BOS llama.cpp's runtime adds (add_bos_token)."""
    text = render(tokenizer, messages, True)
    return text[len(tokenizer.bos_token):] if text.startswith(tokenizer.bos_token) else text


@pytest.mark.parametrize("name", sorted(NAMED))
def test_ollama_template_renders_as_the_training_template(name, tiny_llama2):
    """Every named template's Modelfile: Ollama's prompt equals the training template's, it stops at the template's
    end-of-turn token, and that token is what training ends each answer with."""
    from transformers import AutoTokenizer

    named = NAMED[name]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama2)  # <s>/</s>: the templates' bos_token/eos_token
    tokenizer.chat_template = named.jinja
    text = modelfile(tokenizer, ChatFormat(stop=(named.end_of_turn,)), "test")
    conversations = [TWO_TURNS] + ([WITH_SYSTEM] if not name.startswith("chatglm") else [])  # ChatGLM has no system
    for messages in conversations:
        assert ollama_prompt(text, messages) == training_prompt(tokenizer, messages)
    assert f'PARAMETER stop "{named.end_of_turn}"' == text.splitlines()[-2 if named.end_of_turn != "</s>" else -1]
    answer = examples(TWO_TURNS[:2], tokenizer, [named.end_of_turn, "</s>"], "test")[0][-2]
    assert answer[1] and answer[0].endswith(named.end_of_turn)


def test_a_template_no_name_renders_has_no_modelfile_template(tiny_llama2, capsys):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama2)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    text = modelfile(tokenizer, ChatFormat(stop=("</s>",)), "test")
    assert "TEMPLATE" not in text and 'PARAMETER stop "</s>"' in text.splitlines()


def test_a_guanaco_run_gets_the_guanaco_prompt(tiny_llama2):
    """A base tokenizer trains '### Human: ...### Assistant: ...' text as text (chat_format.json kind 'guanaco'): the
    Modelfile prompts as training rendered that text (data.text_segments) and stops at the next '### Human:'."""
    from transformers import AutoTokenizer

    from tunekit.data import text_segments

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama2)
    tokenizer.chat_template = None
    text = modelfile(tokenizer, ChatFormat("guanaco"), "test")
    record = "### Human: Name a colour.### Assistant: Blue.### Human: And another?### Assistant: Red."
    segments = [seg for seg, _ in text_segments(record, tokenizer)]
    last_cue = len(segments) - segments[::-1].index("### Assistant:")  # the prompt of the last answer ends there
    want = "".join(segments[:last_cue])
    assert want.startswith(tokenizer.bos_token)  # which llama.cpp's runtime adds
    assert ollama_prompt(text, TWO_TURNS) == want[len(tokenizer.bos_token):]
    lines = text.splitlines()
    assert 'PARAMETER stop "### Human:"' in lines and 'PARAMETER stop "</s>"' in lines
    assert not any(line.startswith("SYSTEM") for line in lines)


# --- The merged tiny Llama-2, converted --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def merged(random_qv_adapter, tmp_path_factory):
    from tunekit.merge import merge

    out = tmp_path_factory.mktemp("export") / "llama2-merged"
    merge(random_qv_adapter, str(out), dtype="float32")
    return out


@pytest.fixture(scope="module")
def exported(merged):
    return export(str(merged), str(merged.with_name("llama2-gguf")))


def gguf_reader(path):
    sys.path.insert(0, str(DEFAULT_CONVERTER.parent / "gguf-py"))  # the converter's own gguf-py
    from gguf import GGUFReader

    return GGUFReader(str(path))


@needs_converter
def test_merged_llama2_gguf_carries_template_eos_and_merged_weights(merged, exported, tiny_llama2):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    reader = gguf_reader(exported / "model.gguf")
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("tokenizer.chat_template") == tokenizer.chat_template
    eos = field("tokenizer.ggml.eos_token_id")
    assert eos == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    assert field("tokenizer.ggml.tokens")[eos] == "</s>"
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id and field("tokenizer.ggml.add_bos_token")
    answered = tokenizer.apply_chat_template(TWO_TURNS[:2], tokenize=False)
    assert answered.endswith(" Blue. " + tokenizer.convert_ids_to_tokens(eos))  # EOS ends each answer: end of turn

    weights = load_file(str(merged / "model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(weights) == 21  # 2 layers x 9 + embeddings, final norm, lm_head
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= set(tensors)
    assert list(tensors["token_embd.weight"].shape) == [64, len(tokenizer)]
    import numpy as np
    import torch

    v = torch.from_numpy(np.array(tensors["blk.0.attn_v.weight"].data, dtype=np.float32))
    torch.testing.assert_close(v, weights["model.layers.0.self_attn.v_proj.weight"], atol=2e-3, rtol=1e-3)  # f16
    base = load_file(f"{tiny_llama2}/model.safetensors")["model.layers.0.self_attn.v_proj.weight"]
    assert (v - base).abs().max() > 1e-2  # the merged weights were converted, not the base's


@needs_converter
def test_written_modelfile_stops_at_end_of_turn(merged, exported):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    text = (exported / "Modelfile").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "FROM ./model.gguf" in lines and 'PARAMETER stop "</s>"' in lines
    assert sorted(p.name for p in exported.iterdir()) == ["Modelfile", "model.gguf"]
    for messages in (TWO_TURNS, WITH_SYSTEM):  # BOS + Ollama's prompt = the training prompt
        want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tokenizer.bos_token + ollama_prompt(text, messages) == want


@needs_converter
def test_tiny_qwen2_is_one_clear_error_and_nothing_is_written(tiny_qwen, tmp_path, capsys):
    out = tmp_path / "qwen-gguf"
    out.mkdir()
    (out / "keep").write_text("an earlier export")
    from tunekit.errors import run_cli

    assert run_cli(main, [tiny_qwen, str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: llama.cpp's converter does not recognise the tokenizer")
    assert "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["qwen-gguf"] and (out / "keep").is_file()  # untouched, no temp


def adapter_copy(src, dst, modules_to_save=None, extra_weights=None):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg["modules_to_save"] = modules_to_save
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    if extra_weights:
        weights = load_file(str(dst / "adapter_model.safetensors")) | extra_weights
        save_file(weights, str(dst / "adapter_model.safetensors"))
    return dst


def test_adapters_are_refused_and_whole_modules_warned_about(random_qv_adapter, tmp_path, capsys):
    import torch

    cases = {"plain": {}, "config": {"modules_to_save": ["lm_head"]},
             "weights": {"extra_weights": {"base_model.model.model.embed_tokens.weight": torch.zeros(8, 64)}}}
    for name, kwargs in cases.items():
        adapter = adapter_copy(random_qv_adapter, tmp_path / name, **kwargs)
        with pytest.raises(ArgumentError, match="is a LoRA adapter: merge it first .*tunekit merge"):
            export(str(adapter), str(tmp_path / f"{name}-gguf"))
        err = capsys.readouterr().err
        if name == "plain":
            assert err == ""
        else:
            module = "lm_head" if name == "config" else "model.embed_tokens"
            assert err.count("\n") == 1 and err.startswith("warning: ") and module in err
            assert "vLLM refuses such an adapter as a LoRA; serve the merged folder" in err
        assert not (tmp_path / f"{name}-gguf").exists()


def test_missing_converter_and_non_chat_models_are_refused(merged, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_CONVERTER", str(tmp_path / "nowhere"))
    with pytest.raises(ArgumentError, match=r"converter is not at .*nowhere: run `make install-gguf`"):
        export(str(merged), str(tmp_path / "out"))
    with pytest.raises(ArgumentError, match="converter is not at .*convert_hf_to_gguf.py"):
        export(str(merged), str(tmp_path / "out"), converter=str(tmp_path))  # a folder without the script
    with pytest.raises(ArgumentError, match="family 'bert'.*only causal LMs are exported"):
        export(str(merged), str(tmp_path / "out"), family="bert")
    classifier = tmp_path / "cls"
    shutil.copytree(merged, classifier)
    cfg = json.loads((classifier / "config.json").read_text())
    (classifier / "config.json").write_text(json.dumps(cfg | {"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ArgumentError, match="cls is a seq_cls model: use `tunekit predict`"):
        export(str(classifier), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
