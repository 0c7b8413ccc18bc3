"""GGUF export for llama.cpp: pruned shapes (explicit head_dim, GQA, tied embeddings) written correctly.

Metadata gives every dimension explicitly — ``rope.dimension_count`` and the attention key/value
lengths carry a head_dim that no longer equals hidden / heads after width pruning — and a tied
LM head is simply not written (llama.cpp and transformers then reuse ``token_embd``). For the
llama architecture the q/k rows (and biases) are reordered to llama.cpp's rotary layout, the inverse
of what loaders undo; a width-pruned Qwen2 whose heads × head_dim ≠ hidden is written as llama.
2-D weights are quantized to the chosen type when their rows divide into its blocks; norms, biases
and rows that do not divide stay in F32 (F16 for the row-size fallback).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import MinitronError
from ..families import FAMILIES, family_for
from ..loading import load_model_and_tokenizer
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


def export_gguf(
    model_or_path,
    output_file: str | os.PathLike,
    quantization: str = "F16",
    tokenizer=None,
    include_tokenizer: bool = True,
    overwrite: bool = False,
    pre_tokenizer: str | None = None,
) -> Path:
    """Write ``model_or_path`` (a model, or anything ``load_model`` accepts) as one GGUF file.

    ``pre_tokenizer`` names llama.cpp's splitting rules for a BPE tokenizer whose probe hash is not known
    here (see pretokenizers.py); by default it is detected and an unknown tokenizer is refused.
    """
    import gguf

    if quantization not in GGUF_TYPES:
        raise MinitronError(f"GGUF type '{quantization}' is not one of {', '.join(GGUF_TYPES)}")
    output = Path(output_file)
    if output.suffix != ".gguf":
        raise MinitronError(f"'{output}' should end in .gguf", fix="name the output file NAME.gguf")
    check_output_file(output, overwrite)
    if isinstance(model_or_path, (str, Path)):
        model, loaded = load_model_and_tokenizer(str(model_or_path), dtype="float32")
        tokenizer = tokenizer or loaded
    else:
        model = model_or_path

    family = family_for(model)
    if family.gguf_architecture is None:
        exportable = sorted(t for f in FAMILIES if f.gguf_architecture for t in f.model_types)
        raise MinitronError(
            f"GGUF export supports {', '.join(exportable)} models, not {model.config.model_type}",
            fix="export to safetensors and convert with llama.cpp's own script",
        )
    if include_tokenizer and tokenizer is None:
        raise MinitronError("GGUF export needs the tokenizer", fix="pass tokenizer=..., or include_tokenizer=False")
    config = model.config
    arch, permute = gguf_architecture(family, config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    temporary = output.with_name(f".{output.name}.partial")
    writer = gguf.GGUFWriter(str(temporary), arch)
    try:
        writer.add_name(output.stem)
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
        rope = getattr(config, "rope_parameters", None) or {}
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
        writer.add_vocab_size(config.vocab_size)
        file_type = "ALL_F32" if quantization == "F32" else f"MOSTLY_{quantization}"
        writer.add_file_type(gguf.LlamaFileType[file_type])
        if include_tokenizer:
            write_tokenizer(writer, tokenizer, pre_tokenizer)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        for name, tensor in model.state_dict().items():
            if tied and name == "lm_head.weight":
                continue  # a tied head is the embedding: readers reuse token_embd
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise MinitronError(f"No GGUF name for tensor '{name}'")
            array = tensor.detach().to(torch.float32).cpu().numpy()
            # Biases follow their rows: a q/k bias is permuted like the weight it is added to.
            if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
                array = _permute_for_rotary(array, config.num_attention_heads)
            elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
                array = _permute_for_rotary(array, kv_heads)
            data, qtype = _encode(array, quantization)
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
