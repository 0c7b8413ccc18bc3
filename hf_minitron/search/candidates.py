"""Candidate shapes for architecture search: every grid combination that prunes validly and fits the budget.

Minitron enumerated shapes within ±5% of a parameter target (layers, heads, MLP size, hidden size),
distilled each lightly and kept the best. Here each candidate is checked with the same rules
prune_model enforces, and its parameter count comes from instantiating its config on the meta
device, so it is exact for every family without allocating memory.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass

import torch

from ..errors import MinitronError
from ..pruning import PruningConfig
from ..shapes import model_shape


@dataclass(frozen=True)
class Candidate:
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_size: int
    params: int
    non_embedding_params: int

    @property
    def name(self) -> str:
        return f"L{self.num_hidden_layers}-H{self.num_attention_heads}-M{self.intermediate_size}-D{self.hidden_size}"

    def pruning_config(self, layer_selection: str = "block_importance") -> PruningConfig:
        return PruningConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_hidden_layers=self.num_hidden_layers,
            layer_selection=layer_selection,
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}


def count_params(config, **dims) -> tuple[int, int]:
    """(total, non-embedding) parameters of ``config`` with ``dims`` replaced, without allocating weights."""
    from transformers import AutoModelForCausalLM

    changed = copy.deepcopy(config)
    for key, value in dims.items():
        setattr(changed, key, value)
    if isinstance(getattr(changed, "layer_types", None), list):
        changed.layer_types = changed.layer_types[: changed.num_hidden_layers]
    with torch.device("meta"):
        shape = model_shape(AutoModelForCausalLM.from_config(changed))
    return shape.params, shape.non_embedding_params


def default_grid(config) -> dict[str, list[int]]:
    """Width-only grids around the source: all layers and heads kept, hidden and MLP from 50% to 100%."""
    heads = config.num_attention_heads
    hidden_step = heads * 8 // _gcd(heads, 8)  # a multiple of the head count and of 8
    hidden = sorted(
        {
            max(hidden_step, int(config.hidden_size * f) // hidden_step * hidden_step)
            for f in (0.5, 0.625, 0.75, 0.875, 1.0)
        }
    )
    mlp = sorted({max(8, int(config.intermediate_size * f) // 8 * 8) for f in (0.25, 0.375, 0.5, 0.625, 0.75, 1.0)})
    return {"layers": [config.num_hidden_layers], "heads": [heads], "mlp": mlp, "hidden": hidden}


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def enumerate_candidates(
    config,
    target_params: float,
    *,
    tolerance: float = 0.05,
    layers=None,
    heads=None,
    mlp=None,
    hidden=None,
    count: str = "total",
) -> list[Candidate]:
    """Every combination of the grids that is a valid pruning of ``config`` and within ±tolerance of the target.

    ``count`` chooses what the target counts: ``total`` parameters or ``non_embedding`` ones.
    """
    if count not in ("total", "non_embedding"):
        raise MinitronError(f"count must be 'total' or 'non_embedding', got {count!r}")
    grid = default_grid(config)
    grid.update({k: v for k, v in (("layers", layers), ("heads", heads), ("mlp", mlp), ("hidden", hidden)) if v})
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_group = config.num_attention_heads // kv
    candidates, seen = [], set()
    for n_layers, n_heads, n_mlp, n_hidden in itertools.product(
        grid["layers"], grid["heads"], grid["mlp"], grid["hidden"]
    ):
        valid = (
            0 < n_layers <= config.num_hidden_layers
            and 0 < n_heads <= config.num_attention_heads
            and n_heads % kv == 0
            and n_heads // kv <= per_group
            and 0 < n_mlp <= config.intermediate_size
            and 0 < n_hidden <= config.hidden_size
            and n_hidden % n_heads == 0
        )
        key = (n_layers, n_heads, n_mlp, n_hidden)
        if not valid or key in seen:
            continue
        seen.add(key)
        total, non_embedding = count_params(
            config,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=n_mlp,
            hidden_size=n_hidden,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        )
        value = total if count == "total" else non_embedding
        if abs(value - target_params) <= tolerance * target_params:
            candidates.append(Candidate(n_layers, n_heads, n_mlp, n_hidden, total, non_embedding))
    if not candidates:
        raise MinitronError(
            f"No candidate shape is within ±{tolerance:.0%} of {target_params:,.0f} {count.replace('_', '-')} "
            f"parameters",
            f"searched layers {grid['layers']}, heads {grid['heads']}, MLP {grid['mlp']}, hidden {grid['hidden']}",
            "widen the grids or the tolerance, or change the target",
        )
    return sorted(candidates, key=lambda c: -c.params)
