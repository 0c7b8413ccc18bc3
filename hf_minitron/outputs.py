"""Output folders that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import MinitronError


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early, before any work, when an output folder cannot be written."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise MinitronError(
            f"Output folder '{path}' already exists",
            "hf_minitron never mixes a new result into an old folder",
            "choose another folder, or pass --overwrite (overwrite=True) to replace it",
        )
    if path.exists() and not path.is_dir():
        raise MinitronError(f"Output path '{path}' is a file, not a folder", fix="choose a folder path")
    parent = path.absolute().parent
    if parent.exists() and not os.access(parent, os.W_OK):
        raise MinitronError(f"Cannot write into '{parent}'", "the folder is not writable", "choose another place")
    return path


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    A failure (an exception, Ctrl-C) removes the temporary folder, so a half-written
    model folder is never left behind and an existing one is never half-replaced.
    """
    path = check_output_dir(path, overwrite)
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.absolute().parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():
        retired = staging.with_name(f".{path.name}.replaced-{os.getpid()}")
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, path)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
