"""The model_card stage: each model packaged as a publishable folder with its card and licence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..hub.card import HUB_ID
from ..loading import BUILTIN_MODELS, BUILTIN_PREFIX, describe_source
from ..model_folder import RECORD_FILE, read_record
from ..outputs import MARKER_FILE
from ..shapes import ModelShape, comparison_table, human_count
from .evaluate import THROUGHPUT
from .stages import Run


def teacher_license(source: str, override: str | None) -> str | None:
    """The license to carry over: the recipe's, the built-in teacher's, a local card's, or the Hub card's."""
    if override:
        return override
    if source.startswith(BUILTIN_PREFIX):
        return BUILTIN_MODELS.get(source[len(BUILTIN_PREFIX) :], {}).get("license")
    try:
        from huggingface_hub import ModelCard

        readme = Path(source) / "README.md"
        card = ModelCard.load(str(readme)) if readme.is_file() else ModelCard.load(source)
        return card.data.license
    except Exception:  # no card, no network: the card then says the teacher's license applies
        return None


def _changes(teacher: dict, student: dict) -> str:
    labels = {
        "num_hidden_layers": "layers",
        "hidden_size": "hidden",
        "intermediate_size": "MLP",
        "num_attention_heads": "query heads",
        "num_key_value_heads": "KV heads",
    }
    changed = [
        f"{label} {teacher[key]}→{student[key]}" for key, label in labels.items() if teacher[key] != student[key]
    ]
    return ", ".join(changed) or "no dimension changed"


_AGGREGATIONS = {"l2": "L2", "mean": "mean", "var": "variance"}


def _aggregation_text(aggregation: dict) -> str:
    batch, seq = aggregation.get("batch_aggregation", "l2"), aggregation.get("seq_aggregation", "mean")
    return f"{_AGGREGATIONS[batch]} over the batch, {_AGGREGATIONS[seq]} over the sequence"


def _reconstruction_text(summary: dict | None) -> str | None:
    """One sentence for the card: what was re-fitted, on what, and how much closer it came to the teacher."""
    if not summary:
        return None
    settings = summary["settings"]
    parts = [p for p, on in (("attention", settings["attention_output"]), ("MLP", settings["mlp_output"])) if on]
    errors = [
        f"{label} {summary[key][0]:.3f} → {summary[key][1]:.3f}"
        for label, key in (("attention", "attention_error"), ("MLP", "mlp_error"))
        if summary.get(key) and summary[key][0] is not None
    ]
    which = "every layer" if settings["layers"] == "all" else "the changed layers"
    text = (
        f"the {' and '.join(parts)} output projections of {which} were re-fitted by ridge least squares "
        f"(damping {settings['damping']}) on {summary['tokens']} tokens of {summary['data']}, layer by layer "
        "on the inputs of the already re-fitted layers below"
    )
    if errors:
        text += f"; mean relative error against the teacher's residual stream {', '.join(errors)}"
    return text


def _training_summary(facts: dict, name: str) -> str:
    student = facts["students"][name]
    settings = facts["settings"]
    parts = [
        f"{student.get('tokens', '?')} tokens of {facts['data']}"
        if "tokens" in student
        else f"{student['rows']} rows of {facts['data']}",
        f"{student['steps']} steps",
    ]
    for key in ("divergence", "temperature", "learning_rate", "max_length", "per_device_train_batch_size"):
        if key in settings:
            parts.append(f"{key.replace('_', ' ')} {settings[key]}")
    return "; ".join(parts)


def _layer_choice(selection: str | None, task: str | None = None) -> str | None:
    """How the dropped layers were chosen, in words for a card."""
    return {
        "lm_loss": "the contiguous block whose removal raised LM loss on the calibration text least",
        "downstream": f"the contiguous block whose removal kept {_task_label(task)}'s accuracy highest, LM loss "
        "deciding between blocks within one standard error",
        "block_importance": "the layers of lowest Block Importance",
        "explicit": "chosen by hand",
    }.get(selection)


def _task_label(task: str | None) -> str:
    """A task named without the machine's paths (a card must not reveal them)."""
    if not task:
        return "a task"
    return task if task.startswith("builtin:") else Path(task).name


def _pruning_facts(run: Run, name: str, records: dict, shapes: dict) -> dict:
    """What a card says about how a student was pruned: from this run's records, or, for a student the
    recipe gives as a folder, from the record pruning left in its config.json (nothing if it has none)."""
    if name in run.recipe.students:
        calibration = records["importance"]
        return {
            "importance": {
                "calibration": f"{calibration['calibration_tokens']} tokens of {calibration['calibration']}",
                "aggregation": _aggregation_text(calibration.get("aggregation", {})),
            },
            "pruning": {
                "summary": _changes(shapes["teacher"], shapes[name]),
                "dropped_layers": records["prune"]["dropped_layers"].get(name) or [],
                "layer_choice": _layer_choice(
                    run.recipe.students[name].layer_selection, run.recipe.calibration.downstream_task
                ),
            },
            "reconstruction": _reconstruction_text((records["prune"].get("reconstruction") or {}).get(name)),
        }
    record = read_record(run.student_folder("prune", name))
    if not record:
        return {"importance": None, "pruning": None, "reconstruction": None}
    importance = record.get("importance")
    return {
        "importance": {
            "calibration": f"{importance['num_samples']} samples of up to {importance['seq_len']} tokens of "
            f"{importance['data']}",
            "aggregation": _aggregation_text(importance),
        }
        if importance
        else None,
        "pruning": {
            "summary": _changes(record["source_shape"], record["pruned_shape"]),
            "dropped_layers": record.get("dropped_layers") or [],
            "layer_choice": _layer_choice(record.get("layer_selection")),
        },
        "reconstruction": _reconstruction_text(record.get("reconstruction")),
    }


