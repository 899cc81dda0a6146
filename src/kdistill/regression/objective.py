"""The one objective of every regression model (teacher member, scratch student, distilled student)."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.data import Batch, Split
from kdistill.distiller import Objective, StepOutput
from kdistill.losses.regression import Kind, regression_kd_parts, regression_loss
from kdistill.metrics import EvalResult
from kdistill.trainer import predict


class RegressionObjective(Objective):
    """Plain regression on the labelled rows (``targets=None``) or distillation from cached teacher predictions.

    ``targets[i]`` is the teacher's prediction for sample index ``i`` (computed once: the teacher never runs in
    the loop), ``weights[i]`` its optional per-element weight (1 / variance, mean 1). Rows whose ``y`` is NaN have
    no label. Validation is the mean squared error of the standardized targets, so ``select: nll`` keeps the epoch
    with the lowest validation MSE."""

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 0.0,
        kind: Kind = "mse",
        delta: float = 1.0,
        targets: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model, self.alpha, self.kind, self.delta = model, alpha, kind, delta
        # Not persistent: the cache is the run's, rebuilt from the teacher, not part of the student's checkpoint.
        self.register_buffer("targets", targets, persistent=False)
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, batch: Batch) -> StepOutput:
        s = self.model(batch["x"])
        y = batch["y"]
        if s.shape != y.shape:
            raise ValueError(f"the model predicts {tuple(s.shape[1:])} per row, the targets are {tuple(y.shape[1:])}")
        if self.targets is None:
            labelled = ~torch.isnan(y).any(dim=1)
            loss = regression_loss(s[labelled], y[labelled], self.kind, self.delta)
            return StepOutput(loss, s, {"label": loss.detach()})
        idx = batch["index"]
        w = self.weights[idx] if self.weights is not None else None
        parts = regression_kd_parts(s, y, self.targets[idx], self.alpha, self.kind, self.delta, w)
        loss = parts.pop("loss")
        return StepOutput(loss, s, parts)

    def validate(self, split: Split, batch_size: int) -> EvalResult:
        """Validation MSE (standardized units) as ``nll``; there is no accuracy."""
        sse = float(((predict(self.model, split, batch_size) - split.y) ** 2).sum())
        return EvalResult(acc=float("nan"), errors=0, nll=sse / split.y.numel(), n=len(split))
