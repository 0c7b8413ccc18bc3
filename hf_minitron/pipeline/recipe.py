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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import is_mixture, mixture_shares
from ..errors import MinitronError
from ..pruning import PruningConfig
from ..reconstruction import ReconstructionConfig

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


# Data keys of trainer sections, beside the fields of their config. ``block_size``: train on rows of exactly
# that many tokens cut from the joined text (no padding, nothing truncated). ``teacher_cache`` (distill only):
# run the teacher once over the data into a top-k logit cache that every student trains from.
TRAINING_KEYS = {
    "dataset",
    "dataset_config",
    "dataset_split",
    "eval_dataset",
    "max_samples",
    "block_size",
    "teacher_cache",
}
TEACHER_CACHE_KEYS = {"top_k": int, "values_dtype": str, "batch_size": int}


def data_sources(data) -> list:
    """The sources a data setting names: each source of a mixture {source: share}, or the one given."""
    return list(data) if is_mixture(data) else [data]


def calibrates_on_generated(recipe: Recipe) -> bool:
    """Whether the calibration text includes the generate_data stage's output."""
    return bool(recipe.students) and GENERATED in data_sources(recipe.calibration.data)


def _fail(section: str, message: str, accepted=None):
    why = f"'{section}' accepts: {', '.join(sorted(accepted))}" if accepted else ""
    raise MinitronError(f"Recipe section '{section}': {message}", why, "fix the recipe file")


_SIMPLE = (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict))


