"""Generate from a (merged) model with its own chat template: the same rendering the training used.

    python -m tunekit.generate out/llama2-qlora-merged "Give me three tips for better sleep."
"""
from __future__ import annotations

import argparse
import copy

import torch


@torch.no_grad()
def generate(model_dir: str, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = copy.copy(AutoTokenizer.from_pretrained(model_dir))
    tokenizer.padding_side = "left"  # batched generation pads on the left; training pads on the right
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map={"": "cuda" if cuda else "cpu"}).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(o[batch["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--max_new_tokens", type=int, default=48)
    a = p.parse_args(argv)
    for prompt, answer in zip(a.prompts, generate(a.model_dir, a.prompts, a.max_new_tokens)):
        print(f">>> {prompt}\n{answer}\n")


if __name__ == "__main__":
    main()
