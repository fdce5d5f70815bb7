"""--memory_snapshot: the peak report replays a snapshot's trace (pure Python, so it is tested here on a synthetic
trace); on a CPU the flag is refused before anything loads."""
import pytest

from tunekit.errors import ArgumentError
from tunekit.memory import peak_report

from conftest import cpu_flags, resolve


def frame(name, line):
    return [{"filename": "/x/site-packages/torch/nn/functional.py", "line": 1, "name": "linear"},
            {"filename": f"/repo/tunekit/{name}.py", "line": line, "name": "forward"}]


def test_peak_report_finds_the_peak_and_what_was_alive():
    gib = 2 ** 30
    events = [
        {"action": "alloc", "addr": 1, "size": 2 * gib, "frames": frame("a", 10)},
        {"action": "alloc", "addr": 2, "size": 3 * gib, "frames": frame("b", 20)},
        {"action": "alloc", "addr": 3, "size": 1 * gib, "frames": []},
        {"action": "free_requested", "addr": 1, "size": 2 * gib},  # what max_memory_allocated stops counting
        {"action": "free_completed", "addr": 1, "size": 2 * gib},  # (a side stream may delay the block's reuse)
        {"action": "free_requested", "addr": 9, "size": gib},  # allocated before recording began
        {"action": "alloc", "addr": 4, "size": gib, "frames": frame("b", 20)},
    ]
    text = peak_report({"device_traces": [events]}, allocated_at_start=4 * gib)
    first, _, *rows = text.splitlines()
    assert first.startswith("peak 10.00 GiB at event 3 of 7: 4.00 GiB allocated before")  # 4 + 2 + 3 + 1
    assert "6.00 GiB traced" in first
    assert rows[0].split() == ["3.00", "GiB", "1", "x", "tunekit/b.py:20", "forward"]  # largest first, torch's frame cut
    assert rows[1].startswith("    2.00 GiB      1 x  tunekit/a.py:10 forward")
    assert "no Python frame" in rows[2]


def test_memory_snapshot_needs_cuda(tiny_llama2, guanaco_small, tmp_path):
    with pytest.raises(ArgumentError, match="--memory_snapshot records CUDA allocations"):
        resolve(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--family", "llama2",
                 *cpu_flags(tmp_path / "o", memory_snapshot=str(tmp_path / "m.pickle"))])
    with pytest.raises(ArgumentError, match="--memory_snapshot_steps 0 must be >= 1"):
        resolve(["--model_name_or_path", tiny_llama2, "--data_path", guanaco_small, "--family", "llama2",
                 *cpu_flags(tmp_path / "o", memory_snapshot_steps=0)])
