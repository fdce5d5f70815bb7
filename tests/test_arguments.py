"""JSON + CLI precedence, aliases, and errors that stop before any model is loaded."""
import json

import pytest

from conftest import ROOT, resolve, write_json
from tunekit.errors import ArgumentError


@pytest.fixture
def base(tiny_llama2, tmp_path):
    recipe = write_json(tmp_path / "r.json", {"learning_rate": 1e-4, "num_train_epochs": 3, "use_lora": True,
                                              "lora_r": 8, "output_dir": str(tmp_path / "o")})
    return recipe, ["--model_name_or_path", tiny_llama2, "--data_path", str(ROOT / "data/llama2_guanaco.jsonl")]


def test_json_sets_values_and_cli_overrides(base):
    recipe, req = base
    m, d, lora, t = resolve([recipe, *req, "--learning_rate", "3e-5"])
    assert t.learning_rate == 3e-5  # CLI wins
    assert t.num_train_epochs == 3 and lora.lora_r == 8 and lora.use_lora is True  # from the JSON
    assert m.family == "llama2"  # from config.json model_type "llama"


def test_later_json_files_override_earlier(base, tmp_path):
    recipe, req = base
    second = write_json(tmp_path / "s.json", {"lora_r": 4})
    assert resolve([recipe, second, *req])[2].lora_r == 4


def test_bool_flags_without_value_and_no_prefix(base):
    recipe, req = base
    _, _, lora, _ = resolve([recipe, *req, "--use_lora", "--no_bnb_4bit_use_double_quant"])
    assert lora.use_lora is True and lora.bnb_4bit_use_double_quant is False


def test_old_flag_names_are_aliases_with_a_warning(base, caplog):
    recipe, req = base
    _, _, _, t = resolve([recipe, *req, "--evaluation_strategy", "no", "--warmup_ratio", "0.01"])
    assert t.eval_strategy == "no" and t.warmup_steps == 0.01
    assert "'evaluation_strategy' is an old name, use 'eval_strategy'" in caplog.text
    assert caplog.text.count("old name") == 2


def test_unknown_json_key_names_file_and_key(base, tmp_path):
    recipe, req = base
    bad = write_json(tmp_path / "bad.json", {"learnig_rate": 1e-4})
    with pytest.raises(ArgumentError, match=r"bad.json: unknown key 'learnig_rate' \(did you mean 'learning_rate'"):
        resolve([bad, *req])


def test_unknown_cli_flag(base):
    recipe, req = base
    with pytest.raises(ArgumentError, match="--lora_rank"):
        resolve([recipe, *req, "--lora_rank", "8"])


@pytest.mark.parametrize("where", ["command line", "json"])
def test_the_removed_trainer_choice_is_an_unknown_key(base, tmp_path, where):
    """--trainer hf|trl is gone (the HF Trainer is the only one): an old recipe or flag is refused, not ignored."""
    recipe, req = base
    extra = ["--trainer", "hf"] if where == "command line" else [write_json(tmp_path / "t.json", {"trainer": "hf"})]
    with pytest.raises(ArgumentError, match="unknown (argument --|key ')trainer"):
        resolve([recipe, *extra, *req] if where == "json" else [recipe, *req, *extra])


@pytest.mark.parametrize("key,value,expect", [
    ("learning_rate", "fast", "must be"),
    ("num_train_epochs", True, "must be"),
    ("lora_r", 8.5, "must be"),
    ("use_lora", "yes", "must be"),
    ("bnb_4bit_quant_type", "nf3", "must be one of 'nf4', 'fp4'"),
])
def test_wrong_json_type_names_key(base, tmp_path, key, value, expect):
    recipe, req = base
    bad = write_json(tmp_path / "bad.json", {key: value})
    with pytest.raises(ArgumentError, match=f"key '{key}' {expect}"):
        resolve([bad, *req])


def test_invalid_json_file(base, tmp_path):
    _, req = base
    bad = tmp_path / "broken.json"
    bad.write_text('{"lora_r": 8,}')
    with pytest.raises(ArgumentError, match="broken.json: not valid JSON"):
        resolve([str(bad), *req])


def test_qlora_with_full_finetuning_is_refused(base):
    recipe, req = base
    with pytest.raises(ArgumentError, match="--q_lora .* add --use_lora"):
        resolve([recipe, *req, "--use_lora", "false", "--q_lora"])


def test_deepspeed_without_distributed_launch_is_refused(base, monkeypatch):
    recipe, req = base
    for var in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ArgumentError, match="torchrun"):
        resolve([recipe, *req, "--deepspeed", str(ROOT / "ds_configs/zero2.json")])


