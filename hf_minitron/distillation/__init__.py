"""Knowledge distillation: recover a pruned student's accuracy from its teacher."""

from .callbacks import LossComponentsCallback, NonFiniteLossCallback, NonFiniteLossError, TeacherGapCallback
from .config import DistillationConfig
from .losses import DIVERGENCES, chunked_logit_loss, plain_logit_loss
from .trainer import DistillationTrainer

__all__ = [
    "DIVERGENCES",
    "DistillationConfig",
    "DistillationTrainer",
    "LossComponentsCallback",
    "NonFiniteLossCallback",
    "NonFiniteLossError",
    "TeacherGapCallback",
    "chunked_logit_loss",
    "plain_logit_loss",
]
