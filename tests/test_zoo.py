"""The tiny-checkpoint zoo (tunekit/tiny/zoo.py, issue 22): every entry builds offline, loads with AutoTokenizer and
AutoModelForCausalLM (no trust_remote_code), carries the real model's special tokens, added tokens, BOS behaviour,
config/generation EOS and chat template, renders a two-turn conversation in that template, and runs a forward pass.

Each template is copied verbatim from the model's published tokenizer_config.json; the entry's JSON names where:
    llama3.1-instruct      https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/tokenizer_config.json
    llama3.2-base          https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/tokenizer_config.json (no template)
    qwen2.5-instruct       https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/tokenizer_config.json
    qwen3                  https://huggingface.co/Qwen/Qwen3-8B/blob/main/tokenizer_config.json
    mistral-v0.3-instruct  https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.3/blob/main/tokenizer_config.json
    gemma2-it              https://huggingface.co/google/gemma-2-2b-it/blob/main/tokenizer_config.json
    gemma3-it              https://huggingface.co/google/gemma-3-1b-it/blob/main/tokenizer_config.json
    phi3.5-mini            https://huggingface.co/microsoft/Phi-3.5-mini-instruct/blob/main/tokenizer_config.json
    phi4-mini              https://huggingface.co/microsoft/Phi-4-mini-instruct/blob/main/tokenizer_config.json
    smollm2-instruct       https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/tokenizer_config.json
    llama2-chat            https://huggingface.co/meta-llama/Llama-2-7b-chat-hf/blob/main/tokenizer_config.json
"""
import re

import pytest

from tunekit.tiny import zoo

NAMES = zoo.names()
EXPECTED = ["gemma2-it", "gemma3-it", "llama2-chat", "llama3.1-instruct", "llama3.2-base", "mistral-v0.3-instruct",
            "phi3.5-mini", "phi4-mini", "qwen2.5-instruct", "qwen3", "smollm2-instruct"]


def conversation(system: bool):
    head = [{"role": "system", "content": "You answer in one line."}] if system else []
    return head + [{"role": "user", "content": "What is the capital of France?"},
                   {"role": "assistant", "content": "Paris."},
                   {"role": "user", "content": "And of Italy?"},
                   {"role": "assistant", "content": "Rome."}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(name):
        if name not in cache:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder = zoo.build(name, root / name)
            cache[name] = (folder, AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder))
        return cache[name]

    return get


def test_the_zoo_has_every_model_of_the_issue():
    assert NAMES == EXPECTED
    for name in NAMES:
        s = zoo.spec(name)
        assert s["source"].startswith("https://huggingface.co/") and s["source"].endswith(
            ("tokenizer_config.json", "chat_template.jinja")), name
        assert s["verbatim"] is True, name
        assert (s["chat_template"] is None) == (name == "llama3.2-base"), name
        assert set(s["special_tokens"]) == {"bos_token", "eos_token", "pad_token", "unk_token"}, name


@pytest.mark.parametrize("name", NAMES)
def test_zoo_checkpoint_is_the_real_models_tokenizer_config(name, built):
    s = zoo.spec(name)
    folder, tok, model = built(name)
    # bos/eos/pad/unk exactly as the real tokenizer_config.json sets them
    for key, value in s["special_tokens"].items():
        assert getattr(tok, key) == value, (name, key)
    # the added tokens, with the real special flag
    decoder = {t.content: t for t in tok.added_tokens_decoder.values()}
    for t in s["added_tokens"]:
        assert t["content"] in decoder, (name, t["content"])
        assert decoder[t["content"]].special == t["special"], (name, t["content"])
        assert decoder[t["content"]].rstrip == t.get("rstrip", False), (name, t["content"])
    # BOS added to a plain text, or not, as by the real tokenizer
    ids = tok("Paris is in France.")["input_ids"]
    assert (ids[0] == tok.bos_token_id) == s["add_bos_token"], name
    # config.json and generation_config.json stop where the real ones do
    ct = s["config_tokens"]
    eos = ct["eos"] if isinstance(ct["eos"], list) else [ct["eos"]]
    config_eos = model.config.eos_token_id
    config_eos = config_eos if isinstance(config_eos, list) else [config_eos]
    assert tok.convert_ids_to_tokens(config_eos) == eos, name
    assert model.config.bos_token_id == (tok.convert_tokens_to_ids(ct["bos"]) if ct["bos"] else None), name
    assert model.config.pad_token_id == (tok.convert_tokens_to_ids(ct["pad"]) if ct["pad"] else None), name
    gen_eos = model.generation_config.eos_token_id
    gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    assert tok.convert_ids_to_tokens(gen_eos) == s["generation_eos"], name
    assert model.config.model_type == s["model_type"], name
    # the template survives the save byte for byte
    assert tok.chat_template == s["chat_template"], name
    # the tiny model runs
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size) and torch.isfinite(logits).all(), name


