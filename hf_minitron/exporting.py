"""Saving a trained model as one plain transformers folder, the same way after every kind of training.

Distillation, alignment and teacher correction all end by writing the model they trained. Each step
of that is easy to get wrong on its own, so it is done here, once:

1. Every process takes part in collecting the weights. Under FSDP2 each process holds a shard of
   every parameter (a DTensor), under DeepSpeed ZeRO-3 a partition: the full tensors exist only after
   a collective call that all processes make. A process that skipped it would leave the others
   waiting, and saving the local pieces would write a folder no one can load.
2. LoRA adapters are merged into the base weights, so the folder loads without PEFT.
3. Modules that only help training (the distillation's width projection) are left out of the model
   and saved beside it, each as its own safetensors file.
4. Only the main process writes, in one rename (``outputs.atomic_output_dir``): two writers into one
   folder race, and a crash halfway would leave half a model.
5. Every process waits until the folder exists, and learns whether writing it failed, before going on:
   a process that went on early could read a folder that is not there yet, and one whose writer
   failed would otherwise wait for it forever.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import MinitronError
from .model_folder import save_model_folder
from .outputs import atomic_output_dir


def export_trained_model(
    trainer,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    kind: str = "trained model",
    set_aside: Mapping[str, str] | None = None,
) -> Path:
    """Write the model ``trainer`` trained (and its tokenizer) to ``output_dir``; call it on every process.

    ``kind`` names the folder in its marker and in messages; ``set_aside`` maps the attribute name of a
    module that is no part of the model to the file it is saved in beside the model.
    """
    # The Trainer keeps the DeepSpeed engine (or DDP wrapper) apart from trainer.model; ZeRO-3 gathers
    # through the engine.
    wrapped = getattr(trainer, "model_wrapped", None)
    return export_model(
        wrapped if wrapped is not None else trainer.model,
        output_dir,
        tokenizer=trainer.processing_class,
        accelerator=trainer.accelerator,
        overwrite=overwrite,
        kind=kind,
        set_aside=set_aside,
    )


def export_model(
    model,
    output_dir: str | os.PathLike,
    *,
    tokenizer=None,
    accelerator=None,
    overwrite: bool = False,
    kind: str = "model",
    set_aside: Mapping[str, str] | None = None,
) -> Path:
    """``export_trained_model`` for a model outside a Trainer: ``accelerator`` is the one that prepared it,
    if any; without one, a model sharded with ``torch.distributed.fsdp.fully_shard`` is gathered all the same.
    """
    output_dir = Path(output_dir)
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    sharded = _is_sharded(unwrapped, accelerator)
    if sharded and hasattr(unwrapped, "merge_and_unload"):
        # Refused on every process alike, before any collective call, so none is left waiting.
        raise MinitronError(
            "Merging LoRA adapters of a sharded model is not supported",
            "the adapters and the weights they merge into are spread over the processes",
            "save the adapters with trainer.save_model(), then merge them on one device",
        )
    state_dict = _full_state_dict(model, unwrapped, accelerator) if sharded else None
    main = _is_main_process(accelerator)
    failure = None
    if main:
        try:
            _write(unwrapped, state_dict, output_dir, tokenizer, overwrite, kind, dict(set_aside or {}))
        except BaseException as error:
            failure = error
    _share_outcome(failure, main, output_dir, accelerator)
    return output_dir


# -- collecting the weights ----------------------------------------------------------------------------------------


def _holds_dtensors(model) -> bool:
    """FSDP2 (``fully_shard``, or accelerate with ``fsdp_version: 2``) turns every parameter into a DTensor."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def _zero3(accelerator) -> bool:
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def _fsdp1(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP and not getattr(accelerator, "is_fsdp2", False)


def _is_sharded(unwrapped, accelerator) -> bool:
    """Whether no single process holds the whole model: FSDP2 (DTensors), or ZeRO-3 / FSDP1 under accelerate,
    whose wrappers keep each process's part of the weights."""
    by_accelerator = accelerator is not None and (_zero3(accelerator) or _fsdp1(accelerator))
    return by_accelerator or _holds_dtensors(unwrapped)


def _full_state_dict(model, unwrapped, accelerator) -> dict | None:
    """The whole model's tensors on the main process (None elsewhere). A collective: every process calls it."""
    if _holds_dtensors(unwrapped):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # cpu_offload gathers one parameter at a time into the main process's CPU memory, so no device
        # holds the whole model at once; it runs on CPU with gloo as on GPUs with NCCL.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state_dict = get_model_state_dict(unwrapped, options=options)
    elif _zero3(accelerator):
        try:
            state_dict = accelerator.get_state_dict(model)
        except ValueError as error:  # ZeRO-3 gathers for saving only when its config allows it
            raise MinitronError(
                "DeepSpeed ZeRO-3 cannot gather the full weights for saving",
                str(error).splitlines()[0],
                "set zero3_save_16bit_model: true in the accelerate config "
                "(stage3_gather_16bit_weights_on_model_save in a DeepSpeed config)",
            ) from error
    else:
        state_dict = accelerator.get_state_dict(model)  # FSDP1: a full state dict, offloaded to rank 0
    return dict(state_dict) if _is_main_process(accelerator) else None


# -- writing -------------------------------------------------------------------------------------------------------


def _write(model, state_dict, output_dir: Path, tokenizer, overwrite: bool, kind: str, set_aside: dict) -> None:
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # LoRA merged into the base weights; the base model comes back
    if state_dict is None:
        state_dict = dict(model.state_dict())
    aside = {name: _take_module_tensors(state_dict, name) for name in set_aside}
    # save_pretrained reads the model too (tied weights, parameter names): the modules set aside are out
    # of it while the folder is written, and back in afterwards, for training or evaluation to go on.
    removed = {name: getattr(model, name) for name in set_aside if getattr(model, name, None) is not None}
    for name in removed:
        delattr(model, name)
    try:
        with atomic_output_dir(output_dir, overwrite=overwrite, kind=kind) as staging:
            save_model_folder(model, staging, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            for name, file_name in set_aside.items():
                if aside[name]:
                    save_file(aside[name], str(staging / file_name))
    finally:
        for name, module in removed.items():
            model.add_module(name, module)


def _take_module_tensors(state_dict: dict, name: str) -> dict:
    """Remove module ``name``'s tensors from ``state_dict``; return them keyed within the module, in fp32."""
    prefix = f"{name}."
    keys = [key for key in state_dict if key.startswith(prefix)]
    return {key[len(prefix) :]: state_dict.pop(key).detach().float().cpu().contiguous() for key in keys}


# -- agreeing on the end -------------------------------------------------------------------------------------------


def _is_main_process(accelerator) -> bool:
    if accelerator is not None:
        return accelerator.is_main_process
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def _share_outcome(failure: BaseException | None, main: bool, output_dir: Path, accelerator) -> None:
    """The main process tells every other whether the folder was written, then all wait for each other:
    past this point the folder exists for every process, or every process raises. The main process
    re-raises its own error; the others raise one that points at it."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        message = [f"{type(failure).__name__}: {failure}" if failure is not None else None]
        torch.distributed.broadcast_object_list(message, src=0)
        if not main and message[0] is not None:
            failure = MinitronError(
                f"The main process could not write '{output_dir}'",
                message[0],
                "see the main process's error; nothing was written there",
            )
    if accelerator is not None:
        accelerator.wait_for_everyone()
    elif distributed:
        torch.distributed.barrier()
    if failure is not None:
        raise failure
