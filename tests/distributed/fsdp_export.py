"""Run with 2 processes (torchrun, gloo on CPU): export a model sharded by FSDP2 the way
recipes/accelerate/fsdp2.yaml shards it (one unit per decoder layer plus the root), with a width
projection attached as in distillation: ``fsdp_export.py OUT WRITES_LOG``.

Each process holds half of every weight; the exported folder must hold the whole model, equal to an
unsharded copy, with the projection set aside in its own file. Then an export the main process must
refuse: every process raises, none waits for the others forever.
"""

import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import AutoModelForCausalLM
from writes import log_folder_writes

from hf_minitron import MinitronError
from hf_minitron.distillation.forward import PROJECTION, attach_projection
from hf_minitron.distillation.trainer import PROJECTION_FILE
from hf_minitron.exporting import export_model

from helpers import char_tokenizer, tiny_model


def main(out: str, writes: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(out)
    log_folder_writes(Path(writes))
    student = tiny_model("llama", seed=4, num_hidden_layers=2, hidden_size=36)
    attach_projection(student, 48)
    with torch.no_grad():  # a projection that is not the channel map, so a mix-up would show
        getattr(student, PROJECTION).weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(5))
    reference = copy.deepcopy(student)

    mesh = init_device_mesh("cpu", (world,))
    for layer in student.model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(student, mesh=mesh, reshard_after_forward=True)
    local = student.model.layers[0].mlp.up_proj.weight.to_local()
    assert local.numel() < reference.model.layers[0].mlp.up_proj.weight.numel(), "weights are not sharded"

    export_model(
        student, out, tokenizer=char_tokenizer(), kind="distilled model", set_aside={PROJECTION: PROJECTION_FILE}
    )
    assert (out / "model.safetensors").is_file(), f"rank {rank}: the export returned before the folder existed"
    if rank == 0:
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        assert not hasattr(reloaded, PROJECTION)
        expected = {k: v for k, v in reference.state_dict().items() if not k.startswith(PROJECTION)}
        saved = reloaded.state_dict()
        assert saved.keys() == expected.keys(), sorted(set(saved) ^ set(expected))
        for name, tensor in expected.items():
            assert saved[name].shape == tensor.shape, f"{name}: {tuple(saved[name].shape)} is not whole"
            torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0, msg=name)
        projection = load_file(str(out / PROJECTION_FILE))
        torch.testing.assert_close(projection["weight"], getattr(reference, PROJECTION).weight.detach())
        print(f"rank 0: the gathered folder equals the unsharded weights ({len(expected)} tensors)", flush=True)
    # The sharded model is still whole for training to go on: its projection is back in place.
    assert hasattr(student, PROJECTION)

    # A write the main process refuses (a folder of someone else's files) fails on every process, at once.
    foreign = out.parent / "foreign"
    if rank == 0:
        foreign.mkdir()
        (foreign / "notes.txt").write_text("not made by hf_minitron")
    dist.barrier()
    try:
        export_model(student, foreign, tokenizer=char_tokenizer(), set_aside={PROJECTION: PROJECTION_FILE})
    except MinitronError as error:
        print(f"rank {rank}: refused: {error}", flush=True)
    else:
        raise AssertionError(f"rank {rank}: the refused export returned")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    dist.barrier()
    # Every check is done: leave without interpreter teardown, where gloo's threads can abort the process.
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:3])
