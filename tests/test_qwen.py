"""Qwen: ChatML label masks against hand-written golden strings, and LoRA on a base model whose tokenizer lacks
the template's special tokens (added, embeddings resized and trained, carried by the adapter, reproduced by merge)."""
import json
import torch

from conftest import DATA, cpu_flags
from test_data import golden, load_records_from

SYSTEM = "<|im_start|> system"


def test_system_turn_and_two_rounds():
    sample = load_records_from({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi"},
        {"from": "assistant", "value": "Hello"}, {"from": "user", "value": "Bye"},
        {"from": "assistant", "value": "See you"}]})
    golden("qwen", sample, [
        (f"{SYSTEM} Be brief . <|im_end|> <|im_start|> user Hi <|im_end|> <|im_start|> assistant", False),
        ("Hello <|im_end|>", True),
        ("<|im_start|> user Bye <|im_end|> <|im_start|> assistant", False),
        ("See you <|im_end|>", True),
    ])


def test_truncation_inside_the_second_answer():
    sample = load_records_from({"conversations": [
        {"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"},
        {"from": "user", "value": "Count"}, {"from": "assistant", "value": "one two three four"}]})
    head = f"{SYSTEM} You are a helpful assistant . <|im_end|> <|im_start|> user Hi <|im_end|> <|im_start|> assistant"
    ex, truncated = golden("qwen", sample, [
        (head, False), ("Hello <|im_end|>", True),
        ("<|im_start|> user Count <|im_end|> <|im_start|> assistant", False), ("one two", True),
    ], max_length=len(head.split()) + 2 + 6 + 2)
    assert truncated


def test_base_model_lora_adds_tokens_and_merge_reproduces_them(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import main
    from tunekit.merge import merge
    from tunekit.runfolder import load_adapter
    from tunekit.tiny import build

    base = str(build("qwen", tmp_path / "qwen-base", base=True))
    assert "<|im_start|>" not in AutoTokenizer.from_pretrained(base).get_vocab()
    out = tmp_path / "out"
    # a base tokenizer has no chat template: --template qwen names ChatML, whose tokens it lacks (added, trained)
    trainer = main(["--model_name_or_path", base, "--data_path", str(DATA / "qwen_conversations.json"),
                    "--use_lora", "--max_samples", "16", "--template", "qwen", *cpu_flags(out, max_steps=3)])
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == AutoTokenizer.from_pretrained(base).eos_token  # EOS unchanged; answers end at <|im_end|>
    assert "<|im_end|>" in json.loads((out / "chat_format.json").read_text())["stop"]
    n_vocab = len(tok)
    from safetensors.torch import load_file

    saved = load_file(out / "adapter_model.safetensors")
    emb = [k for k in saved if "embed_tokens" in k]
    head = [k for k in saved if "lm_head" in k]
    assert emb and head and saved[emb[0]].shape[0] == n_vocab and saved[head[0]].shape[0] == n_vocab
    # the trained rows of the new tokens moved away from their initial values
    new_id = tok.convert_tokens_to_ids("<|im_end|>")
    fresh = AutoModelForCausalLM.from_pretrained(base)
    fresh.resize_token_embeddings(n_vocab)
    assert not torch.equal(saved[head[0]][new_id], fresh.lm_head.weight[new_id])

    probe = torch.tensor([[new_id - 1, new_id, 5, 6, 7]])
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(n_vocab)
    with torch.no_grad():
        want = load_adapter(model, str(out)).eval()(input_ids=probe).logits
    merge(str(out), str(tmp_path / "merged"), dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        got = merged(input_ids=probe).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "merged")) == n_vocab
