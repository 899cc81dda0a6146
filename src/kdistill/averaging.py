"""An exponential moving average of a model's weights (EMA; Polyak averaging), for ``train.ema``.

The average of the weights along the last stretch of training sits nearer the middle of the basin SGD is
bouncing around in than any single step's weights, which is why timm and the "patient teacher" recipes
(Beyer et al. 2022) evaluate and keep the averaged model. :class:`WeightAverage` keeps the average beside the
model (never inside the optimizer), so that it works with every objective, and hands it to the model only for
evaluation (:meth:`WeightAverage.applied`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """``avg ← d·avg + (1 − d)·w`` after every optimizer step, for every floating-point entry of the model's
    ``state_dict`` (weights and BatchNorm running statistics alike, so that the averaged model's statistics
    match its averaged weights); integer entries (BatchNorm's step counter) are copied.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm's choice): the first
    steps' weights, still near the random initialisation, would otherwise dominate the average for thousands
    of steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must lie strictly between 0 and 1 (0.999 is usual), got {decay}")
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # Which entries are averaged and which copied is fixed by the model: decided once, not at every step
        self._averaged = [k for k, v in self.state.items() if v.is_floating_point()]
        self._copied = [k for k, v in self.state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()  # once per step: this runs after every optimizer step
        avg = [self.state[k] for k in self._averaged]
        # avg += (1 - d)(now - avg), one fused pass over all tensors
        torch._foreach_lerp_(avg, [current[k] for k in self._averaged], 1.0 - d)
        for k in self._copied:
            self.state[k].copy_(current[k])
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in ``model`` for the ``with`` block; its own weights back afterwards (training
        continues from them, not from the average)."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        if saved.get("decay") != self.decay or set(saved["state"]) != set(self.state):
            raise ValueError(
                f"the checkpoint's weight average (decay {saved.get('decay')}) does not belong to this model and "
                f"train.ema={self.decay}"
            )
        self.updates = int(saved["updates"])
        for k, v in saved["state"].items():
            self.state[k].copy_(v)
