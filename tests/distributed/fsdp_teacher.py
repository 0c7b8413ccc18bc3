"""Run with 2 processes (torchrun, gloo on CPU): a teacher sharded with FSDP2's fully_shard gives the
same logits, hidden states and LM-head weight through the distillation forward as the unsharded one."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron.distillation.forward import TeacherRequest, enable_distillation_forward

from helpers import tiny_model


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    input_ids = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(7))
    reference = tiny_model("llama", seed=3, tie_word_embeddings=False)
    sharded = tiny_model("llama", seed=3, tie_word_embeddings=False)
    with torch.no_grad():
        expected_logits = reference(input_ids=input_ids).logits
        enable_distillation_forward(reference)
        expected = reference(input_ids=input_ids, distillation=TeacherRequest(layers=(1, 2)))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in sharded.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    enable_distillation_forward(sharded)
    local = sharded.model.layers[0].mlp.up_proj.weight.to_local().numel()
    assert local < reference.model.layers[0].mlp.up_proj.weight.numel(), "weights are not sharded"
    with torch.no_grad():
        logits = sharded(input_ids=input_ids).logits
        outputs = sharded(input_ids=input_ids, distillation=TeacherRequest(layers=(1, 2)))
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs.hidden, expected.hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs.head_weight, expected.head_weight)
    for layer in (1, 2):
        torch.testing.assert_close(outputs.states[layer], expected.states[layer], rtol=1e-5, atol=1e-5)
    print(
        f"rank {rank}: sharded teacher matches (local shard {local} of "
        f"{reference.model.layers[0].mlp.up_proj.weight.numel()} elements)",
        flush=True,
    )
    dist.barrier()
    # Every check is done: leave without interpreter teardown, where gloo's threads can abort the process.
    os._exit(0)


if __name__ == "__main__":
    main()
