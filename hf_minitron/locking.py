"""One writer per output folder: a lock file beside the folder, held while a process writes there.

The lock is an ``flock`` on ``.NAME.hf_minitron.lock`` in the folder's parent (``O_EXCL`` where
``fcntl`` does not exist). The kernel drops an ``flock`` when its process dies, so a lock left by a
killed process is simply taken over; the file records the holder's pid for the error message.
Holding the lock on a folder covers everything inside it: a process that writes a run folder does
not lock each stage folder again, and another process cannot lock anything inside it.

In a distributed job (``RANK`` set) only rank 0 takes locks: the job is one writer.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import MinitronError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".hf_minitron.lock"
_held: dict[Path, int] = {}  # folder → file descriptor of its lock


def lock_file(path: str | os.PathLike) -> Path:
    path = Path(path).absolute()
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def is_secondary_rank() -> bool:
    """A process of a distributed job other than the first (rank 0 writes the outputs)."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return rank.strip().isdigit() and int(rank) != 0


def _holds(path: Path) -> bool:
    """Whether this process holds the lock on ``path`` or on a folder above it."""
    return any(folder in _held for folder in (path, *path.parents))


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _busy(path: Path, pid: int | None, holder: Path) -> MinitronError:
    where = "" if holder == path else f" (it holds the lock on '{holder}', which contains it)"
    return MinitronError(
        f"Another hf-minitron process (pid {pid if pid else 'unknown'}) is writing '{path}'{where}",
        "Two writers into one folder would mix or replace each other's results",
        "wait for that process to finish (or stop it), or choose another output folder",
    )


def writer_of(path: str | os.PathLike) -> tuple[int | None, Path] | None:
    """(pid, locked folder) of another live process writing ``path`` or a folder above it, else None."""
    path = Path(path).absolute()
    if _holds(path):
        return None
    for folder in (path, *path.parents):
        if folder == folder.parent:
            break
        file = lock_file(folder)
        if not file.is_file():
            continue
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            continue
        try:
            pid = _read_pid(fd)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return pid, folder
                fcntl.flock(fd, fcntl.LOCK_UN)
            elif pid is not None and pid != os.getpid() and pid_alive(pid):
                return pid, folder
        finally:
            os.close(fd)
    return None


def check_not_locked(path: str | os.PathLike) -> None:
    """Refuse at once when another process is writing ``path`` (or a folder holding it)."""
    if is_secondary_rank():
        return  # rank 0 of this job holds the lock
    busy = writer_of(path)
    if busy is not None:
        raise _busy(Path(path).absolute(), *busy)


def _acquire_flock(file: Path, path: Path) -> int:
    for _ in range(10):
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise _busy(path, pid, path) from None
        try:  # the previous holder may have removed the file between our open and our lock
            current = os.stat(file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)
    raise MinitronError(f"Could not take the lock on '{path}'", fix="try again")


def _acquire_exclusive(file: Path, path: Path) -> int:  # pragma: no cover - systems without fcntl
    for _ in range(10):
        try:
            return os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pid = None
            try:
                text = file.read_text().strip()
                pid = int(text) if text.isdigit() else None
            except OSError:
                pass
            if pid is not None and pid_alive(pid):
                raise _busy(path, pid, path) from None
            file.unlink(missing_ok=True)
    raise MinitronError(f"Could not take the lock on '{path}'", fix="try again")


@contextmanager
def output_lock(path: str | os.PathLike):
    """Hold the lock on ``path`` for the block; refuse at once if another live process holds it.

    Re-entrant, and a no-op inside a folder this process already holds or on ranks other than 0.
    """
    path = Path(path).absolute()
    if _holds(path) or is_secondary_rank():
        yield path
        return
    check_not_locked(path)
    file = lock_file(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire_flock(file, path) if fcntl is not None else _acquire_exclusive(file, path)
    except PermissionError as error:
        raise MinitronError(
            f"Cannot write into '{file.parent}'",
            f"The folder is not writable ({error.strerror})",
            "choose another place",
        ) from error
    previous = _read_pid(fd)
    if previous is not None and previous != os.getpid() and not pid_alive(previous):
        logger.warning("Taking over the lock on %s left by process %d, which is no longer running", path, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd
    try:
        yield path
    finally:
        del _held[path]
        file.unlink(missing_ok=True)  # before unlocking, so a waiting process sees a fresh file
        os.close(fd)
