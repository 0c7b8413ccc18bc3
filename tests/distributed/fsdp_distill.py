"""Run with 2 processes (torchrun, gloo on CPU): distillation steps with teacher and student both sharded by
FSDP2 the way recipes/accelerate/fsdp2.yaml shards them (one unit per decoder layer plus the root,
reshard_after_forward=True), intermediate-state and embedding losses on, a learned width projection.
Each rank trains on half of the global batch; rank 0 also trains unsharded copies on the whole batch
and checks that both end with the same weights."""

import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron.distillation.forward import (
    EMBEDDINGS,
    StudentRequest,
    TeacherRequest,
    attach_projection,
    enable_distillation_forward,
)
from hf_minitron.distillation.sharding import shard_teacher

from helpers import tiny_model

STEPS = 3
PAIRS = ((1, 0), (3, 1), (EMBEDDINGS, EMBEDDINGS))


def step(teacher, student, optimizer, input_ids, num_items, alpha, scale, copy_head):
    labels = input_ids.clone()
    with torch.no_grad():
        targets = teacher(
            input_ids=input_ids, distillation=TeacherRequest(layers=(1, 3, EMBEDDINGS), copy_head=copy_head)
        )
    request = StudentRequest(teacher=targets, labels=labels, num_items=num_items, layer_pairs=PAIRS, alpha=alpha)
    output = student(input_ids=input_ids, distillation=request)
    (output.loss * scale).backward()
    optimizer.step()
    optimizer.zero_grad()
    return output


def models():
    teacher = tiny_model("llama", seed=3, tie_word_embeddings=False)
    student = tiny_model("llama", seed=4, num_hidden_layers=2, hidden_size=36)
    for model in (teacher, student):
        enable_distillation_forward(model)
    teacher.requires_grad_(False)
    attach_projection(student, teacher.config.hidden_size)
    return teacher, student


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = torch.randint(3, 96, (2 * world, 16), generator=torch.Generator().manual_seed(7))
    num_items = (batch.shape[0] * (batch.shape[1] - 1),)
    teacher, student = models()
    reference_teacher, reference_student = copy.deepcopy(teacher), copy.deepcopy(student)

    mesh = init_device_mesh("cpu", (world,))
    shard_teacher(teacher, mesh=mesh, reshard_after_forward=True)
    for layer in student.model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(student, mesh=mesh, reshard_after_forward=True)
    local = student.model.layers[0].mlp.up_proj.weight.to_local().numel()
    assert local < reference_student.model.layers[0].mlp.up_proj.weight.numel(), "weights are not sharded"

    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    reference_optimizer = torch.optim.SGD(reference_student.parameters(), lr=0.5)
    mine = batch[rank * 2 : rank * 2 + 2]
    for _ in range(STEPS):
        # FSDP averages gradients over ranks; the loss is normalised by the global token count.
        sharded = step(teacher, student, optimizer, mine, num_items[0], 0.5, world, copy_head=True)
        reference = step(reference_teacher, reference_student, reference_optimizer, batch, num_items[0], 0.5, 1, False)
    full = {name: param.full_tensor() for name, param in student.named_parameters()}
    if rank == 0:
        for name, param in reference_student.named_parameters():
            torch.testing.assert_close(full[name], param.detach(), rtol=1e-4, atol=1e-5, msg=name)
        print(f"rank 0: {STEPS} sharded steps match unsharded (last loss {float(reference.loss):.4f})", flush=True)
    assert torch.isfinite(sharded.loss)
    dist.barrier()
    # Every check is done: leave without interpreter teardown, where gloo's threads can abort the process.
    os._exit(0)


if __name__ == "__main__":
    main()
