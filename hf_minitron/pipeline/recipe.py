"""Pipeline recipes: a short YAML file naming the teacher, the students and each stage's settings.

One schema describes every experiment; a stage runs only when its section is there. Without a
``distill`` section a recipe prunes (and re-fits) its students and stops there; a student given as
``{model: FOLDER}`` already exists (say, made by ``hf-minitron prune``), so importance and pruning are
skipped for it and the run distils it. ``hf-minitron prune --config`` and ``distill --config`` read
the same file (see ``hf_minitron.cli.recipe_options``).

Every key is checked before anything runs: unknown keys and wrong types are refused with the
section they are in and the keys that section accepts. Trainer sections (teacher_correction,
distill, align) take any field of their TRL-style config, checked by building that config.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import is_mixture, mixture_shares
from ..errors import MinitronError
from ..pruning import PruningConfig
from ..reconstruction import ReconstructionConfig
from .recipe_sections import dataclass_section, section_error, trainer_section

DEMO_RECIPE = Path(__file__).with_name("smollm2-135m-demo.yaml")
GENERATED = "generated"  # a dataset value meaning "the generate_data stage's output"


@dataclass
class Calibration:
    # One text source, or a mixture {source: share of the samples}; "generated" names the generate_data
    # stage's output (the teacher's own answers), which then runs before importance.
    data: str | dict[str, float] = "builtin:python-docs"
    dataset_config: str | None = None
    num_samples: int = 1024
    seq_len: int = 4096
    batch_size: int = 8
    block_search_samples: int = 8  # samples for ranking contiguous blocks by LM loss (depth students)
    # The multiple-choice task that ranks contiguous blocks for `layer_selection: downstream` students
    # (a local jsonl file, or builtin:everyday-facts), and how many of its rows to use (None: all).
    downstream_task: str | None = None
    downstream_limit: int | None = None


@dataclass
class Evaluation:
    perplexity_data: str | None = "builtin:python-docs-heldout"
    tasks: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    seq_len: int = 512
    max_tokens: int | None = 16384
    sample_prompts: list[str] = field(default_factory=list)
    # True: each prompt is sent as a user turn through the tokenizer's chat template (when it has one);
    # False: the model continues the prompt text as written (what a base model is for).
    chat_prompts: bool = True
    max_new_tokens: int = 48
    throughput: bool = True


@dataclass
class Quantize:
    schemes: list[str] = field(default_factory=lambda: ["int8"])  # torchao: int8, int4, fp8 (GPU)
    group_size: int = 32  # int4 inputs per scale
    gguf: list[str] = field(default_factory=list)  # GGUF types to export: F16, Q8_0, Q4_0, ...


@dataclass
class Card:
    language: list[str] = field(default_factory=lambda: ["en"])
    license: str | None = None  # None: carried from the teacher
    intended_use: str = (
        "Research on model compression and a starting point for further fine-tuning; general text generation "
        "where a smaller, faster model is worth some loss of quality."
    )


@dataclass
class Publish:
    repo_id: str = ""
    private: bool = False


@dataclass
class Recipe:
    name: str
    teacher: str
    students: dict[str, PruningConfig]  # pruned from the teacher by this run: name → targets
    # Students that already exist (name → model folder): distilled as they are, never pruned here.
    student_models: dict[str, str] = field(default_factory=dict)
    distill: dict[str, Any] | None = None  # None: the run stops after pruning
    model_dtype: str = "float32"
    device_map: str | None = None
    calibration: Calibration = field(default_factory=Calibration)
    # Least-squares re-fit of every pruned student on the calibration data (None: off).
    reconstruction: ReconstructionConfig | None = field(default_factory=ReconstructionConfig)
    teacher_correction: dict[str, Any] | None = None
    generate_data: dict[str, Any] | None = None
    align: dict[str, Any] | None = None
    evaluate: Evaluation = field(default_factory=Evaluation)
    quantize: Quantize | None = None
    card: Card = field(default_factory=Card)
    publish: Publish | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def student_names(self) -> list[str]:
        """Every student: those pruned here, then those that already exist."""
        return [*self.students, *self.student_models]

    def scaled(self, budget: float) -> Recipe:
        """The same recipe with training and generation budgets multiplied by ``budget``."""
        if budget <= 0:
            raise MinitronError(f"--budget {budget} must be positive")
        scaled = copy.deepcopy(self)
        for section in (scaled.distill, scaled.align, scaled.teacher_correction):
            if section and section.get("max_steps", 0) > 0:
                section["max_steps"] = max(1, math.ceil(section["max_steps"] * budget))
        if scaled.generate_data and scaled.generate_data.get("max_prompts"):
            scaled.generate_data["max_prompts"] = max(1, math.ceil(scaled.generate_data["max_prompts"] * budget))
        return scaled


def data_sources(data) -> list:
    """The sources a data setting names: each source of a mixture {source: share}, or the one given."""
    return list(data) if is_mixture(data) else [data]


def calibrates_on_generated(recipe: Recipe) -> bool:
    """Whether the calibration text includes the generate_data stage's output."""
    return bool(recipe.students) and GENERATED in data_sources(recipe.calibration.data)


