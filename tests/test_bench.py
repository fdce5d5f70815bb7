"""The benchmark harness keeps working: a few steps of the throughput suite on a tiny model, on CPU; the suite table
names only runs, shapes and recipes that exist; BENCHMARKS.md is what bench/report.py makes of bench/results/."""
import json
import math
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import baseline  # noqa: E402
import report  # noqa: E402
import shapes  # noqa: E402
import suites  # noqa: E402


def test_throughput_suite_smoke(tmp_path):
    """`make bench-smoke`: the throughput suite's baselines and recipe variants, a few steps on a tiny model."""
    from test_make_targets import make

    out = tmp_path / "bench"
    r = make("bench-smoke", OUTPUT=out)
    result = json.loads((out / "throughput-tiny.json").read_text())
    runs = {row["name"]: row for row in result["runs"]}
    failed = {name: row.get("error") for name, row in runs.items() if row.get("status") != "ok"
              and row.get("status") != "skipped: needs CUDA"}  # Liger / varlen variants
    assert any(row.get("status") == "skipped: needs CUDA" for row in runs.values())
    assert not failed, (failed, r.stdout[-3000:])
    assert {"qlora-all-linear-r16-bs4", "lora-bf16-all-linear-r16-bs4",
            "recipe-llama2-qlora-nf4-r16-packed", "recipe-llama2-qlora-bf16-r16-packed"} <= runs.keys()
    assert runs["recipe-llama2-qlora-bf16-r16-packed"]["compared_with"] == "lora-bf16-all-linear-r16-bs4"
    assert runs["recipe-llama2-qlora-nf4-r16-packed"]["compared_with"] == "qlora-all-linear-r16-bs4"
    for row in runs.values():
        assert row.get("status") != "ok" or row["tokens_per_s"] > 0


def test_suite_table_names_what_exists():
    for name, suite in suites.SUITES.items():
        keys = [variant.key for variant in suite.variants]
        assert len(keys) == len(set(keys)), name
        assert set(suite.baselines) <= set(baseline.RUNS), name
        assert set(suite.shapes) <= set(shapes.SHAPES) | set(shapes.CHATGLM2_SHAPES), name
        assert set(suite.merge) <= set(keys) and set(suite.lengths) <= set(suite.shapes), name
        for variant in suite.variants:
            assert {variant.compare_with, variant.prefer} - {None} <= set(suite.baselines), (name, variant.key)
            assert variant.default in ("always", "cpu", "extra"), (name, variant.key)
            assert variant.command or variant.peer or (ROOT / f"recipes/{suite.family}/{variant.method}.json").is_file(), variant


def test_benchmarks_md_is_generated_from_the_results():
    assert report.render(report.load_results()) == (ROOT / "BENCHMARKS.md").read_text()


def test_dpo_bench_smoke(tmp_path):
    """bench/dpo.py --smoke (issue 24, bar 5's benchmark, CPU): the project's `finetune.py --task dpo` and TRL's
    DPOTrainer defaults, each in its own process on a tiny model, train the same batches, count every real token of
    the pairs and start at ln 2 (policy = reference; the project's arm with the precomputed reference)."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "dpo.py"), "--smoke", "--arms", "tunekit,trl-defaults",
                        "--out", str(out), "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((out / "dpo.json").read_text())
    assert not result["partial"] and set(result["runs"]) == {"tunekit", "trl-defaults"}, result.get("skipped")
    for name, arm in result["runs"].items():
        assert abs(arm["first_loss"] - math.log(2)) < 1e-3, (name, arm["losses"])
        assert arm["tokens_per_s"] > 0 and arm["all_real_tokens"] == result["workload"]["real_tokens"], name
    ours = result["runs"]["tunekit"]
    assert ours["resolved"]["precompute_ref_log_probs"] and ours["precompute_s"] > 0
    assert ours["resolved"]["fused_lora_layers"]
    assert ours["tunekit_recorder_tokens"] == ours["step_tokens"]  # tunekit's own count of the same steps
    assert result["comparison"]["tunekit/trl-defaults"]["same_batches"]
    assert "tunekit" in report.dpo_section("smoke", result)
