"""Output folders: made whole or not at all, marked as made here, written by one process at a time.

Every command and stage writes through this module, which keeps four promises:

- hf_minitron deletes or replaces only folders it made itself. They carry a marker file,
  ``.hf_minitron-output.json``, recording what made them; a folder without it is never deleted,
  whatever the flags: ``--overwrite`` on it is refused.
- a finished output appears in one rename (``atomic_output_dir``), created with the user's umask. The
  temporary ``.NAME.partial-PID-…`` and ``.NAME.replaced-PID-…`` folders a killed process leaves
  behind are removed on the next write to NAME.
- one process writes a folder at a time (``hf_minitron.locking``).
- every refusal is a MinitronError raised before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .crashpoints import pause_point
from .errors import MinitronError
from .locking import check_not_locked, is_secondary_rank, output_lock, pid_alive

MARKER_FILE = ".hf_minitron-output.json"
PARTIAL, REPLACED = "partial", "replaced"


# -- the marker ----------------------------------------------------------------------------------------------------


def read_marker(folder: str | os.PathLike) -> dict | None:
    """What made ``folder``, if hf_minitron did (its marker file), else None."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("made_by") == "hf_minitron" else None


def inside_made_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is, or lies inside, a folder hf_minitron made (a training run's checkpoints, ...)."""
    path = Path(path).absolute()
    return any(read_marker(folder) is not None for folder in (path, *path.parents))


def _write_marker(folder: Path, kind: str, key: str | None = None) -> None:
    from . import __version__

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    marker = {"made_by": "hf_minitron", "version": __version__, "kind": kind, "created": created}
    if key is not None:
        marker["key"] = key
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _describe(marker: dict) -> str:
    kind = marker.get("kind", "output")
    article = "" if kind.endswith(("s", "data")) else "an " if kind[:1] in "aeiou" else "a "
    return f"{article}{kind} made by hf_minitron {marker.get('version', '')}".rstrip()


def _contents(folder: Path) -> list[str]:
    """What ``folder`` holds besides the marker."""
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name != MARKER_FILE)


