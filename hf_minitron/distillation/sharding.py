"""Sharding a frozen teacher across processes for inference (FSDP2), one decoder layer per unit.

Sharding the whole teacher as one unit (what a plain ``fully_shard(teacher)`` does) gathers every
weight at once in each forward, so each GPU briefly holds the full teacher. One unit per decoder
layer, plus the root for embeddings, final norm and LM head, keeps the peak at about one layer
plus the root. The LM head the logit loss reads after the forward is copied out inside it
(``TeacherRequest.copy_head``), because the root's gathered weights are freed on return.
"""

from __future__ import annotations

from ..layers import decoder_layers


def shard_teacher(teacher, *, mesh=None, reshard_after_forward: bool = True, mp_policy=None, offload_policy=None):
    """``fully_shard`` each decoder layer of ``teacher``, then the whole model; returns the teacher."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"reshard_after_forward": reshard_after_forward, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    if mesh is not None:
        kwargs["mesh"] = mesh
    if offload_policy is not None:
        kwargs["offload_policy"] = offload_policy
    for layer in decoder_layers(teacher):
        fully_shard(layer, **kwargs)
    fully_shard(teacher, **kwargs)
    return teacher


def shard_teacher_like_student(teacher, accelerator):
    """Shard the teacher with the settings accelerate's FSDP2 plugin gives the student."""
    plugin = accelerator.state.fsdp_plugin
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:
        mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    return shard_teacher(
        teacher,
        mesh=mesh,
        reshard_after_forward=plugin.reshard_after_forward,
        mp_policy=plugin.mixed_precision_policy,
        offload_policy=plugin.cpu_offload,
    )