def parse_recipe(values: dict) -> Recipe:
    """A Recipe from a mapping (a parsed YAML file), every key checked."""
    from ..alignment.sft import AlignmentConfig
    from ..distillation import DistillationConfig
    from ..distillation.teacher_correction import TeacherCorrectionConfig
    from ..distillation_data import GenerationSettings

    if not isinstance(values, dict):
        raise MinitronError("A recipe must be a mapping of sections", fix="see recipes/ for examples")
    # student_models is filled from the students section, not written at the top level.
    fields = {f.name: f for f in dataclasses.fields(Recipe) if f.name not in ("raw", "student_models")}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        section_error("(top level)", f"unknown key(s) {', '.join(unknown)}", fields)
    missing = [k for k in ("name", "teacher", "students") if not values.get(k)]
    if missing:
        section_error("(top level)", f"missing {', '.join(missing)}")
    for key in ("name", "teacher", "model_dtype"):
        if key in values and not isinstance(values[key], str):
            section_error("(top level)", f"'{key}' must be a string, got {values[key]!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", values["name"]):
        section_error(
            "(top level)", f"name '{values['name']}' must be a valid repository name (letters, digits, . _ -)"
        )
    pruned_students, student_models = _students_section(values["students"])
    generate = values.get("generate_data")
    if generate is not None:
        generate = dict(generate)
        prompts = {k: generate.pop(k) for k in ("prompts", "prompt_column") if k in generate}
        dataclass_section(GenerationSettings, generate, "generate_data").check()
        generate.update(prompts)
    recipe = Recipe(
        name=values["name"],
        teacher=values["teacher"],
        students=pruned_students,
        student_models=student_models,
        distill=trainer_section(values.get("distill"), "distill", DistillationConfig),
        model_dtype=values.get("model_dtype", "float32"),
        device_map=values.get("device_map"),
        calibration=dataclass_section(Calibration, values.get("calibration", {}), "calibration"),
        reconstruction=_reconstruction_section(values.get("reconstruction", {})),
        teacher_correction=trainer_section(
            values.get("teacher_correction"), "teacher_correction", TeacherCorrectionConfig
        ),
        generate_data=generate,
        align=trainer_section(values.get("align"), "align", AlignmentConfig),
        evaluate=dataclass_section(Evaluation, values.get("evaluate", {}), "evaluate"),
        quantize=_quantize_section(values.get("quantize")),
        card=dataclass_section(Card, values.get("card", {}), "card"),
        publish=dataclass_section(Publish, values.get("publish"), "publish"),
        raw=copy.deepcopy(values),
    )
    if isinstance(recipe.calibration.data, dict):
        try:
            mixture_shares(recipe.calibration.data, 1)
        except MinitronError as error:
            section_error("calibration", str(error))
    _check_downstream_task(recipe)
    if calibrates_on_generated(recipe) and recipe.generate_data is None:
        section_error("calibration", "uses data 'generated' but the recipe has no generate_data section")
    for section, settings in (("distill", recipe.distill), ("align", recipe.align)):
        if settings and GENERATED in data_sources(settings.get("dataset")) and recipe.generate_data is None:
            section_error(section, "uses dataset 'generated' but the recipe has no generate_data section")
    if recipe.publish is not None and recipe.publish.repo_id.count("/") != 1:
        section_error("publish", f"repo_id '{recipe.publish.repo_id}' must be ORG/NAME")
    if recipe.distill is None:
        # Alignment trains distilled students, and a given student is only there to be distilled.
        if recipe.align is not None:
            section_error("align", "aligns the distilled students, but the recipe has no distill section")
        for name in recipe.student_models:
            section_error(
                f"students.{name}", "names an existing model, but the recipe has no distill section to train it"
            )
    return recipe


