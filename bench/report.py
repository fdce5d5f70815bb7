"""Regenerate BENCHMARKS.md at the repository root from the result files kept in bench/results/*.json (and the
real-model runs of bench/real_model.py in bench/results-real/, first, then the DPO runs of bench/dpo.py in
bench/results-dpo/).

    python bench/report.py            # also run at the end of every bench/run.py

Each result file is what `bench/run.py --out DIR` writes (DIR/<suite>-<shape>.json); keep the ones worth showing
by copying them into bench/results/ under a telling name (e.g. h100-baseline-check.json), or pass `--save NAME`
to bench/run.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import shapes  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
REAL_DIR = ROOT / "bench" / "results-real"
DPO_DIR = ROOT / "bench" / "results-dpo"  # bench/dpo.py (issue 24, bar 5)
BENCHMARKS = ROOT / "BENCHMARKS.md"

HEADER = (ROOT / "bench" / "benchmarks_header.md").read_text(encoding="utf-8")  # the method, above every section


def fmt_number(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value):
    return "–" if value is None else f"{value:.2f}×"


# Dense bf16 peak of an H100/H200 SXM (NVIDIA's datasheet figure, without sparsity); the shared notes measured ~790.
PEAK_TFLOPS = 989.4


def matmul_params(shape: str) -> float | None:
    """Weights that multiply every token: the decoder's linear layers and the LM head (embeddings are a lookup)."""
    cfg = shapes.SHAPES.get(shape)
    if not cfg:  # ChatGLM2: no MFU
        return None
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i) + h * cfg["vocab_size"]


def mfu(tokens_per_s, shape: str) -> str:
    """Model FLOPs utilisation of LoRA training: 4 FLOPs per weight per token (forward 2, input gradient 2; frozen
    weights get no weight gradient; gradient-checkpointing recomputation and attention are not counted)."""
    n = matmul_params(shape)
    return f"{100 * tokens_per_s * 4 * n / (PEAK_TFLOPS * 1e12):.1f}%" if tokens_per_s and n else "–"


