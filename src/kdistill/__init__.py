"""kdistill: knowledge distillation for PyTorch models (Hinton, Vinyals & Dean 2015 and beyond)."""

from kdistill.distiller import Distiller, FrozenTeacher, LogitCache, StepOutput, Supervised
from kdistill.losses import cross_entropy, kd_loss, kd_loss_parts, label_smoothing_ce, soft_target_kl
from kdistill.multi import Cohort, MultiTeacher, mixture_logits
from kdistill.taps import Outputs, Tapped, layer_table, probe_shapes
from kdistill.terms import Term, TermContext, build_term, register

__version__ = "0.1.0"

__all__ = [
    "Cohort",
    "Distiller",
    "FrozenTeacher",
    "LogitCache",
    "MultiTeacher",
    "Outputs",
    "StepOutput",
    "Supervised",
    "Tapped",
    "Term",
    "TermContext",
    "build_term",
    "cross_entropy",
    "kd_loss",
    "kd_loss_parts",
    "label_smoothing_ce",
    "layer_table",
    "mixture_logits",
    "probe_shapes",
    "register",
    "soft_target_kl",
]
