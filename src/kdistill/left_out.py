"""Hinton's transfer-set experiment: classes left out of the transfer set, then their bias corrected.

A student distilled on a transfer set without any image of class c still learns about c from the
soft targets of the other classes ("dark knowledge"), but the bias of c's logit is never pushed up.
Hinton et al. (2015, section 3) raised it by a fixed 3.5 (chosen on test data). The label-free
estimate here needs no label at all: it shifts c's logit until the student's mean predicted
probability of c on held-out *inputs* matches the teacher's, using the validation images' pixels
only (never test data, never labels).

Pure functions on logits; the experiment decides which logits to pass (``class_accuracy`` is in
:mod:`kdistill.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def shift_logits(logits: torch.Tensor, classes: Sequence[int], shift: float | Sequence[float]) -> torch.Tensor:
    """Add ``shift`` (one value, or one per class) to the logits of ``classes``; returns a copy."""
    shifts = [float(shift)] * len(classes) if isinstance(shift, (int, float)) else [float(s) for s in shift]
    if len(shifts) != len(classes):
        raise ValueError(f"got {len(shifts)} shifts for {len(classes)} classes {list(classes)}")
    out = logits.clone()
    for c, s in zip(classes, shifts, strict=True):
        out[:, c] += s
    return out


def label_free_shift(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    cls: int,
    bounds: tuple[float, float] = (-30.0, 30.0),
    iters: int = 60,
) -> float:
    """The shift b of class ``cls``'s logit for which the student's mean softmax probability of ``cls``
    over these inputs equals the teacher's. No labels are read.

    The mean probability grows monotonically with b, so bisection finds it; if the teacher's mean lies
    outside what any b in ``bounds`` reaches, the nearest bound is returned.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must be matching (n, C) tensors, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    if not 0 <= cls < student_logits.shape[1]:
        raise ValueError(f"class {cls} is out of range for {student_logits.shape[1]} classes")
    target = float(F.softmax(teacher_logits.double(), dim=1)[:, cls].mean())
    s = student_logits.double()

    def mean_p(b: float) -> float:
        return float(F.softmax(shift_logits(s, [cls], b), dim=1)[:, cls].mean())

    lo, hi = bounds
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mean_p(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
