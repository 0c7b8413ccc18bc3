"""Real multi-process runs on CPU (gloo): DDP through the trainer, and FSDP2-sharded distillation.

accelerate enables FSDP and DeepSpeed ZeRO-3 only on GPUs, so the FSDP2 check shards teacher and
student with torch's fully_shard directly, exactly as accelerate's FSDP2 plugin does with
recipes/accelerate/fsdp2.yaml (a unit per decoder layer plus the root, reshard after forward), and
runs the distillation forward that the trainer runs.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPTS = Path(__file__).parent / "distributed"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(args, processes=1, timeout=300):
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]
    command = (launcher if processes > 1 else [sys.executable]) + [str(a) for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("losses", ["logits", "intermediate", "dynamic"])
def test_ddp_with_two_processes_equals_one_process(tmp_path, losses):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert "DistributedType.NO" in run([SCRIPTS / "ddp_distill.py", one, losses])
    assert "MULTI_CPU" in run([SCRIPTS / "ddp_distill.py", two, losses], processes=2)
    single, double = load_file(str(one)), load_file(str(two))
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-5, atol=1e-6, msg=name)


def test_fsdp2_sharded_teacher_and_student_train_like_unsharded():
    """Teacher and student resharded after every forward, intermediate losses on: the LM heads and norms the
    loss reads must be read while gathered (this crashed at the first step when the teacher's head was read
    after its forward had freed it)."""
    output = run([SCRIPTS / "fsdp_distill.py"], processes=2)
    assert "sharded steps match unsharded" in output
