"""kdistill: knowledge distillation for PyTorch models (Hinton, Vinyals & Dean 2015 and beyond)."""

from kdistill.distiller import Distiller, FrozenTeacher, LogitCache, StepOutput, Supervised
from kdistill.losses import cross_entropy, kd_loss, kd_loss_parts, label_smoothing_ce, soft_target_kl

__version__ = "0.1.0"

__all__ = [
    "Distiller",
    "FrozenTeacher",
    "LogitCache",
    "StepOutput",
    "Supervised",
    "cross_entropy",
    "kd_loss",
    "kd_loss_parts",
    "label_smoothing_ce",
    "soft_target_kl",
]
