"""kdistill: knowledge distillation for PyTorch models (Hinton, Vinyals & Dean 2015 and beyond).

Three layers, imports pointing down: the library (this package's modules: losses, taps, terms, teacher and
caches, distiller, mutual, trainer, data, models, config, ...), the report layer (``kdistill.report``: reads
run files) and the experiment layer (``kdistill.experiment``: what ``kdistill run`` and ``sweep`` do).
"""

# The built-in roles register themselves (and their config sections) on import, as a model zoo registers
# its models: importing any part of kdistill makes `roles: [dml]` and a `dml:` section valid config.
import kdistill.experiment.roles  # noqa: E402, F401, I001
from kdistill.caches import LogitCache, ViewCache
from kdistill.distiller import Distiller, Objective, StepOutput, Supervised
from kdistill.losses import cross_entropy, kd_loss, kd_loss_parts, label_smoothing_ce, soft_target_kl
from kdistill.mutual import Cohort
from kdistill.taps import Outputs, Tapped, layer_table, probe_shapes
from kdistill.teacher import FrozenTeacher, MultiTeacher, OnlineTeacher, TeacherSource, mixture_logits
from kdistill.terms import Term, TermContext, build_term, register

__version__ = "0.1.0"

__all__ = [
    "Cohort",
    "Distiller",
    "FrozenTeacher",
    "LogitCache",
    "MultiTeacher",
    "Objective",
    "OnlineTeacher",
    "Outputs",
    "StepOutput",
    "Supervised",
    "Tapped",
    "TeacherSource",
    "Term",
    "TermContext",
    "ViewCache",
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
