"""Fine-tune a causal LM: full, LoRA or Q-LoRA, with HF Trainer or TRL SFTTrainer.

    python finetune.py recipes/llama2/qlora.json [--flag value ...]
    torchrun --nproc_per_node 2 finetune.py recipes/llama2/qlora.json --deepspeed ds_configs/zero2.json
"""
import sys
from pathlib import Path

from transformers import set_seed

from tunekit.arguments import ArgumentError, parse_args, to_jsonable
from tunekit.checkpoints import clear_for_overwrite, fingerprint, plan_run
from tunekit.data import build_dataset
from tunekit.families import get_family
from tunekit.model import build_model, load_tokenizer
from tunekit.safety import check_quantization_backend, check_versions
from tunekit.training import build_trainer, plot_loss, print_summary, summarize, write_json


def main(argv=None):
    """Runs one fine-tuning job; returns the trainer (its `tunekit_summary` holds the run summary)."""
    model_args, data_args, lora_args, train_args = parse_args(argv)  # checks everything it can before loading
    family = get_family(model_args.family)
    run_args = {"family": family.name, **to_jsonable(model_args, data_args, lora_args, train_args)}
    run_fingerprint = fingerprint(run_args)
    resume = plan_run(train_args, run_fingerprint)  # a finished run is never overwritten unless asked
    check_versions()
    check_quantization_backend(model_args.model_name_or_path, lora_args.q_lora)
    tokenizer = load_tokenizer(model_args, family)
    data = dict(tokenizer=tokenizer, family=family, max_length=train_args.model_max_length,
                lazy=data_args.lazy_preprocess, max_source_length=data_args.max_source_length,
                max_target_length=data_args.max_target_length)
    train_ds = build_dataset(data_args.data_path, max_samples=data_args.max_samples, **data)
    eval_ds = build_dataset(data_args.eval_data_path, **data) if data_args.eval_data_path else None
    set_seed(train_args.seed)  # before the model: LoRA's initial weights are drawn from it
    model, model_report = build_model(model_args, lora_args, train_args, tokenizer, family)

    if train_args.overwrite_output_dir and train_args.should_save:
        clear_for_overwrite(train_args.output_dir)  # every check passed: now the old run's files may go
    trainer = build_trainer(model, tokenizer, train_ds, eval_ds, train_args, model_args.trainer)
    trainer.tunekit_fingerprint = run_fingerprint  # recorded in every checkpoint's completion marker
    result = trainer.train(resume_from_checkpoint=resume)
    if eval_ds is not None:
        trainer.evaluate()
    trainer.save_model()  # the adapter (or full weights) as safetensors, with the tokenizer beside it

    summary = summarize(trainer, model_report, vars(train_ds.stats), result)
    if trainer.is_world_process_zero():
        out = Path(train_args.output_dir)
        write_json(out / "finetune_args.json", run_args)
        plot_loss(trainer.state.log_history, out / "loss_curve.png")
        write_json(out / "run_summary.json", summary)  # last: its presence means the run finished
        print_summary(summary, str(out))
    trainer.tunekit_summary = summary
    return trainer


def shutdown_distributed():
    """Under torchrun, leave the process group together before exit: a rank that exits while the other still
    runs its communication threads aborts with 'terminate called without an active exception'."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cli(argv=None) -> int:
    """The command line: a bad argument, file or record ends with one `error: ...` line and exit status 2, no
    traceback; nothing has been written by then."""
    try:
        main(argv)
    except ArgumentError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    code = cli()
    shutdown_distributed()
    sys.exit(code)