def card_facts(run: Run, name: str, kind: str, records: dict) -> dict:
    from ..hub.card import model_link
    from ..hub.publish import variant_repo_id

    recipe = run.recipe
    variant = name.capitalize()
    base_repo = recipe.publish.repo_id if recipe.publish else recipe.name
    repo_id = variant_repo_id(base_repo, variant, kind)
    teacher_id = describe_source(recipe.teacher)
    shapes = records["evaluate"]["shapes"]
    teacher_shape, student_shape = shapes["teacher"], shapes[name]
    results = json.loads((run.folder("evaluate") / "results.json").read_text())
    speed = json.loads((run.folder("evaluate") / "throughput.json").read_text())
    labels = dict(run.model_stages())
    final = f"{name} {labels['align'] if kind == 'Instruct' else labels.get('distill', labels['prune'])}"
    sources = (
        recipe.calibration.data if recipe.students else None,
        (recipe.distill or {}).get("dataset"),
        (recipe.align or {}).get("dataset"),
    )
    datasets = [
        d
        for source in sources
        for d in (source if isinstance(source, dict) else [source])  # each source of a mixture
        if isinstance(d, str) and HUB_ID.match(d) and not Path(d).exists()
    ]
    facts = {
        "name": repo_id.split("/")[-1],
        "variant": variant,
        "kind": kind,
        "repo_id": repo_id,
        "teacher": {**model_link(teacher_id), "license": teacher_license(recipe.teacher, recipe.card.license)},
        "params": {
            "teacher_total": human_count(teacher_shape["params"]),
            "student_total": human_count(student_shape["params"]),
            "student_non_embedding": human_count(student_shape["non_embedding_params"]),
            "ratio": f"{100 * student_shape['params'] / teacher_shape['params']:.0f}%",
        },
        **_pruning_facts(run, name, records, shapes),
        # None when the recipe stops after pruning: the card then describes a pruned, untrained model.
        "distillation": {"summary": _training_summary(records["distill"], name)} if "distill" in records else None,
        "shape_table": comparison_table(
            {
                teacher_id.split("/")[-1]: ModelShape(**teacher_shape),
                repo_id.split("/")[-1]: ModelShape(**student_shape),
            },
            markdown=True,
        ),
        "evaluation": {
            "teacher": results["teacher"],
            "student": results[final],
            "perplexity_data": records["evaluate"]["perplexity_data"],
        },
        "throughput": _throughput_text(speed, name),
        "plots": [],
        "intended_use": recipe.card.intended_use,
        "language": recipe.card.language,
        "datasets": sorted(set(datasets)),
    }
    quantized = run.folder("quantize") / "results.json"
    made_from = "Instruct" if recipe.align else "Base"
    if recipe.quantize and quantized.is_file() and kind == made_from:
        from .quantized import quantized_table

        facts["quantized"] = quantized_table(json.loads(quantized.read_text())[name], markdown=True)
    if kind == "Instruct":
        base_id = variant_repo_id(base_repo, variant, "Base")
        facts["base"] = model_link(base_id)
        facts["alignment"] = {"summary": _training_summary(records["align"], name)}
    return facts


def _throughput_text(speed: dict, name: str) -> str | None:
    if not speed or name not in speed:
        return None
    ratio = speed[name]["speedup"]["prefill"]
    return (
        f"{ratio:.2f}× the teacher's prefill tokens/s (batch {THROUGHPUT['prefill_batch']} × "
        f"{THROUGHPUT['prefill_len']} tokens, measured on the machine that ran the pipeline)."
    )


def model_card(run: Run, folder: Path, records: dict) -> dict:
    from ..hub.card import render_model_card

    packaged = []
    stages = [stage for stage, _ in run.model_stages()]
    base_stage = "distill" if "distill" in stages else "prune"
    for name in run.recipe.student_names:
        start = run.student_folder("prune", name)  # what pruning made (here, or before this run)
        # A student pruned elsewhere carries the importance scores it was pruned with, if any.
        importance = run.folder("importance") if name in run.recipe.students else start / "importance"
        kinds = [("Base", base_stage)] + ([("Instruct", "align")] if "align" in stages else [])
        for kind, stage in kinds:
            facts = card_facts(run, name, kind, records)
            target = folder / facts["name"]
            leave_out = shutil.ignore_patterns("stage.json", MARKER_FILE)  # records of this run, not of the model
            shutil.copytree(run.student_folder(stage, name), target, ignore=leave_out)
            for file in ("pruning_config.json", RECORD_FILE):
                if (start / file).is_file() and not (target / file).is_file():
                    shutil.copy(start / file, target)
            if importance.is_dir():
                shutil.copytree(importance, target / "importance", ignore=leave_out, dirs_exist_ok=True)
            for title, file in (
                ("Importance per layer", "importance/importance.png"),
                ("Loss when a block of layers is removed", "importance/block_removal.png"),
                ("Distillation loss curves", "training_curves.png"),
            ):
                if (target / file).is_file():
                    facts["plots"].append({"title": title, "file": file})
            (target / "card_facts.json").write_text(json.dumps(facts, indent=2, ensure_ascii=False) + "\n")
            (target / "README.md").write_text(render_model_card(facts), encoding="utf-8")
            packaged.append(target.name)
    return {"models": packaged}
