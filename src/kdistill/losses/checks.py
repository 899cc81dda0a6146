"""Argument checks and the dtype rule shared by every loss (and by the metrics on logits).

Each loss validates its inputs the same way, so that a wrong shape or temperature is reported with the
loss's name instead of surfacing as NaN or a broadcasting accident three calls later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """At least float32, never downcasting float64 (the closed-form tests rely on float64 staying float64):
    a float16 cache or a bf16 autocast teacher loses too much in the exponent of a softmax."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_temperature(T: float) -> None:
    # ``not T > 0`` also catches NaN, which would otherwise turn every loss into NaN silently.
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"temperature T must be a finite number > 0, got {T}")


def check_temperatures(temperatures: Sequence[float] | float) -> list[float]:
    """Several temperatures at once (figures over T); returns them as floats."""
    ts = [float(temperatures)] if isinstance(temperatures, (int, float)) else [float(t) for t in temperatures]
    if not ts:
        raise ValueError("give at least one temperature")
    bad = [t for t in ts if not (t > 0 and math.isfinite(t))]  # `not t > 0` also catches NaN
    if bad:
        raise ValueError(f"temperatures must be finite numbers > 0, got {bad}")
    return ts


def check_pair(name: str, student: torch.Tensor, teacher: torch.Tensor, min_dim: int = 2, min_batch: int = 1) -> None:
    """Enough dimensions, equal batch sizes, a batch big enough for the loss."""
    shapes = f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
    if student.dim() < min_dim or teacher.dim() < min_dim:
        raise ValueError(f"{name} needs tensors with at least {min_dim} dimensions (batch first), got {shapes}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: student and teacher batch sizes differ, got {shapes}")
    if student.shape[0] < min_batch:
        raise ValueError(f"{name} needs a batch of at least {min_batch} samples, got {shapes}")
