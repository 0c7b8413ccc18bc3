"""A model's shape (every prunable dimension) and parameter counts, and a before → after table."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .families import family_for, get_module
from .tables import format_table


@dataclass(frozen=True)
class ModelShape:
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    params: int
    non_embedding_params: int

    def to_dict(self) -> dict:
        return asdict(self)


def config_head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def embedding_params(model: torch.nn.Module) -> int:
    """Input embeddings plus the LM head, counted once when the two are tied."""
    family = family_for(model)
    embed = get_module(model, family.embeddings).weight
    head = get_module(model, family.lm_head).weight
    # Tied weights are one Parameter object (also on the meta device, where data pointers are all 0).
    return embed.numel() + (0 if head is embed else head.numel())


def model_shape(model: torch.nn.Module) -> ModelShape:
    config = model.config
    params = sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once
    return ModelShape(
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=config_head_dim(config),
        vocab_size=config.vocab_size,
        params=params,
        non_embedding_params=params - embedding_params(model),
    )


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


_ROWS = (
    ("layers", "num_hidden_layers"),
    ("hidden size", "hidden_size"),
    ("MLP size", "intermediate_size"),
    ("query heads", "num_attention_heads"),
    ("KV heads", "num_key_value_heads"),
    ("head dim", "head_dim"),
    ("vocab", "vocab_size"),
    ("params", "params"),
    ("params w/o embeddings", "non_embedding_params"),
)


def comparison_table(
    columns: dict[str, ModelShape], extra_rows: dict[str, dict[str, str]] | None = None, markdown: bool = False
) -> str:
    """A plain-text table, one column per model, one row per dimension.

    ``extra_rows`` maps a row label to {column name: text}, e.g. perplexities.
    The first column is the reference: counts in later columns also show their share of it.
    """
    names = list(columns)
    reference = columns[names[0]]
    rows = [["", *names]]
    for label, key in _ROWS:
        row = [label]
        for name in names:
            value = getattr(columns[name], key)
            text = human_count(value) if key.endswith("params") else str(value)
            base = getattr(reference, key)
            if name != names[0] and key.endswith("params") and base:
                text += f" ({100 * value / base:.0f}%)"
            row.append(text)
        rows.append(row)
    for label, values in (extra_rows or {}).items():
        rows.append([label, *(values.get(name, "-") for name in names)])
    return format_table(rows, markdown=markdown)
