"""Wiring: objectives that turn a batch into ``StepOutput(loss, parts, logits)``.

The training loop only ever calls ``objective(batch)`` and sums nothing itself, so the teacher, the
scratch student, the KD student and the label-smoothing student all share one loop.

Use inside your own loop::

    teacher = FrozenTeacher(my_teacher)                # eval + no_grad, even after .train()
    distiller = Distiller(my_student, teacher, T=4.0, alpha=0.5)
    out = distiller({"x": x, "y": y})
    out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from kdistill.losses import cross_entropy, kd_loss_parts, label_smoothing_ce

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class FrozenTeacher(nn.Module):
    """A teacher that cannot be trained by accident.

    Its parameters never require grad, it stays in eval mode (BatchNorm statistics and dropout fixed)
    even when a surrounding module calls ``.train()``, and its forward runs under ``no_grad``.
    ``no_grad`` rather than ``inference_mode``: the logits become the KL's target, and autograd may
    save them for the student's backward pass, which inference tensors forbid.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        # Deliberately ignore ``mode``: a frozen teacher is always in eval mode.
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LogitCache:
    """Teacher logits stored per sample, keyed by ``batch["index"]``.

    Valid only when the student sees exactly the inputs the teacher saw (no random augmentation); the
    pipeline falls back to running the teacher online otherwise. Rows are addressed by the sample's
    index in its original split, so shuffling, subsets and transfer sets all find the right row.
    """

    def __init__(self, logits: torch.Tensor, filled: torch.Tensor) -> None:
        self.logits = logits
        self.filled = filled

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: nn.Module,
        batches: Iterable[Batch],
        size: int,
        num_classes: int,
    ) -> LogitCache:
        logits = torch.zeros(size, num_classes)
        filled = torch.zeros(size, dtype=torch.bool)
        was_training = teacher.training
        teacher.eval()
        for b in batches:
            logits[b["index"]] = teacher(b["x"]).float()
            filled[b["index"]] = True
        teacher.train(was_training)
        return cls(logits, filled)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        n = self.logits.shape[0]
        # Negative indices would silently wrap around to another sample's row: refuse them.
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            bad = index[(index < 0) | (index >= n)][:5].tolist()
            raise KeyError(f"sample indices {bad} are outside the teacher logit cache (size {n})")
        if not bool(self.filled[index].all()):
            missing = index[~self.filled[index]][:5].tolist()
            raise KeyError(f"teacher logit cache has no entry for sample indices {missing}")
        return self.logits[index]


class Supervised(nn.Module):
    """Hard-label training (teacher, scratch student) or label smoothing when ``smoothing > 0``."""

    def __init__(self, model: nn.Module, smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.smoothing = smoothing

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.model(batch["x"])
        if self.smoothing > 0:
            loss = label_smoothing_ce(logits, batch["y"], self.smoothing)
            return StepOutput(loss, logits, {"ls_ce": loss.detach()})
        loss = cross_entropy(logits, batch["y"])
        return StepOutput(loss, logits, {"ce": loss.detach()})


class Distiller(nn.Module):
    """Student trained on a frozen teacher's soft targets (temperature ``T``) plus hard labels.

    ``cache`` (optional) replaces the teacher's forward pass by a lookup of precomputed logits; it is
    only correct without random augmentation, which is why the pipeline decides when to pass one.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        alpha: float = 0.5,
        cache: LogitCache | None = None,
    ) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.T = T
        self.alpha = alpha
        self.cache = cache

    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        if self.cache is not None:
            return self.cache(batch["index"])
        return self.teacher(batch["x"])

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.model(batch["x"])
        t = self.teacher_logits(batch)
        parts = kd_loss_parts(logits, t, batch["y"], self.T, self.alpha)
        loss = parts.pop("loss")
        return StepOutput(loss, logits, {k: v.detach() for k, v in parts.items()})
