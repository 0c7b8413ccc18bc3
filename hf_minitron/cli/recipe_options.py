"""A pipeline recipe read as the options of one step: `prune --config RECIPE` and `distill --config RECIPE`.

A recipe describes a whole experiment, so the single-step commands take from it the sections their
step needs instead of a second file repeating the same numbers: `prune` the teacher, the calibration
data, one student's targets and the reconstruction settings; `distill` the teacher, the model dtype and
the distill section. `--student NAME` picks the student when the recipe has several. Flags given on
the command line still win over what the recipe says.

Two differences from `hf-minitron run` remain, both because the single commands have no such step:
`prune` ranks layer blocks by LM loss (``layer_selection: lm_loss``, and among tied blocks for
``downstream``) on every calibration sample rather than the first ``block_search_samples``, and
`distill` refuses the keys only a pipeline can serve (``teacher_cache``, ``block_size``,
``dataset: generated``), saying what to do instead.
"""

from __future__ import annotations

from ..errors import MinitronError
from ..pipeline.recipe import GENERATED, Recipe, check_student_models, data_sources
from ..pipeline.recipe_sections import TRAINING_KEYS
from ..pruning.config import TARGETS

RECIPE_MARK = "students"  # a key every pipeline recipe has and no command's option file does


def is_pipeline_recipe(values) -> bool:
    return isinstance(values, dict) and RECIPE_MARK in values


def option_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``argv`` (``--flag VALUE`` or ``--flag=VALUE``; the last one wins)."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def _pick_student(recipe: Recipe, student: str | None, candidates, what: str) -> str:
    """The student ``--student`` names, or the only one of ``candidates``."""
    if student is not None:
        if student not in recipe.student_names:
            raise MinitronError(
                f"--student {student}: the recipe has no such student",
                fix=f"pass one of {', '.join(recipe.student_names)}",
            )
        if student not in candidates:
            raise MinitronError(f"--student {student}: {what}")
        return student
    candidates = list(candidates)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise MinitronError(f"The recipe's students ({', '.join(recipe.student_names)}): {what}")
    raise MinitronError(
        f"The recipe has several students ({', '.join(candidates)})", fix="pass --student NAME to choose one"
    )


def prune_options(recipe: Recipe, student: str | None) -> tuple[dict, dict]:
    """(`prune` options by their argparse names, settings that have no flag) for one student of ``recipe``."""
    name = _pick_student(
        recipe, student, recipe.students, "names an existing model folder, so there is nothing to prune"
    )
    targets, calibration = recipe.students[name], recipe.calibration
    if GENERATED in data_sources(calibration.data):
        raise MinitronError(
            f"The recipe's calibration data includes '{GENERATED}', the output of the pipeline's generate_data stage",
            fix="run the recipe with `hf-minitron run`, or run `hf-minitron generate-data ... -o FOLDER` and name "
            "FOLDER in the calibration data",
        )
    options = {
        "model": recipe.teacher,
        "dtype": recipe.model_dtype,
        "device_map": recipe.device_map,
        "data": calibration.data,
        "dataset_config": calibration.dataset_config,
        "num_samples": calibration.num_samples,
        "seq_len": calibration.seq_len,
        "batch_size": calibration.batch_size,
        "downstream_task": calibration.downstream_task,
        "downstream_limit": calibration.downstream_limit,
        **{key: getattr(targets, key) for key in TARGETS},
        "layer_selection": targets.layer_selection,
        "layers_to_drop": targets.layers_to_drop,
        "head_residual_merge": targets.head_residual_merge,
        "expert_selection": targets.expert_selection,
        "neuron_selection": targets.neuron_selection,
    }
    settings = {"recipe_student": name}
    reconstruction = recipe.reconstruction
    if reconstruction is None:
        return {**options, "reconstruct": False}, settings
    options.update(
        reconstruct=True,
        reconstruction_damping=reconstruction.damping,
        reconstruction_samples=reconstruction.num_samples,
        span_method=reconstruction.span_method,
        reconstruct_layers=reconstruction.layers,
    )
    unflagged = ("attention_output", "mlp_output", "final_norm", "batch_size")
    settings["reconstruction_settings"] = {key: getattr(reconstruction, key) for key in unflagged}
    return options, settings


# What only `hf-minitron run` can do with a distill key, and what to do instead with `distill`.
_PIPELINE_ONLY = {
    "teacher_cache": "run the recipe with `hf-minitron run`, which fills the cache; or copy it without teacher_cache, "
    "run `hf-minitron cache-logits` and pass --teacher_logits_cache FOLDER",
    "block_size": "`distill` packs rows instead (packing: true); run the recipe with `hf-minitron run` to keep it",
}


def distill_options(recipe: Recipe, student: str | None, model_given: bool) -> dict:
    """TRL-style `distill` settings (fields of DistillationConfig, ScriptArguments, ModelConfig and
    RunArguments) from the recipe's distill section. The student is the folder the recipe gives for it,
    unless --model_name_or_path names one (say, what `prune --config` wrote for a student pruned here).
    ``device_map`` is left out: under `accelerate launch` each process places its own models."""
    section = recipe.distill
    if section is None:
        raise MinitronError("The recipe has no distill section", fix="add one, or give a recipe that distils")
    for key, fix in _PIPELINE_ONLY.items():
        if section.get(key) is not None:
            raise MinitronError(
                f"The recipe's distill section sets '{key}', which only `hf-minitron run` serves", fix=fix
            )
    for key in ("dataset", "eval_dataset"):
        if section.get(key) == GENERATED:
            raise MinitronError(
                f"The recipe's distill {key} is '{GENERATED}', the output of the pipeline's generate_data stage",
                fix="run `hf-minitron generate-data ... -o FOLDER` and pass --dataset_name FOLDER",
            )
    split = section.get("dataset_split", "train")
    options = {
        "report_to": [],  # as in the pipeline: nothing is reported anywhere unless the recipe says so
        **{key: value for key, value in section.items() if key not in TRAINING_KEYS},
        "dataset_name": section["dataset"],
        "dataset_config": section.get("dataset_config"),
        "dataset_train_split": split,
        "dataset_test_split": split,  # the pipeline reads eval_dataset from the same split
        "eval_dataset_name": section.get("eval_dataset"),
        "train_max_samples": section.get("max_samples"),
        "eval_max_samples": section.get("max_samples"),
        "dtype": recipe.model_dtype,
    }
    options.setdefault("teacher_model_name_or_path", recipe.teacher)
    options.setdefault("teacher_model_init_kwargs", {"dtype": recipe.model_dtype})
    if model_given:  # the distill section is the same for every student: --student only has to exist
        if student is not None:
            _pick_student(recipe, student, recipe.student_names, "")
        return options
    name = _pick_student(
        recipe,
        student,
        recipe.student_models,
        "is pruned by the recipe: prune it first (hf-minitron prune --config RECIPE --student NAME -o FOLDER) "
        "and pass --model_name_or_path FOLDER",
    )
    check_student_models(recipe)
    return {**options, "model_name_or_path": recipe.student_models[name]}
