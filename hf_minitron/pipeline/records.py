"""What a stage records in its ``stage.json``, and what a resume checks before trusting it.

A stage's fingerprint covers every input that changes its result: its settings (secrets left out),
the local files they name (size, modification time and content digest), the teacher's identity
(its name and, for a local folder or file, the same signature of its files; for a Hub id, the
cached revision), the model dtype and device map, the fingerprint and outputs of each stage it reads,
and the package version. Its outputs are recorded as a manifest (each file's size and digest),
checked again on ``--resume``: a stage whose output was deleted, emptied or cut short runs again.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..fingerprints import file_digest, fingerprint, folder_files
from ..loading import BUILTIN_MODELS, BUILTIN_PREFIX
from ..outputs import MARKER_FILE, write_text_atomically
from ..redaction import redact
from .recipe import GENERATED, Recipe

STAGE_FILE = "stage.json"


def file_signature(value):
    """Local files a setting names: [path, size, modification time, digest] each, so edits are noticed."""
    if isinstance(value, str) and value not in ("", GENERATED) and Path(value).exists():
        return [[name, p.stat().st_size, p.stat().st_mtime_ns, file_digest(p)] for name, p in folder_files(value)]
    return None


def _cached_hub_revision(repo_id: str) -> str | None:
    """The commit of ``repo_id`` in the local Hugging Face cache: the weights a load uses offline."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.is_file() else None
    except (ImportError, OSError):
        return None


def teacher_identity(recipe: Recipe) -> dict:
    source = recipe.teacher
    identity = {"teacher": source, "model_dtype": recipe.model_dtype, "device_map": recipe.device_map}
    if source.startswith(BUILTIN_PREFIX):
        from importlib.metadata import PackageNotFoundError, version

        package = BUILTIN_MODELS.get(source[len(BUILTIN_PREFIX) :], {}).get("package", "")
        try:
            identity["package_version"] = version(package)
        except (PackageNotFoundError, ValueError):
            identity["package_version"] = None
    elif Path(source).exists():
        identity["files"] = file_signature(source)
    else:
        identity["revision"] = _cached_hub_revision(source)
    return identity


def stage_inputs(recipe: Recipe, name: str) -> tuple[dict, dict]:
    """A stage's settings (secrets left out) and the signatures of the local files they name."""
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
        "distill": _distill_inputs(recipe),
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
    section = redact(json.loads(json.dumps(section, default=str)))
    flat = {}  # settings up to two levels deep, e.g. "calibration.data", "evaluate.tasks" entries
    for key, value in (section or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
            flat.update({f"{key}[{k}]": k for k in value})  # a mixture's keys may name local files
        else:
            flat[key] = value
    signatures = {key: file_signature(value) for key, value in flat.items()}
    return section, {key: signature for key, signature in signatures.items() if signature}


def _distill_inputs(recipe: Recipe) -> dict | None:
    """The distill section, and the folders of students the recipe gives: editing one reruns distillation
    and every stage after it (evaluation and cards read those folders too, and read distillation)."""
    if recipe.distill is None or not recipe.student_models:
        return recipe.distill
    return {**recipe.distill, "student_models": recipe.student_models}


def output_manifest(folder: Path) -> dict[str, list]:
    """{relative path: [size, digest]} of every file a stage wrote."""
    return {name: [p.stat().st_size, file_digest(p)] for name, p in folder_files(folder, (STAGE_FILE, MARKER_FILE))}


def outputs_problem(folder: Path, record: dict) -> str | None:
    """What is wrong with a finished stage's outputs now (a file missing, resized or changed), or None."""
    manifest = record.get("outputs")
    if not isinstance(manifest, dict):
        return "was recorded without a list of its files"
    for name, (size, digest) in sorted(manifest.items()):
        path = folder / name
        if not path.is_file():
            return f"file {name} is missing"
        if path.stat().st_size != size:
            return f"file {name} has {path.stat().st_size} bytes, not the {size} it was written with"
        if file_digest(path) != digest:
            return f"file {name} changed since it was written"
    return None


def read_stage(folder: Path) -> dict | None:
    path = folder / STAGE_FILE
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged record means "not finished"
    return record if isinstance(record, dict) else None


def write_stage(folder: Path, stage_fingerprint: str, seconds: float, record: dict) -> str:
    """Record a finished stage; returns the digest of its outputs, which the stages reading it fingerprint."""
    manifest = output_manifest(folder)
    digest = fingerprint({"outputs": manifest, "record": record})
    entry = {
        "fingerprint": stage_fingerprint,
        "seconds": seconds,
        "record": record,
        "outputs": manifest,
        "outputs_digest": digest,
    }
    write_text_atomically(folder / STAGE_FILE, json.dumps(entry, indent=2) + "\n")
    return digest
