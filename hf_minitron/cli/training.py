"""`hf-minitron distill` and `hf-minitron correct-teacher`: TRL-style configs (YAML + flags) over the API.

Both parse with TRL's own TrlParser, so every SFTConfig / TrainingArguments flag works, a
`--config file.yaml` of those fields sets any of them, and both run under `accelerate launch`.
`distill --config` also takes a pipeline recipe: its teacher and distill section become the defaults
(see ``recipe_options``). The output folder is locked while they run; `--overwrite` clears it (only
if hf_minitron made it), and `--resume_from_checkpoint last` continues from its newest complete checkpoint.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from ..checkpoints import check_checkpoint, last_complete_checkpoint, train_from
from ..errors import MinitronError
from ..loading import load_model, load_tokenizer
from ..outputs import check_output_dir, claim_work_dir
from ..training_data import load_training_dataset

TRAINING_KIND = "training run"


@dataclass
class RunArguments:
    """What the commands add to TRL's model and dataset arguments."""

    eval_dataset_name: str | None = field(default=None, metadata={"help": "Evaluation data (id, file or builtin)."})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval rows."})
    train_max_samples: int | None = field(default=None, metadata={"help": "Use at most this many train rows."})
    export_dir: str | None = field(default=None, metadata={"help": "Where the final plain model goes."})
    overwrite: bool = field(
        default=False, metadata={"help": "Clear an existing output or export folder (only one hf_minitron made)."}
    )


@contextmanager
def _claimed_output(args, run):
    """Lock the output folder for the whole command: kept when resuming, cleared with --overwrite (only if
    hf_minitron made it), refused when it already holds a run, so two runs' checkpoints never mix."""
    resuming = args.resume_from_checkpoint is not None
    if resuming and run.overwrite:
        raise MinitronError(
            "--overwrite and --resume_from_checkpoint contradict each other",
            "--overwrite starts the run over, which deletes the checkpoints a resume continues from",
            "pass only one of them",
        )
    with claim_work_dir(
        args.output_dir,
        kind=TRAINING_KIND,
        overwrite=run.overwrite,
        keep=resuming,
        busy_fix="pass --resume_from_checkpoint last to continue it, --overwrite to start again, or another folder",
    ):
        yield


def _resume_point(args) -> str | None:
    """--resume_from_checkpoint PATH, or 'last': the newest complete checkpoint (incomplete ones removed)."""
    resume = args.resume_from_checkpoint
    if resume == "last":
        resume = last_complete_checkpoint(args.output_dir)
        if resume is None:
            raise MinitronError(
                f"No complete checkpoint to resume in '{args.output_dir}'",
                fix="start without --resume_from_checkpoint (and with --overwrite to clear the folder)",
            )
    return str(check_checkpoint(resume)) if resume is not None else None


def datasets_from(script: ScriptArguments, run: RunArguments):
    if not script.dataset_name:
        raise MinitronError("No training data given", fix="pass --dataset_name (Hub id, local file or builtin text)")
    train = load_training_dataset(
        script.dataset_name, script.dataset_config, script.dataset_train_split, run.train_max_samples
    )
    evaluation = None
    if run.eval_dataset_name:
        evaluation = load_training_dataset(
            run.eval_dataset_name, script.dataset_config, script.dataset_test_split, run.eval_max_samples
        )
    return train, evaluation


def _parse(argv, config_class, role: str, from_recipe=None):
    parser = TrlParser((config_class, ScriptArguments, ModelConfig, RunArguments))
    argv = _recipe_as_defaults(parser, argv, from_recipe)
    args, script, model_args, run = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path:
        raise MinitronError(f"No {role} given", fix=f"pass --model_name_or_path (the {role})")
    return args, script, model_args, run


