"""tunekit train (and finetune.py): argv -> arguments -> pre-flight -> tokenizer -> data -> model -> trainer -> train
-> save -> report.  ARCHITECTURE.md says which module does what."""
from __future__ import annotations


def main(argv=None):
    """Runs one fine-tuning job; returns the trainer (the run's summary is in output_dir/run_summary.json)."""
    from transformers import set_seed

    from . import report, training
    from .arguments import parse_args
    from .checkpoints import clear_for_overwrite
    from .model import build_model, load_tokenizer
    from .preflight import preflight

    run = preflight(parse_args(argv))  # bad input stops here, before anything is loaded or written
    m, d, lora = run.model_args, run.data_args, run.lora_args
    t = run.task.trainer_args(run.train_args)  # the task's trainer's own config (TRL's DPOConfig ...)
    tokenizer, added_tokens = load_tokenizer(m, run.family)
    train_ds, eval_ds, labels = run.task.build_datasets(d, tokenizer, run.family, t.model_max_length)
    set_seed(t.seed)  # before the model: LoRA's initial weights (and a classifier's head) are drawn from it
    model, model_report = build_model(m, lora, t, tokenizer, run.family, run.task, added_tokens, labels)

    if t.overwrite_output_dir and t.should_save:
        clear_for_overwrite(t.output_dir)  # every check passed: now the old run's files may go
    varlen = getattr(model.config, "_attn_implementation", None) == "varlen"
    collator = run.task.collator(tokenizer, t, varlen)
    trainer = training.build_trainer(model, tokenizer, train_ds, eval_ds, t, collator, run.fingerprint,
                                     head=run.task.head(run.family) if lora.use_lora else None,
                                     compute_metrics=run.task.metrics(labels), base=run.task.trainer_class())
    result = trainer.train(resume_from_checkpoint=run.resume_from)
    if eval_ds is not None:
        trainer.evaluate()
    trainer.save_model()  # the adapter (or full weights) as safetensors, with the tokenizer beside it
    if trainer.is_world_process_zero():
        run.task.save(train_ds, run.family, t.output_dir)
    evaluation = None
    if t.eval_generation:  # the eval file's prompts answered and scored (ROUGE/BLEU) by the model in memory
        from .evaluate import after_training

        evaluation = after_training(trainer, tokenizer, run, train_ds)
    report.finish(trainer, run, model_report, vars(train_ds.stats), result, evaluation)
    return trainer
