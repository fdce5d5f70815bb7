"""Fine-tune a causal LM: full, LoRA or Q-LoRA, with HF Trainer or TRL SFTTrainer.

    python finetune.py recipes/llama2/qlora.json [--flag value ...]
    torchrun --nproc_per_node 2 finetune.py recipes/llama2/qlora.json --deepspeed ds_configs/zero2.json
"""
import sys
from pathlib import Path

from transformers import set_seed

from tunekit.arguments import ArgumentError, parse_args, to_jsonable
from tunekit.data import build_dataset
from tunekit.families import get_family
from tunekit.model import build_model, load_tokenizer
from tunekit.training import build_trainer, plot_loss, print_summary, summarize, write_json


def main(argv=None):
    """Runs one fine-tuning job; returns the trainer (its `tunekit_summary` holds the run summary)."""
    model_args, data_args, lora_args, train_args = parse_args(argv)  # checks everything it can before loading
    family = get_family(model_args.family)
    tokenizer = load_tokenizer(model_args, family)
    data = dict(tokenizer=tokenizer, family=family, max_length=train_args.model_max_length,
                lazy=data_args.lazy_preprocess)
    train_ds = build_dataset(data_args.data_path, max_samples=data_args.max_samples, **data)
    eval_ds = build_dataset(data_args.eval_data_path, **data) if data_args.eval_data_path else None
    set_seed(train_args.seed)  # before the model: LoRA's initial weights are drawn from it
    model, model_report = build_model(model_args, lora_args, train_args, tokenizer, family)

    trainer = build_trainer(model, tokenizer, train_ds, eval_ds, train_args, model_args.trainer)
    result = trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    if eval_ds is not None:
        trainer.evaluate()
    trainer.save_model()  # the adapter (or full weights) as safetensors, with the tokenizer beside it

    summary = summarize(trainer, model_report, vars(train_ds.stats), result)
    if trainer.is_world_process_zero():
        out = Path(train_args.output_dir)
        write_json(out / "finetune_args.json", {"family": family.name, **to_jsonable(
            model_args, data_args, lora_args, train_args)})
        write_json(out / "run_summary.json", summary)
        plot_loss(trainer.state.log_history, out / "loss_curve.png")
        print_summary(summary, str(out))
    trainer.tunekit_summary = summary
    return trainer


if __name__ == "__main__":
    try:
        main()
    except ArgumentError as e:
        sys.exit(f"error: {e}")
