"""Model families in one declarative table.

Every place in the library that needs to know where a module lives, or which axis a
weight dimension belongs to, reads it from here. Supporting a new decoder-only family
means adding a row, not editing pruning or importance code.

A *pruning plan* maps a parameter-name pattern (``*`` stands for the layer index) to
one entry per tensor dimension naming the axis that dimension runs along:

- ``HIDDEN``   the residual-stream width (embedding channels), one ranking for the model
- ``HEADS``    query heads, ranked per layer; a dimension of ``heads * head_dim`` rows
- ``KV_HEADS`` key/value heads (GQA groups); a dimension of ``kv_heads * head_dim`` rows
- ``MLP``      MLP neurons, ranked per layer
- ``EXPERTS``  mixture-of-experts experts (and their router rows), ranked per layer
- ``EXPERT_MLP`` one expert's intermediate neurons, ranked per layer and expert
- ``EXPERT_GATE_UP`` the fused gate and up rows of an expert: ``2 * expert width``, gate half first
- ``None``     a dimension that pruning never changes (vocab, head_dim)

In the spirit of transformers' ``base_model_tp_plan``, one generic slicing routine
serves every family from this table. The expert axes differ per expert (each expert
keeps its own neurons), so ``hf_minitron.pruning.experts`` slices those before the
generic routine handles the shared axes of the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import MinitronError

HIDDEN = "hidden"
HEADS = "heads"
KV_HEADS = "kv_heads"
MLP = "mlp"
EXPERTS = "experts"
EXPERT_MLP = "expert_mlp"
EXPERT_GATE_UP = "expert_gate_up"

# Llama-style decoder: shared by every supported family. Patterns for optional
# tensors (biases) simply match nothing when a model does not have them.
_DECODER_PLAN: dict[str, tuple[str | None, ...]] = {
    "model.embed_tokens.weight": (None, HIDDEN),
    "model.layers.*.input_layernorm.weight": (HIDDEN,),
    "model.layers.*.post_attention_layernorm.weight": (HIDDEN,),
    "model.layers.*.self_attn.q_proj.weight": (HEADS, HIDDEN),
    "model.layers.*.self_attn.q_proj.bias": (HEADS,),
    "model.layers.*.self_attn.k_proj.weight": (KV_HEADS, HIDDEN),
    "model.layers.*.self_attn.k_proj.bias": (KV_HEADS,),
    "model.layers.*.self_attn.v_proj.weight": (KV_HEADS, HIDDEN),
    "model.layers.*.self_attn.v_proj.bias": (KV_HEADS,),
    "model.layers.*.self_attn.o_proj.weight": (HIDDEN, HEADS),
    "model.layers.*.self_attn.o_proj.bias": (HIDDEN,),
    "model.layers.*.mlp.gate_proj.weight": (MLP, HIDDEN),
    "model.layers.*.mlp.gate_proj.bias": (MLP,),
    "model.layers.*.mlp.up_proj.weight": (MLP, HIDDEN),
    "model.layers.*.mlp.up_proj.bias": (MLP,),
    "model.layers.*.mlp.down_proj.weight": (HIDDEN, MLP),
    "model.layers.*.mlp.down_proj.bias": (HIDDEN,),
    "model.norm.weight": (HIDDEN,),
    "lm_head.weight": (None, HIDDEN),
}

# Qwen3 normalises queries and keys per head over head_dim, which pruning keeps.
_QK_NORM_PLAN = {
    "model.layers.*.self_attn.q_norm.weight": (None,),
    "model.layers.*.self_attn.k_norm.weight": (None,),
}

# Sparse MoE block of transformers 5: a router over the residual stream and the experts stored
# as fused 3-D tensors ([experts, 2 * width, hidden] for gate|up, [experts, hidden, width] for down).
_EXPERTS_PLAN = {
    "model.layers.*.mlp.gate.weight": (EXPERTS, HIDDEN),
    "model.layers.*.mlp.experts.gate_up_proj": (EXPERTS, EXPERT_GATE_UP, HIDDEN),
    "model.layers.*.mlp.experts.down_proj": (EXPERTS, HIDDEN, EXPERT_MLP),
}

# Qwen2-MoE adds an always-on shared expert (a gated dense MLP of its own width) to each sparse layer.
# Only the hidden axis runs through it: its width has no importance scores and is kept whole.
_SHARED_EXPERT_PLAN = {
    "model.layers.*.mlp.shared_expert.gate_proj.weight": (None, HIDDEN),
    "model.layers.*.mlp.shared_expert.up_proj.weight": (None, HIDDEN),
    "model.layers.*.mlp.shared_expert.down_proj.weight": (HIDDEN, None),
    "model.layers.*.mlp.shared_expert_gate.weight": (None, HIDDEN),
}

# Gemma 3 wraps each block in "sandwich" norms: besides the Llama pair it normalises the attention
# and MLP outputs before they join the residual stream, and normalises the stream before the MLP.
_SANDWICH_NORM_PLAN = {
    "model.layers.*.pre_feedforward_layernorm.weight": (HIDDEN,),
    "model.layers.*.post_feedforward_layernorm.weight": (HIDDEN,),
}


@dataclass(frozen=True)
class ModelFamily:
    """Where things live in one family of causal LMs, and how its weights are pruned."""

    name: str
    model_types: tuple[str, ...]
    pruning_plan: dict[str, tuple[str | None, ...]]
    notes: str = ""
    # Module paths, relative to the *ForCausalLM root.
    decoder: str = "model"
    layers: str = "model.layers"
    embeddings: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    # Hook points for importance: the input of these projections is the per-head
    # attention output and the per-neuron MLP activation (after the gated activation).
    head_activation_input: str = "self_attn.o_proj"
    neuron_activation_input: str = "mlp.down_proj"
    # The module whose input is the residual stream between attention and MLP (reconstruction reads it).
    residual_after_attention_reader: str = "post_attention_layernorm"
    # Norms whose outputs give embedding-channel importance.
    channel_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # Config lists with one entry per layer, kept in step when layers are dropped.
    per_layer_config_lists: tuple[str, ...] = field(default=("layer_types",))
    # GGUF export: llama.cpp's architecture name (None: not exported), and whether q/k rows are
    # reordered from HF's two-halves rotary layout to llama.cpp's interleaved one.
    gguf_architecture: str | None = None
    gguf_rotary_permute: bool = False
    # Mixture of experts (None: a dense family). The config attributes holding the experts per sparse
    # layer and each expert's intermediate size, and where a sparse layer keeps its router and experts.
    expert_count_key: str | None = None
    expert_width_key: str | None = None
    moe_router: str = "mlp.gate"
    moe_experts: str = "mlp.experts"
    # Gemma's RMSNorm multiplies by (1 + weight): the stored weight is the gain minus this offset.
    norm_weight_offset: float = 0.0
    # The embedding output is multiplied by sqrt(config.hidden_size), recomputed from the config on load.
    embeddings_scaled_by_width: bool = False
    # Norms applied to the attention / MLP output before the residual add (None: the output is added as is).
    attention_output_norm: str | None = None
    mlp_output_norm: str | None = None


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        name="Llama",
        model_types=("llama",),
        pruning_plan=_DECODER_PLAN,
        notes="Llama-2/3.x; explicit head_dim; GQA; optional attention_bias / mlp_bias; tied or untied embeddings",
        gguf_architecture="llama",
        gguf_rotary_permute=True,
    ),
    ModelFamily(
        name="Mistral",
        model_types=("mistral",),
        pruning_plan=_DECODER_PLAN,
        notes="Llama layout with sliding-window attention",
        gguf_architecture="llama",  # llama.cpp runs Mistral as the llama architecture
        gguf_rotary_permute=True,
    ),
    ModelFamily(
        name="Qwen2",
        model_types=("qwen2",),
        pruning_plan=_DECODER_PLAN,
        notes="q/k/v projections always carry a bias; o_proj has none",
        gguf_architecture="qwen2",
    ),
    ModelFamily(
        name="Qwen3",
        model_types=("qwen3",),
        pruning_plan={**_DECODER_PLAN, **_QK_NORM_PLAN},
        notes="per-head q_norm / k_norm over head_dim",
        gguf_architecture="qwen3",  # sizes come from the metadata, so any pruned head_dim loads
    ),
    ModelFamily(
        name="Qwen2-MoE",
        model_types=("qwen2_moe",),
        pruning_plan={**_DECODER_PLAN, **_EXPERTS_PLAN, **_SHARED_EXPERT_PLAN},
        notes="Qwen2 attention; sparse layers add a sigmoid-gated shared expert (shared_expert_intermediate_size, "
        "kept whole) to the routed ones; mlp_only_layers / decoder_sparse_step as in Qwen3-MoE",
        expert_count_key="num_experts",
        expert_width_key="moe_intermediate_size",
        gguf_architecture="qwen2moe",
    ),
    ModelFamily(
        name="Qwen3-MoE",
        model_types=("qwen3_moe",),
        pruning_plan={**_DECODER_PLAN, **_QK_NORM_PLAN, **_EXPERTS_PLAN},
        notes="Qwen3 attention; sparse layers route each token to num_experts_per_tok of num_experts experts; "
        "mlp_only_layers / decoder_sparse_step keep some layers dense (intermediate_size)",
        expert_count_key="num_local_experts",  # what the config stores; num_experts is an alias of it
        expert_width_key="moe_intermediate_size",
        gguf_architecture="qwen3moe",
    ),
    ModelFamily(
        name="Mixtral",
        model_types=("mixtral",),
        pruning_plan={**_DECODER_PLAN, **_EXPERTS_PLAN},
        notes="Mistral attention; every layer is sparse; intermediate_size is each expert's width",
        expert_count_key="num_local_experts",
        expert_width_key="intermediate_size",
        gguf_architecture="llama",  # llama.cpp runs Mixtral as llama with stacked experts
        gguf_rotary_permute=True,
    ),
    ModelFamily(
        name="Gemma3",
        model_types=("gemma3_text",),
        pruning_plan={**_DECODER_PLAN, **_QK_NORM_PLAN, **_SANDWICH_NORM_PLAN},
        notes=(
            "text-only Gemma 3 (270M, 1B); sandwich norms with (1 + weight) gains; embeddings scaled by "
            "sqrt(hidden_size); head_dim independent of the width; sliding / full attention per layer_types"
        ),
        residual_after_attention_reader="pre_feedforward_layernorm",
        channel_norms=("input_layernorm", "pre_feedforward_layernorm"),
        norm_weight_offset=1.0,
        embeddings_scaled_by_width=True,
        attention_output_norm="post_attention_layernorm",
        mlp_output_norm="post_feedforward_layernorm",
        gguf_architecture="gemma3",
    ),
)

# Types a user may well try that need another route than "add a row".
_REDIRECTS = {
    "gemma3": (
        "this is a multimodal Gemma 3 checkpoint (vision tower + language model)",
        "prune a text-only Gemma 3 (gemma-3-270m, gemma-3-1b: model_type gemma3_text), or save the language "
        "model of this one on its own (Gemma3ForCausalLM with its text_config) and prune that",
    ),
}


def supported_model_types() -> list[str]:
    return [t for family in FAMILIES for t in family.model_types]


def family_for(model_or_config) -> ModelFamily:
    """The family row for a model or config; a clear error for anything unsupported."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    if model_type in _REDIRECTS:
        why, fix = _REDIRECTS[model_type]
        raise MinitronError(f"Model type '{model_type}' is not supported: {why}", fix=fix)
    names = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)
    raise MinitronError(
        f"Model type '{model_type}' is not supported",
        f"hf_minitron knows how to prune these families: {names}",
        "use a model of a supported family, or add a row for yours to hf_minitron/families.py",
    )


