"""`hf-minitron distill` and `hf-minitron correct-teacher`: TRL-style configs (YAML + flags) over the API.

Both parse with TRL's own TrlParser, so every SFTConfig / TrainingArguments flag works, a
`--config recipe.yaml` sets any of them, and both run under `accelerate launch`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from ..data import load_training_dataset
from ..errors import MinitronError
from ..loading import load_model, load_tokenizer
from ..outputs import check_output_dir


@dataclass
class RunArguments:
    """What the commands add to TRL's model and dataset arguments."""

    eval_dataset_name: str | None = field(default=None, metadata={"help": "Evaluation data (id, file or builtin)."})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval rows."})
    train_max_samples: int | None = field(default=None, metadata={"help": "Use at most this many train rows."})
    export_dir: str | None = field(default=None, metadata={"help": "Where the final plain model goes."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output or export folder."})


def _resume_point(args, run) -> str | None:
    """--resume_from_checkpoint PATH or 'last'; otherwise refuse to train into a used output folder."""
    resume = args.resume_from_checkpoint
    if resume == "last":
        resume = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if resume is None:
            raise MinitronError(f"No checkpoint to resume in '{args.output_dir}'", fix="start without resuming")
    if resume is None and not run.overwrite:
        output = Path(args.output_dir)
        if output.is_dir() and any(output.iterdir()):
            raise MinitronError(
                f"Output folder '{output}' already holds a run",
                "starting over in it would mix two runs' checkpoints",
                "pass --resume_from_checkpoint last to continue it, --overwrite to start again, or another folder",
            )
    if resume is not None and not Path(resume).is_dir():
        raise MinitronError(f"Checkpoint '{resume}' does not exist", fix="point at a checkpoint-N folder")
    return resume


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


def _prepare(argv, config_class, role: str, export_name: str):
    """Parse, check everything that can fail early, load the data and the model being trained."""
    parser = TrlParser((config_class, ScriptArguments, ModelConfig, RunArguments))
    args, script, model_args, run = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path:
        raise MinitronError(f"No {role} given", fix=f"pass --model_name_or_path (the {role})")
    resume = _resume_point(args, run)
    export_dir = Path(run.export_dir or Path(args.output_dir) / export_name)
    if resume is None:
        check_output_dir(export_dir, run.overwrite)
    train, evaluation = datasets_from(script, run)
    model = load_model(model_args.model_name_or_path, dtype=model_args.dtype or "float32")
    return args, model_args, run, resume, export_dir, train, evaluation, model


def run_distill(argv: list[str]) -> None:
    from ..distillation import DistillationConfig, DistillationTrainer

    args, model_args, run, resume, export_dir, train, evaluation, student = _prepare(
        argv, DistillationConfig, "student", "student"
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train, eval_dataset=evaluation, peft_config=get_peft_config(model_args)
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.export_student(export_dir, overwrite=run.overwrite or resume is not None)  # collective under FSDP
    if trainer.accelerator.is_main_process:
        from ..plots import plot_training_curves

        curves = plot_training_curves(trainer.state.log_history, Path(args.output_dir) / "training_curves.png")
        print(f"Distilled student saved to {export_dir} (loads with AutoModelForCausalLM.from_pretrained)")
        if curves:
            print(f"Loss curves: {curves}")


def run_correct_teacher(argv: list[str]) -> None:
    from ..distillation.teacher_correction import TeacherCorrectionConfig, correct_teacher

    args, model_args, _, resume, export_dir, train, evaluation, teacher = _prepare(
        argv, TeacherCorrectionConfig, "teacher", "corrected-teacher"
    )
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


def _run_cache_logits(argv: list[str]) -> None:
    from .cache_logits import run_cache_logits

    run_cache_logits(argv)


RAW_COMMANDS = {"distill": run_distill, "correct-teacher": run_correct_teacher, "cache-logits": _run_cache_logits}
