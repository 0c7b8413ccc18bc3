"""Settings dataclasses built from plain mappings (JSON, YAML), with unknown keys refused by name."""

from __future__ import annotations

from dataclasses import fields

from .errors import MinitronError


def settings_from_dict(cls, values: dict, what: str):
    """``cls(**values)`` after checking every key is a field of ``cls``; ``what`` names the settings."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MinitronError(
            f"Unknown {what} setting(s): {', '.join(unknown)}",
            f"{cls.__name__} accepts {', '.join(sorted(known))}",
        )
    return cls(**values)
