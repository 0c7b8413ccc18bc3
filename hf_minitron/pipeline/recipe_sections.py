"""Checking one section of a recipe: its keys against the fields of the dataclass or TRL-style config it
fills, each value against the field's type, and the data keys trainer sections take beside their config.

Errors name the section and the keys it accepts, before anything runs.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile

from ..data import is_mixture, mixture_shares
from ..errors import MinitronError

# Data keys of trainer sections, beside the fields of their config. ``block_size``: train on rows of exactly
# that many tokens cut from the joined text (no padding, nothing truncated). ``teacher_cache`` (distill only):
# run the teacher once over the data into a top-k logit cache that every student trains from.
TRAINING_KEYS = {
    "dataset",
    "dataset_config",
    "dataset_split",
    "eval_dataset",
    "max_samples",
    "block_size",
    "teacher_cache",
}
TEACHER_CACHE_KEYS = {"top_k": int, "values_dtype": str, "batch_size": int}


def section_error(section: str, message: str, accepted=None):
    why = f"'{section}' accepts: {', '.join(sorted(accepted))}" if accepted else ""
    raise MinitronError(f"Recipe section '{section}': {message}", why, "fix the recipe file")


_SIMPLE = (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict))


def _check_type(section: str, key: str, value, annotation):
    """``value`` if it fits the field's annotation (numbers written as '2e-5' become floats), else an error.

    Annotations naming none of the simple types (enums, callables) are left to the config itself."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    names = [(name, kind) for name, kind in _SIMPLE if re.search(rf"\b{name}\b", text)]
    if value is None:
        if names and "None" not in text and "Optional" not in text:
            section_error(section, f"'{key}' must not be empty")
        return value
    if not names:
        return value
    for _, kind in names:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    if any(kind is float for _, kind in names) and isinstance(value, str):
        try:
            return float(value)  # YAML reads 2e-5 (no dot) as a string
        except ValueError:
            pass
    section_error(section, f"'{key}' must be {text.replace('typing.', '')}, got {value!r}")


def _annotations(cls) -> dict:
    """Field annotations as declared. (HfArgumentParser rewrites ``Field.type`` in place when it builds
    a parser, e.g. ``dict | str | None`` becomes ``str``, so the dataclass fields cannot be trusted.)"""
    merged = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("__annotations__", {}))
    return merged


def dataclass_section(cls, values, section: str):
    if values is None:
        return None
    if not isinstance(values, dict):
        section_error(section, f"must be a mapping of settings, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        section_error(section, f"unknown key(s) {', '.join(unknown)}", fields)
    types = _annotations(cls)
    values = {key: _check_type(section, key, value, types[key]) for key, value in values.items()}
    return cls(**values)


def trainer_section(values, section: str, config_class, required_dataset: bool = True):
    """A trainer section: our data keys plus any field of ``config_class``, checked by building it."""
    if values is None:
        return None
    if not isinstance(values, dict):
        section_error(section, f"must be a mapping of settings, got {values!r}")
    if required_dataset and not values.get("dataset"):
        section_error(section, "needs a 'dataset' (HF dataset id, local file, builtin text, or 'generated')")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    names = set(fields)
    unknown = sorted(set(values) - names - TRAINING_KEYS)
    if "output_dir" in values:
        unknown.append("output_dir (each stage has its own folder)")
    if unknown:
        section_error(section, f"unknown key(s) {', '.join(unknown)}", names | TRAINING_KEYS)
    types = _annotations(config_class)
    values = {k: _check_type(section, k, v, types[k]) if k in types else v for k, v in values.items()}
    _check_data_keys(section, values)
    settings = {k: v for k, v in values.items() if k not in TRAINING_KEYS}
    if values.get("teacher_cache") is not None:
        # What a cache cannot serve (packing, intermediate losses) is refused now, by the config itself.
        settings["teacher_logits_cache"] = tempfile.gettempdir()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config_class(**{"report_to": [], **settings, "output_dir": scratch})
    except MinitronError as error:
        section_error(section, str(error))
    except (TypeError, ValueError) as error:
        section_error(section, f"invalid settings ({error})")
    return dict(values)


def _check_data_keys(section: str, values: dict) -> None:
    block = values.get("block_size")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 2):
        section_error(section, f"'block_size' must be an integer ≥ 2, got {block!r}")
    for key in ("dataset", "eval_dataset"):
        if not is_mixture(values.get(key)):
            continue
        try:
            mixture_shares(values[key], 1)
        except MinitronError as error:
            section_error(section, f"'{key}': {error}")
        if block is None:
            section_error(
                section,
                f"'{key}' mixes sources, whose rows can differ in kind (text, chat messages, prompt/completion): "
                "add a block_size, and every source is cut into token rows of that length, which mix",
            )
    cache = values.get("teacher_cache")
    if cache is None:
        return
    if section != "distill":
        section_error(section, "'teacher_cache' belongs in the distill section")
    if not isinstance(cache, dict) or set(cache) - set(TEACHER_CACHE_KEYS):
        section_error(section, f"'teacher_cache' must be a mapping of {', '.join(TEACHER_CACHE_KEYS)}, got {cache!r}")
    for key, kind in TEACHER_CACHE_KEYS.items():
        if key in cache and not isinstance(cache[key], kind):
            section_error(section, f"'teacher_cache.{key}' must be {kind.__name__}, got {cache[key]!r}")
