"""The teacher side: a frozen teacher, several teachers as one, and where a student's teacher outputs
come from (:class:`TeacherSource`).

Every teacher forward in kdistill, online or while a cache is built, runs through :func:`frozen_forward`:
eval mode, ``inference_mode`` (no autograd bookkeeping), optionally channels_last + bf16 autocast, and
float32 copies of the outputs, which become the losses' targets.

A :class:`TeacherSource` answers two questions for a distilled student, and :func:`kdistill.trainer.fit`
asks them without knowing which kind it holds:

- ``student_batch(batch, epoch, seed, augment)``: the batch as the student must see it (freshly augmented
  by ``augment`` when the teacher runs online, one of its cached views with a view cache);
- ``source(batch)``: the teacher's logits and tapped layers for exactly that batch.

:class:`OnlineTeacher` runs the teacher on every batch; :class:`~kdistill.caches.LogitCache` (one row per
sample) and :class:`~kdistill.caches.ViewCache` (``K`` augmented views per sample) look them up. Several
teachers are one teacher (:class:`MultiTeacher`), so any source serves a mixture as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.augment import Augmenter
from kdistill.data import Batch
from kdistill.losses.checks import check_temperature
from kdistill.taps import Tapped

Layers = tuple[str, ...]
TeacherOutputs = tuple[torch.Tensor, dict[str, torch.Tensor]]  # logits, {layer: activation}


def bf16_supported(device: torch.device) -> bool:
    """bf16 runs fast here: CUDA with bf16, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16, AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def frozen_forward(model: nn.Module, x: torch.Tensor, tap: Tapped | None = None, fast: bool = False) -> TeacherOutputs:
    """One teacher forward: ``(logits, layers)`` as float32 tensors that autograd may save.

    ``model`` must already be in eval mode. ``tap`` (a :class:`~kdistill.taps.Tapped` around ``model``) also
    returns its layers. ``fast``: channels_last input and bf16 autocast (the caller checks
    :func:`bf16_supported`). The outputs are cloned out of inference mode, since they become a KL's target
    and autograd may save them for the student's backward pass.
    """
    with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=fast):
        if fast and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if tap is None:
            logits, feats = model(x), {}
        else:
            logits, feats = tap(x)
        logits = logits.float()
        feats = {k: v.float() for k, v in feats.items()}
    return logits.clone(), {k: v.clone() for k, v in feats.items()}


class FrozenTeacher(nn.Module):
    """A teacher that cannot be trained by accident.

    Its parameters never require grad, it stays in eval mode (BatchNorm statistics and dropout fixed)
    even when a surrounding module calls ``.train()``, and every forward goes through
    :func:`frozen_forward`. ``forward(x)`` gives the logits; :meth:`outputs` also named layers.

    ``fast=True`` (the online KD path) stores the conv weights and feeds the input in channels_last
    (NHWC) and runs under bf16 autocast where the hardware has bf16 kernels (CUDA, recent x86 CPUs):
    measured on this project's CNN teacher on one CPU thread with AMX, 157 ms -> 40 ms per batch of 128.
    The default is exact float32 (evaluation, caches).
    """

    def __init__(self, model: nn.Module, fast: bool = False) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.fast = fast
        # Plain attributes, not submodules: the taps wrap self.model, whose weights are registered above.
        self.__dict__["_taps"] = {}
        self.__dict__["_bf16_on"] = {}

    def train(self, mode: bool = True) -> FrozenTeacher:
        # Deliberately ignore ``mode``: a frozen teacher is always in eval mode.
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[0]

    def outputs(self, x: torch.Tensor, layers: Sequence[str] = ()) -> TeacherOutputs:
        """Logits and the activations of ``layers`` (dotted module names) on ``x``."""
        layers = tuple(layers)
        tap = None
        if layers:
            if layers not in self._taps:  # hooks registered once per set of layers
                self._taps[layers] = Tapped(self.model, list(layers))
            tap = self._taps[layers]
        return frozen_forward(self.model, x, tap, fast=self.fast and self._bf16(x.device))

    def _bf16(self, device: torch.device) -> bool:
        if device not in self._bf16_on:
            self._bf16_on[device] = bf16_supported(device)
            if self._bf16_on[device]:
                self.model.to(memory_format=torch.channels_last)  # once; float32 calls accept it as well
        return self._bf16_on[device]


