"""The built-in teachers, dequantized once into a plain transformers folder and loaded from it afterwards.

Loading a GGUF file costs far more than its weights: transformers parses the file's metadata (for
SmolLM2 a 49,152-token vocabulary, read entry by entry) for the config, again for the weights and once
more for the tokenizer, then dequantizes every tensor — about 20 s for the 135M teacher on 2 CPU cores.
A pipeline reloads its teacher whenever a stage ran it in another precision (the teacher writes its
answers and fills the logit cache in bf16, prunes and evaluates in the recipe's fp32), so the demo paid
that three times. The first load of a built-in model writes its dequantized fp32 weights, config and
tokenizer under ``builtin_cache_root()``; every later one reads that folder (0.3 s for SmolLM2 once the
process has loaded a model), with the same tensors, the same config and the same token ids
(tests/test_dequantized_copy.py).

The folder is named after the GGUF file's name, size and modification time, so a reinstalled or updated
package gets a copy of its own (and the copies an earlier install of the same file left are removed).
It is written beside its final name and renamed into place, so a load that crashes or runs alongside
another never reads half a copy. Deleting it only costs the next load its 20 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .builtin_parts import builtin_cache_root
from .errors import MinitronError

COMPLETE = "dequantized-from.txt"  # written last: a folder without it is not a copy


def copy_folder(name: str, gguf: Path) -> Path:
    """Where the dequantized copy of built-in model ``name`` (read from ``gguf``) lives, or will."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}\n{stat.st_size}\n{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return builtin_cache_root() / name / f"dequantized-{key}"


def existing_copy(name: str, gguf: Path) -> Path | None:
    folder = copy_folder(name, gguf)
    return folder if (folder / COMPLETE).is_file() else None


def write_copy(name: str, gguf: Path, model, tokenizer) -> Path | None:
    """Save ``model`` (loaded from ``gguf`` in fp32) and ``tokenizer`` as the copy. A copy that cannot be
    written (a read-only or full disk, or any error of the savers) is skipped with a one-line note: the
    copy only saves time, so the load goes on and the next one reads the GGUF file again."""
    folder = copy_folder(name, gguf)
    partial = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # A new, empty folder of its own beside the copy: the only one ever deleted if the copy fails.
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / COMPLETE).write_text(f"{gguf}\n")
        if (folder / COMPLETE).is_file():  # another process finished first: its copy is the same
            return folder
        os.replace(partial, folder)
        partial = None  # it is the copy now
        _remove_older_copies(folder, gguf)
        print(f"  kept a dequantized copy of builtin:{name} in {folder}; later loads read it", file=sys.stderr)
        return folder
    except Exception as error:  # the copy only saves time (docstring)
        print(f"  no dequantized copy of builtin:{name} kept ({error.__class__.__name__}: {error})", file=sys.stderr)
        return None
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)


def _remove_older_copies(folder: Path, gguf: Path) -> None:
    """Copies beside ``folder`` that an earlier file at the same path left (a reinstalled package): only
    folders this module wrote, which name that path in their completion file."""
    for other in folder.parent.glob("dequantized-*"):
        marker = other / COMPLETE
        if other != folder and marker.is_file() and marker.read_text().strip() == str(gguf):
            shutil.rmtree(other, ignore_errors=True)


def broken_copy(folder: Path, error: Exception) -> MinitronError:
    return MinitronError(
        f"The dequantized copy of a built-in model in '{folder}' cannot be read",
        f"{error.__class__.__name__}: {str(error).strip()[:300]}",
        "delete that folder; the next load writes it again from the GGUF file",
    )
