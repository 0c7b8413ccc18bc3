"""The one-command GPU benchmark at toy sizes on CPU: every section runs (or says why not), every row is in
the table; and the library imports without the packages a bare GPU machine lacks."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
from plan import SECTIONS  # noqa: E402

# Rows that must carry measurements on a CPU-only machine (the others may be skipped with a reason).
MEASURED_ON_CPU = {
    "kl": ("reference", "trl", "chunked"),
    "step_1b": ("trl", "ours"),
    "step_8b": ("trl", "ours"),
    "importance": ("forward", "importance", "lm_forward", "reconstruction"),
    "prune": ("width", "depth"),
    "inference": ("teacher", "width", "depth"),
    "step_options": ("base", "packed_sdpa", "teacher_fp32", "grad_ckpt"),
}


def run_bench(out: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "bench" / "gpu" / "run.py"), "--out", str(out), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_tiny_run_fills_every_row(tmp_path):
    # About 30 s; the generous budget and time boxes only matter on a machine busy with other work.
    result = run_bench(tmp_path, "--tiny", "--budget", "900")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "results.md").read_text()
    for section in SECTIONS:
        assert section.title in markdown
        rows = data["sections"][section.name]["rows"]
        assert list(rows) == [key for key, _ in section.rows]
        for key, label in section.rows:
            row = rows[key]
            assert label in markdown
            assert row["cells"] or row["status"], f"{section.name}/{key} has neither measurements nor a reason"
            if key in MEASURED_ON_CPU[section.name]:
                assert row["status"] is None, f"{section.name}/{key}: {row['status']}"
                assert any(isinstance(v, float) for v in row["cells"].values()), f"{section.name}/{key}"
    assert data["sections"]["step_1b"]["rows"]["ours"]["cells"]["note"].startswith("backend chunked")


def test_a_spent_budget_still_writes_every_row(tmp_path):
    result = run_bench(tmp_path, "--tiny", "--budget", "1", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    for section in SECTIONS:
        assert all(row["status"] == "not run (budget spent)" for row in data["sections"][section.name]["rows"].values())


BLOCKER = """
    import importlib.machinery

    BLOCKED = {"gguf", "torchao", "evaluate", "lm_eval", "liger_kernel"}
    _original = importlib.machinery.PathFinder.find_spec.__func__

    def _find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in BLOCKED else _original(cls, name, path, target)

    importlib.machinery.PathFinder.find_spec = classmethod(_find_spec)
"""


@pytest.mark.parametrize(
    "modules",
    [
        "hf_minitron, hf_minitron.distillation.trainer, hf_minitron.pruning, hf_minitron.importance",
        "workloads, steps, train_sections, model_sections, decode",
    ],
    ids=["library", "benchmark"],
)
def test_imports_without_gguf_torchao_evaluate_lm_eval(tmp_path, modules):
    """The GPU machine has none of these installed: nothing the benchmark needs may import them."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    paths = [str(tmp_path), str(ROOT), str(ROOT / "bench" / "gpu")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    code = f"import {modules}\nimport importlib.util\nassert importlib.util.find_spec('torchao') is None"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
