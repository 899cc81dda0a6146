"""Role ``multi_teacher``: a student distilled from the weighted mean of several teachers' soft targets.

The teachers (the run's own, first, unless ``include_main: false``, then ``multi_teacher.teachers``) are
loaded from their checkpoints or trained once and cached like the run's teacher (``multi_teacher-t<i>/``
when this run trains teacher ``i``), and mixed into one :class:`~kdistill.teacher.MultiTeacher`, built once
per run. The student, in ``multi_teacher-seed<s>/``, learns with the ``kd`` role's loss at the section's
``T`` and ``alpha``; its row says which teachers it had and how accurate their mean is.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from kdistill.config import ExperimentConfig, StrictModel, TeacherConfig
from kdistill.experiment.checks import ModelUse
from kdistill.experiment.context import RunContext, log
from kdistill.experiment.roles.base import Role, loss_settings, register_role, spec_text
from kdistill.experiment.teachers import get_teacher, kd_objective
from kdistill.experiment.train import train_model
from kdistill.metrics import score
from kdistill.teacher import FrozenTeacher, MultiTeacher
from kdistill.trainer import predict


class MultiTeacherConfig(StrictModel):
    """Role ``multi_teacher``: a student distilled from the weighted mean of several teachers' soft targets
    (at T), with the same KD loss as the ``kd`` role."""

    teachers: list[TeacherConfig] = Field(
        description="teachers besides the run's own (teacher:), each loaded from its checkpoint or trained "
        "(and cached for reuse) by the run"
    )
    include_main: bool = Field(True, description="the run's teacher (teacher:) is one of them, the first")
    weights: list[float] | None = Field(
        None, description="one weight >= 0 per teacher (the run's first when included), normalised; null = equal"
    )
    T: float | None = Field(None, gt=0, description="null = kd.T")
    alpha: float | None = Field(None, ge=0, le=1, description="null = kd.alpha")

    @model_validator(mode="after")
    def _enough_teachers(self) -> MultiTeacherConfig:
        n = len(self.teachers) + self.include_main
        if n < 2:
            raise ValueError(
                f"multi_teacher needs at least 2 teachers, got {n} (include_main={self.include_main}, "
                f"{len(self.teachers)} listed); list more teachers or use role kd for one"
            )
        if self.weights is not None:
            if len(self.weights) != n:
                order = ("the run's teacher, then " if self.include_main else "") + "multi_teacher.teachers"
                raise ValueError(
                    f"weights has {len(self.weights)} entries but there are {n} teachers ({order}); "
                    "give one weight per teacher"
                )
            if any(not (w >= 0) for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"weights must be >= 0 with a positive sum, got {self.weights}")
        return self


@register_role
class MultiTeacherRole(Role):
    name, section, label, color, order = "multi_teacher", MultiTeacherConfig, "multi-teacher", "tab:brown", 40
    example = "multi_teacher: {teachers: [{model: {arch: cnn}, checkpoint: path/to/weights.pt}]}"
    why = "the student learns from the mean of the teachers' soft targets"

    def models(self, cfg: ExperimentConfig) -> list[ModelUse]:
        mc: MultiTeacherConfig = cfg.section(self.name)
        listed = [
            ModelUse(f"multi_teacher.teachers[{i}].model", tc.model, tc.checkpoint) for i, tc in enumerate(mc.teachers)
        ]
        main = [ModelUse("teacher.model", cfg.teacher.model)] if mc.include_main else []
        return [*main, *listed, ModelUse("student.model", cfg.student.model)]

    def describe(self, cfg: ExperimentConfig, variant: str | None = None) -> str:
        mc: MultiTeacherConfig = cfg.section(self.name)
        names = (["teacher"] if mc.include_main else []) + [spec_text(t.model) for t in mc.teachers]
        weights = mc.weights or [1] * len(names)
        mix = " + ".join(f"{w / sum(weights):.2g}×{n}" for w, n in zip(weights, names, strict=False))
        T, alpha = loss_settings(cfg, mc)
        return f"CE + KD (T={T:g}, α={alpha:g}) from the mean soft targets of {len(names)} teachers: {mix}"

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        cfg = ctx.cfg
        frozen, about = ctx.once("multi_teacher", lambda: self.teachers(ctx))
        T, alpha = loss_settings(cfg, cfg.section(self.name))
        row = train_model(
            ctx,
            role=self.name,
            seed=seed,
            name=f"multi_teacher-seed{seed}",
            spec=cfg.student.model,
            train=cfg.student.train,
            split=ctx.data.transfer_set,
            objective=kd_objective(ctx, lambda: frozen, cfg.student.train, T, alpha, "multi_teacher"),
            student=True,
            headline=True,
            **about,
        )
        return [row]

    def teachers(self, ctx: RunContext) -> tuple[FrozenTeacher, dict]:
        """The teachers, loaded or trained, as one frozen MultiTeacher, and what the rows say about them (each
        one's test accuracy and origin, the weights, the mean's accuracy)."""
        cfg, data = ctx.cfg, ctx.data
        mc: MultiTeacherConfig = cfg.section(self.name)
        models: list[nn.Module] = []
        info: list[dict] = []
        if mc.include_main:
            t = ctx.teacher
            models.append(t.model)
            info.append(
                {
                    "name": "teacher",
                    "arch": cfg.teacher.model.arch,
                    "source": t.source,
                    "weights": str(t.path),
                    "test_acc": score(ctx.t_test, data.test.y).acc,
                }
            )
        for i, tc in enumerate(mc.teachers):
            out = f"multi_teacher-t{i}"
            log(f"multi_teacher: teacher {len(models)} is multi_teacher.teachers[{i}] ({tc.model.arch}), in {out}/")
            t = get_teacher(ctx, tc, out=out)
            t.model.to(ctx.device)
            acc = score(predict(t.model, data.test), data.test.y).acc
            log(f"multi_teacher: teachers[{i}] ({t.source}): test acc {acc:.4f}")
            models.append(t.model)
            info.append(
                {
                    "name": f"multi_teacher.teachers[{i}]",
                    "arch": tc.model.arch,
                    "source": t.source,
                    "weights": str(t.path),
                    "test_acc": acc,
                }
            )
        T, _ = loss_settings(cfg, mc)
        mixed = MultiTeacher(models, mc.weights, T=T)
        acc = score(predict(mixed, data.test), data.test.y).acc
        log(
            f"multi_teacher: mean soft targets (T={T:g}) of {len(models)} teachers, weights "
            f"{[round(w, 4) for w in mixed.weights]}: test acc {acc:.4f}"
        )
        about = {"teachers": info, "teacher_weights": mixed.weights, "teacher_mean_test_acc": acc}
        return FrozenTeacher(mixed, fast=ctx.fast), about