def test_zero3_with_qlora_is_refused(base, monkeypatch):
    recipe, req = base
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ArgumentError, match="ZeRO-3"):
        resolve([recipe, *req, "--q_lora", "--deepspeed", str(ROOT / "ds_configs/zero3.json")])


def test_missing_data_file_is_named(base):
    recipe, req = base
    with pytest.raises(ArgumentError, match="--data_path: file not found: nowhere.jsonl"):
        resolve([recipe, *req, "--data_path", "nowhere.jsonl"])


def test_family_unknown_and_unknown_model_type(base, tmp_path):
    recipe, req = base
    with pytest.raises(ArgumentError, match="--family 'gpt5' is unknown"):
        resolve([recipe, *req, "--family", "gpt5"])
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    # a model no family knows needs none (LoRA on all its linear layers, its own chat template)
    from tunekit.families import resolve_family

    assert resolve_family(str(odd), None).name == "any" and resolve_family(str(odd), None).lora_targets == ("all-linear",)


def test_family_comes_from_config_not_path(tiny_qwen, tmp_path):
    # A Qwen2 checkpoint in a folder whose name says "llama": the family follows config.json.
    import shutil

    fake = tmp_path / "Llama-2-7b-hf"
    shutil.copytree(tiny_qwen, fake)
    m, *_ = resolve(["--model_name_or_path", str(fake), "--data_path", str(ROOT / "data/messages.jsonl"),
                        "--output_dir", str(tmp_path / "o")])
    assert m.family == "qwen"


def test_no_eval_file_turns_eval_off(base):
    recipe, req = base
    _, _, _, t = resolve([recipe, *req, "--eval_strategy", "steps"])
    assert t.eval_strategy == "no"


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*/*.json")))
def test_every_recipe_parses(recipe, tiny_llama2, tiny_qwen, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    # the GPU recipes' speed switches (varlen attention, Liger) are refused without CUDA: parse as on a GPU box
    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 1)
    monkeypatch.setattr("tunekit.preflight.check_varlen", lambda packing: None)
    family = json.loads((ROOT / recipe).read_text()).get("family")
    model = tiny_qwen if family == "qwen" else tiny_llama2
    m, d, lora, t = resolve([recipe, "--model_name_or_path", model, "--output_dir", str(tmp_path / "o"), "--use_cpu"])
    assert m.family == (family or "llama2")  # a recipe without a family (recipes/chat/) takes the model's
    assert t.model_max_length > 0 and d.data_path


def test_packing_in_one_process_over_several_gpus_is_refused(tiny_llama2, guanaco_small, tmp_path, monkeypatch):
    """Without torchrun the Trainer wraps the model in DataParallel, which would split a packed row: refused with the
    fix; under torchrun (one process per GPU) or with one GPU visible the same flags parse."""
    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 2)
    for key in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    argv = ["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--output_dir", str(tmp_path / "o"),
            "--use_lora", "--packing", "--bf16", "false"]
    with pytest.raises(ArgumentError, match="2 GPUs visible to one process.*CUDA_VISIBLE_DEVICES=0"):
        resolve(argv)
    resolve([*argv, "--use_cpu"])
    monkeypatch.setattr("tunekit.preflight._cuda_count", lambda: 1)
    resolve(argv)


def test_help_shows_the_projects_options_first():
    """--help: usage, examples and the project's groups (model, data, LoRA and quantization, speed, run) come before
    the Trainer's several hundred lines; the project's own flags begin within the first 60 lines."""
    import dataclasses

    from tunekit.arguments import DataArguments, LoraArguments, ModelArguments, TrainingArguments, make_parser
    import transformers

    lines = make_parser().format_help().splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("--model_name_or_path"))
    trainer = next(i for i, line in enumerate(lines) if line.startswith("transformers TrainingArguments"))
    assert first < 60 and "python finetune.py recipes/llama2/qlora.json" in "\n".join(lines[:first])
    ours = [f.name for cls in (ModelArguments, DataArguments, LoraArguments) for f in dataclasses.fields(cls)]
    ours += sorted({f.name for f in dataclasses.fields(TrainingArguments)}
                   - {f.name for f in dataclasses.fields(transformers.TrainingArguments)})
    position = {name: next((i for i, line in enumerate(lines) if line.lstrip().startswith(f"--{name} ")
                            or line.lstrip() == f"--{name}"), None) for name in ours}
    assert all(i is not None and i < trainer for i in position.values()), position
    assert len(lines) > trainer + 200  # the Trainer's flags are still all there, after ours