# ----------------------------------------------------------------------------- where teacher outputs come from


class TeacherSource(Protocol):
    """Where a distilled student's teacher outputs come from (see the module docstring)."""

    kind: str  # "online", "per-sample cache", "view cache": named in errors and logs
    layers: Layers  # teacher layers it provides besides the logits

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch: ...

    def __call__(self, batch: Batch) -> TeacherOutputs: ...


class OnlineTeacher:
    """The teacher runs on every training batch, on exactly the (freshly augmented) input the student sees."""

    kind = "online"

    def __init__(self, teacher: FrozenTeacher, layers: Sequence[str] = ()) -> None:
        self.teacher = teacher
        self.layers: Layers = tuple(layers)

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        return augment(batch)

    def __call__(self, batch: Batch) -> TeacherOutputs:
        return self.teacher.outputs(batch["x"], self.layers)


def check_layers(source: TeacherSource, layers: Sequence[str]) -> None:
    """Fail at once when ``source`` cannot give the teacher layers the terms read."""
    missing = sorted(set(layers) - set(source.layers))
    if missing:
        raise ValueError(
            f"the teacher outputs come from a {source.kind}, which holds no outputs of teacher layers {missing}; "
            "run the teacher online (kd.cache.mode=online, or source=None), or build a per-sample cache with "
            f"LogitCache.build(..., layers={sorted(set(layers))})"
        )


# ----------------------------------------------------------------------------- several teachers


def _weights(weights: Sequence[float] | torch.Tensor | None, n: int) -> torch.Tensor:
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"need one weight per model ({n}), got {tuple(w.shape)} weights")
    if not bool((w >= 0).all()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    return w / w.sum()


def mixture_logits(
    logits: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor | None = None, T: float = 1.0
) -> torch.Tensor:
    """``T * log(sum_k w_k softmax(z_k / T))`` with ``w`` normalised to sum 1 (equal when ``None``).

    Its softmax at temperature ``T`` is exactly the weighted mean of the models' softmaxes at ``T``, so
    a KD loss at the same ``T`` sees the averaged soft targets, and at ``T = 1`` it is the log of an
    ensemble's mean probability (a valid logit vector for argmax, cross-entropy and calibration).
    Computed as a log-sum-exp of log-softmaxes, in at least float32: no probability underflows to 0.
    """
    check_temperature(T)
    if not logits:
        raise ValueError("mixture_logits needs at least one set of logits")
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"cannot average models with different output shapes: {sorted(shapes)}")
    dtype = torch.promote_types(logits[0].dtype, torch.float32)
    z = torch.stack([t.to(dtype) for t in logits])  # (models, batch, classes)
    w = _weights(weights, len(logits)).to(device=z.device, dtype=dtype)
    log_mix = torch.logsumexp(F.log_softmax(z / T, dim=-1) + w.log()[:, None, None], dim=0)
    return T * log_mix


class MultiTeacher(nn.Module):
    """Several teachers as one: ``forward(x)`` returns :func:`mixture_logits` of their logits at ``T``.

    ``softmax(forward(x) / T)`` is exactly ``sum_k w_k softmax(z_k / T)``, so the usual KD loss at the
    same ``T`` distills the weighted mean of the teachers' soft targets. (At another temperature the
    logits mean something else: build it with the ``T`` of the loss.) The teachers must predict the same
    classes; they are not frozen here: wrap this module in ``FrozenTeacher``.
    """

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float] | None = None, T: float = 4.0) -> None:
        super().__init__()
        if len(teachers) < 1:
            raise ValueError("MultiTeacher needs at least one teacher")
        check_temperature(T)
        self.teachers = nn.ModuleList(teachers)
        self.weights = [float(w) for w in _weights(weights, len(teachers))]
        self.T = T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [t(x) for t in self.teachers]
        widths = [int(o.shape[-1]) for o in outs]
        if len(set(widths)) != 1:
            raise ValueError(f"the teachers output different numbers of classes: {widths}")
        return mixture_logits(outs, self.weights, self.T)
