"""The roles ``kdistill run`` can train, one file each, behind one registry (:mod:`.base`).

Importing this package registers the built-in roles (and their config sections): ``scratch``, ``kd`` and
``label_smoothing`` (:mod:`.basic`), ``dml``, ``born_again``, ``multi_teacher`` and ``ta_chain``.
"""

from kdistill.experiment.roles import basic, born_again, dml, multi_teacher, ta_chain
from kdistill.experiment.roles.base import ROLES, Role, loss_settings, register_role, sub_seed, unregister_role

__all__ = [
    "ROLES",
    "Role",
    "basic",
    "born_again",
    "dml",
    "loss_settings",
    "multi_teacher",
    "register_role",
    "sub_seed",
    "ta_chain",
    "unregister_role",
]
