"""GGUF export for llama.cpp: pruned shapes (explicit head_dim, GQA, tied embeddings) written correctly.

Metadata gives every dimension explicitly — ``rope.dimension_count`` and the attention key/value
lengths carry a head_dim that no longer equals hidden / heads after width pruning — and a tied
LM head is simply not written (llama.cpp and transformers then reuse ``token_embd``). For the
llama architecture the q/k rows (and biases) are reordered to llama.cpp's rotary layout, the inverse
of what loaders undo; a width-pruned Qwen2 whose heads × head_dim ≠ hidden is written as llama.
2-D weights are quantized to the chosen type when their rows divide into its blocks; norms, biases
and rows that do not divide stay in F32 (F16 for the row-size fallback).

Gemma 3 goes in as llama.cpp's ``gemma3``: norm gains are written with Gemma's ``1 +`` already added,
the per-layer sliding / full pattern (``layer_types``, which depth pruning makes irregular) as a
per-layer list, the local RoPE base as ``rope.freq_base_swa``, and llama.cpp's fixed attention scale
corrected through the query norm when ``query_pre_attn_scalar`` differs from head_dim. Mixture-of-experts
models (Qwen3-MoE as ``qwen3moe``, Mixtral as ``llama``, Qwen2-MoE as ``qwen2moe``) have their fused
expert weights split into the stacked 3-D gate / up / down tensors llama.cpp expects; what llama.cpp
cannot compute the same way (dense layers between sparse ones, another top-k normalisation) is refused
before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import MinitronError
from ..families import FAMILIES, family_for
from ..loading import load_model_and_tokenizer
from ..moe import expert_count, expert_width, is_moe_family, sparse_layers
from ..outputs import check_output_file
from .gguf_tokenizer import write_tokenizer

GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")


def _permute_for_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF orders each head's rotary pairs as two halves; llama.cpp interleaves them."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_architecture(family, config) -> tuple[str, bool]:
    """(llama.cpp architecture, whether q/k rows are permuted for its rotary layout) for this model.

    llama.cpp's qwen2 architecture assumes the query projection is hidden × hidden, which width pruning can
    break (heads × head_dim ≠ hidden). Its llama architecture reads every size from the metadata and accepts
    optional q/k/v biases, so such a Qwen2 is written as llama, with the rotary permutation that implies.
    """
    arch, permute = family.gguf_architecture, family.gguf_rotary_permute
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if arch == "qwen2" and heads * head_dim != hidden:
        return "llama", True
    return arch, permute


def _encode(array: np.ndarray, qtype_name: str):
    """(data, GGML type) for one tensor: quantized if it is 2-D and its rows divide into blocks."""
    import gguf
    from gguf import quants

    qtype = gguf.GGMLQuantizationType[qtype_name]
    if array.ndim < 2 or qtype_name == "F32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype_name == "F16":
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    return quants.quantize(array.astype(np.float32), qtype), qtype


# Architectures whose llama.cpp loader needs output.weight even when the model ties it to the embedding.
_HEAD_REQUIRED = {"qwen2moe"}


def _refuse(what: str, why: str, fix: str = "export to safetensors and convert with llama.cpp's own script"):
    raise MinitronError(what, why, fix)


def _rope_theta(config, layer_type: str | None = None) -> float:
    """The RoPE base of one kind of layer (Gemma 3 keeps one per layer type), or the model's only one."""
    rope = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(rope.get(layer_type), dict):
        rope = rope[layer_type]
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _check_gemma3(config) -> None:
    if getattr(config, "attn_logit_softcapping", None) is not None:
        _refuse(
            "This Gemma model caps its attention logits (attn_logit_softcapping)",
            "llama.cpp's gemma3 architecture has no attention soft-capping, so it would compute other logits",
        )
    rope = getattr(config, "rope_parameters", None) or {}
    for layer_type, parameters in rope.items():
        if isinstance(parameters, dict) and parameters.get("rope_type", "default") != "default":
            _refuse(
                f"This Gemma 3 uses '{parameters['rope_type']}' RoPE scaling on its {layer_type} layers",
                "only plain RoPE (the text-only 270M and 1B models) is written to GGUF here",
            )
    unknown = set(getattr(config, "layer_types", None) or []) - {"sliding_attention", "full_attention"}
    if unknown:
        _refuse(f"Unknown Gemma 3 layer types {sorted(unknown)}", "llama.cpp knows sliding and full attention only")


