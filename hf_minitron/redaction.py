"""Keeping tokens out of every file hf_minitron writes: records, recipe copies, checkpoints, cards, logs.

A setting is secret when its name is ``token`` or ends in ``_token``, ``api_key``, ``access_key``,
``secret_key``, ``password`` or ``secret`` (``hub_token``, ...), except the tokenizer's special tokens (``pad_token``,
...). Strings are also cleared of Hugging Face tokens (``hf_…``) and of the values of token
variables in the environment (``HF_TOKEN``, ...), wherever they appear.
"""

from __future__ import annotations

import copy
import os
import re

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"(^|_)(token|api_?key|access_key|secret_key|password|secret)$", re.IGNORECASE)
_SPECIAL_TOKENS = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def is_secret_name(name) -> bool:
    name = str(name)
    return bool(_SECRET_NAME.search(name)) and name.lower() not in _SPECIAL_TOKENS


def _environment_secrets() -> list[str]:
    return [
        value
        for name, value in os.environ.items()
        if is_secret_name(name) or name.upper().endswith("TOKEN")
        if len(value) >= 8
    ]


def redact_text(text: str) -> str:
    for secret in _environment_secrets():
        text = text.replace(secret, REDACTED)
    return _HF_TOKEN.sub(REDACTED, text)


def redact(value):
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every secret replaced by ``<redacted>``."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if is_secret_name(key) and isinstance(item, str) and item else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


class SecretsNotPickled:
    """For TrainingArguments subclasses: a pickled copy (the ``training_args.bin`` the Trainer saves in
    every checkpoint and model folder) leaves secret fields such as ``hub_token`` empty, while the
    object itself and its in-memory copies keep them, so pushing to the Hub still works."""

    def __getstate__(self):
        return {
            key: None if is_secret_name(key) and isinstance(value, str) else value
            for key, value in self.__dict__.items()
        }

    def __copy__(self):
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo):
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone
