"""Package attributes whose module is imported on first use (PEP 562), for imports that are heavy."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, table: dict[str, str]):
    """A module-level ``__getattr__`` that imports ``table[name]`` (absolute, or relative to ``package``)."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