def _check_moe(model, family, arch: str) -> None:
    config = model.config
    sparse = sparse_layers(model)
    if len(sparse) != config.num_hidden_layers:
        dense = sorted(set(range(config.num_hidden_layers)) - set(sparse))
        _refuse(
            f"Layers {dense} of this {family.name} model are dense (mlp_only_layers / decoder_sparse_step)",
            f"llama.cpp's {arch} architecture expects experts in every layer",
        )
    # How the chosen experts' weights are renormalised is fixed per architecture in llama.cpp.
    normalises = {"qwen3moe": True, "qwen2moe": False, "llama": True}[arch]
    if family.name != "Mixtral" and bool(getattr(config, "norm_topk_prob", False)) != normalises:
        _refuse(
            f"This {family.name} model has norm_topk_prob={getattr(config, 'norm_topk_prob', False)}",
            f"llama.cpp's {arch} always {'renormalises' if normalises else 'keeps'} the top-k routing weights "
            f"({'norm_topk_prob=True' if normalises else 'norm_topk_prob=False'}), so its outputs would differ",
        )
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if arch == "qwen2moe" and heads * head_dim != hidden:
        _refuse(
            f"This Qwen2-MoE model has {heads} heads × {head_dim} = {heads * head_dim} query rows over hidden {hidden}",
            "llama.cpp's qwen2moe architecture assumes the query projection is hidden × hidden",
            "prune Qwen2-MoE heads and hidden together so heads × head_dim stays equal to hidden_size",
        )


def _swa_pattern(config) -> list[bool] | None:
    """Which layers use sliding-window attention (None: none do), one entry per layer."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or []
    flags = [t == "sliding_attention" for t in types]
    return flags if window and any(flags) else None


def _write_hyperparameters(writer, model, family, arch: str) -> None:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if arch == "gemma3":
        writer.add_rope_freq_base(_rope_theta(config, "full_attention"))
        pattern = _swa_pattern(config)
        if pattern is not None:
            writer.add_sliding_window(config.sliding_window)
            # A list of per-layer flags: a depth-pruned model's pattern is no longer "every sixth layer full".
            writer.add_sliding_window_pattern(pattern)
            writer.add_rope_freq_base_swa(_rope_theta(config, "sliding_attention"))
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    else:
        writer.add_rope_freq_base(_rope_theta(config))
    if is_moe_family(family):
        writer.add_expert_count(expert_count(model))
        writer.add_expert_used_count(config.num_experts_per_tok)
        if arch != "llama":  # llama.cpp's llama reads each expert's width from feed_forward_length
            writer.add_expert_feed_forward_length(expert_width(model))
        if arch == "qwen2moe":
            writer.add_expert_shared_feed_forward_length(config.shared_expert_intermediate_size)


def _gemma3_query_scale(config) -> float:
    """What to multiply the query norm's gain by so that llama.cpp's fixed attention scale becomes Gemma's.

    llama.cpp scales queries by 1/sqrt(head_dim) (by 1/sqrt(hidden / heads) for a 62-layer model, the
    27B); transformers by query_pre_attn_scalar^-1/2. The query norm's output feeds RoPE and then that
    scale, both linear, so the ratio folds into its gain.
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    fixed = config.hidden_size / config.num_attention_heads if config.num_hidden_layers == 62 else head_dim
    wanted = getattr(config, "query_pre_attn_scalar", None) or head_dim
    return float(np.sqrt(fixed / wanted))


def _tensors(model, family, arch: str, permute: bool):
    """(GGUF name, float32 array) for every tensor, in llama.cpp's layout and conventions."""
    import gguf

    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    embeddings = model.get_input_embeddings()
    tied = model.get_output_embeddings().weight is embeddings.weight
    # llama.cpp multiplies Gemma's embeddings by sqrt(hidden_size) itself; a model whose multiplier says
    # otherwise has the ratio folded into token_embd (and keeps its head unscaled, written on its own).
    embed_ratio = 1.0
    if family.embeddings_scaled_by_width:
        scale = getattr(embeddings, "scalar_embed_scale", None) or getattr(embeddings, "embed_scale", None)
        scale = float(scale) if scale is not None else config.hidden_size**0.5
        embed_ratio = scale / config.hidden_size**0.5
    fold_embedding = abs(embed_ratio - 1.0) > 1e-6
    # llama.cpp's qwen2moe always reads an output matrix, tied or not.
    separate_head = fold_embedding or arch in _HEAD_REQUIRED

    def name_of(source: str) -> str:
        target = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise MinitronError(f"No GGUF name for tensor '{source}'")
        return target

    for name, tensor in model.state_dict().items():
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if name == "lm_head.weight" and tied:
            if separate_head:
                yield "output.weight", array
            continue  # a tied head is the embedding: readers reuse token_embd
        if name.endswith("experts.gate_up_proj"):
            # transformers fuses each expert's gate and up rows (experts × 2·width × hidden); llama.cpp
            # keeps them as two stacked tensors of experts × width × hidden.
            gate, up = np.split(array, 2, axis=1)
            prefix = name[: -len("gate_up_proj")]
            yield name_of(prefix + "gate_proj.weight"), gate
            yield name_of(prefix + "up_proj.weight"), up
            continue
        if name.endswith("experts.down_proj"):
            yield name_of(name + ".weight"), array
            continue
        if name.endswith("shared_expert_gate.weight"):
            array = array.reshape(-1)  # one gate logit per token: llama.cpp stores it as a vector
        if family.norm_weight_offset and name.endswith("norm.weight"):
            array = array + family.norm_weight_offset
        if arch == "gemma3" and name.endswith("q_norm.weight"):
            array = array * _gemma3_query_scale(config)
        if fold_embedding and tensor is embeddings.weight:
            array = array * embed_ratio
        # Biases follow their rows: a q/k bias is permuted like the weight it is added to.
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _permute_for_rotary(array, config.num_attention_heads)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            array = _permute_for_rotary(array, kv_heads)
        yield name_of(name), array


