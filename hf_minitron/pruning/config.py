"""PruningConfig: the target shape, and how layers are chosen when depth is cut."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import MinitronError
from ..outputs import write_text_atomically
from ..settings import settings_from_dict

LAYER_SELECTIONS = ("block_importance", "lm_loss", "downstream", "explicit")
CONFIG_NAME = "pruning_config.json"
WIDTH_TARGETS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
EXPERT_TARGETS = ("num_experts", "moe_intermediate_size")
# Every target size a PruningConfig takes (the order the command line lists them in).
TARGETS = (*WIDTH_TARGETS, "num_hidden_layers", *EXPERT_TARGETS)
EXPERT_SELECTIONS = ("saliency", "frequency", "mass")
NEURON_SELECTIONS = ("energy", "activation")


@dataclass
class PruningConfig:
    """Target sizes of a pruned model. A target left as ``None`` keeps that dimension.

    Width:
        hidden_size: residual-stream width (embedding channels). head_dim is always kept,
            so attention projections keep ``num_attention_heads * head_dim`` rows.
        intermediate_size: MLP neurons per layer.
        num_attention_heads: query heads, removed evenly inside every KV group (GQA).
        num_key_value_heads: KV heads; whole groups are removed with their query heads.
    Depth:
        num_hidden_layers: layers to keep.
        layer_selection: how the layers to drop are chosen —
            ``block_importance``: the layers with the lowest 1 − cos(input, output);
            ``lm_loss``: the one contiguous block whose removal hurts LM loss least (needs
            scores computed with ``block_lm_loss_sizes`` containing the block size);
            ``downstream``: the one contiguous block whose removal keeps a downstream task's
            accuracy highest (needs scores with ``downstream_task`` and ``block_accuracy_sizes``;
            the task may be ``builtin:everyday-facts``); blocks within one standard error of the
            best accuracy count as tied, and LM loss, which ``estimate_importance`` measures for the
            tied blocks along with the accuracy sweep, picks among them;
            ``explicit``: exactly ``layers_to_drop``.
            Which is best depends on reconstruction and on the cut (bench/recovery.py, SmolLM2-135M).
            Without reconstruction one contiguous block wins, as Minitron found: 15 of 30 layers by
            ``lm_loss`` reach held-out perplexity 146 after 20k distillation tokens, the scattered
            ``block_importance`` layers 241. With reconstruction (layers ``all``) the scattered layers
            win at that half-depth cut, 58.9 before any training (the block: 101.8) and 46.7 after
            20k tokens (71.7), because each short gap is stood in for by the re-fit of the layer before
            it; at a quarter of the layers the two are even (26.1 vs 26.0).
        layers_to_drop: 0-based layer indices for ``explicit`` selection.
    MLP neurons:
        neuron_selection: which neurons stay when ``intermediate_size`` is cut —
            ``energy`` (the default): the energy each neuron writes into the residual stream,
            E[a²] · ||down_proj column||², its activation's mean square over the calibration tokens
            times the squared norm of the weights it is read through;
            ``activation``: Minitron's activation importance alone (``ImportanceScores.neurons``).
            bench/neuron_selection.py (SmolLM2-135M, MLP neurons only, re-fitted): energy keeps the
            held-out documentation perplexity 5% lower at MLP 1536→768 and →1024 and 3% at →1280,
            and Tiny Shakespeare's 7% and 3% lower at →768 and →1024 (2% higher at →1280). At that
            mild →1280 cut the activation score kept more everyday facts (bench/knowledge.py: 11 of
            18 against 8), which is why the demo recipe's width student uses it.
    Mixture of experts (Qwen3-MoE, Mixtral):
        num_experts: experts kept in every sparse layer (at least ``num_experts_per_tok``); the
            least important go, with their router rows, so top-k routing runs over the survivors.
        moe_intermediate_size: intermediate neurons kept in every expert (each expert keeps its own
            best ones). For Mixtral this is the config's ``intermediate_size``, which there is the
            expert width.
        expert_selection: which experts go — ``saliency`` (REAP: mean gate weight × expert output
            norm over the tokens routed to the expert), ``frequency`` (how often it is routed to) or
            ``mass`` (the default: gate weight × output norm summed over all tokens, i.e. saliency ×
            frequency, so a rarely chosen expert with large outputs does not outrank a busy one, and a
            busy one that writes nothing still goes; bench/moe_recovery.py measured it beside frequency
            and well ahead of saliency).
    Options:
        head_residual_merge: when query heads are cut from L to K per group, fold pruned heads
            into kept ones as in Minitron: head_i ← 2·head_i − head_{2K−i+1}, applied to each
            query head's weights (q_proj rows and bias, o_proj columns).
    """

    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    num_hidden_layers: int | None = None
    layer_selection: str = "block_importance"
    layers_to_drop: list[int] | None = None
    head_residual_merge: bool = False
    num_experts: int | None = None
    moe_intermediate_size: int | None = None
    expert_selection: str = "mass"
    neuron_selection: str = "energy"

    def __post_init__(self) -> None:
        for name in TARGETS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise MinitronError(f"PruningConfig.{name} must be a positive integer, got {value!r}")
        if self.layers_to_drop is not None:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.layers_to_drop):
                raise MinitronError(f"layers_to_drop must be a list of layer indices, got {self.layers_to_drop!r}")
            self.layers_to_drop = sorted(self.layers_to_drop)
            if self.layer_selection == "block_importance":  # the default: a list implies explicit
                self.layer_selection = "explicit"
        if self.layer_selection not in LAYER_SELECTIONS:
            raise MinitronError(
                f"Unknown layer_selection '{self.layer_selection}'",
                f"the choices are {', '.join(LAYER_SELECTIONS)}",
            )
        if self.layer_selection == "explicit" and self.layers_to_drop is None:
            raise MinitronError(
                "layer_selection 'explicit' needs layers_to_drop",
                fix="list the 0-based indices of the layers to remove",
            )
        if self.expert_selection not in EXPERT_SELECTIONS:
            raise MinitronError(
                f"Unknown expert_selection '{self.expert_selection}'",
                f"the choices are {', '.join(EXPERT_SELECTIONS)}",
            )
        if self.neuron_selection not in NEURON_SELECTIONS:
            raise MinitronError(
                f"Unknown neuron_selection '{self.neuron_selection}'",
                f"the choices are {', '.join(NEURON_SELECTIONS)}",
            )
        if not isinstance(self.head_residual_merge, bool):
            raise MinitronError(f"head_residual_merge must be true or false, got {self.head_residual_merge!r}")

    @property
    def prunes_depth(self) -> bool:
        return self.num_hidden_layers is not None or self.layers_to_drop is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PruningConfig:
        return settings_from_dict(cls, values, "pruning")

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / CONFIG_NAME
        write_text_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> PruningConfig:
        """Read a ``pruning_config.json`` file, or the one inside a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise MinitronError(f"No pruning config at '{path}'", fix=f"point at a {CONFIG_NAME} file or its folder")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise MinitronError(f"'{path}' is not valid JSON ({error})") from error
        return cls.from_dict(values)