@pytest.mark.parametrize("name", [n for n in NAMES if zoo.spec(n)["chat_template"] is not None])
def test_zoo_template_renders_a_two_turn_conversation(name, built):
    s = zoo.spec(name)
    folder, tok, model = built(name)
    messages = conversation(system=s["system_role"])
    text = tok.apply_chat_template(messages, tokenize=False)
    for marker in s["chat_markers"]:
        assert marker in text, (name, marker, text)
    for m in messages:  # (Mistral v0.3 drops the system text unless the conversation ends in a user turn)
        assert m["content"] in text or (name, m["role"]) == ("mistral-v0.3-instruct", "system"), (name, m["content"])
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    decoded = tok.decode(ids)
    if any(t.get("rstrip") for t in s["added_tokens"]):  # Phi-3.5: its chat tokens swallow the whitespace after them
        rstrip = "|".join(re.escape(t["content"]) for t in s["added_tokens"] if t.get("rstrip"))
        assert decoded == re.sub(f"({rstrip})\\s+", r"\1", text), name
    else:
        assert decoded == text, name
    if "add_generation_prompt" in s["chat_template"]:  # Llama-2's and Mistral's templates have no generation prompt
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        assert prompt != tok.apply_chat_template(messages[:-1], tokenize=False), name


def test_gemma2_refuses_a_system_turn_and_gemma3_folds_it(built):
    from jinja2.exceptions import TemplateError

    _, gemma2, _ = built("gemma2-it")
    with pytest.raises(TemplateError, match="System role not supported"):
        gemma2.apply_chat_template(conversation(system=True), tokenize=False)
    _, gemma3, _ = built("gemma3-it")
    text = gemma3.apply_chat_template(conversation(system=True), tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\nYou answer in one line.\n\nWhat is the capital of France?")


def test_qwen3_thinking_switch_and_mistral_system_in_last_user_turn(built):
    _, qwen3, _ = built("qwen3")
    messages = conversation(system=True)[:-1]
    thinking = qwen3.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    plain = qwen3.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert thinking.endswith("<|im_start|>assistant\n")
    assert plain == thinking + "<think>\n\n</think>\n\n"
    # Mistral v0.3 puts the system text into the last user turn, and only when the conversation ends in one
    _, mistral, _ = built("mistral-v0.3-instruct")
    text = mistral.apply_chat_template(conversation(system=True)[:-1], tokenize=False)
    assert text == ("<s>[INST] What is the capital of France?[/INST] Paris.</s>"
                    "[INST] You answer in one line.\n\nAnd of Italy?[/INST]")
    text = mistral.apply_chat_template(conversation(system=True), tokenize=False)
    assert text == "<s>[INST] What is the capital of France?[/INST] Paris.</s>[INST] And of Italy?[/INST] Rome.</s>"


def test_base_model_has_no_template(built):
    _, tok, _ = built("llama3.2-base")
    assert tok.chat_template is None
    with pytest.raises(ValueError):
        tok.apply_chat_template(conversation(system=False), tokenize=False)


def test_build_is_cached_by_the_entry(tmp_path):
    first = zoo.build("smollm2-instruct", tmp_path / "m")
    stamp = (first / zoo.STAMP).read_text()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert zoo.build("smollm2-instruct", tmp_path / "m") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime and stamp == zoo.cache_key("smollm2-instruct")