def check_exportable(model) -> tuple[object, str, bool]:
    """(family, llama.cpp architecture, rotary permutation) for a model GGUF export can write; else a clear error."""
    family = family_for(model)
    if family.gguf_architecture is None:
        exportable = sorted(t for f in FAMILIES if f.gguf_architecture for t in f.model_types)
        raise MinitronError(
            f"GGUF export supports {', '.join(exportable)} models, not {model.config.model_type}",
            fix="export to safetensors and convert with llama.cpp's own script",
        )
    arch, permute = gguf_architecture(family, model.config)
    if arch == "gemma3":
        _check_gemma3(model.config)
    if is_moe_family(family):
        _check_moe(model, family, arch)
    return family, arch, permute


def export_gguf(
    model_or_path,
    output_file: str | os.PathLike,
    quantization: str = "F16",
    tokenizer=None,
    include_tokenizer: bool = True,
    overwrite: bool = False,
    pre_tokenizer: str | None = None,
    embedding_type: str | None = None,
) -> Path:
    """Write ``model_or_path`` (a model, or anything ``load_model`` accepts) as one GGUF file.

    ``pre_tokenizer`` names llama.cpp's splitting rules for a BPE tokenizer whose probe hash is not known
    here (see pretokenizers.py); by default it is detected and an unknown tokenizer is refused.
    ``embedding_type`` writes the token embedding and the LM head in another type than the rest (like
    llama-quantize's ``--token-embedding-type`` / ``--output-tensor-type``): with a tied head the
    embedding is also the last matrix every logit goes through, so keeping it in F16 in a Q8_0 file
    removes part of the quantization error for a small size cost.
    """
    import gguf

    for name, value in (("type", quantization), ("embedding type", embedding_type or quantization)):
        if value not in GGUF_TYPES:
            raise MinitronError(f"GGUF {name} '{value}' is not one of {', '.join(GGUF_TYPES)}")
    output = Path(output_file)
    if output.suffix != ".gguf":
        raise MinitronError(f"'{output}' should end in .gguf", fix="name the output file NAME.gguf")
    check_output_file(output, overwrite)
    if isinstance(model_or_path, (str, Path)):
        model, loaded = load_model_and_tokenizer(str(model_or_path), dtype="float32")
        tokenizer = tokenizer or loaded
    else:
        model = model_or_path

    family, arch, permute = check_exportable(model)
    if include_tokenizer and tokenizer is None:
        raise MinitronError("GGUF export needs the tokenizer", fix="pass tokenizer=..., or include_tokenizer=False")
    temporary = output.with_name(f".{output.name}.partial")
    writer = gguf.GGUFWriter(str(temporary), arch)
    try:
        writer.add_name(output.stem)
        _write_hyperparameters(writer, model, family, arch)
        file_type = "ALL_F32" if quantization == "F32" else f"MOSTLY_{quantization}"
        writer.add_file_type(gguf.LlamaFileType[file_type])
        if include_tokenizer:
            write_tokenizer(writer, tokenizer, pre_tokenizer)
        for target, array in _tensors(model, family, arch, permute):
            embedding = target in ("token_embd.weight", "output.weight")
            data, qtype = _encode(array, (embedding_type or quantization) if embedding else quantization)
            # Plain float arrays carry their own type; quantized bytes need it said (the writer infers the shape).
            plain = qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(target, data, raw_dtype=None if plain else qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temporary, output)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return output
