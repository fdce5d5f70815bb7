"""Any chat model in its own chat template (tunekit/templates.py), over the zoo of tiny checkpoints that carry the real
models' tokenizer configurations and chat templates (tunekit/tiny/zoo/<name>.json names where each was copied from):
the training ids are the template's rendering, the labels exactly each answer and its end-of-turn token, a run trains
with the generic recipe and no family flag, keeps the model's own special tokens, and chats in the same template."""
import json
import shutil

import pytest

from tunekit.data import IGNORE_INDEX, tokenize_sample
from tunekit.families import FAMILIES
from tunekit.tiny import zoo

SINGLE = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
MULTI = SINGLE + [{"role": "user", "content": "And another?"}, {"role": "assistant", "content": "Red."}]
SYSTEM = [{"role": "system", "content": "Answer in one word."}] + MULTI
RECORDS = {"single": SINGLE, "multi": MULTI, "system": SYSTEM}

# Each model's answer as its template renders it for the model to write, end-of-turn token included (written by hand
# from the published templates, independently of the code under test).
ANSWER = {
    "llama2-chat": " {} </s>", "llama3.1-instruct": "{}<|eot_id|>", "qwen2.5-instruct": "{}<|im_end|>",
    "qwen3": "<think>\n\n</think>\n\n{}<|im_end|>", "mistral-v0.3-instruct": " {}</s>", "gemma2-it": "{}<end_of_turn>",
    "gemma3-it": "{}<end_of_turn>", "phi3.5-mini": "{}<|end|>", "phi4-mini": "{}<|end|>",
    "smollm2-instruct": "{}<|im_end|>",
}
# Where the full rendering does not hold each answer as inference prompts for it, one example per answer.
PER_ANSWER = {("qwen3", "multi"), ("qwen3", "system"), ("mistral-v0.3-instruct", "system")}
CHAT_MODELS = sorted(ANSWER)


@pytest.fixture(scope="module")
def models():
    return {name: str(zoo.build(name)) for name in zoo.names()}


def tokenizer_of(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def expected(tok, messages, name, record):
    """The texts the template gives: the full conversation, or per answer the inference prompt and the answer."""
    if (name, record) not in PER_ANSWER:
        conv = messages
        if name == "gemma2-it" and messages[0]["role"] == "system":  # Gemma's guidance: system text opens the user turn
            conv = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}] + messages[2:]
        return [tok.apply_chat_template(conv, tokenize=False)]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return [tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            + ANSWER[name].format(messages[i]["content"]) for i in turns]


@pytest.mark.parametrize("record", sorted(RECORDS))
@pytest.mark.parametrize("name", CHAT_MODELS)
def test_training_ids_are_the_templates_rendering_and_labels_each_answer(models, name, record):
    tok = tokenizer_of(models[name])
    messages = RECORDS[record]
    examples, truncated = tokenize_sample({"messages": messages, "where": "test"}, tok, FAMILIES["any"], 4096)
    texts = expected(tok, messages, name, record)
    assert len(examples) == len(texts) and not truncated
    answers = [ANSWER[name].format(m["content"]) for m in messages if m["role"] == "assistant"]
    for n, (ex, text) in enumerate(zip(examples, texts)):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert ex["input_ids"] == enc["input_ids"]
        runs, prev = [], False  # the labelled text, in contiguous runs
        for label, tid, (a, b) in zip(ex["labels"], ex["input_ids"], enc["offset_mapping"]):
            assert label in (tid, IGNORE_INDEX)
            if label != IGNORE_INDEX:
                runs[-1:] = [runs[-1] + text[a:b]] if prev else runs[-1:] + [text[a:b]]
            prev = label != IGNORE_INDEX
        want = answers if len(examples) == 1 else [answers[n]]
        # a space before an answer rides on its first token, a newline after <|end|> on that token (rstrip)
        assert [r.strip() for r in runs] == [w.strip() for w in want]


THINKING = [{"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "<think>\nAny colour will do.\n</think>\n\nBlue."},
            {"role": "user", "content": "And another?"},
            {"role": "assistant", "content": "<think>\nNot blue again.\n</think>\n\nRed."}]


def test_qwen3_thinking_answers_are_labelled_as_its_template_renders_them_at_inference(models):
    """Qwen3 with thinking content: each answer is trained with its <think> block, after the prompt inference gives
    for that turn, in which the earlier answers have lost theirs (the template drops reasoning before the last user
    turn); single-turn, the full rendering is that prompt and answer."""
    tok = tokenizer_of(models["qwen3"])
    for messages in (THINKING[:2], THINKING):
        examples, _ = tokenize_sample({"messages": messages, "where": "test"}, tok, FAMILIES["any"], 4096)
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        assert len(examples) == len(answers)
        for ex, i in zip(examples, answers):
            prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            answer = messages[i]["content"] + "<|im_end|>"
            full = tok.apply_chat_template(messages, tokenize=False)  # single-turn: the whole rendering
            assert tok.decode(ex["input_ids"]) == (full if len(answers) == 1 else prompt + answer)
            assert len(answers) > 1 or full.startswith(prompt + answer)  # single-turn: inference's prompt + answer
            labelled = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX]
            assert tok.decode(labelled) == answer
    prompt_turn_2 = tok.apply_chat_template(THINKING[:3], tokenize=False, add_generation_prompt=True)
    assert "Any colour will do." not in prompt_turn_2  # what makes the full rendering unusable for turn 2