def _check_downstream_task(recipe: Recipe) -> None:
    """A ``downstream`` student needs the calibration's task, and the task must read (before any stage runs)."""
    task = recipe.calibration.downstream_task
    for name, config in recipe.students.items():
        if config.layer_selection == "downstream" and task is None:
            section_error(
                f"students.{name}",
                "layer_selection 'downstream' ranks layer blocks by a task: set calibration.downstream_task "
                "(a multiple-choice jsonl file, or builtin:everyday-facts)",
            )
    if task is not None:
        from ..evaluation.tasks import check_row_limit, load_task

        try:
            check_row_limit(recipe.calibration.downstream_limit)
            load_task(task, limit=1)
        except MinitronError as error:
            section_error("calibration", f"downstream_task: {error}")


def _students_section(students) -> tuple[dict[str, PruningConfig], dict[str, str]]:
    """(students pruned here: name → targets, students that already exist: name → model folder)."""
    if not isinstance(students, dict):
        section_error(
            "students", "must map a student name (width, depth, ...) to its pruning targets or {model: FOLDER}"
        )
    accepted = [f.name for f in dataclasses.fields(PruningConfig)] + ["model"]
    pruned, existing = {}, {}
    for name, entry in students.items():
        section = f"students.{name}"
        if not re.fullmatch(r"[a-z][a-z0-9]*", str(name)):
            section_error(
                "students", f"student name '{name}' must be lower-case letters and digits (e.g. width, depth)"
            )
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            section_error(
                section, f"must be a mapping of pruning targets or {{model: FOLDER}}, got {entry!r}", accepted
            )
        if "model" in entry:
            extra = sorted(set(entry) - {"model"})
            if extra:
                section_error(
                    section, f"'model' names a student that is already pruned; drop its targets ({', '.join(extra)})"
                )
            if not isinstance(entry["model"], str) or not entry["model"]:
                section_error(section, f"'model' must be the path of a model folder, got {entry['model']!r}")
            existing[name] = entry["model"]
            continue
        try:
            pruned[name] = PruningConfig(**entry)
        except TypeError as error:
            section_error(section, f"invalid targets ({error})", accepted)
        except MinitronError as error:
            section_error(section, str(error))
    return pruned, existing


def check_student_models(recipe: Recipe) -> None:
    """Every student the recipe gives as a folder is there (checked when it is about to be used, not when
    parsing: a shipped recipe may name a folder an earlier command makes)."""
    for name, folder in recipe.student_models.items():
        if not (Path(folder) / "config.json").is_file():
            raise MinitronError(
                f"Student '{name}': '{folder}' is not a model folder (it holds no config.json)",
                fix=f"prune it first (hf-minitron prune ... -o FOLDER), or correct students.{name}.model",
            )


def _reconstruction_section(values) -> ReconstructionConfig | None:
    """On unless the recipe says ``reconstruction: false``; a mapping sets ReconstructionConfig's fields."""
    if values is False or values is None:
        return None
    if values is True:
        values = {}
    try:
        return dataclass_section(ReconstructionConfig, values, "reconstruction")
    except MinitronError as error:
        if "Recipe section" in str(error):
            raise
        section_error("reconstruction", str(error))


def _quantize_section(values) -> Quantize | None:
    from ..quantization import GGUF_TYPES, SCHEMES

    section = dataclass_section(Quantize, values, "quantize")
    if section is not None:
        wrong = [s for s in section.schemes if s not in SCHEMES] + [t for t in section.gguf if t not in GGUF_TYPES]
        if wrong:
            section_error("quantize", f"unknown scheme(s) {', '.join(map(str, wrong))}", [*SCHEMES, *GGUF_TYPES])
    return section


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise MinitronError(f"Recipe file '{path}' does not exist", fix="see recipes/ for examples")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise MinitronError(f"Recipe file '{path}' is not valid YAML", str(error)) from error
    return parse_recipe(values)