def section(name: str, result: dict) -> str:
    env = result.get("environment", {})
    lines = [f"## {name}: {env.get('device', '?')}, {result.get('shape', '?')} shape",
             "",
             f"- date: {result.get('finished_at', '?')}; suite `{result.get('suite')}`; "
             f"runner commit `{result.get('git_commit') or '–'}`",
             f"- command: `{result.get('command', '?')}`"
             + (f" (on the device: `bash bench/{'gpu_qwen.sh' if result.get('suite') == 'qwen' else 'gpu_llama2.sh'} "
                f"{result['device_flags']}`)" if result.get("device_flags") else ""),
             "- software: " + ", ".join(f"{pkg} {env.get(pkg) or '–'}" for pkg in
                                        ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl")
                                        + (("deepspeed", "optimum", "gptqmodel") if result.get("suite") == "qwen"
                                           else ()))
             + f"; Python {env.get('python', '?')}, CUDA {env.get('cuda') or '–'}",
             f"- runner wall time: {fmt_number(result.get('runner_seconds'))} s",
             "",
             "| run | implementation | real tokens/s | peak GiB | tokens/s vs ours | peak vs ours | MFU "
             "| timed real tokens | trainable params |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for row in result.get("runs", []):
        if row.get("status") != "ok":
            notes.append(f"- `{row.get('name')}` ({row.get('implementation')}): **{row.get('status')}**"
                         + (f": {row['error']}" if row.get("error") else ""))
            continue
        trial = f" #{row['trial']}" if row.get("trial") and result.get("repeat", 1) > 1 else ""
        lines.append(
            f"| {row['name']}{trial} | {row['implementation']} | {fmt_number(row.get('tokens_per_s'))} "
            f"| {fmt_number(row.get('peak_gib'), 2)} | {fmt_ratio(row.get('tokens_per_s_vs_ours'))} "
            f"| {fmt_ratio(row.get('peak_vs_ours'))} | {mfu(row.get('tokens_per_s'), result.get('shape'))} "
            f"| {fmt_number(row.get('real_tokens'))} "
            f"| {fmt_number(row.get('trainable_params'))} |")
        if row.get("note"):
            notes.append(f"- `{row['name']}` ({row['implementation']}): {row['note']}"
                         + ("" if row.get("same_lengths_as_workload") is not False else
                            "; **its tokenized lengths differ from the workload's**"))
    peered = [r for r in result.get("runs", []) if r.get("tokens_per_s_vs_peer")]
    if peered:
        lines += ["", "Against the peer of the same run (its own training path, same checkpoint and lengths):", "",
                  "| run | peer | tokens/s | peer tokens/s | tokens/s vs peer | peak GiB | peer peak GiB | peak vs peer |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        peers = {r["name"]: r for r in result["runs"]}
        for row in peered:
            peer = peers[row["compared_with_peer"]]
            lines.append(f"| {row['name']} | {peer['name']} | {fmt_number(row['tokens_per_s'])} "
                         f"| {fmt_number(peer['tokens_per_s'])} | **{fmt_ratio(row['tokens_per_s_vs_peer'])}** "
                         f"| {fmt_number(row['peak_gib'], 2)} | {fmt_number(peer['peak_gib'], 2)} "
                         f"| **{fmt_ratio(row['peak_vs_peer'])}** |")
    repro = result.get("reproduction")
    if repro:
        trials = repro.get("trials", 1)
        each = (f", mean of {trials} runs each in ABBA order: ours {repro['ours_tokens_per_s_each']}, reference "
                f"{repro['reference_tokens_per_s_each']}") if trials > 1 else ""
        lines += ["", f"**Reproduction** (`{repro['name']}`{each}): ours {fmt_number(repro['ours_tokens_per_s'])} vs "
                      f"reference {fmt_number(repro['reference_tokens_per_s'])} real tokens/s = "
                      f"**{repro['tokens_per_s_ratio']:.3f}×**; peak {fmt_number(repro['ours_peak_gib'], 2)} vs "
                      f"{fmt_number(repro['reference_peak_gib'], 2)} GiB; same timed real tokens: "
                      f"{repro['same_real_tokens']}."]
    for row in result.get("lengths", []):  # the longctx suite: one sequence per length
        lines.append(f"| longctx {fmt_number(row['length'])} tokens | recipe | {fmt_number(row.get('tokens_per_s'))} "
                     f"| {fmt_number(row.get('peak_gib'), 2)} | – | – | {mfu(row.get('tokens_per_s'), result.get('shape'))} "
                     f"| {fmt_number(row.get('real_tokens'))} | – |")
        notes.append(f"- longctx {row['length']:,} tokens: {row.get('status')}"
                     + (f"; losses {row['losses']}" if row.get("losses") else ""))
    if "longest_ok" in result:
        notes.append(f"- longest sequence that trained two steps with finite loss: {fmt_number(result['longest_ok'])}")
    notes += qwen_notes(result)
    merge = result.get("merge")
    if merge:
        notes.append(f"- merge (`{merge.get('command')}`): {merge.get('status')}"
                     + (f" in {merge['seconds']:.0f} s" if merge.get("seconds") is not None else "")
                     + (f"; adapter from {merge['adapter_from']}" if merge.get("adapter_from") else "")
                     + (f"; probe logits max |diff| {merge['probe_max_abs_diff']:.2e} = "
                        f"{merge['probe_relative_diff']:.2e} of the largest logit"
                        if merge.get("probe_relative_diff") is not None else "")
                     + (f"; written back in the original layout: {json.dumps(merge['reverse_config'])}"
                        if merge.get("reverse_config") else ""))
    refusal = result.get("merge_refusal")
    if refusal:
        notes.append(f"- merge with only the GPTQ checkpoint as base: {refusal.get('status')}"
                     + "".join(f"; {c['base']}: {c['status']} (rc {c.get('rc')}: {c.get('message', '')[:160]})"
                               for c in refusal.get("checks", [])))
    notes += [f"- skipped: {skipped}" for skipped in result.get("skipped", [])]
    notes += [f"- {result['comment']}"] if result.get("comment") else []
    return "\n".join(lines + (["", "Notes:", *notes] if notes else [])) + "\n"


def qwen_notes(result: dict) -> list[str]:
    """The qwen suite's GPTQ pack and (former runner) seed-command attempts; absent from other suites' results."""
    notes = []
    pack = result.get("gptq_pack")
    if pack:
        quant = pack.get("quantization_config") or {}
        notes.append(f"- GPTQ-Int4 pack (`{pack.get('command')}`): {pack.get('status')}"
                     + (f" in {pack['seconds']:.0f} s" if pack.get("seconds") is not None else "")
                     + (f", {pack['gib']} GiB on disk (bf16: {result.get('checkpoint_gib')} GiB)"
                        if pack.get("gib") else "")
                     + (f", bits {quant.get('bits')}, group size {quant.get('group_size')}" if quant else "")
                     + (f"; {pack['note']}" if pack.get("note") else ""))
    seed = result.get("seed_command")
    if seed:
        if not seed.get("attempts"):
            notes.append(f"- seed command (DeepSpeed ZeRO-2, GPTQ, --use_lora --q_lora): {seed.get('status')}")
        for attempt in seed.get("attempts", []):
            losses = attempt.get("losses") or []
            steady = attempt.get("steady") or {}
            notes.append(
                f"- seed command, {attempt.get('precision')} (`{attempt.get('command')}`): **{attempt.get('status')}**"
                + (f"; rc {attempt['rc']} in {attempt['seconds']:.0f} s" if attempt.get("rc") is not None else "")
                + (f"; {len(losses)} logged losses {losses[0]:.3f} → {losses[-1]:.3f}" if losses else "")
                + (f"; {fmt_number(attempt.get('tokens_per_s'))} real tokens/s over the whole run"
                   if attempt.get("tokens_per_s") else "")
                + (f", {fmt_number(steady.get('tokens_per_s'))} over steps {steady.get('steps')}"
                   if steady.get("tokens_per_s") else "")
                + (f"; peak {attempt['peak_gib']:.2f} GiB" if attempt.get("peak_gib") else ""))
    if result.get("suite") == "qwen" and result.get("workload"):
        workload = result["workload"]
        notes.append(f"- workload: {workload.get('samples')} {workload.get('format', 'text')} records, "
                     f"{fmt_number(workload.get('rendered_tokens'))} tokens rendered; {workload.get('note', '')}")
    return notes


def chatglm2_section(name: str, result: dict) -> str:
    """The result of the former bench/chatglm2_6b.py (ChatGLM2-6B, the two published settings, merge and reverse
    conversion); the chatglm2 suite of bench/run.py writes ordinary sections."""
    lora, qlora = result["lora_bf16_r32_bs4_len1024"], result["qlora_nf4_r32_bs1_len1024"]
    base = result.get("baseline", {})
    lines = [f"## {name}: {result.get('gpu', '?')}, ChatGLM2-6B shape (original layout, converted to `glm`)", "",
             f"- date: {result.get('finished_at', '?')}; runner commit `{result.get('git_commit') or '–'}`; "
             f"torch {result.get('torch', '?')}",
             f"- command: `{result.get('command', 'bash bench/gpu_chatglm2.sh')}`; build {result.get('build_original_s')} s, "
             f"convert {result.get('convert_s')} s, merge + generate + reverse conversion "
             f"{result.get('merge_generate_reverse_s')} s", "",
             "| run | samples/s | real tokens/s | peak GiB |", "|---|---:|---:|---:|",
             f"| recipe lora: bf16 LoRA r=32, batch 4, length 1024 | {lora['samples_per_s']:.2f} "
             f"| {fmt_number(lora['tokens_per_s'])} | {fmt_number(lora['peak_gib'], 2)} |",
             f"| recipe qlora: NF4 Q-LoRA r=32, batch 1, length 1024 | {qlora['samples_per_s']:.2f} "
             f"| {fmt_number(qlora['tokens_per_s'])} | {fmt_number(qlora['peak_gib'], 2)} |"]
    for run_name, row in base.items():
        lines.append(f"| ours {run_name} (baseline workload, same checkpoint) | – | {fmt_number(row['tokens_per_s'])} "
                     f"| {fmt_number(row['peak_gib'], 2)} |")
    notes = [f"- reverse-converted config: {json.dumps(result.get('reverse_config', {}))}"]
    notes += [f"- {result['comment']}"] if result.get("comment") else []
    return "\n".join(lines + ["", "Notes:", *notes]) + "\n"


def load_results(results_dir: Path = RESULTS_DIR) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(results_dir.glob("*.json"), key=lambda p: p.name):
        try:
            out.append((path.stem, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as error:
            print(f"report: skipping {path}: {error}", file=sys.stderr)
    out.sort(key=lambda item: str(item[1].get("finished_at", "")), reverse=True)  # newest first
    return out


def real_section(name: str, result: dict) -> str:
    """bench/real_model.py: `make sft` on the real SmolLM2-135M-Instruct, one row per method."""
    versions = ", ".join(f"{k} {result[k]}" for k in ("torch", "transformers", "peft", "bitsandbytes") if result.get(k))
    lines = [f"## {name}: {result['device']}, the real SmolLM2-135M-Instruct (`make sft`)", "",
             f"{result['weights']}; {versions}; finished {result['finished_at']}. Command: `python bench/real_model.py` "
             "(each method: `make sft METHOD=...`, recipes/chat/<method>.json + recipes/identity.json, 48 records, "
             "held-out and general questions by recipes/chat/before_after.py).", "",
             "| method | settings | epochs | steps | s / epoch | real tokens/s | peak GiB | loss | held-out before → after "
             "| general before → after (same words) |", "|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'].strip().splitlines()[-1][:150]} | | | | | | | | |")
            continue
        held, general = r["summary"]["held-out"], r["summary"]["general"]
        settings = ("NF4 " if r.get("q_lora") else "") + ("bf16" if r.get("bf16") else "fp32") + \
            (f", packed, {r['attn_implementation']}" if r.get("packing") else "") + \
            (", Liger" if r.get("use_liger_kernel") else "")
        lines.append(f"| {r['method']} | {settings} | {r['epochs']:g} | {r['steps']} | {r['s_per_epoch']:.2f} | "
                     f"{fmt_number(r['tokens_per_s'])} | {r['peak_gib']:.2f} | {r['first_loss']:.3f} → "
                     f"{r['final_loss']:.3f} | {held['before']}/{held['n']} → {held['after']}/{held['n']} | "
                     f"{general['before']}/{general['n']} → {general['after']}/{general['n']} "
                     f"({general.get('unchanged', '-')}/{general['n']}) |")
    return "\n".join(lines) + "\n"


DPO_ARMS = {
    "tunekit": "`finetune.py --task dpo`: NF4 recipe switches (fused LoRA, Liger, async offload, 8-bit AdamW), "
               "precomputed reference",
    "tunekit-nooffload": "the same without the activation offload",
    "tunekit-otf": "the same with the reference computed every step",
    "trl-defaults": "TRL's `DPOTrainer`, `DPOConfig` defaults (bf16 weights beside NF4)",
    "trl-fp32": "TRL's `DPOTrainer`, `DPOConfig` defaults, TRL's float32 default for the unquantized weights",
}


def dpo_section(name: str, result: dict) -> str:
    """bench/dpo.py: the project's DPO path against TRL's DPOTrainer defaults, one row per arm."""
    v, w = result.get("versions", {}), result.get("workload", {})
    comparison = result.get("comparison", {})
    lines = [f"## {name}: {result.get('device', '?')}, DPO on the {result.get('shape', '?')} shape, "
             f"{'CPU smoke, fp32' if result.get('smoke') else 'NF4'} (issue 24, bar 5)", "",
             f"- date: {result.get('finished_at', '?')}; runner commit `{result.get('git_commit') or '–'}`; command: "
             f"`{result.get('command', '?')}`" + (" (**partial**)" if result.get("partial") else ""),
             "- software: " + ", ".join(f"{pkg} {v.get(pkg) or '–'}" for pkg in
                                        ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate",
                                         "liger_kernel")) + f"; Python {result.get('python', '?')}, CUDA "
             f"{result.get('cuda') or '–'}",
             f"- workload: {w.get('pairs')} preference pairs, {result.get('batch')} a step, max_length "
             f"{result.get('max_length')}; {w.get('distribution', '')}; prompt + chosen "
             f"median {fmt_number(w.get('prompt_chosen_tokens', {}).get('median'))} tokens, longest pair median "
             f"{fmt_number(w.get('pair_longest_tokens', {}).get('median'))}, max "
             f"{fmt_number(w.get('pair_longest_tokens', {}).get('max'))}; {fmt_number(w.get('real_tokens'))} real "
             f"tokens in all; LoRA {result.get('lora')}; {result.get('warmup')} warm-up steps, then "
             f"{result.get('steps')} timed", "",
             "| arm | what | real tokens/s | with the precompute | peak GiB | vs trl-defaults | peak vs trl-defaults "
             "| first loss − ln 2 | last loss | precompute s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for arm in result.get("arms_run", []):
        r = result.get("runs", {}).get(arm)
        if not r:
            continue
        if "error" in r or not r.get("tokens_per_s"):
            notes.append(f"- `{arm}`: **failed**: {str(r.get('error', '?'))[:300]}")
            continue
        row = comparison.get(f"{arm}/trl-defaults", {})
        lines.append(
            f"| {arm} | {DPO_ARMS.get(arm, '')} | {fmt_number(r['tokens_per_s'])} "
            f"| {fmt_number(r.get('tokens_per_s_with_precompute'))} | {fmt_number(r.get('peak_gib'), 2)} "
            f"| {fmt_ratio(row.get('tokens_per_s_ratio')) if row else ('1.00×' if arm == 'trl-defaults' else '–')} "
            f"| {fmt_ratio(row.get('peak_ratio')) if row else ('1.00×' if arm == 'trl-defaults' else '–')} "
            f"| {r['first_loss'] - 0.6931471805599453:+.2e} | {r['losses'][-1]:.4f} | {r.get('precompute_s', 0):.1f} |")
        s = r.get("resolved", {})
        notes.append(f"- `{arm}`: optim {str(s.get('optim', '?')).split('.')[-1].lower()}, checkpointing "
                     f"{s.get('gradient_checkpointing')}, Liger {s.get('use_liger_kernel')} (norm forward "
                     f"`{s.get('norm_forward')}`), padding_free {s.get('padding_free')}, LoRA weights "
                     f"{'/'.join(s.get('lora_dtype', []))}, embeddings {s.get('embed_dtype')}, fused LoRA layers "
                     f"{s.get('fused_lora_layers') or 0}, offload {s.get('offload_activations_async')}; setup "
                     f"{r.get('setup_s')} s; " + (f"same batches as trl-defaults: {row.get('same_batches')}; "
                                                  if row else "") + f"losses {[round(x, 4) for x in r['losses']]}")
    notes += [f"- skipped: {skipped}" for skipped in result.get("skipped", [])]
    notes += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines + (["", "Notes:", *notes] if notes else [])) + "\n"


DPO_NONE = ("## DPO speed (issue 24, bar 5): no GPU result yet\n\n"
            "`bench/dpo.py` times the project's `finetune.py --task dpo` against TRL's `DPOTrainer` defaults on a "
            "Llama-2-7B-shaped NF4 model, each in its own process, in one GPU run; on the device machine "
            "`OUT=$OUT python3 bench/dpo.py --deadline 420` writes `bench/results-dpo/<h100|h200>-dpo.json`, "
            "then `python bench/report.py`.\n")


def render(results: list[tuple[str, dict]], real: list[tuple[str, dict]] | None = None,
           dpo: list[tuple[str, dict]] | None = None) -> str:
    real = load_results(REAL_DIR) if real is None else real
    dpo = (load_results(DPO_DIR) if DPO_DIR.is_dir() else []) if dpo is None else dpo
    body = [real_section(name, result) for name, result in real]
    body += [dpo_section(name, result) for name, result in dpo] or [DPO_NONE]
    body += [(chatglm2_section if "lora_bf16_r32_bs4_len1024" in result else section)(name, result)
             for name, result in results]
    if not body:
        body = ["_No results yet: run `bash bench/gpu.sh SUITE` on the GPU machine and keep its JSON in "
                "`bench/results/`._\n"]
    return HEADER + "\n" + "\n".join(body)


def write_benchmarks(results_dir: Path = RESULTS_DIR, target: Path = BENCHMARKS) -> Path:
    target.write_text(render(load_results(results_dir)))
    return target


if __name__ == "__main__":
    print(write_benchmarks())
