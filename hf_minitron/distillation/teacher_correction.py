"""Teacher correction: fine-tune the teacher on the distillation data with LM loss before distilling.

Minitron found that a teacher which has seen the distillation data (about 100B tokens, 120
warm-up steps, a learning rate 1/5 of the teacher's original peak) gives a student with >6%
lower validation loss. A checkpoint does not record its original peak learning rate, so the
learning rate must be given explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from ..checkpoints import train_from
from ..errors import MinitronError
from ..exporting import export_trained_model
from ..loading import load_model
from ..redaction import SecretsNotPickled
from .config import apply_device_defaults


@dataclass
class TeacherCorrectionConfig(SecretsNotPickled, SFTConfig):
    r"""`SFTConfig` for teacher correction. `learning_rate` has no default: use 1/5 of the teacher's original
    peak (e.g. Llama-3.1-8B was trained with a 3e-4 peak → 6e-5). `warmup_steps` defaults to the paper's 120."""

    learning_rate: float | None = field(
        default=None, metadata={"help": "Required: 1/5 of the teacher's original peak learning rate."}
    )
    warmup_steps: float = field(default=120, metadata={"help": "Linear warm-up steps (Minitron: 120)."})

    def __post_init__(self):
        if self.learning_rate is None:
            raise MinitronError(
                "Teacher correction needs an explicit learning rate",
                "Minitron uses 1/5 of the teacher's original peak learning rate, which a checkpoint does not record",
                "pass --learning_rate (e.g. 6e-5 for Llama-3.1-8B, whose peak was 3e-4)",
            )
        apply_device_defaults(self)
        super().__post_init__()


def correct_teacher(
    teacher,
    train_dataset,
    args: TeacherCorrectionConfig,
    *,
    processing_class=None,
    eval_dataset=None,
    export_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume_from_checkpoint=None,
    peft_config=None,
) -> Path:
    """Fine-tune ``teacher`` (a model or its name) on ``train_dataset`` with the LM loss; save the corrected teacher.

    Returns the folder of the corrected teacher (``export_dir``, default ``<output_dir>/corrected-teacher``),
    a plain transformers model with its tokenizer (LoRA adapters merged). Under ``accelerate launch`` call
    it on every process: the weights are gathered from all of them and the main process writes.
    """
    model = load_model(teacher, dtype="float32") if isinstance(teacher, str) else teacher
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
    )
    train_from(trainer, resume_from_checkpoint)
    export_dir = Path(export_dir or Path(args.output_dir) / "corrected-teacher")
    return export_trained_model(trainer, export_dir, overwrite=overwrite, kind="corrected teacher")
