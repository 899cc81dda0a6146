"""The three students of every classic KD comparison, on the same student architecture and recipe.

- ``scratch``: hard labels only (the labelled part of the data).
- ``kd``: Hinton's loss, ``alpha T^2 KL(teacher || student) + (1 - alpha) CE``, on the transfer set, plus
  the config's ``terms`` (feature, relation, contrastive, DKD, DIST, ...).
- ``label_smoothing``: hard labels smoothed uniformly (what KD's soft targets are often compared with).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from kdistill.config import ConfigError, StrictModel
from kdistill.data import Split
from kdistill.distiller import Distiller, Objective, Supervised
from kdistill.experiment.context import RunContext
from kdistill.experiment.roles.base import Role, register_role
from kdistill.experiment.teachers import teacher_source
from kdistill.experiment.train import train_model
from kdistill.models import build_model
from kdistill.terms import Term, TermError, build_terms, teacher_layers


def _student(ctx: RunContext, role: str, seed: int, split: Split, objective: Callable[[nn.Module], Objective]) -> dict:
    """One student of the run's student spec and recipe, in ``<role>-seed<s>/``."""
    cfg = ctx.cfg
    return train_model(
        ctx,
        role=role,
        seed=seed,
        name=f"{role}-seed{seed}",
        spec=cfg.student.model,
        train=cfg.student.train,
        split=split,
        objective=objective,
    )


@register_role
class Scratch(Role):
    name, label, color, order = "scratch", "scratch student", "tab:blue", 10

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        return [_student(ctx, self.name, seed, ctx.data.student_labelled, Supervised)]


class LabelSmoothingConfig(StrictModel):
    smoothing: float = Field(0.1, ge=0, lt=1)


@register_role
class LabelSmoothing(Role):
    name, label, color, order = "label_smoothing", "label-smoothing student", "tab:green", 30
    section, section_default = LabelSmoothingConfig, True

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        smoothing = ctx.cfg.section(self.name).smoothing
        return [_student(ctx, self.name, seed, ctx.data.student_labelled, lambda m: Supervised(m, smoothing=smoothing))]


def kd_terms(ctx: RunContext, student: nn.Module, teacher: nn.Module) -> list[Term]:
    """The config's extra terms for this student, sized by one probe forward of each model; a bad term is a
    :class:`~kdistill.config.ConfigError` naming ``terms[i]``."""
    cfg, data = ctx.cfg, ctx.data
    try:
        return build_terms(cfg.terms, student, teacher, data.input_shape, data.num_classes, data.transfer_set, cfg.kd.T)
    except TermError as e:
        raise ConfigError(str(e)) from None


@register_role
class KD(Role):
    name, label, color, order = "kd", "KD student", "tab:red", 20

    def check(self, ctx: RunContext, probed: dict) -> None:
        """The terms, built once on a fresh student against the teacher's architecture: an unknown layer or
        shapes no adapter can match fail here, before the teacher is trained."""
        cfg, data = ctx.cfg, ctx.data
        if not cfg.terms:
            return
        with torch.random.fork_rng(devices=[]):  # building models draws initial weights
            student = build_model(cfg.student.model.arch, data.input_shape, data.num_classes, cfg.student.model.kwargs)
            teacher = build_model(cfg.teacher.model.arch, data.input_shape, data.num_classes, cfg.teacher.model.kwargs)
            kd_terms(ctx, student, teacher)

    def prepare(self, ctx: RunContext) -> None:
        """The transfer-set logits or view cache, written where the workers read them back. Terms reading teacher
        layers keep those in their own process, so there is nothing to share."""
        cfg = ctx.cfg
        if not teacher_layers(cfg.terms):
            assert ctx.frozen is not None
            teacher_source(ctx, ctx.frozen, cfg.student.train, key="teacher")

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        cfg = ctx.cfg
        assert ctx.frozen is not None and ctx.teacher is not None

        def objective(student: nn.Module) -> Objective:
            # built here, when a student actually trains (not for one kept by --resume or a --jobs worker)
            source = teacher_source(ctx, ctx.frozen, cfg.student.train, teacher_layers(cfg.terms), key="teacher")
            terms = kd_terms(ctx, student, ctx.teacher.model)  # adapters draw their weights after the student's
            return Distiller(student, ctx.frozen, T=cfg.kd.T, alpha=cfg.kd.alpha, source=source, terms=terms)

        return [_student(ctx, self.name, seed, ctx.data.transfer_set, objective)]
