"""Fine-tune a causal LM (or a classifier): full, LoRA or Q-LoRA, with the HF Trainer; the same as `tunekit train`.

    python finetune.py recipes/llama2/qlora.json [--flag value ...]
    torchrun --nproc_per_node 2 finetune.py recipes/llama2/qlora.json --deepspeed ds_configs/zero2.json
"""
from tunekit.cli import main_entry
from tunekit.train import main

if __name__ == "__main__":
    main_entry(main)
