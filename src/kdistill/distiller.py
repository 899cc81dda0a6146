"""Wiring: objectives that turn a batch into ``StepOutput(loss, logits, parts)``.

The training loop only ever calls ``objective.student_batch(...)`` and ``objective(batch)`` and sums
nothing itself, so the teacher, the scratch student, the KD student and the label-smoothing student
(and a cohort of peers, :mod:`kdistill.mutual`) all share one loop.

Use inside your own loop::

    teacher = FrozenTeacher(my_teacher)                # eval + no_grad, even after .train()
    distiller = Distiller(my_student, teacher, T=4.0, alpha=0.5)
    out = distiller({"x": x, "y": y})
    out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from kdistill.augment import Augmenter
from kdistill.data import Batch, Split
from kdistill.losses import cross_entropy, kd_loss_parts, label_smoothing_ce
from kdistill.metrics import EvalResult
from kdistill.taps import Tapped
from kdistill.teacher import FrozenTeacher, OnlineTeacher, TeacherSource, check_layers
from kdistill.terms import LOGITS, Term


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    # What the training accuracy compares ``logits`` with when it is not ``batch["y"]`` (an on-policy LM step
    # trains on tokens the student sampled, not on the batch's).
    targets: torch.Tensor | None = None


class Objective(nn.Module):
    """What :func:`kdistill.trainer.fit` trains: ``self.model`` (what is saved, evaluated and deployed),
    plus whatever the objective trains besides it (adapters, heads), by minimizing ``forward(batch).loss``.

    ``student_batch`` turns a loader batch into the batch the model is shown: freshly augmented by
    default; an objective with a teacher source lets the source decide (a view cache shows its views).
    """

    model: nn.Module

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        return augment(batch)

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of each epoch (epoch-scheduled loss weights)."""

    def extra_params(self) -> int:
        """Trainable parameters outside ``model`` (adapters, embedding heads): the price of the objective."""
        return 0

    def validate(self, split: Split, batch_size: int) -> EvalResult | None:
        """The validation figures that select the best epoch, when accuracy / NLL of ``model``'s outputs do not
        apply (a sentence encoder has no labels); ``None``: the training loop evaluates ``model`` itself."""
        return None

    def forward(self, batch: Batch) -> StepOutput:
        raise NotImplementedError


class Supervised(Objective):
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


class Distiller(Objective):
    """Student trained on a frozen teacher's soft targets (temperature ``T``) plus hard labels, plus terms.

    ``loss = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE + sum_i w_i(epoch) * term_i``. Each
    :class:`~kdistill.terms.Term` names a (student layer, teacher layer) pair; the layers are captured
    with forward hooks (:class:`~kdistill.taps.Tapped`), so neither model's code changes. A term whose
    weight is 0 in the current epoch is not computed.

    ``source`` (a :class:`~kdistill.teacher.TeacherSource`) says where the teacher's outputs come from: by
    default the teacher runs online on every batch (with the layers the terms read); a
    :class:`~kdistill.caches.LogitCache` (one row per sample: only correct without random augmentation)
    or a :class:`~kdistill.caches.ViewCache` (``K`` fixed augmented views per sample; the student is then
    shown exactly those views) looks them up instead.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        alpha: float = 0.5,
        source: TeacherSource | None = None,
        terms: Sequence[Term] = (),
    ) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.T = T
        self.alpha = alpha
        self.terms = nn.ModuleList(terms)
        self.epoch = 0
        s_layers = sorted({t.student_layer for t in terms} - {LOGITS})
        self.t_layers = sorted({t.teacher_layer for t in terms} - {LOGITS})
        self.source: TeacherSource = source if source is not None else OnlineTeacher(self.teacher, self.t_layers)
        check_layers(self.source, self.t_layers)
        # A plain attribute (not a submodule): it wraps the student, whose weights are registered above.
        self.__dict__["_s_tap"] = Tapped(student, s_layers) if s_layers else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for term in self.terms:
            term.set_epoch(epoch)

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        return self.source.student_batch(batch, epoch, seed, augment)

    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        """The teacher's logits for exactly this batch, from the source."""
        return self.source(batch)[0]

    def check_batch(self, batch: Batch) -> None:
        """Fail before training when a term needs what the batches lack (CRD's sample indices)."""
        for term in self.terms:
            if term.needs_index and "index" not in batch:
                raise ValueError(
                    f"the {term.method} term keeps a per-sample memory and needs batch['index'] (each sample's "
                    "position in its dataset); yield it from your loader, as kdistill's BatchLoader does"
                )

    def forward(self, batch: Batch) -> StepOutput:
        if not getattr(self, "_checked", False):  # once: the first batch, before any update
            self.check_batch(batch)
            self._checked = True
        if self._s_tap is not None:
            logits, s_feats = self._s_tap(batch["x"])
        else:
            logits, s_feats = self.model(batch["x"]), {}
        t_logits, t_feats = self.source(batch)
        s_feats[LOGITS], t_feats[LOGITS] = logits, t_logits
        parts = kd_loss_parts(logits, t_logits, batch["y"], self.T, self.alpha)
        loss = parts.pop("loss")
        for term in self.terms:
            w = term.weight_at(self.epoch)
            if w == 0:
                continue
            value = w * term(s_feats[term.student_layer], t_feats[term.teacher_layer], batch)
            loss = loss + value
            parts[term.method] = parts.get(term.method, 0.0) + value
            parts.update({k: torch.tensor(v) for k, v in term.logged().items()})
        return StepOutput(loss, logits, {k: v.detach() for k, v in parts.items()})

    def extra_params(self) -> int:
        return sum(p.numel() for p in self.terms.parameters() if p.requires_grad)
