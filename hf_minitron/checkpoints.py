"""Trainer checkpoints a run can resume from: the newest complete one, never a half-written one.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG state, and
``trainer_state.json`` last), so a process killed while saving leaves a folder missing its state or
holding a truncated file. Such a checkpoint is skipped, and removed when hf_minitron made the folder
it is in, and training resumes from the one before it.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

from .errors import MinitronError
from .locking import is_secondary_rank
from .outputs import inside_made_folder, remove_made_folder

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "*.bin")


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is whole when its header parses and its tensors end exactly at the end of the file."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or 8 + length > size:
                return f"has a truncated {path.name}"
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return f"has a damaged {path.name}"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    return None if 8 + length + max(ends, default=0) == size else f"has a truncated {path.name}"


def _torch_file_problem(path: Path) -> str | None:
    """``torch.save`` writes a zip archive, whose directory sits at the end: a cut file has none."""
    return None if zipfile.is_zipfile(path) else f"has a truncated {path.name}"


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"lacks {path.name}"
    return _safetensors_problem(path) if path.suffix == ".safetensors" else _torch_file_problem(path)


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be resumed from ("has no trainer_state.json", ...), or None when it is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        return "does not exist"
    try:
        json.loads((folder / TRAINER_STATE).read_text())
    except FileNotFoundError:
        return f"has no {TRAINER_STATE}"
    except (OSError, ValueError):
        return f"has a damaged {TRAINER_STATE}"
    weights: list[Path] = []
    for index in INDEX_FILES:
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return f"has a damaged {index}"
            weights += [folder / shard for shard in sorted(shards)]
    weights += [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        return "holds no model weights"
    others = {path for pattern in TORCH_FILES for path in folder.glob(pattern)} - set(weights)
    for path in [*weights, *sorted(others)]:
        problem = _file_problem(path)
        if problem:
            return problem
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders under ``output_dir``, newest (highest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(p.name.split("-", 1)[1]), p)
        for p in output_dir.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-", 1)[1].isdigit()
    ]
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``output_dir`` (None if there is none).

    Newer, incomplete ones are removed, so the Trainer never resumes from or rotates around them;
    in a folder hf_minitron did not make, they are refused instead, for the user to remove.
    """
    output_dir = Path(output_dir)
    for folder in list_checkpoints(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if is_secondary_rank():
            continue  # rank 0 removes it
        if not inside_made_folder(output_dir):
            raise MinitronError(
                f"Checkpoint '{folder}' is incomplete: it {problem}",
                "A run stopped while saving it, and nothing is deleted in a folder hf_minitron did not make",
                "delete that checkpoint folder, then resume again (from the checkpoint before it)",
            )
        logger.warning("Removing incomplete checkpoint %s: it %s (a run stopped while saving it)", folder, problem)
        remove_made_folder(folder, within=output_dir)
    return None


def check_checkpoint(folder: str | os.PathLike) -> Path:
    """``folder`` if a run can resume from it, else a clear error."""
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise MinitronError(
            f"Cannot resume from '{folder}': it {problem}",
            "A checkpoint is complete only once its weights and trainer_state.json are written",
            "pass --resume_from_checkpoint last (the newest complete checkpoint), or another checkpoint-N folder",
        )
    return Path(folder)


def train_from(trainer, checkpoint: str | os.PathLike | None) -> None:
    """``trainer.train(resume_from_checkpoint=checkpoint)``, except from the last checkpoint of a finished run.

    Resumed there, the Trainer takes one step past ``max_steps`` before it checks for the end, which would
    change the weights; instead the checkpoint is loaded as ``train()`` would leave it (its weights and
    state, the best checkpoint with ``load_best_model_at_end``, the tokenizer's special tokens in the config).
    """
    if checkpoint is not None and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        from transformers import PreTrainedTokenizerBase, TrainerState
        from transformers.trainer_utils import align_special_tokens

        state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
        if state.max_steps and state.global_step >= state.max_steps:
            trainer._load_from_checkpoint(str(checkpoint))
            trainer.state = state
            best = state.best_model_checkpoint
            if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
                trainer._load_best_model()
            if isinstance(trainer.processing_class, PreTrainedTokenizerBase):
                align_special_tokens(trainer.model, trainer.processing_class)
            return
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
