"""The stages that make models: teacher correction, importance, pruning, data generation, distillation, alignment.

Each stage is a function ``(run, folder) -> dict`` writing into its own folder (the runner makes
the folder appear only when the stage finishes) and returning facts for the run's records. Training
stages keep their Trainer output (checkpoints, logs) in ``run.checkpoints(STAGE, student)``, which
the runner keeps across a kill, and continue from its last complete checkpoint.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from ..alignment.sft import AlignmentConfig, align_model
from ..checkpoints import last_complete_checkpoint, train_from
from ..data import (
    CalibrationSet,
    build_calibration_set,
    describe_text_source,
    is_mixture,
)
from ..loading import describe_source, load_model, load_model_and_tokenizer
from ..pruning import check_pruning_config, prune_model, save_pruned_model
from ..pruning.plan import block_accuracy_sizes, block_lm_loss_sizes
from ..shapes import model_shape
from ..training_data import load_training_dataset, mix_training_rows, token_block_dataset
from .recipe import GENERATED, Recipe
from .recipe_sections import TRAINING_KEYS

CPU_TOKENS_PER_SECOND = 200  # about what a 2-core CPU trains a SmolLM2-sized student at (bf16, cached teacher)
CHECKPOINTS_FOLDER = "checkpoints"


class Run:
    """What stages share: the recipe, the run folder, and the teacher (loaded once, on first use)."""

    def __init__(self, recipe: Recipe, output_dir: Path):
        self.recipe, self.output_dir = recipe, output_dir
        self._teacher = None
        self._calibration: dict[int, CalibrationSet] = {}

    def folder(self, stage: str) -> Path:
        return self.output_dir / stage

    def model_stages(self) -> list[tuple[str, str]]:
        """(stage, label) of each model every student becomes, in order: pruned, distilled, aligned.

        A student the recipe gives as a folder counts as pruned: that folder is its 'prune' model."""
        stages = [("prune", "pruned")]
        if self.recipe.distill is not None:
            stages.append(("distill", "distilled"))
        if self.recipe.align is not None:
            stages.append(("align", "aligned"))
        return stages

    def student_folder(self, stage: str, name: str) -> Path:
        """Where student ``name``'s model after ``stage`` is."""
        if stage == "prune" and name in self.recipe.student_models:
            return Path(self.recipe.student_models[name])
        return self.folder(stage) / name

    def checkpoints(self, stage: str, student: str | None = None) -> Path:
        """Where a training stage's Trainer writes its checkpoints and logs (for one student, if given)."""
        folder = self.output_dir / CHECKPOINTS_FOLDER / stage
        return folder / student if student else folder

    def teacher_source(self) -> str:
        corrected = self.folder("teacher-correction") / "model"
        return str(corrected) if self.recipe.teacher_correction and corrected.is_dir() else self.recipe.teacher

    def teacher(self):
        source = self.teacher_source()
        # A training stage runs the teacher in its training precision, converting it in place
        # (loading.load_teacher); the stages after it get the teacher as the recipe loads it, afresh, since
        # converting back would not restore the precision lost.
        if self._teacher is None or self._teacher[0] != source or self._teacher[1].dtype != self._teacher[3]:
            model, tokenizer = load_model_and_tokenizer(
                source, dtype=self.recipe.model_dtype, device_map=self.recipe.device_map
            )
            self._teacher = (source, model, tokenizer, model.dtype)
        return self._teacher[1], self._teacher[2]

    def calibration_set(self, num_samples: int | None = None) -> CalibrationSet:
        """The recipe's calibration text, tokenized once per run: its ``num_samples`` for importance, and
        for a reconstruction that asks for more samples (``reconstruction.num_samples``) a larger set of the
        same text, built apart so that the importance pass sees exactly the samples it would without it."""
        settings = self.recipe.calibration
        count = max(num_samples or 0, settings.num_samples)
        if count not in self._calibration:
            _, tokenizer = self.teacher()
            calibration = build_calibration_set(
                self._located(settings.data),
                tokenizer,
                num_samples=count,
                seq_len=settings.seq_len,
                dataset_config=settings.dataset_config,
            )
            calibration.description = self._describe_sources(settings.data)  # not the run folder's path
            self._calibration[count] = calibration
        return self._calibration[count]

    def _located(self, data):
        """``data`` with "generated" replaced by the folder the generate_data stage wrote."""
        folder = str(self.folder("generate-data"))
        if is_mixture(data):
            return {folder if part == GENERATED else part: share for part, share in data.items()}
        return folder if data == GENERATED else data

    def load(self, folder: Path):
        return load_model(str(folder), dtype=self.recipe.model_dtype, device_map=self.recipe.device_map)

    def dataset(self, section: dict, key: str = "dataset"):
        source = section[key]
        if is_mixture(source):  # {source: share}: token blocks of each source in its share (the recipe checked)
            return mix_training_rows({part: (self._rows(section, part), share) for part, share in source.items()})
        return self._rows(section, source)

    def _rows(self, section: dict, source):
        if source == GENERATED:
            source = str(self.folder("generate-data"))
        dataset = load_training_dataset(
            source, section.get("dataset_config"), section.get("dataset_split", "train"), section.get("max_samples")
        )
        if section.get("block_size"):
            _, tokenizer = self.teacher()
            dataset = token_block_dataset(dataset, tokenizer, section["block_size"])
        return dataset

    def describe_data(self, section: dict, key: str = "dataset") -> str:
        return self._describe_sources(section[key])

    def _describe_sources(self, data) -> str:
        if is_mixture(data):
            total = sum(data.values())
            return " + ".join(f"{100 * share / total:.0f}% {self._describe(part)}" for part, share in data.items())
        return self._describe(data)

    def _describe(self, source) -> str:
        if source == GENERATED:
            return f"text generated by the teacher ({describe_source(self.recipe.teacher)})"
        return describe_text_source(source)


