"""Fine-tune a causal LM (or a classifier): full, LoRA or Q-LoRA, with HF Trainer or TRL SFTTrainer.

    python finetune.py recipes/llama2/qlora.json [--flag value ...]
    torchrun --nproc_per_node 2 finetune.py recipes/llama2/qlora.json --deepspeed ds_configs/zero2.json

argv -> arguments (parse) -> pre-flight (every check that needs no model) -> tokenizer -> data -> model -> trainer ->
train -> save -> report.  ARCHITECTURE.md says which module does what.
"""
from tunekit.cli import main_entry
from tunekit.arguments import parse_args
from tunekit.preflight import preflight


def main(argv=None):
    """Runs one fine-tuning job; returns the trainer (the run's summary is in output_dir/run_summary.json)."""
    from transformers import set_seed

    from tunekit import report, training
    from tunekit.checkpoints import clear_for_overwrite
    from tunekit.model import build_model, load_tokenizer

    run = preflight(parse_args(argv))  # bad input stops here, before anything is loaded or written
    m, d, lora, t = run.model_args, run.data_args, run.lora_args, run.train_args
    tokenizer, added_tokens = load_tokenizer(m, run.family)
    train_ds, eval_ds, labels = run.task.build_datasets(d, tokenizer, run.family, t.model_max_length)
    set_seed(t.seed)  # before the model: LoRA's initial weights (and a classifier's head) are drawn from it
    model, model_report = build_model(m, lora, t, tokenizer, run.family, run.task, added_tokens, labels)

    if t.overwrite_output_dir and t.should_save:
        clear_for_overwrite(t.output_dir)  # every check passed: now the old run's files may go
    varlen = getattr(model.config, "_attn_implementation", None) == "varlen"
    collator = run.task.collator(tokenizer, t, varlen)
    head = run.family.classifier_head if run.task.classifier and lora.use_lora else None
    metrics = run.task.metrics(labels) if run.task.metrics else None
    trainer = training.build_trainer(model, tokenizer, train_ds, eval_ds, t, collator, m.trainer, run.fingerprint,
                                     head, metrics)
    result = trainer.train(resume_from_checkpoint=run.resume_from)
    if eval_ds is not None:
        trainer.evaluate()
    trainer.save_model()  # the adapter (or full weights) as safetensors, with the tokenizer beside it
    evaluation = None
    if t.eval_generation:  # the eval file's prompts answered and scored (ROUGE/BLEU) by the model in memory
        from tunekit.evaluate import after_training

        evaluation = after_training(trainer, tokenizer, run)
    report.finish(trainer, run, model_report, vars(train_ds.stats), result, evaluation)
    return trainer


if __name__ == "__main__":
    main_entry(main)
