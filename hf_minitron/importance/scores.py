"""Importance scores: one container, saved as safetensors + JSON, with a per-layer plot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import MinitronError
from ..moe import expert_count, expert_width
from ..outputs import write_text_atomically

TENSORS_FILE = "importance.safetensors"
METADATA_FILE = "importance.json"
PLOT_FILE = "importance.png"
BLOCK_PLOT_FILE = "block_removal.png"
EXPERT_FIELDS = ("expert_saliency", "expert_frequency", "expert_neurons")
# Tensors a set of scores may lack: scores saved before the field existed, or weight-magnitude scores.
OPTIONAL_FIELDS = ("neuron_energy", *EXPERT_FIELDS)


@dataclass
class ImportanceScores:
    """Activation-based importance of every prunable unit of one model.

    heads              [layers, query heads]   attention output per head (input of o_proj)
    neurons            [layers, MLP size]      MLP activation per neuron (input of down_proj)
    neuron_energy      [layers, MLP size]      mean squared activation per neuron over all tokens, E[a²]
                                               (with down_proj's column norms: the energy a neuron writes)
    channels_per_layer [layers, hidden]        both norms' outputs of each layer, summed
    channels           [hidden]                ``channels_per_layer`` summed over layers
    block_importance   [layers]                1 − mean cos(layer input, layer output)
    block_lm_loss      {k: [layers − k + 1]}   LM loss with layers i..i+k−1 skipped
    block_accuracy     {k: [layers − k + 1]}   downstream task accuracy with layers i..i+k−1 skipped

    Mixture-of-experts models only (None otherwise; dense layers' rows are zero):
    expert_saliency    [layers, experts]         mean gate weight × ||expert output|| over routed tokens
    expert_frequency   [layers, experts]         share of tokens routed to each expert
    expert_neurons     [layers, experts, width]  mean |activation| of each expert's intermediate channels
    """

    heads: torch.Tensor
    neurons: torch.Tensor
    channels_per_layer: torch.Tensor
    block_importance: torch.Tensor
    block_lm_loss: dict[int, torch.Tensor] = field(default_factory=dict)
    base_lm_loss: float | None = None
    block_accuracy: dict[int, torch.Tensor] = field(default_factory=dict)
    base_accuracy: float | None = None
    metadata: dict = field(default_factory=dict)
    neuron_energy: torch.Tensor | None = None
    expert_saliency: torch.Tensor | None = None
    expert_frequency: torch.Tensor | None = None
    expert_neurons: torch.Tensor | None = None

    @property
    def channels(self) -> torch.Tensor:
        return self.channels_per_layer.sum(0)

    @property
    def num_layers(self) -> int:
        return self.heads.shape[0]

    def check_matches(self, model) -> None:
        """Scores must describe this very shape; stale scores would prune the wrong units."""
        config = model.config
        expected = {
            "layers": (self.num_layers, config.num_hidden_layers),
            "query heads": (self.heads.shape[1], config.num_attention_heads),
            "MLP size": (self.neurons.shape[1], config.intermediate_size),
            "hidden size": (self.channels_per_layer.shape[1], config.hidden_size),
        }
        if self.expert_neurons is not None:
            expected["experts"] = (self.expert_neurons.shape[1], expert_count(model))
            expected["expert width"] = (self.expert_neurons.shape[2], expert_width(model))
        wrong = [f"{k}: scores {a}, model {b}" for k, (a, b) in expected.items() if a != b]
        if wrong:
            raise MinitronError(
                "The importance scores were computed for a model of another shape (" + "; ".join(wrong) + ")",
                "pruning with them would remove the wrong heads, neurons or channels",
                "recompute them on this model with estimate_importance / `hf-minitron importance`",
            )

    def save(self, directory: str | os.PathLike, plots: bool = True) -> Path:
        """Scores (safetensors) and metadata (JSON), plus the importance and block-removal plots."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "heads": self.heads,
            "neurons": self.neurons,
            "channels_per_layer": self.channels_per_layer,
            "block_importance": self.block_importance,
            **{f"block_lm_loss.{k}": v for k, v in self.block_lm_loss.items()},
            **{f"block_accuracy.{k}": v for k, v in self.block_accuracy.items()},
            **{name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None},
        }
        temporary = directory / f".{TENSORS_FILE}.partial"
        save_file({k: v.contiguous().float().cpu() for k, v in tensors.items()}, str(temporary))
        os.replace(temporary, directory / TENSORS_FILE)
        meta = {**self.metadata, "base_lm_loss": self.base_lm_loss, "base_accuracy": self.base_accuracy}
        write_text_atomically(directory / METADATA_FILE, json.dumps(meta, indent=2) + "\n")
        if plots:
            from ..plots import plot_block_removal

            self.plot(directory / PLOT_FILE)
            plot_block_removal(self, directory / BLOCK_PLOT_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ImportanceScores:
        directory = Path(directory)
        tensors_path, meta_path = directory / TENSORS_FILE, directory / METADATA_FILE
        missing = [p.name for p in (tensors_path, meta_path) if not p.is_file()]
        if missing:
            raise MinitronError(
                f"No importance scores in '{directory}' (missing {', '.join(missing)})",
                fix="point at a folder written by `hf-minitron importance` or ImportanceScores.save",
            )
        tensors = load_file(str(tensors_path))
        meta = json.loads(meta_path.read_text())

        def blocks(prefix):
            return {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith(prefix + ".")}

        base, base_accuracy = meta.pop("base_lm_loss", None), meta.pop("base_accuracy", None)
        return cls(
            heads=tensors["heads"],
            neurons=tensors["neurons"],
            channels_per_layer=tensors["channels_per_layer"],
            block_importance=tensors["block_importance"],
            block_lm_loss=blocks("block_lm_loss"),
            base_lm_loss=base,
            block_accuracy=blocks("block_accuracy"),
            base_accuracy=base_accuracy,
            metadata=meta,
            **{name: tensors.get(name) for name in OPTIONAL_FIELDS},
        )

    def plot(self, path: str | os.PathLike) -> Path:
        """PNG of per-layer importance (see ``hf_minitron.plots``)."""
        from ..plots import plot_importance

        return plot_importance(self, path)
