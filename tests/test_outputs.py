"""Output folders: only what hf_minitron made is replaced, one writer at a time, nothing left half-made."""

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from hf_minitron import MinitronError
from hf_minitron.checkpoints import last_complete_checkpoint
from hf_minitron.cli import main
from hf_minitron.locking import lock_file
from hf_minitron.outputs import (
    MARKER_FILE,
    atomic_output_dir,
    prepare_work_dir,
    read_marker,
    remove_made_folder,
    remove_stale_partials,
)

from helpers import save_tiny

TEXT = "\n\n".join(f"Line {i} of some plain text for a tiny model." for i in range(60))


@pytest.fixture
def workspace(tmp_path):
    save_tiny(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    return tmp_path


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path, *names: str) -> Path:
    """A folder the user made: files and a subfolder, no marker."""
    (path / "chapter").mkdir(parents=True)
    (path / "chapter" / "draft.txt").write_text("draft")
    for name in names:
        (path / name).write_text(f"the user's {name}")
    return path


def made_folder(path: Path, kind: str, *names: str) -> Path:
    with atomic_output_dir(path, kind=kind) as staging:
        for name in names:
            (staging / name).mkdir() if "." not in name else (staging / name).write_text(name)
    return path


@contextmanager
def another_writer(path: Path):
    """Another process holding the lock on ``path``, as a running hf-minitron would."""
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, str(os.getpid()).encode())\n"
        "print('holding', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_file(path))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def dry_run_args(workspace: Path, destination: Path) -> list:
    package = workspace / "pkg"  # enough of a packaged model to be found; the refusal comes before it is read
    package.mkdir()
    (package / "card_facts.json").write_text("{}")
    return ["publish", package, "--repo-id", "me/X", "--dry-run", "--dry-run-dir", destination]


def recipe_file(workspace: Path) -> Path:
    values = {
        "name": "Tiny",
        "teacher": str(workspace / "model"),
        "students": {"width": {"hidden_size": 36}},
        "distill": {"dataset": str(workspace / "text.txt"), "max_steps": 1},
    }
    (workspace / "recipe.yaml").write_text(yaml.safe_dump(values))
    return workspace / "recipe.yaml"


def prune_args(workspace: Path, output: Path, *extra) -> list:
    model = ["--model", workspace / "model", "--data", workspace / "text.txt", "--num-samples", 4, "--seq-len", 32]
    return ["prune", *model, "--hidden-size", 36, "-o", output, *extra]


def distill_args(workspace: Path, output: Path, *extra) -> list:
    models = ["--model_name_or_path", workspace / "model", "--teacher_model_name_or_path", workspace / "model"]
    return ["distill", *models, "--dataset_name", workspace / "text.txt", "--output_dir", output, *extra]


def checkpoint(folder: Path, state: bool = True, weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    if weights:
        save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    torch.save({"step": 1}, folder / "optimizer.pt")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))
    return folder