def _check_type(section: str, key: str, value, annotation):
    """``value`` if it fits the field's annotation (numbers written as '2e-5' become floats), else an error.

    Annotations naming none of the simple types (enums, callables) are left to the config itself."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    names = [(name, kind) for name, kind in _SIMPLE if re.search(rf"\b{name}\b", text)]
    if value is None:
        if names and "None" not in text and "Optional" not in text:
            _fail(section, f"'{key}' must not be empty")
        return value
    if not names:
        return value
    for _, kind in names:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    if any(kind is float for _, kind in names) and isinstance(value, str):
        try:
            return float(value)  # YAML reads 2e-5 (no dot) as a string
        except ValueError:
            pass
    _fail(section, f"'{key}' must be {text.replace('typing.', '')}, got {value!r}")


def _annotations(cls) -> dict:
    """Field annotations as declared. (HfArgumentParser rewrites ``Field.type`` in place when it builds
    a parser, e.g. ``dict | str | None`` becomes ``str``, so the dataclass fields cannot be trusted.)"""
    merged = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("__annotations__", {}))
    return merged


def _dataclass_section(cls, values, section: str):
    if values is None:
        return None
    if not isinstance(values, dict):
        _fail(section, f"must be a mapping of settings, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        _fail(section, f"unknown key(s) {', '.join(unknown)}", fields)
    types = _annotations(cls)
    values = {key: _check_type(section, key, value, types[key]) for key, value in values.items()}
    return cls(**values)


def _config_section(values, section: str, config_class, required_dataset: bool = True):
    """A trainer section: our data keys plus any field of ``config_class``, checked by building it."""
    if values is None:
        return None
    if not isinstance(values, dict):
        _fail(section, f"must be a mapping of settings, got {values!r}")
    if required_dataset and not values.get("dataset"):
        _fail(section, "needs a 'dataset' (HF dataset id, local file, builtin text, or 'generated')")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    names = set(fields)
    unknown = sorted(set(values) - names - TRAINING_KEYS)
    if "output_dir" in values:
        unknown.append("output_dir (each stage has its own folder)")
    if unknown:
        _fail(section, f"unknown key(s) {', '.join(unknown)}", names | TRAINING_KEYS)
    types = _annotations(config_class)
    values = {k: _check_type(section, k, v, types[k]) if k in types else v for k, v in values.items()}
    _check_data_keys(section, values)
    settings = {k: v for k, v in values.items() if k not in TRAINING_KEYS}
    if values.get("teacher_cache") is not None:
        # What a cache cannot serve (packing, intermediate losses) is refused now, by the config itself.
        settings["teacher_logits_cache"] = tempfile.gettempdir()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config_class(**{"report_to": [], **settings, "output_dir": scratch})
    except MinitronError as error:
        _fail(section, str(error))
    except (TypeError, ValueError) as error:
        _fail(section, f"invalid settings ({error})")
    return dict(values)


def _check_data_keys(section: str, values: dict) -> None:
    block = values.get("block_size")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 2):
        _fail(section, f"'block_size' must be an integer ≥ 2, got {block!r}")
    for key in ("dataset", "eval_dataset"):
        if not is_mixture(values.get(key)):
            continue
        try:
            mixture_shares(values[key], 1)
        except MinitronError as error:
            _fail(section, f"'{key}': {error}")
        if block is None:
            _fail(
                section,
                f"'{key}' mixes sources, whose rows can differ in kind (text, chat messages, prompt/completion): "
                "add a block_size, and every source is cut into token rows of that length, which mix",
            )
    cache = values.get("teacher_cache")
    if cache is None:
        return
    if section != "distill":
        _fail(section, "'teacher_cache' belongs in the distill section")
    if not isinstance(cache, dict) or set(cache) - set(TEACHER_CACHE_KEYS):
        _fail(section, f"'teacher_cache' must be a mapping of {', '.join(TEACHER_CACHE_KEYS)}, got {cache!r}")
    for key, kind in TEACHER_CACHE_KEYS.items():
        if key in cache and not isinstance(cache[key], kind):
            _fail(section, f"'teacher_cache.{key}' must be {kind.__name__}, got {cache[key]!r}")


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
        _fail("(top level)", f"unknown key(s) {', '.join(unknown)}", fields)
    missing = [k for k in ("name", "teacher", "students") if not values.get(k)]
    if missing:
        _fail("(top level)", f"missing {', '.join(missing)}")
    for key in ("name", "teacher", "model_dtype"):
        if key in values and not isinstance(values[key], str):
            _fail("(top level)", f"'{key}' must be a string, got {values[key]!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", values["name"]):
        _fail("(top level)", f"name '{values['name']}' must be a valid repository name (letters, digits, . _ -)")
    pruned_students, student_models = _students_section(values["students"])
    generate = values.get("generate_data")
    if generate is not None:
        generate = dict(generate)
        prompts = {k: generate.pop(k) for k in ("prompts", "prompt_column") if k in generate}
        _dataclass_section(GenerationSettings, generate, "generate_data").check()
        generate.update(prompts)
    recipe = Recipe(
        name=values["name"],
        teacher=values["teacher"],
        students=pruned_students,
        student_models=student_models,
        distill=_config_section(values.get("distill"), "distill", DistillationConfig),
        model_dtype=values.get("model_dtype", "float32"),
        device_map=values.get("device_map"),
        calibration=_dataclass_section(Calibration, values.get("calibration", {}), "calibration"),
        reconstruction=_reconstruction_section(values.get("reconstruction", {})),
        teacher_correction=_config_section(
            values.get("teacher_correction"), "teacher_correction", TeacherCorrectionConfig
        ),
        generate_data=generate,
        align=_config_section(values.get("align"), "align", AlignmentConfig),
        evaluate=_dataclass_section(Evaluation, values.get("evaluate", {}), "evaluate"),
        quantize=_quantize_section(values.get("quantize")),
        card=_dataclass_section(Card, values.get("card", {}), "card"),
        publish=_dataclass_section(Publish, values.get("publish"), "publish"),
        raw=copy.deepcopy(values),
    )
    if isinstance(recipe.calibration.data, dict):
        try:
            mixture_shares(recipe.calibration.data, 1)
        except MinitronError as error:
            _fail("calibration", str(error))
    if calibrates_on_generated(recipe) and recipe.generate_data is None:
        _fail("calibration", "uses data 'generated' but the recipe has no generate_data section")
    for section, settings in (("distill", recipe.distill), ("align", recipe.align)):
        if settings and GENERATED in data_sources(settings.get("dataset")) and recipe.generate_data is None:
            _fail(section, "uses dataset 'generated' but the recipe has no generate_data section")
    if recipe.publish is not None and recipe.publish.repo_id.count("/") != 1:
        _fail("publish", f"repo_id '{recipe.publish.repo_id}' must be ORG/NAME")
    if recipe.distill is None:
        # Alignment trains distilled students, and a given student is only there to be distilled.
        if recipe.align is not None:
            _fail("align", "aligns the distilled students, but the recipe has no distill section")
        for name in recipe.student_models:
            _fail(f"students.{name}", "names an existing model, but the recipe has no distill section to train it")
    return recipe


def _students_section(students) -> tuple[dict[str, PruningConfig], dict[str, str]]:
    """(students pruned here: name → targets, students that already exist: name → model folder)."""
    if not isinstance(students, dict):
        _fail("students", "must map a student name (width, depth, ...) to its pruning targets or {model: FOLDER}")
    accepted = [f.name for f in dataclasses.fields(PruningConfig)] + ["model"]
    pruned, existing = {}, {}
    for name, entry in students.items():
        section = f"students.{name}"
        if not re.fullmatch(r"[a-z][a-z0-9]*", str(name)):
            _fail("students", f"student name '{name}' must be lower-case letters and digits (e.g. width, depth)")
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            _fail(section, f"must be a mapping of pruning targets or {{model: FOLDER}}, got {entry!r}", accepted)
        if "model" in entry:
            extra = sorted(set(entry) - {"model"})
            if extra:
                _fail(section, f"'model' names a student that is already pruned; drop its targets ({', '.join(extra)})")
            if not isinstance(entry["model"], str) or not entry["model"]:
                _fail(section, f"'model' must be the path of a model folder, got {entry['model']!r}")
            existing[name] = entry["model"]
            continue
        try:
            pruned[name] = PruningConfig(**entry)
        except TypeError as error:
            _fail(section, f"invalid targets ({error})", accepted)
        except MinitronError as error:
            _fail(section, str(error))
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
        return _dataclass_section(ReconstructionConfig, values, "reconstruction")
    except MinitronError as error:
        if "Recipe section" in str(error):
            raise
        _fail("reconstruction", str(error))


def _quantize_section(values) -> Quantize | None:
    from ..quantization import GGUF_TYPES, SCHEMES

    section = _dataclass_section(Quantize, values, "quantize")
    if section is not None:
        wrong = [s for s in section.schemes if s not in SCHEMES] + [t for t in section.gguf if t not in GGUF_TYPES]
        if wrong:
            _fail("quantize", f"unknown scheme(s) {', '.join(map(str, wrong))}", [*SCHEMES, *GGUF_TYPES])
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
