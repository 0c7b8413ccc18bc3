"""Will a serving stack read this folder as it is? A check of config.json against what readers expect.

Servers such as vLLM and TGI, and lm-evaluation-harness, load a model through its config.json: the
``architectures`` entry picks the model class, and the fields configure it. A folder is fit to serve
when its config holds only fields its transformers config class knows, names exactly one model class
that transformers ships, needs no custom code (``auto_map``), and, when vLLM is installed, names an
architecture vLLM registers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..model_folder import RECORD_FILE, RECORD_KEY

# Fields the modeling code (and vLLM) read with getattr although some config classes do not define them,
# and those save_pretrained adds itself.
_ALSO_STANDARD = {"head_dim", "quantization_config", "transformers_version", "_name_or_path"}


def _config_dict(folder_or_config) -> tuple[dict | None, str]:
    """(config as a dict, how to name it in messages); the dict is None when it cannot be read."""
    if isinstance(folder_or_config, dict):
        return folder_or_config, "the config"
    if hasattr(folder_or_config, "to_diff_dict"):  # a PretrainedConfig: what save_pretrained would write
        return folder_or_config.to_diff_dict(), "the config"
    path = Path(folder_or_config)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, str(path)
    return (data if isinstance(data, dict) else None), str(path)


def standard_config_fields(model_type: str) -> set[str] | None:
    """The fields transformers' config class for ``model_type`` knows (None for an unknown model type)."""
    from transformers import CONFIG_MAPPING, PretrainedConfig

    if model_type not in CONFIG_MAPPING:
        return None
    try:
        defaults = CONFIG_MAPPING[model_type]().to_dict()
    except Exception:  # a config class that cannot be built without arguments: judge by the common fields
        defaults = {}
    return set(PretrainedConfig().to_dict()) | set(defaults) | _ALSO_STANDARD


def vllm_architectures() -> set[str] | None:
    """The architectures vLLM registers, or None when vLLM is not installed (or does not import)."""
    try:
        from vllm import ModelRegistry
    except Exception:  # not installed, or an install that cannot start here (no GPU driver, ...)
        return None
    return set(ModelRegistry.get_supported_archs())


def check_serving_config(folder_or_config: str | os.PathLike | dict) -> list[str]:
    """What would stop a serving stack from reading this model folder as it is: an empty list when nothing.

    ``folder_or_config`` is a model folder, its config.json, a config dict or a transformers config.
    """
    import transformers

    config, where = _config_dict(folder_or_config)
    if config is None:
        return [f"{where} cannot be read as a JSON object"]
    problems = []
    model_type = config.get("model_type")
    known = standard_config_fields(model_type) if isinstance(model_type, str) else None
    if known is None:
        problems.append(f"{where}: model_type {model_type!r} is not one transformers knows")
    else:
        extra = sorted(set(config) - known)
        if RECORD_KEY in extra:
            problems.append(
                f"{where} holds the pruning record ({RECORD_KEY}), written by an older hf_minitron: "
                f"re-save the folder with this version, which keeps it in {RECORD_FILE}"
            )
            extra.remove(RECORD_KEY)
        if extra:
            problems.append(
                f"{where} has fields the {model_type} config does not define: {', '.join(extra)} "
                "(servers ignore or reject them; move them to a file of their own)"
            )
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or len(architectures) != 1:
        problems.append(f"{where}: 'architectures' should name exactly one model class, not {architectures!r}")
    elif not hasattr(transformers, architectures[0]):
        problems.append(f"{where}: the architecture {architectures[0]!r} is not a class transformers ships")
    else:
        supported = vllm_architectures()
        if supported is not None and architectures[0] not in supported:
            problems.append(f"{where}: vLLM does not register the architecture {architectures[0]!r}")
    if "auto_map" in config:
        problems.append(f"{where} needs custom code (auto_map): servers would have to trust remote code")
    return problems
