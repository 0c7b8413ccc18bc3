"""Real multi-process runs on CPU (gloo): DDP through the trainer, FSDP2-sharded distillation, and the
save at the end of every training stage.

accelerate enables FSDP and DeepSpeed ZeRO-3 only on GPUs, so the FSDP2 checks shard the models
with torch's fully_shard directly, exactly as accelerate's FSDP2 plugin does with
recipes/accelerate/fsdp2.yaml (a unit per decoder layer plus the root, reshard after forward), and
run the distillation forward that the trainer runs, or the exporter that every stage saves with.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hf_minitron.distillation.trainer import PROJECTION_FILE
from hf_minitron.outputs import read_marker

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


LOSSES = ("logits", "intermediate", "dynamic")


def test_ddp_with_two_processes_equals_one_process(tmp_path):
    """For each loss setting (logits alone, intermediate pairs with a fixed and a dynamic weight), two
    processes end with the weights of one process at the same global batch. Every setting trains in the
    same launch, one trainer after another."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    assert run([SCRIPTS / "ddp_distill.py", one, ",".join(LOSSES)]).count("DistributedType.NO") == len(LOSSES)
    assert run([SCRIPTS / "ddp_distill.py", two, ",".join(LOSSES)], processes=2).count("MULTI_CPU") == len(LOSSES)
    for losses in LOSSES:
        single, double = (load_file(str(folder / f"{losses}.safetensors")) for folder in (one, two))
        assert single.keys() == double.keys()
        for name in single:
            torch.testing.assert_close(double[name], single[name], rtol=1e-5, atol=1e-6, msg=f"{losses}: {name}")


def test_fsdp2_sharded_teacher_and_student_train_like_unsharded():
    """Teacher and student resharded after every forward, intermediate losses on: the LM heads and norms the
    loss reads must be read while gathered (this crashed at the first step when the teacher's head was read
    after its forward had freed it)."""
    output = run([SCRIPTS / "fsdp_distill.py"], processes=2)
    assert "sharded steps match unsharded" in output


STAGE_KINDS = {"distill": "distilled model", "align": "aligned model", "correct": "corrected teacher"}


def test_each_stage_saves_once_from_rank_0_and_two_processes_equal_one(tmp_path):
    """Distillation, alignment and teacher correction under two DDP processes: each folder is put in place
    once, by rank 0, before the save returns on any process, and holds whole tensors equal to a
    one-process run's with the same global batch. The three stages train in one launch per world size."""
    roots = {}
    for processes in (1, 2):
        root, writes = tmp_path / f"world-{processes}", tmp_path / f"writes-{processes}.log"
        output = run([SCRIPTS / "stage_export.py", ",".join(STAGE_KINDS), root, writes], processes=processes)
        assert writes.read_text().splitlines() == [f"0 {stage}" for stage in STAGE_KINDS]
        for stage, kind in STAGE_KINDS.items():
            for rank in range(processes):
                assert f"rank {rank}: the saved {stage} folder holds this process's trained weights" in output
            assert read_marker(root / stage)["kind"] == kind
            assert len(AutoTokenizer.from_pretrained(root / stage)) > 0
        roots[processes] = root
    for stage in STAGE_KINDS:
        folders = {n: roots[n] / stage for n in (1, 2)}
        one, two = (load_file(str(folders[n] / "model.safetensors")) for n in (1, 2))
        declared = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folders[2])).state_dict()
        assert one.keys() == two.keys()
        for name in one:
            assert two[name].shape == one[name].shape == declared[name].shape, f"{stage}: {name}"
            torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=f"{stage}: {name}")
        reloaded = AutoModelForCausalLM.from_pretrained(folders[2])
        assert sorted(reloaded.state_dict()) == sorted(declared)
        if stage == "distill":  # the width projection goes beside the model, never inside
            assert not any("projection" in name for name in two)
            beside = [load_file(str(folders[n] / PROJECTION_FILE))["weight"] for n in (1, 2)]
            torch.testing.assert_close(beside[1], beside[0], rtol=1e-5, atol=1e-6)


def test_fsdp2_sharded_model_exports_whole(tmp_path):
    """The exporter gathers a fully_shard-ed model (every weight split over two processes) into one folder
    equal to the unsharded model, written by rank 0 alone, the projection set aside beside it; when rank 0
    cannot write, both processes raise instead of one waiting for the other."""
    writes = tmp_path / "writes.log"
    output = run([SCRIPTS / "fsdp_export.py", tmp_path / "out", writes], processes=2, timeout=120)
    assert "the gathered folder equals the unsharded weights" in output
    assert writes.read_text().splitlines() == ["0 out"]
    assert "rank 0: refused: Output folder" in output and "holds files hf_minitron did not make" in output
    assert "rank 1: refused: The main process could not write" in output
