"""Where a mixture-of-experts model keeps its experts: the sparse layers, their routers and sizes."""

from __future__ import annotations

from .families import ModelFamily, family_for, get_module
from .layers import decoder_layers


def is_moe_family(family: ModelFamily) -> bool:
    return family.expert_count_key is not None


def sparse_layers(model) -> dict[int, tuple]:
    """{layer index: (router, experts)} for every layer that routes tokens to experts.

    Qwen3-MoE can keep some layers dense (``mlp_only_layers`` / ``decoder_sparse_step``), so the
    modules themselves decide, not the config.
    """
    family = family_for(model)
    if not is_moe_family(family):
        return {}
    found = {}
    for index, layer in enumerate(decoder_layers(model)):
        try:
            found[index] = (get_module(layer, family.moe_router), get_module(layer, family.moe_experts))
        except AttributeError:
            continue
    return found


def expert_count(model_or_config) -> int | None:
    config = getattr(model_or_config, "config", model_or_config)
    key = family_for(config).expert_count_key
    return getattr(config, key) if key else None


def expert_width(model_or_config) -> int | None:
    config = getattr(model_or_config, "config", model_or_config)
    key = family_for(config).expert_width_key
    return getattr(config, key) if key else None