def test_the_end_of_turn_and_pad_are_the_models_own(models):
    from tunekit.model import load_tokenizer

    class Args:
        trust_remote_code, template = False, None

    for name in CHAT_MODELS:
        spec = zoo.spec(name)
        Args.model_name_or_path = models[name]
        tok, added = load_tokenizer(Args, FAMILIES["any"])
        special = spec["special_tokens"]
        assert not added and tok.eos_token == special["eos_token"] and tok.bos_token == special["bos_token"], name
        ends = {ANSWER[name][-len(t):] for t in (tok.eos_token, *spec["generation_eos"]) if ANSWER[name].endswith(t)}
        assert tok.pad_token not in ends | {tok.eos_token}, name
        if special.get("pad_token") and special["pad_token"] != special["eos_token"]:
            assert tok.pad_token == special["pad_token"], name  # the model's own pad is kept
    Args.model_name_or_path = models["llama3.1-instruct"]
    assert load_tokenizer(Args, FAMILIES["any"])[0].pad_token == "<|finetune_right_pad_id|>"


TRAIN = ["recipes/chat/lora.json", "recipes/cpu.json", "--max_steps", "3", "--max_samples", "4", "--logging_steps",
         "1", "--save_strategy", "no", "--lora_r", "4", "--model_max_length", "256"]


@pytest.mark.parametrize("name", CHAT_MODELS)
def test_generic_recipe_trains_keeps_tokens_and_chats_in_the_template(models, name, tmp_path, capsys):
    """python finetune.py recipes/chat/lora.json --model_name_or_path MODEL: no family, no edit of the model."""
    from tunekit import runfolder
    from tunekit.train import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (SYSTEM, MULTI, SINGLE, SYSTEM)))
    out = tmp_path / "run"
    trainer = main(TRAIN + ["--model_name_or_path", models[name], "--data_path", str(data), "--output_dir", str(out)])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    own, saved = tokenizer_of(models[name]), tokenizer_of(out)
    assert saved.eos_token == own.eos_token and saved.bos_token == own.bos_token and saved.unk_token == own.unk_token
    assert saved.chat_template == own.chat_template
    # nothing added but a <pad>, where the vocabulary has no unused special token (Phi-4-mini)
    assert set(saved.added_tokens_encoder) - set(own.added_tokens_encoder) == ({"<pad>"} if name == "phi4-mini" else set())
    fmt = runfolder.read(out).fmt
    turns = SYSTEM[:4] if name != "gemma2-it" else MULTI[:3]
    assert fmt.render(turns, saved) == own.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def test_a_base_tokenizer_without_a_template_is_refused_naming_template(models, tmp_path, capsys):
    from tunekit.errors import run_cli
    from tunekit.train import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": MULTI}) + "\n")
    argv = TRAIN + ["--model_name_or_path", models["llama3.2-base"], "--data_path", str(data), "--output_dir",
                    str(tmp_path / "run")]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--template" in err[0] and "llama3" in err[0]
    assert not (tmp_path / "run").exists()
    # with --template llama3 it trains, in Llama-3's format, ending answers with <|eot_id|>
    trainer = main(argv + ["--template", "llama3"])
    assert trainer.state.global_step == 3
    fmt = json.loads((tmp_path / "run" / "chat_format.json").read_text())
    assert fmt["template"] == "llama3" and "<|eot_id|>" in fmt["stop"]


@pytest.mark.parametrize("recipe", ["qwen", "llama2"])
def test_family_recipes_on_a_foreign_model_keep_its_template_and_tokens(models, recipe, tmp_path):
    """The Qwen and Llama-2 recipes on Llama-3.1 and Mistral: trained in the model's own template, nothing added."""
    from tunekit.train import main

    for name in ("llama3.1-instruct", "mistral-v0.3-instruct"):
        out = tmp_path / name
        main([f"recipes/{recipe}/lora.json", "recipes/cpu.json", "--model_name_or_path", models[name], "--max_steps",
              "2", "--max_samples", "4", "--save_strategy", "no", "--lora_r", "4", "--model_max_length", "256",
              "--eval_strategy", "no", "--output_dir", str(out)])
        own, saved = tokenizer_of(models[name]), tokenizer_of(out)
        assert saved.eos_token == own.eos_token and len(saved) == len(own)  # their pad: <|finetune_right_pad_id|>, <unk>
        assert saved.chat_template == own.chat_template
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert not adapter.get("modules_to_save")  # no embedding matrices trained for new tokens
        shutil.rmtree(out)


# The named template (tunekit/chat_templates/) whose Ollama TEMPLATE each model's own template gets on export.
OLLAMA = {"llama2-chat": "llama2", "llama3.1-instruct": "llama3.1", "qwen2.5-instruct": "chatml", "qwen3": "chatml",
          "mistral-v0.3-instruct": "mistral", "gemma2-it": "gemma", "gemma3-it": "gemma", "phi3.5-mini": "phi3",
          "phi4-mini": "phi4", "smollm2-instruct": "chatml"}


@pytest.mark.parametrize("name", CHAT_MODELS)
def test_export_modelfile_renders_each_models_own_template(models, name):
    """The Modelfile's TEMPLATE (and SYSTEM default), rendered as Ollama renders it, is the training prompt less the
    BOS the runtime adds; it stops at the model's end-of-turn token."""
    from test_export import ollama_prompt

    from tunekit.data import adds_bos
    from tunekit.export import modelfile
    from tunekit.prompts import ChatFormat
    from tunekit.templates import identify, render

    tok = tokenizer_of(models[name])
    named, _ = identify(tok)
    assert named.name == OLLAMA[name]
    text = modelfile(tok, ChatFormat(stop=(ANSWER[name][-len(named.end_of_turn):],)), "test")
    for messages in (MULTI[:3], SYSTEM[:4]):
        want = render(tok, messages, True)
        want = want[len(tok.bos_token):] if adds_bos(tok) else want  # llama.cpp adds BOS where the tokenizer does
        assert ollama_prompt(text, messages) == want
    assert f'PARAMETER stop "{named.end_of_turn}"' in text.splitlines()