# Each case: the folders it sets up, the command, and the message; the command must leave every file as it was.
REFUSALS = {
    "prune --overwrite onto a user's folder": (
        lambda w: prune_args(w, user_folder(w / "out", "notes.txt"), "--overwrite"),
        r"'.*out' holds files hf_minitron did not make \(chapter/, notes.txt\).*move or delete",
    ),
    "run --overwrite onto a folder that is not a run": (
        lambda w: ["run", recipe_file(w), "-o", user_folder(w / "thesis", "thesis.txt"), "--overwrite"],
        r"'.*thesis' holds files hf_minitron did not make \(chapter/, thesis.txt\)",
    ),
    "run onto another command's output": (
        lambda w: ["run", recipe_file(w), "-o", made_folder(w / "scores", "importance scores", "a.txt"), "--resume"],
        r"already holds importance scores made by hf_minitron",
    ),
    "publish --dry-run-dir onto a user's folder": (
        lambda w: dry_run_args(w, user_folder(w / "notes", "notes.txt")),
        r"'.*notes' holds files hf_minitron did not make",
    ),
    "publish --dry-run-dir onto the folder being published": (
        lambda w: dry_run_args(w, w),
        r"--dry-run-dir '.*' holds the models being published",
    ),
    "publish --dry-run-dir onto a pruned model": (
        lambda w: dry_run_args(w, made_folder(w / "pruned", "pruned model", "config.json")),
        r"'.*pruned' already exists \(it holds a pruned model made by hf_minitron.*only an earlier publish dry run",
    ),
    "distill into a user's folder": (
        lambda w: distill_args(w, user_folder(w / "train", "notes.txt")),
        r"'.*train' holds files hf_minitron did not make",
    ),
    "distill --overwrite with --resume_from_checkpoint": (
        lambda w: distill_args(w, w / "train", "--overwrite", "--resume_from_checkpoint", "last"),
        r"--overwrite and --resume_from_checkpoint contradict each other",
    ),
    "distill resumed from a checkpoint cut short": (
        lambda w: distill_args(
            w,
            made_folder(w / "train", "training run"),
            "--resume_from_checkpoint",
            checkpoint(w / "train" / "checkpoint-2", state=False),
        ),
        r"Cannot resume from '.*checkpoint-2': it has no trainer_state.json.*--resume_from_checkpoint last",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_folder_and_change_nothing(workspace, capsys, case):
    build, message = REFUSALS[case]
    argv = [str(a) for a in build(workspace)]
    before = snapshot(workspace)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    assert re.search(message, err, re.DOTALL), err
    assert snapshot(workspace) == before


def test_a_second_writer_is_refused_at_once_and_writes_nothing(workspace, capsys):
    made_folder(workspace / "out", "pruned model", "config.json")
    with another_writer(workspace / "out") as pid:
        before = snapshot(workspace)
        assert main([str(a) for a in prune_args(workspace, workspace / "out", "--overwrite")]) == 2
        assert f"Another hf-minitron process (pid {pid}) is writing '{workspace / 'out'}'" in capsys.readouterr().err
        # Anything inside a folder being written is refused too.
        assert main([str(a) for a in prune_args(workspace, workspace / "out" / "inner")]) == 2
        err = capsys.readouterr().err
        assert f"(pid {pid})" in err and "which contains it" in err
        with pytest.raises(MinitronError, match=f"pid {pid}"), atomic_output_dir(workspace / "out" / "inner"):
            pass
        assert snapshot(workspace) == before


def test_a_dead_writers_lock_is_taken_over(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file(tmp_path / "out").write_text(finished.stdout)  # left by a process that no longer runs
    with atomic_output_dir(tmp_path / "out", kind="test output") as staging:
        (staging / "a.txt").write_text("a")
    assert (tmp_path / "out" / "a.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the lock file went with the lock


def test_folders_follow_the_umask_and_carry_the_marker(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out", kind="test output"):
            pass
        work = prepare_work_dir(tmp_path / "work", kind="test run")
    finally:
        os.umask(previous)
    for folder in (tmp_path / "out", work):
        assert folder.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0o700: others can read the models
        assert read_marker(folder)["made_by"] == "hf_minitron"
    assert read_marker(tmp_path / "out")["kind"] == "test output"


def test_stale_temporary_folders_of_killed_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = dead.stdout.strip()
    partial = made_folder(tmp_path / f".out.partial-{dead}-ab12", "test output", "weights.bin")
    replaced = made_folder(tmp_path / f".out.replaced-{dead}-cd34", "test output", "weights.bin")
    empty = tmp_path / f".out.partial-{dead}-ef56"
    empty.mkdir()  # killed before its marker was written
    users = user_folder(tmp_path / f".out.partial-{dead}-0000", "mine.txt")  # not ours: kept
    alive = made_folder(tmp_path / f".out.partial-{os.getppid()}-9999", "test output")  # a live process: kept
    with atomic_output_dir(tmp_path / "out", kind="test output"):
        pass
    assert not partial.exists() and not replaced.exists() and not empty.exists()
    assert users.exists() and alive.exists()
    assert remove_stale_partials(tmp_path / "out") == []


def test_work_folders_are_cleared_only_when_made_here(tmp_path):
    run = prepare_work_dir(tmp_path / "run", kind="test run")
    (run / "old.txt").write_text("old")
    with pytest.raises(MinitronError, match=r"already holds a test run.*pass --resume"):
        prepare_work_dir(run, kind="test run", busy_fix="pass --resume")
    assert prepare_work_dir(run, kind="test run", keep=True) == run and (run / "old.txt").is_file()
    prepare_work_dir(run, kind="test run", key="other inputs", keep=True)  # contents of other inputs: cleared
    assert not (run / "old.txt").exists() and read_marker(run)["key"] == "other inputs"
    (run / "new.txt").write_text("new")
    prepare_work_dir(run, kind="test run", overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [MARKER_FILE]
    mine = user_folder(tmp_path / "mine", "notes.txt")
    with pytest.raises(MinitronError, match="did not make"):
        prepare_work_dir(mine, kind="test run", overwrite=True)
    with pytest.raises(MinitronError, match="Refusing to delete"):
        remove_made_folder(mine)
    assert (mine / "notes.txt").is_file()


def test_resume_falls_back_to_the_last_complete_checkpoint(tmp_path):
    run = prepare_work_dir(tmp_path / "train", kind="training run")
    complete = checkpoint(run / "checkpoint-1")
    checkpoint(run / "checkpoint-2", state=False)  # killed before trainer_state.json
    cut = checkpoint(run / "checkpoint-3")
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:-3])  # killed mid-write
    checkpoint(run / "checkpoint-4", weights=False)
    assert last_complete_checkpoint(run) == complete
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]  # the broken ones are gone
    legacy = tmp_path / "legacy"  # a folder without the marker: nothing in it is deleted
    checkpoint(legacy / "checkpoint-1")
    checkpoint(legacy / "checkpoint-2", state=False)
    with pytest.raises(MinitronError, match=r"checkpoint-2' is incomplete: it has no trainer_state\.json"):
        last_complete_checkpoint(legacy)
    assert (legacy / "checkpoint-2").is_dir()


def test_distill_overwrite_starts_a_clean_run(workspace):
    old = made_folder(workspace / "train", "training run", "checkpoint-9", "distillation_log.jsonl")
    settings = ["--max_steps", "1", "--max_length", "32", "--per_device_train_batch_size", "2", "--report_to", "none"]
    settings += ["--gradient_checkpointing", "false", "--logging_steps", "1", "--save_steps", "1"]
    argv = distill_args(workspace, old, *settings, "--overwrite")
    assert main([str(a) for a in argv]) == 0
    assert sorted(p.name for p in old.glob("checkpoint-*")) == ["checkpoint-1"]  # the old run's are gone
    assert len((old / "distillation_log.jsonl").read_text().splitlines()) == 1
    assert read_marker(old)["kind"] == "training run" and (old / "student" / "model.safetensors").is_file()