def _trainer_settings(section: dict) -> dict:
    """A trainer section's config fields; nothing is reported anywhere unless the recipe says so."""
    return {"report_to": [], **{k: v for k, v in section.items() if k not in TRAINING_KEYS}}


def teacher_correction(run: Run, folder: Path) -> dict:
    from ..distillation.teacher_correction import TeacherCorrectionConfig, correct_teacher

    section = run.recipe.teacher_correction
    teacher, tokenizer = run.teacher()
    output_dir = run.checkpoints("teacher-correction")
    args = TeacherCorrectionConfig(output_dir=str(output_dir), **_trainer_settings(section))
    correct_teacher(
        teacher,
        run.dataset(section),
        args,
        processing_class=tokenizer,
        export_dir=folder / "model",
        resume_from_checkpoint=_resume_point(output_dir),
    )
    return {"data": run.describe_data(section), "steps": args.max_steps}


def importance(run: Run, folder: Path) -> dict:
    from ..importance import estimate_importance

    teacher, tokenizer = run.teacher()
    settings = run.recipe.calibration
    layers = teacher.config.num_hidden_layers
    for config in run.recipe.students.values():
        check_pruning_config(teacher, config)  # every target checked before the long pass
    accuracy_sizes = block_accuracy_sizes(layers, run.recipe.students.values())
    calibration = run.calibration_set()
    print(f"  calibrating on {calibration.num_tokens} tokens of {calibration.description}", file=sys.stderr)
    scores = estimate_importance(
        teacher,
        tokenizer,
        calibration_data=calibration,
        batch_size=settings.batch_size,
        block_lm_loss_sizes=block_lm_loss_sizes(layers, run.recipe.students.values()),
        block_search_samples=settings.block_search_samples,
        downstream_task=settings.downstream_task if accuracy_sizes else None,
        downstream_limit=settings.downstream_limit,
        block_accuracy_sizes=accuracy_sizes,
    )
    scores.save(folder)
    return {
        "calibration": calibration.description,
        "calibration_tokens": calibration.num_tokens,
        "aggregation": {k: scores.metadata[k] for k in ("batch_aggregation", "seq_aggregation")},
    }


def prune(run: Run, folder: Path) -> dict:
    """Prune every student from the teacher, re-fit them all in one teacher pass, save each."""
    from ..importance import ImportanceScores
    from ..reconstruction import reconstruct_models

    teacher, tokenizer = run.teacher()
    scores = ImportanceScores.load(run.folder("importance"))
    shapes = {"teacher": model_shape(teacher).to_dict()}
    targets = run.recipe.students
    students = {name: prune_model(copy.deepcopy(teacher), config, scores) for name, config in targets.items()}
    reports = dict.fromkeys(students)
    if run.recipe.reconstruction is not None:
        calibration = run.calibration_set(run.recipe.reconstruction.num_samples).first(
            run.recipe.reconstruction.num_samples
        )
        print(f"  reconstructing on {calibration.num_tokens} tokens of {calibration.description}", file=sys.stderr)
        fitted = reconstruct_models(teacher, list(students.values()), calibration, config=run.recipe.reconstruction)
        reports = dict(zip(students, fitted, strict=True))
    facts = {"shapes": shapes, "dropped_layers": {}, "reconstruction": {}}
    for name in list(students):
        student = students.pop(name)
        record = student.config.minitron_pruning
        shapes[name] = model_shape(student).to_dict()
        facts["dropped_layers"][name] = record["dropped_layers"]
        facts["reconstruction"][name] = record.get("reconstruction")
        save_pruned_model(
            student, folder / name, tokenizer=tokenizer, pruning_config=targets[name], reconstruction=reports[name]
        )
        del student
    return facts


def generate_data(run: Run, folder: Path) -> dict:
    from ..distillation_data import GenerationSettings, generate_distillation_data

    section = dict(run.recipe.generate_data)
    prompts = section.pop("prompts", "builtin:seed-prompts")
    column = section.pop("prompt_column", None)
    # Unless the section says otherwise, the teacher writes in the precision the distill stage runs it in.
    section.setdefault("teacher_dtype", _distillation_teacher_dtype(run))
    teacher, tokenizer = run.teacher()
    result = generate_distillation_data(
        teacher, prompts, folder, GenerationSettings(**section), tokenizer=tokenizer, prompt_column=column
    )
    return {"rows": result.rows, "tokens": result.tokens, "prompts": result.record["prompts"]["source"]}


