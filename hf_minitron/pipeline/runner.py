"""Running a recipe as resumable stages, each in its own folder with a fingerprint of its inputs.

A stage's fingerprint covers its own settings, the fingerprints of the stages it reads, and the
size and modification time of local files it reads. ``resume`` skips a finished stage only when
its fingerprint still matches; a changed stage and everything after it run again; ``from_stage``
reruns from that stage on. A stage's folder appears only when the stage finishes (teacher-data
generation excepted: it resumes shard by shard inside its folder).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .. import __version__
from ..errors import MinitronError
from ..fingerprints import fingerprint
from ..outputs import atomic_output_dir, write_text_atomically
from . import quantized, reporting, stages
from .recipe import GENERATED, Recipe, load_recipe

STAGE_FILE = "stage.json"
RUN_FILE = "run.json"


@dataclass
class Stage:
    name: str
    folder: str
    reads: tuple[str, ...]
    function: object
    needs_records: bool = False
    atomic: bool = True


ALL_STAGES = (
    Stage("teacher_correction", "teacher-correction", (), stages.teacher_correction),
    Stage("importance", "importance", ("teacher_correction",), stages.importance),
    Stage("prune", "prune", ("importance",), stages.prune),
    Stage("generate_data", "generate-data", ("teacher_correction",), stages.generate_data, atomic=False),
    Stage("distill", "distill", ("prune", "generate_data"), stages.distill),
    Stage("align", "align", ("distill", "generate_data"), stages.align),
    Stage("evaluate", "evaluate", ("prune", "distill", "align"), reporting.evaluate),
    Stage("quantize", "quantize", ("distill", "align", "evaluate"), quantized.quantize),
    Stage(
        "model_card",
        "models",
        ("importance", "prune", "distill", "align", "evaluate", "quantize"),
        reporting.model_card,
        True,
    ),
    Stage("publish", "publish", ("model_card",), reporting.publish, True),
)
STAGE_NAMES = tuple(stage.name for stage in ALL_STAGES)


def _local_signature(value):
    """Local files a stage reads: their size and modification time, so edits are noticed."""
    if isinstance(value, str) and value not in ("", GENERATED) and Path(value).exists():
        path = Path(value)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return None


def _settings(recipe: Recipe, name: str):
    section = {
        "teacher_correction": recipe.teacher_correction,
        "importance": {
            "calibration": asdict(recipe.calibration),
            "students": {k: v.to_dict() for k, v in recipe.students.items()},
        },
        "prune": {
            "students": {k: v.to_dict() for k, v in recipe.students.items()},
            "reconstruction": recipe.reconstruction.to_dict() if recipe.reconstruction else None,
            "calibration": asdict(recipe.calibration) if recipe.reconstruction else None,
        },
        "generate_data": recipe.generate_data,
        "distill": recipe.distill,
        "align": recipe.align,
        "evaluate": asdict(recipe.evaluate),
        "quantize": asdict(recipe.quantize) if recipe.quantize else None,
        "model_card": {
            "card": asdict(recipe.card),
            "name": recipe.name,
            "repo_id": recipe.publish.repo_id if recipe.publish else None,
        },
        "publish": asdict(recipe.publish) if recipe.publish else None,
    }[name]
    flat = {}  # settings up to two levels deep, e.g. "calibration.data", "evaluate.tasks" entries
    for key, value in (json.loads(json.dumps(section, default=str)) or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    signatures = {key: _local_signature(value) for key, value in flat.items()}
    return section, {key: signature for key, signature in signatures.items() if signature}


def enabled_stages(recipe: Recipe, publish: bool = True) -> list[Stage]:
    optional = {
        "teacher_correction": recipe.teacher_correction is not None,
        "generate_data": recipe.generate_data is not None,
        "align": recipe.align is not None,
        "quantize": recipe.quantize is not None,
        "publish": publish and recipe.publish is not None,
    }
    return [stage for stage in ALL_STAGES if optional.get(stage.name, True)]


def run_recipe(
    recipe: Recipe | str | Path,
    output_dir: str | Path,
    *,
    resume: bool = False,
    from_stage: str | None = None,
    overwrite: bool = False,
    budget: float = 1.0,
    publish: bool = True,
) -> dict:
    """Run every enabled stage of ``recipe`` into ``output_dir``; returns the run summary."""
    recipe = load_recipe(recipe) if isinstance(recipe, (str, Path)) else recipe
    recipe = recipe.scaled(budget) if budget != 1.0 else recipe
    output = Path(output_dir)
    plan = enabled_stages(recipe, publish)
    if from_stage is not None and from_stage not in [s.name for s in plan]:
        raise MinitronError(
            f"--from {from_stage}: no such stage in this recipe", f"its stages are {', '.join(s.name for s in plan)}"
        )
    _prepare_output(output, resume or from_stage is not None, overwrite)
    run = stages.Run(recipe, output)
    write_text_atomically(output / "recipe.yaml", yaml.safe_dump(recipe.raw, sort_keys=False))
    write_text_atomically(output / RUN_FILE, json.dumps({"version": __version__, "budget": budget}) + "\n")
    fingerprints: dict[str, str] = {}
    records: dict[str, dict] = {}
    forced = False
    start = time.time()
    for index, stage in enumerate(plan, start=1):
        section, files = _settings(recipe, stage.name)
        upstream = {name: fingerprints[name] for name in stage.reads if name in fingerprints}
        fingerprints[stage.name] = fingerprint(
            {"stage": stage.name, "settings": section, "files": files, "upstream": upstream, "version": __version__}
        )
        forced = forced or stage.name == from_stage
        folder = output / stage.folder
        previous = _read_stage(folder)
        label = f"[{index}/{len(plan)}] {stage.name}"
        if not forced and previous and previous.get("fingerprint") == fingerprints[stage.name]:
            print(f"{label}: finished earlier with the same inputs, skipped", file=sys.stderr)
            records[stage.name] = previous["record"]
            continue
        if previous and not forced:
            print(f"{label}: inputs changed since it ran, running again", file=sys.stderr)
        else:
            print(f"{label}: running", file=sys.stderr)
        began = time.time()
        records[stage.name] = _run_stage(stage, run, folder, records)
        seconds = round(time.time() - began, 1)
        write_text_atomically(
            folder / STAGE_FILE,
            json.dumps(
                {"fingerprint": fingerprints[stage.name], "seconds": seconds, "record": records[stage.name]}, indent=2
            )
            + "\n",
        )
        print(f"{label}: done in {seconds} s", file=sys.stderr)
    table, data = reporting.summary(run, records)
    data["seconds"] = round(time.time() - start, 1)
    data["stages"] = [stage.name for stage in plan]
    write_text_atomically(output / "summary.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(output / "summary.txt", table + "\n")
    return {"table": table, **data}


def _prepare_output(output: Path, resuming: bool, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise MinitronError(f"Output path '{output}' is a file, not a folder", fix="choose a folder path")
    holds_run = (output / RUN_FILE).is_file()
    if overwrite and output.exists():
        shutil.rmtree(output)
    elif output.exists() and any(output.iterdir()) and not (holds_run and resuming):
        raise MinitronError(
            f"Output folder '{output}' already holds " + ("a run" if holds_run else "other files"),
            "a pipeline never mixes its stages into an unrelated folder",
            "pass --resume to continue that run, --from STAGE to rerun from a stage, or --overwrite to start over"
            if holds_run
            else "choose another folder",
        )
    output.mkdir(parents=True, exist_ok=True)


def _read_stage(folder: Path) -> dict | None:
    path = folder / STAGE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None  # a damaged record means "not finished"


def _run_stage(stage: Stage, run, folder: Path, records: dict) -> dict:
    arguments = (records,) if stage.needs_records else ()
    if not stage.atomic:
        if (folder / STAGE_FILE).is_file():  # finished earlier, now rerun: start clean
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return stage.function(run, folder, *arguments)
    with atomic_output_dir(folder, overwrite=True) as staging:
        record = stage.function(run, staging, *arguments)
    return record