def has_contents(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.is_dir() and bool(_contents(folder))


# -- checks (nothing is written) ---------------------------------------------------------------------------------


def _not_ours(path: Path, contents: list[str]) -> MinitronError:
    shown = ", ".join(contents[:3]) + (f" and {len(contents) - 3} more" if len(contents) > 3 else "")
    return MinitronError(
        f"Output folder '{path}' holds files hf_minitron did not make ({shown})",
        f"Only folders hf_minitron made itself are deleted or replaced; they hold a {MARKER_FILE} file",
        f"choose another output folder, or move or delete '{path}' yourself first",
    )


def _check_not_a_file(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise MinitronError(f"Output path '{path}' is a file, not a folder", fix="choose a folder path")


def _check_writable(path: Path) -> None:
    """The nearest existing folder above ``path`` must be writable (checked before any work)."""
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MinitronError(f"Cannot write '{path}': '{ancestor}' is a file", fix="choose another place")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MinitronError(f"Cannot write into '{ancestor}'", "the folder is not writable", "choose another place")


def _check_replaceable(path: Path) -> None:
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise MinitronError(
            f"Refusing to replace '{path}': it holds the current working folder",
            fix="run from another folder, or choose another output folder",
        )


def check_output_dir(
    path: str | os.PathLike, overwrite: bool = False, *, kind: str | None = None, replace_same_kind: bool = False
) -> Path:
    """Fail early, before any work, when the output folder ``path`` cannot be written.

    An existing folder is replaced only when hf_minitron made it and ``overwrite`` is set (or, with
    ``replace_same_kind``, when it holds an earlier output of the same ``kind``); an empty folder is used as is.
    """
    path = Path(path)
    _check_not_a_file(path)
    if path.is_dir():
        contents, marker = _contents(path), read_marker(path)
        if contents and marker is None:
            raise _not_ours(path, contents)
        if contents:
            if not (overwrite or (replace_same_kind and marker.get("kind") == kind)):
                raise MinitronError(
                    f"Output folder '{path}' already exists (it holds {_describe(marker)})",
                    "A new result never goes into an old folder",
                    f"choose another folder (only an earlier {kind} is replaced there)"
                    if replace_same_kind
                    else "choose another folder, or pass --overwrite (overwrite=True) to replace it",
                )
            _check_replaceable(path)
    _check_writable(path)
    check_not_locked(path)
    return path


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early when the output file ``path`` exists (unless ``overwrite``) or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise MinitronError(f"Output path '{path}' is a folder, not a file", fix="name a file")
    if path.exists() and not overwrite:
        raise MinitronError(f"'{path}' already exists", fix="choose another name or pass --overwrite")
    _check_writable(path)
    check_not_locked(path)
    return path


@contextmanager
def claim_output(path: str | os.PathLike, overwrite: bool = False, **options):
    """Check ``path`` as ``check_output_dir`` does, then hold its lock for the block (the long work
    before an atomic save), so a second writer is refused at once rather than after its work."""
    check_output_dir(path, overwrite, **options)
    with output_lock(path):
        yield Path(path)


# -- removal, only of what hf_minitron made -----------------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _aside(path: Path, what: str) -> Path:
    return path.absolute().with_name(f".{path.name}.{what}-{os.getpid()}-{os.urandom(4).hex()}")


def remove_made_folder(path: str | os.PathLike, *, within: str | os.PathLike | None = None) -> None:
    """Delete ``path``, a folder hf_minitron made: it carries the marker, or lies inside ``within``, itself
    inside a folder hf_minitron made.

    Renamed aside first, so a kill during the deletion leaves a hidden folder the next write removes."""
    path = Path(path)
    inside = within is not None and Path(within).absolute() in path.absolute().parents
    if read_marker(path) is None and not (inside and inside_made_folder(within)):
        raise MinitronError(
            f"Refusing to delete '{path}'",
            "Only folders hf_minitron made itself are deleted",
            "delete it yourself if it should go",
        )
    aside = _aside(path, REPLACED)
    os.replace(path, aside)
    _remove_tree(aside)


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders beside ``path`` that a killed hf_minitron process left; returns them.

    Only hidden ``.NAME.partial-PID-…``/``.NAME.replaced-PID-…`` folders of a process no longer running
    that carry the marker (or are empty) go."""
    path = Path(path).absolute()
    removed = []
    if not path.parent.is_dir():
        return removed
    for what in (PARTIAL, REPLACED):
        prefix = f".{path.name}.{what}-"
        for candidate in path.parent.iterdir():
            pid = candidate.name[len(prefix) :].split("-")[0] if candidate.name.startswith(prefix) else ""
            if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            if candidate.is_symlink() or not candidate.is_dir():
                continue
            if read_marker(candidate) is not None or inside_made_folder(path.parent):
                _remove_tree(candidate)
            elif not any(candidate.iterdir()):
                candidate.rmdir()
            else:
                continue
            removed.append(candidate)
    return removed


# -- writing -------------------------------------------------------------------------------------------------------


def _logical_name(path: Path) -> str:
    """``PARENT/NAME`` with a temporary parent's suffix removed (``.distill.partial-1-ab`` → ``distill``)."""
    parent = path.absolute().parent.name
    if f".{PARTIAL}-" in parent:
        parent = parent.split(f".{PARTIAL}-")[0].lstrip(".")
    return f"{parent}/{path.name}"


@contextmanager
def atomic_output_dir(
    path: str | os.PathLike, overwrite: bool = False, *, kind: str = "output", replace_same_kind: bool = False
):
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    A failure (an exception, Ctrl-C) removes the temporary folder, so a half-written model folder is
    never left behind and an existing one is never half-replaced. The folder carries the marker.
    """
    path = Path(path)
    options = dict(kind=kind, replace_same_kind=replace_same_kind)
    check_output_dir(path, overwrite, **options)
    with output_lock(path):
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        staging = _aside(path, PARTIAL)
        staging.mkdir()  # mode 0o777 less the umask, as any folder the user makes
        try:
            _write_marker(staging, kind)
            yield staging
            pause_point(f"save:{_logical_name(path)}")
            check_output_dir(path, overwrite, **options)  # nothing else appeared there meanwhile
            _swap_in(staging, path)
        except BaseException:
            _remove_tree(staging)
            raise


def _swap_in(staging: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()
    if path.exists() or path.is_symlink():
        retired = _aside(path, REPLACED)
        os.replace(path, retired)
        os.replace(staging, path)
        _remove_tree(retired)
    else:
        os.replace(staging, path)


def _work_dir_action(path: Path, *, kind: str, overwrite=False, keep=False, key=None, busy_fix=None) -> str:
    """What ``prepare_work_dir`` will do with ``path`` (make, keep, clear or use as is); refusals raise here."""
    _check_not_a_file(path)
    _check_writable(path)
    if not path.is_dir():
        return "make"
    contents, marker = _contents(path), read_marker(path)
    if not contents:
        return "make"
    if marker is None:
        if keep and not overwrite:
            return "use"  # an older run without the marker: resuming adds files, deletes nothing
        raise _not_ours(path, contents)
    if overwrite or (key is not None and marker.get("key") != key):
        _check_replaceable(path)
        return "clear"
    same_kind = marker.get("kind") == kind
    if keep and same_kind:
        return "keep"
    raise MinitronError(
        f"Output folder '{path}' already holds {_describe(marker)}",
        "A new run never mixes its files with an old one's",
        busy_fix if same_kind and busy_fix else "choose another folder, or pass --overwrite to replace it",
    )


def prepare_work_dir(
    path: str | os.PathLike,
    *,
    kind: str,
    overwrite: bool = False,
    keep: bool = False,
    key: str | None = None,
    busy_fix: str | None = None,
) -> Path:
    """Make or reuse a folder that is filled over time (a pipeline run, training checkpoints, data shards).

    Absent or empty: made, with the marker. Made by hf_minitron: cleared and made again with ``overwrite``
    or when the ``key`` it records differs (its contents belong to other inputs), kept with ``keep``,
    refused otherwise (``busy_fix`` says what to do). Not made by hf_minitron and not empty: used as is
    with ``keep`` (files are only added), refused otherwise. Call it holding ``output_lock(path)``.
    In a distributed job, rank 0 prepares the folder and the other ranks leave it alone.
    """
    path = Path(path)
    if is_secondary_rank():
        return path
    action = _work_dir_action(path, kind=kind, overwrite=overwrite, keep=keep, key=key, busy_fix=busy_fix)
    remove_stale_partials(path)
    if action == "clear":
        remove_made_folder(path)
    if action in ("make", "clear"):
        path.mkdir(parents=True, exist_ok=True)
        marker = read_marker(path)
        if action == "clear" or marker is None or marker.get("kind") != kind or key not in (None, marker.get("key")):
            _write_marker(path, kind, key)
    return path


@contextmanager
def claim_work_dir(path: str | os.PathLike, **options):
    """``prepare_work_dir(path, **options)`` holding the folder's lock for the block. Refusals come before
    anything is written, and a block that fails before writing into a folder made for it leaves no folder."""
    path = Path(path)
    check_not_locked(path)
    if not is_secondary_rank():
        _work_dir_action(path, **options)
    with output_lock(path):
        made = not path.exists()
        prepare_work_dir(path, **options)
        try:
            yield path
        except BaseException:
            if made:
                remove_if_unused(path)
            raise


def remove_if_unused(path: str | os.PathLike) -> None:
    """Remove ``path`` if hf_minitron made it and nothing was written into it yet (a run that failed at once)."""
    path = Path(path)
    if not is_secondary_rank() and read_marker(path) is not None and not has_contents(path):
        (path / MARKER_FILE).unlink()
        path.rmdir()


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Replace the file ``path`` in one rename: readers see the old text or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{PARTIAL}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
