"""Model folders with a config.json that any reader understands, and the pruning record beside it.

Pruning records what it did (source shape, dropped layers, kept channels, ...) on the model's config as
``config.minitron_pruning``: everything in the library that needs it reads that attribute. On disk the
record lives in a file of its own, ``minitron_pruning.json``, next to ``config.json``, so that the config
holds only fields its transformers class knows and servers such as vLLM or TGI read it without surprise.

- ``save_model_folder`` writes a model with ``save_pretrained`` and the record as the side file;
- ``load_model`` (``hf_minitron.loading``) puts the side file's record back on ``model.config``;
- ``read_record`` reads it from a folder, including folders written by older versions of hf_minitron,
  which kept it inside config.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RECORD_KEY = "minitron_pruning"  # the attribute on model.config
RECORD_FILE = "minitron_pruning.json"  # the file next to config.json


def save_model_folder(model, folder: str | os.PathLike, **save_kwargs) -> None:
    """``model.save_pretrained(folder, **save_kwargs)`` without the pruning record in config.json; the
    record, when the model has one, goes to ``RECORD_FILE`` in the same folder. The in-memory config is
    left as it was."""
    config = model.config
    record = vars(config).pop(RECORD_KEY, None)
    try:
        model.save_pretrained(folder, **save_kwargs)
    finally:
        if record is not None:
            setattr(config, RECORD_KEY, record)
    if record is not None:
        (Path(folder) / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_record(folder: str | os.PathLike) -> dict | None:
    """The pruning record of the model in ``folder``: its side file, else (older folders) config.json's
    ``minitron_pruning`` key, else None."""
    folder = Path(folder)
    for path, key in ((folder / RECORD_FILE, None), (folder / "config.json", RECORD_KEY)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        record = data if key is None else data.get(key) if isinstance(data, dict) else None
        if isinstance(record, dict):
            return record
    return None


def restore_record(model, folder: str | os.PathLike) -> None:
    """Put the record saved in ``folder`` back on ``model.config`` (a no-op when there is none)."""
    if not Path(folder).is_dir():
        return
    record = read_record(folder)
    if record is not None:
        setattr(model.config, RECORD_KEY, record)
