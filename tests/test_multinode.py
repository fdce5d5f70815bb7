"""Several processes, as recipes/launch.sh starts them (issue 15), on CPU:
- two "nodes" of one process each (NNODES=2, their own NODE_RANK, one MASTER_ADDR/MASTER_PORT) train a tiny LoRA under
  DeepSpeed ZeRO-2 to the same adapter (1e-5) as one node with two processes;
- ZeRO-3 on two processes saves whole weights: the LoRA adapter equals ZeRO-2's, full fine-tuning's checkpoint reloads
  and equals ZeRO-2's; a two-process run cut after a checkpoint resumes to the uninterrupted run's adapter;
- packed, token-budget micro-batches on two processes give the same adapter as one process with twice the gradient
  accumulation over the same micro-batches (the sampler deals rank r the micro-batches r, r + 2, ...)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, ROOT, assert_same_adapter

FLAGS = ["recipes/cpu-tiny.json", "--max_steps", "4", "--max_samples", "0", "--per_device_train_batch_size", "1",
         "--eval_strategy", "no", "--eval_on_start", "false", "--eval_on_train", "false", "--save_strategy", "no",
         "--train_sampling_strategy", "sequential", "--model_max_length", "128", "--lora_r", "8", "--lora_alpha", "16",
         "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--logging_steps", "1", "--seed", "0",
         "--use_liger_kernel", "false", "--attn_implementation", "sdpa"]


def adapter_norm(folder, part="") -> float:
    """Frobenius norm of a run's adapter tensors whose names contain `part`, over all of them together."""
    weights = load_file(folder / "adapter_model.safetensors")
    return torch.cat([v.flatten() for k, v in weights.items() if part in k]).norm().item()


