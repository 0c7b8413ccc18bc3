"""Running a recipe as resumable stages, each in its own folder with a record of its inputs and outputs.

``resume`` skips a finished stage only when the fingerprint of its inputs still matches and its
outputs are still as written (see ``records``); a stage that changed or was damaged runs again, and
so does every stage reading what it wrote, if that changed. ``from_stage`` reruns from that stage on.
A stage's folder appears only when the stage finishes (teacher-data generation excepted: it resumes
shard by shard inside its folder). Training stages keep their Trainer checkpoints in
``checkpoints/STAGE/`` and, after a kill, continue from the last complete one.

The run folder is locked for the whole run, and carries hf_minitron's marker: ``overwrite`` clears only
such a folder.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import __version__
from ..crashpoints import pause_point
from ..distillation_data.generate import DATA_KIND
from ..errors import MinitronError
from ..fingerprints import fingerprint
from ..outputs import atomic_output_dir, claim_work_dir, prepare_work_dir, write_text_atomically
from ..quiet import library_progress_bars_off
from ..redaction import redact
from . import cards, evaluate, publishing, quantized, records, stages, summary
from .recipe import Recipe, calibrates_on_generated, check_student_models, load_recipe

RUN_FILE = "run.json"
RUN_KIND = "pipeline run"
STAGE_KIND = "pipeline stage"
CHECKPOINTS_KIND = "training checkpoints"


@dataclass
class Stage:
    name: str
    folder: str
    reads: tuple[str, ...]
    function: object
    needs_records: bool = False
    atomic: bool = True
    trains: bool = False  # keeps Trainer checkpoints in checkpoints/FOLDER/ and resumes from them


ALL_STAGES = (
    Stage("teacher_correction", "teacher-correction", (), stages.teacher_correction, trains=True),
    # Before importance: the calibration text may include what the teacher writes.
    Stage("generate_data", "generate-data", ("teacher_correction",), stages.generate_data, atomic=False),
    Stage("importance", "importance", ("teacher_correction",), stages.importance),
    Stage("prune", "prune", ("importance",), stages.prune),
    Stage("distill", "distill", ("prune", "generate_data"), stages.distill, trains=True),
    Stage("align", "align", ("distill", "generate_data"), stages.align, trains=True),
    Stage("evaluate", "evaluate", ("prune", "distill", "align"), evaluate.evaluate),
    Stage("quantize", "quantize", ("distill", "align", "evaluate"), quantized.quantize),
    Stage(
        "model_card",
        "models",
        ("importance", "prune", "distill", "align", "evaluate", "quantize"),
        cards.model_card,
        True,
    ),
    Stage("publish", "publish", ("model_card",), publishing.publish, True),
)
STAGE_NAMES = tuple(stage.name for stage in ALL_STAGES)


def enabled_stages(recipe: Recipe, publish: bool = True) -> list[Stage]:
    optional = {
        "teacher_correction": recipe.teacher_correction is not None,
        # Students given as model folders need neither; a recipe without a distill section stops at pruning.
        "importance": bool(recipe.students),
        "prune": bool(recipe.students),
        "generate_data": recipe.generate_data is not None,
        "distill": recipe.distill is not None,
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
    check_student_models(recipe)
    plan = enabled_stages(recipe, publish)
    if from_stage is not None and from_stage not in [s.name for s in plan]:
        raise MinitronError(
            f"--from {from_stage}: no such stage in this recipe", f"its stages are {', '.join(s.name for s in plan)}"
        )
    output = Path(output_dir)
    with claim_work_dir(
        output,
        kind=RUN_KIND,
        overwrite=overwrite,
        keep=resume or from_stage is not None,
        busy_fix="pass --resume to continue that run, --from STAGE to rerun from a stage, or --overwrite to start over",
    ):
        return _run_stages(recipe, plan, output, from_stage, budget)


def _run_stages(recipe: Recipe, plan: list[Stage], output: Path, from_stage: str | None, budget: float) -> dict:
    run = stages.Run(recipe, output)
    write_text_atomically(output / "recipe.yaml", yaml.safe_dump(redact(recipe.raw), sort_keys=False))
    write_text_atomically(output / RUN_FILE, json.dumps({"version": __version__, "budget": budget}) + "\n")
    teacher = records.teacher_identity(recipe)
    fingerprints: dict[str, str] = {}
    digests: dict[str, str] = {}
    results: dict[str, dict] = {}
    forced = False
    start = time.time()
    for index, stage in enumerate(plan, start=1):
        section, files = records.stage_inputs(recipe, stage.name)
        reads = stage.reads
        if stage.name in ("importance", "prune") and calibrates_on_generated(recipe):
            reads = (*reads, "generate_data")  # the teacher's text is part of their calibration
        upstream = {name: [fingerprints[name], digests[name]] for name in reads if name in fingerprints}
        fingerprints[stage.name] = fingerprint(
            {
                "stage": stage.name,
                "settings": section,
                "files": files,
                "teacher": teacher,
                "upstream": upstream,
                "version": __version__,
            }
        )
        forced = forced or stage.name == from_stage
        folder = output / stage.folder
        previous = records.read_stage(folder)
        label = f"[{index}/{len(plan)}] {stage.name}"
        if not forced and previous and previous.get("fingerprint") == fingerprints[stage.name]:
            problem = records.outputs_problem(folder, previous)
            if problem is None:
                print(f"{label}: finished earlier with the same inputs, outputs verified, skipped", file=sys.stderr)
                results[stage.name], digests[stage.name] = previous["record"], previous["outputs_digest"]
                continue
            print(f"{label}: its output {problem}; running it again", file=sys.stderr)
        elif previous and not forced:
            print(f"{label}: inputs changed since it ran, running again", file=sys.stderr)
        else:
            print(f"{label}: running", file=sys.stderr)
        began = time.time()
        if stage.trains:  # checkpoints of other inputs, or of a forced rerun, are cleared
            key = fingerprints[stage.name]
            prepare_work_dir(run.checkpoints(stage.folder), kind=CHECKPOINTS_KIND, key=key, overwrite=forced, keep=True)
        with library_progress_bars_off():
            results[stage.name] = redact(_run_stage(stage, run, folder, results, fingerprints[stage.name]))
        seconds = round(time.time() - began, 1)
        digests[stage.name] = records.write_stage(folder, fingerprints[stage.name], seconds, results[stage.name])
        print(f"{label}: done in {seconds} s", file=sys.stderr)
    table, data = summary.summary(run, results)
    data["seconds"] = round(time.time() - start, 1)
    data["stages"] = [stage.name for stage in plan]
    data = redact(data)
    write_text_atomically(output / "summary.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(output / "summary.txt", table + "\n")
    return {"table": table, **data}


def _run_stage(stage: Stage, run, folder: Path, results: dict, stage_fingerprint: str) -> dict:
    arguments = (results,) if stage.needs_records else ()
    if not stage.atomic:  # fills its folder over time; a finished one run again starts clean
        finished = (folder / records.STAGE_FILE).is_file()
        prepare_work_dir(folder, kind=DATA_KIND, key=stage_fingerprint, overwrite=finished, keep=True)
        return stage.function(run, folder, *arguments)
    with atomic_output_dir(folder, overwrite=True, kind=STAGE_KIND) as staging:
        pause_point(f"stage:{stage.name}")
        record = stage.function(run, staging, *arguments)
    return record
