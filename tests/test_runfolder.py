"""One reader of a run folder, one loader for every command: a run is chatted with, evaluated and predicted on the
base it was trained on (FP4 stays FP4, with the run's own settings; NF4 stays NF4, a classifier's head whole), and
unquantized only on request."""
import json

import pytest

import finetune
from conftest import cpu_flags
from test_classify import sentiment
from tunekit import runfolder
from tunekit.errors import run_cli

CHAT = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}


def quant_types(model) -> set:
    """The bitsandbytes quant type of every 4-bit layer of a model ('nf4', 'fp4'), or an empty set."""
    return {m.weight.quant_state.quant_type for m in model.modules() if type(m).__name__ == "Linear4bit"}


@pytest.fixture
def loads(monkeypatch):
    """Every model runfolder.load builds while a command runs: (task, quant types, head module types)."""
    seen, real = [], runfolder.load

    def spy(run, *args, **kwargs):
        model, tokenizer = real(run, *args, **kwargs)
        heads = {type(m).__name__ for n, m in model.named_modules() if n.endswith("modules_to_save.default")}
        seen.append((run.task.name, quant_types(model), heads))
        return model, tokenizer
    monkeypatch.setattr(runfolder, "load", spy)
    return seen


def train(tiny, tmp_path, name, *extra):
    out = tmp_path / name
    finetune.main(["--model_name_or_path", tiny, "--use_lora", "--q_lora", "--lora_r", "4", *extra,
                   *cpu_flags(out, max_steps=3)])
    return out


def test_an_fp4_run_is_chatted_with_and_evaluated_on_its_fp4_base(tiny_llama2, tmp_path, loads, capsys, monkeypatch):
    import io

    from tunekit import chat, evaluate

    data = tmp_path / "chat.jsonl"
    data.write_text((json.dumps(CHAT) + "\n") * 8)
    out = train(tiny_llama2, tmp_path, "fp4", "--data_path", str(data), "--bnb_4bit_quant_type", "fp4",
                "--bnb_4bit_use_double_quant", "false")
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\n/exit\n"))
    assert run_cli(chat.main, [str(out), "--max_new_tokens", "3"]) == 0
    assert run_cli(evaluate.main, [str(out), "--data", str(data)]) == 0
    assert run_cli(evaluate.main, [str(out), "--data", str(data), "--base_in_4bit", "no",
                                   "--out", str(tmp_path / "unquantized")]) == 0
    assert loads == [("causal_lm", {"fp4"}, set()), ("causal_lm", {"fp4"}, set()), ("causal_lm", set(), set())]
    # the run's other settings came along: no double quantization, as it trained
    model, _ = runfolder.load(runfolder.read(out))
    assert all(m.weight.quant_state.nested is False for m in model.modules() if type(m).__name__ == "Linear4bit")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_a_4bit_classifier_predicts_through_the_same_loader_as_chat(quant_type, tiny_llama2, tmp_path, loads):
    from tunekit import predict

    out = train(tiny_llama2, tmp_path, quant_type, "--data_path", sentiment(tmp_path), "--task", "seq_cls",
                "--bnb_4bit_quant_type", quant_type)
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "the food was really good"}\n{"text": "the service was awful"}\n')
    assert run_cli(predict.main, [str(out), str(texts), str(tmp_path / "p.jsonl")]) == 0
    assert loads == [("seq_cls", {quant_type}, {"Linear"})]  # quantized as trained, the head a whole nn.Linear
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["the food was really good", "the service was awful"]
    assert all(r["prediction"] in ("negative", "positive") for r in rows)


def test_what_a_run_folder_knows(tiny_llama2, random_qv_adapter, tmp_path):
    run = runfolder.read(random_qv_adapter)
    assert run.task.name == "causal_lm" and run.base == tiny_llama2 and run.args == {}
    assert run.family().name == "llama2" and run.fmt.kind == "chat_template" and not run.trained_in_4bit()
    (tmp_path / "adapter_config.json").write_text("{broken")
    with pytest.raises(Exception, match=r"adapter_config\.json: not valid JSON"):
        runfolder.read(tmp_path)
