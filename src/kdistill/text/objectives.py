"""Objectives for causal LMs, trained by the same :func:`kdistill.trainer.fit` as the image models.

- :class:`LMSupervised`: next-token cross-entropy (the teacher, the scratch student, sequence-level KD on
  teacher-written text).
- :class:`LMDistiller`: ``alpha * D(p_teacher || q_student; T) + (1 - alpha) * CE`` with ``D`` any divergence
  of :mod:`kdistill.losses.text`. Off-policy the tokens are the corpus' and the teacher's distributions come
  from its source (the top-k cache, or online); with ``on_policy = lam > 0`` a share ``lam`` of the steps (GKD's
  lambda) instead continue the batch's first ``prefix`` tokens with tokens *sampled from the student* (no
  gradient through the sampling), the teacher scores them online, and the loss is ``D`` on the sampled
  positions alone (there is no label for a token the student made up).

Which steps are on-policy depends only on ``(seed, epoch, the batch's sample indices)``, so a resumed run
repeats the interrupted run's choices and samples.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from kdistill.augment import Augmenter
from kdistill.data import Batch
from kdistill.distiller import Objective, StepOutput
from kdistill.losses.text import DIVERGENCES, lm_cross_entropy
from kdistill.teacher import FrozenTeacher
from kdistill.text.teacher import OnlineLM, sample

IGNORE = -1


class LMSupervised(Objective):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        return batch  # tokens are not augmented

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.model(batch["x"])
        loss = lm_cross_entropy(logits, batch["y"])
        return StepOutput(loss, logits, {"ce": loss.detach()})


class LMDistiller(Objective):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        divergence: str = "fkl",
        T: float = 1.0,
        alpha: float = 1.0,
        source: nn.Module | None = None,
        on_policy: float = 0.0,
        prefix: int = 16,
        options: dict | None = None,
    ) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose {', '.join(DIVERGENCES)}")
        if not 0.0 <= on_policy <= 1.0:
            raise ValueError(f"on_policy (GKD's lambda) must be in [0, 1], got {on_policy}")
        self.model = student
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.source = source if source is not None else OnlineLM(self.teacher)
        self.divergence, self.T, self.alpha = divergence, T, alpha
        self.on_policy, self.prefix, self.options = on_policy, prefix, dict(options or {})
        self.epoch, self.seed = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        self.seed = seed
        return batch

    def _draw(self, batch: Batch) -> torch.Generator:
        """A generator for this step's choices, from (seed, epoch, sample indices): the same on a resume."""
        key = zlib.crc32(batch["index"].cpu().numpy().tobytes()) ^ (self.seed * 1_000_003 + self.epoch * 7919)
        return torch.Generator().manual_seed(key & 0x7FFFFFFF)

    def _d(self, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return DIVERGENCES[self.divergence](s, t, self.T, mask, **self.options)

    def forward(self, batch: Batch) -> StepOutput:
        if self.on_policy > 0:
            gen = self._draw(batch)
            if float(torch.rand((), generator=gen)) < self.on_policy:
                return self._on_policy(batch, gen)
        logits = self.model(batch["x"])
        kd = self._d(logits, self.source(batch))
        if self.alpha == 1.0:  # the CE is only logged: no backward pass through it (~8 % of a step)
            with torch.no_grad():
                ce = lm_cross_entropy(logits, batch["y"])
            return StepOutput(kd, logits, {"kd": kd.detach(), "ce": ce})
        ce = lm_cross_entropy(logits, batch["y"])
        loss = self.alpha * kd + (1.0 - self.alpha) * ce
        return StepOutput(loss, logits, {"kd": kd.detach(), "ce": ce.detach()})

    def _on_policy(self, batch: Batch, gen: torch.Generator) -> StepOutput:
        x = batch["x"]
        L, P = x.shape[1], min(self.prefix, x.shape[1] - 1)
        seq = sample(self.model, x[:, :P], L - P + 1, generator=gen)  # [B, L + 1]: no gradient
        inputs, made = seq[:, :-1], seq[:, 1:]
        mask = torch.zeros_like(made, dtype=torch.bool)
        mask[:, P - 1 :] = True  # the positions that predict a sampled token
        logits = self.model(inputs)
        kd = self._d(logits, self.teacher(inputs).float(), mask)
        targets = made.masked_fill(~mask, IGNORE)  # what the training accuracy compares with
        return StepOutput(kd, logits, {"kd": kd.detach(), "on_policy": torch.ones(())}, targets=targets)
