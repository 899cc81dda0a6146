"""Adapters: small trainable maps that bring a student's activation to the teacher's shape.

They are sized from one probe forward pass (per-sample shapes, batch dim dropped), train with the
student, and live inside the term that needs them, so they reach the optimizer and checkpoints like
any other submodule. When no adapter can reconcile two shapes the error names both layers, both
shapes and the setting that fixes it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Pool = Literal["none", "avg"]


class AdapterError(ValueError):
    """Two layers' shapes cannot be matched; the message says which and what to set."""


def _desc(layer: str, shape: tuple[int, ...], who: str) -> str:
    return f"{who} layer {layer!r} {tuple(shape)}"


class Pooled(nn.Module):
    """Global average over spatial dimensions: (b, c, h, w) -> (b, c)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1) if x.dim() > 2 else x


class ResizeTo(nn.Module):
    """Adaptive average pooling of a feature map to a fixed spatial size (a no-op when it already has it)."""

    def __init__(self, size: tuple[int, ...]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if tuple(x.shape[2:]) == self.size else F.adaptive_avg_pool2d(x, self.size)


def pooled_shape(shape: tuple[int, ...], pool: Pool) -> tuple[int, ...]:
    return (shape[0],) if pool == "avg" and len(shape) == 3 else tuple(shape)


def make_adapter(
    s_layer: str,
    s_shape: tuple[int, ...],
    t_layer: str,
    t_shape: tuple[int, ...],
    pool: Pool = "none",
) -> tuple[nn.Module, nn.Module]:
    """Return ``(student_map, teacher_map)`` so that both produce the same per-sample shape.

    - equal shapes: identity on both sides;
    - feature maps (c, h, w) with equal spatial size: 1x1 conv + BatchNorm on the student (FitNets'
      regressor, as mdistiller builds it);
    - feature maps of different spatial size: the larger one is average-pooled to the smaller size
      (only with ``pool="avg"``: that discards spatial detail, so it is asked for, not assumed);
    - vectors (d,): a linear layer on the student;
    - a feature map against a vector: ``pool="avg"`` pools the map to a vector first; without it, an
      error that says so.
    """
    s_shape, t_shape = tuple(s_shape), tuple(t_shape)
    both = f"{_desc(s_layer, s_shape, 'student')} vs {_desc(t_layer, t_shape, 'teacher')}"
    if pool == "avg" and (len(s_shape) == 3) != (len(t_shape) == 3):
        # A map against a vector: pool the map side, then match vectors.
        s_pre = Pooled() if len(s_shape) == 3 else nn.Identity()
        t_pre = Pooled() if len(t_shape) == 3 else nn.Identity()
        s_map, t_map = make_adapter(s_layer, pooled_shape(s_shape, pool), t_layer, pooled_shape(t_shape, pool))
        return nn.Sequential(s_pre, s_map), nn.Sequential(t_pre, t_map)
    if s_shape == t_shape:
        return nn.Identity(), nn.Identity()
    if len(s_shape) == 1 and len(t_shape) == 1:
        return nn.Linear(s_shape[0], t_shape[0]), nn.Identity()
    if len(s_shape) == 3 and len(t_shape) == 3:
        s_pre: nn.Module = nn.Identity()
        t_pre: nn.Module = nn.Identity()
        if s_shape[1:] != t_shape[1:]:
            if pool != "avg":
                raise AdapterError(
                    f"{both}: spatial sizes differ. Pick layers with the same height and width (list them with "
                    "`kdistill layers`), or set `pool: avg` on this term to average-pool the larger map down."
                )
            size = (min(s_shape[1], t_shape[1]), min(s_shape[2], t_shape[2]))
            s_pre, t_pre = ResizeTo(size), ResizeTo(size)
        if s_shape[0] == t_shape[0]:
            return s_pre, t_pre
        conv = nn.Sequential(nn.Conv2d(s_shape[0], t_shape[0], 1, bias=False), nn.BatchNorm2d(t_shape[0]))
        return (conv if isinstance(s_pre, nn.Identity) else nn.Sequential(s_pre, conv)), t_pre
    if {len(s_shape), len(t_shape)} == {1, 3}:
        raise AdapterError(
            f"{both}: a feature map cannot be compared with a vector. Set `pool: avg` on this term to average the "
            "map over its spatial positions first, or pick two layers of the same kind (see `kdistill layers`)."
        )
    raise AdapterError(
        f"{both}: no adapter for activations of these ranks (kdistill adapts (c, h, w) feature maps and (d,) "
        "vectors). Tap a layer with such an output, e.g. after a Flatten."
    )