def _recipe_as_defaults(parser, argv: list[str], from_recipe) -> list[str]:
    """With a pipeline recipe as --config, its settings become the parser's defaults (flags still win) and
    the arguments lose --config and --student; any other --config is left to TRL's parser."""
    from ..pipeline import parse_recipe
    from .common import read_config_file
    from .recipe_options import is_pipeline_recipe, option_value, without_option

    path, student = option_value(argv, "--config"), option_value(argv, "--student")
    values = read_config_file(path) if path else None
    if not is_pipeline_recipe(values):
        if student is not None:
            raise MinitronError(
                "--student chooses a student of a pipeline recipe", fix="give the recipe as --config, or leave it out"
            )
        return argv
    if from_recipe is None:
        raise MinitronError(
            f"'{path}' is a pipeline recipe, and this command reads a file of its own options",
            fix="run it as `hf-minitron run RECIPE -o DIR`, or pass this command's options as flags",
        )
    model_given = option_value(argv, "--model_name_or_path") is not None
    parser.set_defaults_with_config(**from_recipe(parse_recipe(values), student, model_given))
    return without_option(without_option(argv, "--config"), "--student")


def _prepare(args, script, model_args, run, export_name: str):
    """Check everything that can fail early, then load the data and the model being trained."""
    resume = _resume_point(args)
    export_dir = Path(run.export_dir or Path(args.output_dir) / export_name)
    if resume is None:
        check_output_dir(export_dir, run.overwrite)
    train, evaluation = datasets_from(script, run)
    model = load_model(model_args.model_name_or_path, dtype=model_args.dtype or "float32")
    return resume, export_dir, train, evaluation, model


def run_distill(argv: list[str]) -> None:
    from ..distillation import DistillationConfig
    from .recipe_options import distill_options

    args, script, model_args, run = _parse(argv, DistillationConfig, "student", distill_options)
    with _claimed_output(args, run):
        _distill(args, model_args, run, *_prepare(args, script, model_args, run, "student"))


def _distill(args, model_args, run, resume, export_dir, train, evaluation, student) -> None:
    from ..distillation import DistillationTrainer

    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train, eval_dataset=evaluation, peft_config=get_peft_config(model_args)
    )
    train_from(trainer, resume)
    trainer.export_student(export_dir, overwrite=run.overwrite or resume is not None)  # collective under FSDP
    if trainer.accelerator.is_main_process:
        from ..plots import plot_training_curves

        curves = plot_training_curves(trainer.state.log_history, Path(args.output_dir) / "training_curves.png")
        print(f"Distilled student saved to {export_dir} (loads with AutoModelForCausalLM.from_pretrained)")
        if curves:
            print(f"Loss curves: {curves}")


def run_correct_teacher(argv: list[str]) -> None:
    from ..distillation.teacher_correction import TeacherCorrectionConfig

    args, script, model_args, run = _parse(argv, TeacherCorrectionConfig, "teacher")
    with _claimed_output(args, run):
        _correct_teacher(args, model_args, *_prepare(args, script, model_args, run, "corrected-teacher"))


def _correct_teacher(args, model_args, resume, export_dir, train, evaluation, teacher) -> None:
    from ..distillation.teacher_correction import correct_teacher

    folder = correct_teacher(
        teacher,
        train,
        args,
        processing_class=load_tokenizer(model_args.model_name_or_path),
        eval_dataset=evaluation,
        export_dir=export_dir,
        overwrite=True,
        resume_from_checkpoint=resume,
        peft_config=get_peft_config(model_args),
    )
    print(f"Corrected teacher saved to {folder}")


def register(subparsers):
    """Both commands parse their own arguments with TrlParser; these entries only show in --help."""
    commands = {}
    for name, help_text in (
        ("distill", "distil a student from its teacher (TRL-style config)"),
        ("correct-teacher", "fine-tune the teacher on the distillation data first"),
        ("cache-logits", "store the teacher's top-k logits for a dataset (same config as distill)"),
    ):
        commands[name] = subparsers.add_parser(
            name, help=help_text, add_help=False, description="Run with --help to see every option."
        )
        commands[name].add_argument("rest", nargs=argparse.REMAINDER)
    return commands
