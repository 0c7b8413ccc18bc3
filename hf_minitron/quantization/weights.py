"""Weight quantization of a pruned or distilled model with torchao, saved as a folder transformers loads.

Schemes (Linear layers; embeddings and the LM head stay in full precision, so tied weights stay tied):
- ``int8``: int8 weights, one scale per output channel. CPU and GPU.
- ``int4``: int4 weight values, one scale per group of ``group_size`` inputs. CPU and GPU; torchao
  keeps CPU int4 values unpacked in int8 storage, so on disk it is no smaller than int8 — its
  point is the int4 numerics (and packed GPU kernels); for small int4 files use GGUF ``Q4_0``.
- ``fp8``: float8 weights and dynamically quantized float8 activations; needs a GPU with float8
  matmuls (compute capability 8.9 or newer). The Minitron release reports 1.3–1.4× BF16 throughput.
None of these needs calibration data: weight scales come from the weights, fp8 activation scales
are computed per token at run time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import MinitronError
from ..model_folder import RECORD_FILE, save_model_folder
from ..outputs import atomic_output_dir, check_output_dir

SCHEMES = ("int8", "int4", "fp8")
# What a packaged folder carries besides weights, config and tokenizer: kept in the quantized copy.
PROVENANCE = (RECORD_FILE, "pruning_config.json", "importance", "training_curves.png")


def available_schemes() -> list[str]:
    schemes = ["int8", "int4"]
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        schemes.append("fp8")
    return schemes


def _torchao_config(scheme: str, group_size: int):
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
        )
        from torchao.quantization.granularity import PerGroup, PerRow
    except ImportError as error:
        raise MinitronError("Quantization needs torchao", fix="pip install torchao") from error
    if scheme == "int8":
        return Int8WeightOnlyConfig()
    if scheme == "int4":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def quantize_model(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    scheme: str = "int8",
    group_size: int = 32,
    overwrite: bool = False,
) -> Path:
    """Quantize the model in ``model_dir`` and save it (with tokenizer and provenance files) to ``output_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    if scheme not in SCHEMES:
        raise MinitronError(f"Unknown quantization scheme '{scheme}'", f"the schemes are {', '.join(SCHEMES)}")
    if scheme not in available_schemes():
        raise MinitronError(
            f"The {scheme} scheme does not run on this machine",
            "fp8 needs a GPU with float8 matmuls (compute capability 8.9+: Ada, Hopper or newer)",
            f"use one of {', '.join(available_schemes())} here",
        )
    source = Path(model_dir)
    if not (source / "config.json").is_file():
        raise MinitronError(f"'{source}' is not a model folder", fix="point at a folder written by save_pretrained")
    if group_size < 1:
        raise MinitronError(f"group_size={group_size} must be ≥ 1")
    if scheme == "int4":
        _check_group_size(source, group_size)
    check_output_dir(output_dir, overwrite)
    config = TorchAoConfig(_torchao_config(scheme, group_size), modules_to_not_convert=["lm_head"])
    on_gpu = scheme == "fp8"
    model = AutoModelForCausalLM.from_pretrained(
        source,
        quantization_config=config,
        dtype=torch.bfloat16 if on_gpu else torch.float32,
        device_map="cuda:0" if on_gpu else None,
    )
    with atomic_output_dir(output_dir, overwrite, kind="quantized model") as staging:
        save_model_folder(model, staging)
        AutoTokenizer.from_pretrained(source).save_pretrained(staging)
        for name in PROVENANCE:
            path = source / name
            if path.is_dir():
                shutil.copytree(path, staging / name)
            elif path.is_file():
                shutil.copy(path, staging / name)
        record = {"scheme": scheme, "group_size": group_size if scheme == "int4" else None, "library": "torchao"}
        (staging / "quantization.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(output_dir)


def _check_group_size(source: Path, group_size: int) -> None:
    """int4 groups split each Linear's inputs; pruned widths (432, 36, ...) often do not divide by 32."""
    import math

    from transformers import AutoConfig

    from ..shapes import config_head_dim

    config = AutoConfig.from_pretrained(source)
    inputs = sorted(
        {config.hidden_size, config.intermediate_size, config.num_attention_heads * config_head_dim(config)}
    )
    if any(size % group_size for size in inputs):
        common = math.gcd(*inputs)
        choices = [d for d in (128, 64, 32, 16, 8, 4, 2, 1) if common % d == 0][:3]
        raise MinitronError(
            f"int4 group_size {group_size} does not divide the model's Linear input sizes {inputs}",
            "each group of inputs shares one scale, so the groups must tile every row",
            f"pass a divisor of {common}, e.g. --group-size {choices[0]}",
        )


def folder_bytes(path: str | os.PathLike, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in Path(path).glob(pattern))
