"""Knowledge distillation: recover a pruned student's accuracy from its teacher.

The losses need only PyTorch; the trainer, its config and callbacks pull in TRL and transformers'
Trainer, so they load on first use.
"""

from ..lazy import lazy_attributes
from .losses import DIVERGENCES, LOGIT_LOSS_BACKENDS, chunked_logit_loss, plain_logit_loss

_LAZY = {
    "DistillationConfig": ".config",
    "DistillationTrainer": ".trainer",
    "LossComponentsCallback": ".callbacks",
    "NonFiniteLossCallback": ".callbacks",
    "NonFiniteLossError": ".callbacks",
    "TeacherGapCallback": ".callbacks",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "DIVERGENCES",
    "LOGIT_LOSS_BACKENDS",
    "DistillationConfig",
    "DistillationTrainer",
    "LossComponentsCallback",
    "NonFiniteLossCallback",
    "NonFiniteLossError",
    "TeacherGapCallback",
    "chunked_logit_loss",
    "plain_logit_loss",
]