def _distillation_teacher_dtype(run: Run) -> str:
    from ..distillation import DistillationConfig
    from ..loading import teacher_dtype

    args = DistillationConfig(output_dir=str(run.checkpoints("distill")), **_trainer_settings(run.recipe.distill))
    return str(teacher_dtype(args, args.teacher_model_init_kwargs)).removeprefix("torch.")


def distill(run: Run, folder: Path) -> dict:
    from ..distillation import DistillationConfig, DistillationTrainer
    from ..plots import plot_training_curves

    section = run.recipe.distill
    teacher, tokenizer = run.teacher()
    train = run.dataset(section)
    evaluation = run.dataset(section, "eval_dataset") if section.get("eval_dataset") else None
    facts = {"data": run.describe_data(section), "students": {}}
    settings = _trainer_settings(section)
    if section.get("teacher_cache") is not None:
        cache_args = DistillationConfig(output_dir=str(run.checkpoints("distill")), **settings)
        train = _rows_the_steps_use(train, cache_args)
        settings["teacher_logits_cache"] = str(_shared_teacher_cache(run, section, train, cache_args))
        facts["teacher_cache"] = dict(section["teacher_cache"])
    for name in run.recipe.student_names:
        output_dir = run.checkpoints("distill", name)
        args = DistillationConfig(output_dir=str(output_dir), **settings)
        budget = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        print(
            f"  distilling '{name}' for {args.max_steps} steps (≤{budget * (args.max_length or 0)} tokens); "
            f"a 2-core CPU trains about {CPU_TOKENS_PER_SECOND} tokens/s, --budget scales the steps",
            file=sys.stderr,
        )
        student = run.load(run.student_folder("prune", name)).requires_grad_(True)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=None if args.teacher_logits_cache else teacher,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
        )
        train_from(trainer, _resume_point(output_dir))
        trainer.export_student(folder / name)
        plot_training_curves(trainer.state.log_history, folder / name / "training_curves.png")
        losses = [entry for entry in trainer.state.log_history if "loss" in entry]
        facts["students"][name] = {
            "steps": trainer.state.global_step,
            "tokens": trainer._total_train_tokens,
            "first_loss": losses[0]["loss"] if losses else None,
            "last_loss": losses[-1]["loss"] if losses else None,
        }
        del trainer, student
    facts["settings"] = _public_settings(section)
    return facts


def _rows_the_steps_use(train, args):
    """With ``max_steps`` set, only as many rows as the steps draw, spread evenly over the data: the
    teacher is then not run over rows no student would see (every student sees each row once)."""
    rows = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if args.max_steps <= 0 or rows >= len(train):
        return train
    return train.select([index * len(train) // rows for index in range(rows)])


def _shared_teacher_cache(run: Run, section: dict, train, args) -> Path:
    """The teacher's top-k log-probabilities over the training rows, computed once for every student.

    Kept with the stage's checkpoints (cleared when its inputs change), so a resumed run reuses it.
    """
    from ..distillation_data import cache_teacher_logits
    from ..distillation_data.logit_cache import INDEX_FILE

    folder = run.checkpoints("distill") / "teacher-cache"
    if (folder / INDEX_FILE).is_file():
        return folder
    teacher, tokenizer = run.teacher()
    options = dict(section["teacher_cache"])
    print(
        f"  caching the teacher's top-{options.get('top_k', 64)} log-probabilities for every student", file=sys.stderr
    )
    cache_teacher_logits(teacher, train, folder, args, tokenizer=tokenizer, **options)
    return folder


def align(run: Run, folder: Path) -> dict:
    section = run.recipe.align
    _, tokenizer = run.teacher()
    data = run.dataset(section)
    facts = {"data": run.describe_data(section), "students": {}}
    for name in run.recipe.student_names:
        output_dir = run.checkpoints("align", name)
        args = AlignmentConfig(output_dir=str(output_dir), **_trainer_settings(section))
        model = run.load(run.student_folder("distill", name)).requires_grad_(True)
        align_model(
            model, copy.deepcopy(tokenizer), data, args, folder / name, resume_from_checkpoint=_resume_point(output_dir)
        )
        facts["students"][name] = {"steps": args.max_steps, "rows": len(data)}
    facts["settings"] = _public_settings(section)
    return facts


def _resume_point(output_dir: Path) -> str | None:
    """The last complete checkpoint a killed run left (incomplete ones are removed), or None."""
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is not None:
        print(f"  continuing from {checkpoint.parent.name}/{checkpoint.name}", file=sys.stderr)
    return str(checkpoint) if checkpoint is not None else None


def _public_settings(section: dict) -> dict:
    """Settings worth printing in a card: scalars only, data named without local paths."""
    public = {}
    for key, value in section.items():
        if key in ("dataset", "eval_dataset") and isinstance(value, str):
            value = describe_text_source(value) if value != GENERATED else value
        if isinstance(value, (int, float, str, bool)):
            public[key] = value
    return public