def adapter_distance(a, b) -> float:
    """Frobenius norm of the difference of two runs' adapters, over all their tensors together."""
    one, two = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return torch.cat([(one[k] - two[k]).flatten() for k in one]).norm().item()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch(model, out, *flags, nodes=1, per_node=1, ds=True, method="lora"):
    """bash recipes/llama2/train.sh METHOD ... with the launch variables; `nodes` launchers started side by side;
    ds: True = ZeRO-2, a path = that DeepSpeed config, False = none."""
    port = str(free_port())
    procs = []
    for rank in range(nodes):
        env = dict(os.environ, MODEL=model, DATA=str(DATA / "llama2_guanaco.jsonl"), EVAL_DATA="", OUTPUT_DIR=str(out),
                   GPUS_PER_NODE=str(per_node), NNODES=str(nodes), NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, DS_CONFIG="ds_configs/zero2.json" if ds is True else ds or "", OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", PYTHON=os.environ.get("PYTHON", sys.executable))
        procs.append(subprocess.Popen(["bash", "recipes/llama2/train.sh", method, *FLAGS, *flags], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
    return json.loads((out / "run_summary.json").read_text())


def reorder_bound(reference) -> float:
    """How far two runs that differ only in the order their gradients are summed (ZeRO-3 against ZeRO-2) may end
    apart, from the numerics.  Each gradient is a sum over N = 2 x 128 tokens a step: fp32 rounding, <= N x 2^-24
    relative, which Adam's steps pass on: <= N x 2^-24 x steps of the update's norm (lora_B's: B starts at zero).  But
    Adam divides each gradient by its own RMS (a step of about lr whatever its size): where a gradient cancels to the
    rounding level its sign may turn (lora_A of layer 0 down_proj, seen with AVX2 kernels), so one weight may end
    2 x lr x steps apart.  Observed, in norm: 3e-5 to 1.3e-4 with the AVX-512, AVX2 and generic kernels."""
    summary = json.loads((reference / "run_summary.json").read_text())
    update = adapter_norm(reference, "lora_B")
    return 2 * summary["learning_rate"] * summary["steps"] + 256 * 2**-24 * summary["steps"] * update


@pytest.fixture(scope="module")
def zero2_two_processes(tiny_llama2, tmp_path_factory):
    """One node, two processes, ZeRO-2: the reference of the two-node and the ZeRO-3 runs."""
    os.environ.setdefault("PYTHON", sys.executable)
    out = tmp_path_factory.mktemp("zero2") / "single"
    summary = launch(tiny_llama2, out, nodes=1, per_node=2)
    assert summary["deepspeed"] is True and summary["world_size"] == 2
    return out


def test_two_nodes_equal_one_node_of_two_processes(tiny_llama2, zero2_two_processes, tmp_path):
    multi = launch(tiny_llama2, tmp_path / "multi", nodes=2, per_node=1)
    assert multi["deepspeed"] is True and multi["world_size"] == 2
    assert_same_adapter(zero2_two_processes, tmp_path / "multi")


def test_zero3_lora_saves_the_whole_adapter(tiny_llama2, zero2_two_processes, tmp_path):
    """ZeRO-3 shards every weight, the adapters too: the saved adapter must be gathered (no empty or missing tensor,
    which tunekit.checkpoints.validate_adapter would also refuse) and equal ZeRO-2's, and reload into the base to
    the logits of the in-memory merge."""
    launch(tiny_llama2, tmp_path / "z3", ds="ds_configs/zero3.json", per_node=2)
    # same initial adapter (drawn from the seed after loading, tunekit.model.apply_lora) and the same steps; the
    # sharded reductions sum in another order (reorder_bound); the adapters move by ~0.1
    tolerance = reorder_bound(zero2_two_processes)
    assert_same_adapter(zero2_two_processes, tmp_path / "z3", atol=tolerance)
    assert adapter_distance(zero2_two_processes, tmp_path / "z3") <= tolerance
    config = json.loads((tmp_path / "z3" / "adapter_config.json").read_text())
    shapes = {k: tuple(v.shape) for k, v in load_file(tmp_path / "z3" / "adapter_model.safetensors").items()}
    assert config["r"] == 8 and shapes and all(8 in shape and 0 not in shape for shape in shapes.values())


def test_qlora_under_zero3_with_the_storage_in_the_model_dtype(tiny_llama2, zero2_two_processes, tmp_path):
    """Q-LoRA across processes under ZeRO-3: the 4-bit weights stored in the model dtype (--bnb_4bit_quant_storage,
    here float32 on the CPU) are sharded like any weight; the adapter equals the ZeRO-2 run's to fp32 rounding."""
    four_bit = ["--q_lora", "true", "--bnb_4bit_quant_storage", "float32", "--max_steps", "3"]
    runs = {name: launch(tiny_llama2, tmp_path / name, *four_bit, ds=ds, per_node=2)
            for name, ds in (("z2", True), ("z3", "ds_configs/zero3.json"))}
    assert runs["z3"]["first_loss"] == pytest.approx(runs["z2"]["first_loss"], abs=1e-6)
    unquantized = json.loads((zero2_two_processes / "run_summary.json").read_text())["first_loss"]
    assert abs(runs["z3"]["first_loss"] - unquantized) > 1e-3  # the same batch on the 4-bit base: NF4 rounding shows
    tolerance = reorder_bound(tmp_path / "z2")
    assert_same_adapter(tmp_path / "z2", tmp_path / "z3", atol=tolerance)  # the same keys, trained, no weight beyond
    assert adapter_distance(tmp_path / "z2", tmp_path / "z3") <= tolerance


def test_zero3_full_fine_tuning_saves_a_checkpoint_that_reloads(tiny_llama2, tmp_path):
    """Full fine-tuning under ZeRO-3 on two processes: the saved model.safetensors holds every weight whole (gathered,
    stage3_gather_16bit_weights_on_model_save), reloads with from_pretrained, moved from the base, and equals the same
    run under ZeRO-2 to fp32 rounding (the bound below)."""
    from transformers import AutoModelForCausalLM

    full = ["--use_lora", "false", "--learning_rate", "1e-3", "--max_steps", "2", "--bf16", "false"]
    for name, ds in (("z2", True), ("z3", "ds_configs/zero3.json")):
        summary = launch(tiny_llama2, tmp_path / name, *full, ds=ds, per_node=2,
                         method="full")
        assert summary["deepspeed"] is True and summary["world_size"] == 2
    base = AutoModelForCausalLM.from_pretrained(tiny_llama2, dtype=torch.float32).state_dict()
    z2 = AutoModelForCausalLM.from_pretrained(tmp_path / "z2", dtype=torch.float32).state_dict()
    z3 = AutoModelForCausalLM.from_pretrained(tmp_path / "z3", dtype=torch.float32).state_dict()
    assert z3.keys() == base.keys() and all(z3[k].shape == base[k].shape for k in base)
    assert any((z3[k] - base[k]).abs().max() > 1e-4 for k in base)  # it trained
    # The bound of the Q-LoRA test above, for every weight: each gradient, a sum over N = 256 tokens a step added in
    # another order, differs by <= N x 2^-24 relative, which Adam passes on (N x 2^-24 x steps of the update's norm);
    # and a weight whose gradient cancels to the rounding level (an embedding row of a rare token) may have its Adam
    # steps, about lr each, turned: 2 x lr x steps.  A save that missed the gathered weights is off by the update.
    lr, steps = 1e-3, 2
    update = torch.cat([(z2[k] - base[k]).flatten() for k in base]).norm().item()
    distance = torch.cat([(z3[k] - z2[k]).flatten() for k in base]).norm().item()
    assert distance <= 2 * lr * steps + 256 * 2**-24 * steps * update < update / 10, (distance, update)


def test_packed_budget_two_processes_equal_double_accumulation(tiny_llama2, tmp_path):
    os.environ.setdefault("PYTHON", sys.executable)
    packed = ["--packing", "true", "--token_budget", "256"]
    one = launch(tiny_llama2, tmp_path / "one", *packed, "--gradient_accumulation_steps", "2", ds=False)
    two = launch(tiny_llama2, tmp_path / "two", *packed, "--gradient_accumulation_steps", "1", per_node=2, ds=False)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["real_tokens"] == two["real_tokens"]  # the same micro-batches were trained
    assert_same_adapter(tmp_path / "one", tmp_path / "two")


def test_launch_variables_reach_the_launchers(tmp_path):
    """DRY_RUN prints the launch line: torchrun per node with its rank; the deepspeed launcher with a hostfile (started
    once) or per node without ssh."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=8\nnode-b slots=8\n")
    base = dict(os.environ, DRY_RUN="1", MODEL="/models/x", PYTHON="python3", NNODES="2", NODE_RANK="1",
                MASTER_ADDR="10.0.0.1", MASTER_PORT="6601", GPUS_PER_NODE="8")

    def line(**env):
        r = subprocess.run(["bash", "recipes/llama2/train.sh", "qlora"], cwd=ROOT, env={**base, **env},
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert ("-m tunekit.torchrun --nnodes 2 --node_rank 1 --nproc_per_node 8 --master_addr 10.0.0.1 "
            "--master_port 6601 finetune.py") in line()
    assert ("-m deepspeed.launcher.runner --master_addr 10.0.0.1 --master_port 6601 --num_nodes 2 --num_gpus 8 "
            "--no_ssh --node_rank 1 finetune.py") in line(LAUNCHER="deepspeed")
    assert f"--master_port 6601 --hostfile {hostfile} finetune.py" in line(LAUNCHER="deepspeed", HOSTFILE=str(hostfile))
    r = subprocess.run(["bash", "recipes/llama2/train.sh", "qlora"], cwd=ROOT, env={**base, "LAUNCHER": "mpirun"},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "LAUNCHER=mpirun" in r.stderr


def test_two_process_zero2_run_resumes_exactly(tiny_llama2, tmp_path):
    """A ZeRO-2 run on two processes, cut after its step-2 checkpoint (every later file removed, as a crash would
    leave it), started again with the same command: it resumes from checkpoint-2 (each rank's optimizer shard and RNG
    state) and ends with the uninterrupted run's adapter."""
    import shutil

    os.environ.setdefault("PYTHON", sys.executable)
    save = ["--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3"]
    launch(tiny_llama2, tmp_path / "straight", *save, per_node=2)
    assert sorted(p.name for p in (tmp_path / "straight").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", crashed / "checkpoint-2")
    shards = sorted(p.name for p in (crashed / "checkpoint-2").rglob("*optim_states.pt"))
    assert len(shards) == 2 and len(list((crashed / "checkpoint-2").glob("rng_state_*.pth"))) == 2  # one per rank
    summary = launch(tiny_llama2, crashed, *save, per_node=2)
    assert summary["world_size"] == 2 and summary["resumed_from"].endswith("checkpoint-2")
    assert_same_adapter(tmp_path / "straight", crashed, atol=1e-6)
