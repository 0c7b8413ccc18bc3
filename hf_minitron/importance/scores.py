"""Importance scores: one container, saved as safetensors + JSON, with a per-layer plot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import MinitronError
from ..outputs import write_text_atomically

TENSORS_FILE = "importance.safetensors"
METADATA_FILE = "importance.json"
PLOT_FILE = "importance.png"


@dataclass
class ImportanceScores:
    """Activation-based importance of every prunable unit of one model.

    heads              [layers, query heads]   attention output per head (input of o_proj)
    neurons            [layers, MLP size]      MLP activation per neuron (input of down_proj)
    channels_per_layer [layers, hidden]        both norms' outputs of each layer, summed
    channels           [hidden]                ``channels_per_layer`` summed over layers
    block_importance   [layers]                1 − mean cos(layer input, layer output)
    block_lm_loss      {k: [layers − k + 1]}   LM loss with layers i..i+k−1 skipped
    """

    heads: torch.Tensor
    neurons: torch.Tensor
    channels_per_layer: torch.Tensor
    block_importance: torch.Tensor
    block_lm_loss: dict[int, torch.Tensor] = field(default_factory=dict)
    base_lm_loss: float | None = None
    metadata: dict = field(default_factory=dict)

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
        wrong = [f"{k}: scores {a}, model {b}" for k, (a, b) in expected.items() if a != b]
        if wrong:
            raise MinitronError(
                "The importance scores were computed for a model of another shape (" + "; ".join(wrong) + ")",
                "pruning with them would remove the wrong heads, neurons or channels",
                "recompute them on this model with estimate_importance / `hf-minitron importance`",
            )

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "heads": self.heads,
            "neurons": self.neurons,
            "channels_per_layer": self.channels_per_layer,
            "block_importance": self.block_importance,
            **{f"block_lm_loss.{k}": v for k, v in self.block_lm_loss.items()},
        }
        temporary = directory / f".{TENSORS_FILE}.partial"
        save_file({k: v.contiguous().float().cpu() for k, v in tensors.items()}, str(temporary))
        os.replace(temporary, directory / TENSORS_FILE)
        meta = {**self.metadata, "base_lm_loss": self.base_lm_loss, "block_sizes": sorted(self.block_lm_loss)}
        write_text_atomically(directory / METADATA_FILE, json.dumps(meta, indent=2) + "\n")
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
        blocks = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("block_lm_loss.")}
        base = meta.pop("base_lm_loss", None)
        meta.pop("block_sizes", None)
        return cls(
            heads=tensors["heads"],
            neurons=tensors["neurons"],
            channels_per_layer=tensors["channels_per_layer"],
            block_importance=tensors["block_importance"],
            block_lm_loss=blocks,
            base_lm_loss=base,
            metadata=meta,
        )

    def plot(self, path: str | os.PathLike) -> Path:
        """PNG of per-layer importance: block importance, and the spread of head / neuron scores."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = list(range(self.num_layers))
        panels = 3 + bool(self.block_lm_loss)
        fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), sharex=False)
        axes[0].bar(layers, self.block_importance.tolist(), color="tab:blue")
        axes[0].set_ylabel("block importance\n1 − cos(in, out)")
        for ax, values, label in ((axes[1], self.heads, "head score"), (axes[2], self.neurons, "neuron score")):
            ax.plot(layers, values.mean(1).tolist(), label="mean", color="tab:orange")
            ax.fill_between(
                layers,
                values.min(1).values.tolist(),
                values.max(1).values.tolist(),
                alpha=0.25,
                color="tab:orange",
                label="min–max",
            )
            ax.set_ylabel(label)
            ax.set_yscale("log")  # a few outlier units dwarf the rest on a linear scale
            ax.legend(loc="upper left", fontsize=8)
        if self.block_lm_loss:
            ax = axes[3]
            for k, losses in sorted(self.block_lm_loss.items()):
                ax.plot(range(len(losses)), losses.tolist(), marker="o", ms=3, label=f"{k} layers skipped")
            if self.base_lm_loss is not None:
                ax.axhline(self.base_lm_loss, color="gray", ls="--", lw=1, label="no layer skipped")
            ax.set_ylabel("LM loss")
            ax.set_xlabel("first skipped layer")
            ax.legend(fontsize=8)
        for ax in axes[:3]:
            ax.set_xlabel("layer")
        title = self.metadata.get("model", "")
        fig.suptitle(f"Importance per layer {('— ' + title) if title else ''}".strip())
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
