"""Several processes, as recipes/launch.sh starts them (issue 15), on CPU:
- two "nodes" of one process each (NNODES=2, their own NODE_RANK, one MASTER_ADDR/MASTER_PORT) train a tiny LoRA under
  DeepSpeed ZeRO-2 to the same adapter (1e-5) as one node with two processes;
- packed, token-budget micro-batches on two processes give the same adapter as one process with twice the gradient
  accumulation over the same micro-batches (the sampler deals rank r the micro-batches r, r + 2, ...)."""
import json
import os
import socket
import subprocess

from conftest import DATA, ROOT, assert_same_adapter

FLAGS = ["recipes/cpu-tiny.json", "--max_steps", "4", "--max_samples", "0", "--per_device_train_batch_size", "1",
         "--eval_strategy", "no", "--eval_on_start", "false", "--eval_on_train", "false", "--save_strategy", "no",
         "--train_sampling_strategy", "sequential", "--model_max_length", "128", "--lora_r", "8", "--lora_alpha", "16",
         "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--logging_steps", "1", "--seed", "0",
         "--use_liger_kernel", "false", "--attn_implementation", "sdpa"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch(model, out, *flags, nodes=1, per_node=1, ds=True):
    """bash recipes/llama2/train.sh lora ... with the launch variables; `nodes` launchers started side by side."""
    port = str(free_port())
    procs = []
    for rank in range(nodes):
        env = dict(os.environ, MODEL=model, DATA=str(DATA / "llama2_guanaco.jsonl"), EVAL_DATA="", OUTPUT_DIR=str(out),
                   GPUS_PER_NODE=str(per_node), NNODES=str(nodes), NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, DS_CONFIG="ds_configs/zero2.json" if ds else "", OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", PYTHON=os.environ.get("PYTHON", "python"))
        procs.append(subprocess.Popen(["bash", "recipes/llama2/train.sh", "lora", *FLAGS, *flags], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
    return json.loads((out / "run_summary.json").read_text())


def test_two_nodes_equal_one_node_of_two_processes(tiny_llama2, tmp_path):
    import sys

    os.environ.setdefault("PYTHON", sys.executable)
    single = launch(tiny_llama2, tmp_path / "single", nodes=1, per_node=2)
    multi = launch(tiny_llama2, tmp_path / "multi", nodes=2, per_node=1)
    for summary in (single, multi):
        assert summary["deepspeed"] is True and summary["world_size"] == 2
    assert_same_adapter(tmp_path / "single", tmp_path / "multi")


def test_packed_budget_two_processes_equal_double_accumulation(tiny_llama2, tmp_path):
    import sys

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