def get_module(root, path: str):
    """Follow a dotted path such as ``model.layers`` from ``root``."""
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def find_module(root, path: str):
    """Like ``get_module``, but None when the path is absent (a sparse MoE layer has no dense ``mlp.down_proj``)."""
    try:
        return get_module(root, path)
    except AttributeError:
        return None


def set_module(root, path: str, value) -> None:
    parent_path, _, leaf = path.rpartition(".")
    setattr(get_module(root, parent_path) if parent_path else root, leaf, value)


def norm_gain(norm, family: ModelFamily) -> torch.Tensor:
    """The per-channel factor a norm multiplies by, whatever its storage convention (fp32)."""
    return norm.weight.float() + family.norm_weight_offset


@torch.no_grad()
def scale_norm_gain_(norm, factor, family: ModelFamily) -> None:
    """Multiply a norm's effective gain by ``factor`` (a number or per-channel tensor), in place."""
    gain = norm_gain(norm, family) * factor
    norm.weight.copy_((gain - family.norm_weight_offset).to(norm.weight.dtype))


def final_logit_softcap(model) -> float | None:
    """The cap Gemma-style heads put on logits (cap · tanh(logits / cap)), or None."""
    config = getattr(model, "config", model)
    return getattr(config, "final_logit_softcapping", None)


def cap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``logits`` as a model with ``final_logit_softcapping = cap`` outputs them (unchanged when None)."""
    return logits if cap is None else torch.tanh(logits / cap) * cap
