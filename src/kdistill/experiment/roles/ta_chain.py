"""Role ``ta_chain``: teacher-assistant distillation (Mirzadeh et al. 2020).

The chain is the run's teacher, then ``ta_chain.assistants`` in order, then the student; each stage is
distilled (KD at the section's T, alpha) from the previous stage, frozen and loaded from its saved
``weights.pt``. Rows: one per stage (``variant: assistant<k>`` from 1, then ``student``). Directories:
``ta_chain-seed<s>-assistant<k>/``, ``ta_chain-seed<s>-student/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from kdistill.config import ExperimentConfig, ModelSpec, StrictModel, TrainConfig
from kdistill.experiment.checks import ModelUse
from kdistill.experiment.context import RunContext
from kdistill.experiment.roles.base import Role, loss_settings, register_role, spec_text, sub_seed
from kdistill.experiment.teachers import frozen_from, kd_objective
from kdistill.experiment.train import train_model
from kdistill.teacher import FrozenTeacher


class TAChainConfig(StrictModel):
    """Role ``ta_chain``: teacher-assistant distillation (Mirzadeh et al. 2020). The chain is the run's
    teacher, then ``assistants`` in order, then the student; each stage is distilled (KD at T, alpha) from
    the previous stage, frozen and loaded from its saved weights."""

    assistants: list[ModelSpec] = Field(
        min_length=1, description="model specs between teacher and student, from the largest to the smallest"
    )
    train: TrainConfig | None = Field(None, description="the assistants' recipe; null = student.train")
    T: float | None = Field(None, gt=0, description="null = kd.T")
    alpha: float | None = Field(None, ge=0, le=1, description="null = kd.alpha")


@register_role
class TAChain(Role):
    name, section, label, color, order = "ta_chain", TAChainConfig, "TA chain", "tab:cyan", 50
    example = "ta_chain: {assistants: [{arch: cnn, kwargs: {channels: [24, 48, 96]}}]}"
    why = "each stage of teacher -> assistants -> student learns from the previous stage's soft targets"

    def models(self, cfg: ExperimentConfig) -> list[ModelUse]:
        tc: TAChainConfig = cfg.section(self.name)
        assistants = [ModelUse(f"ta_chain.assistants[{i}]", s) for i, s in enumerate(tc.assistants)]
        return [ModelUse("teacher.model", cfg.teacher.model), *assistants, ModelUse("student.model", cfg.student.model)]

    def rows_per_seed(self, cfg: ExperimentConfig) -> int:
        return len(cfg.section(self.name).assistants) + 1

    def describe(self, cfg: ExperimentConfig, variant: str | None = None) -> str:
        tc: TAChainConfig = cfg.section(self.name)
        chain = " → ".join(["teacher", *[f"assistant {spec_text(a)}" for a in tc.assistants], "student"])
        if variant and variant != "student":
            return f"teacher assistant {variant.removeprefix('assistant')} of the chain {chain}"
        T, alpha = loss_settings(cfg, tc)
        return f"CE + KD (T={T:g}, α={alpha:g}) along the chain {chain}"

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        cfg = ctx.cfg
        tc: TAChainConfig = cfg.section(self.name)
        T, alpha = loss_settings(cfg, tc)
        stages = [
            (f"assistant{k + 1}", s, tc.train or cfg.student.train, sub_seed(seed, k + 1))
            for k, s in enumerate(tc.assistants)
        ]
        stages.append(("student", cfg.student.model, cfg.student.train, seed))
        rows: list[dict] = []
        prev: tuple[Path, ModelSpec] | None = None
        for k, (variant, spec, train, model_seed) in enumerate(stages):
            teacher: Callable[[], FrozenTeacher]
            if prev is None:
                teacher = lambda: ctx.frozen  # noqa: E731
            else:
                teacher = lambda prev=prev: frozen_from(ctx, prev[0], prev[1])  # noqa: E731 - bound per stage
            name = f"ta_chain-seed{seed}-{variant}"
            key = "teacher" if prev is None else None  # the run's teacher serves every seed
            rows.append(
                train_model(
                    ctx,
                    role=self.name,
                    seed=seed,
                    name=name,
                    spec=spec,
                    train=train,
                    split=ctx.data.transfer_set,
                    objective=kd_objective(ctx, teacher, train, T, alpha, key),
                    model_seed=model_seed,
                    variant=variant,
                    stage=k + 1,
                    student=spec == cfg.student.model,
                    headline=variant == "student",
                )
            )
            prev = (ctx.run_dir / name / "weights.pt", spec)
        return rows
