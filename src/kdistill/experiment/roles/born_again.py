"""Role ``born_again``: born-again networks (Furlanello et al. 2018).

Generation 0 has the student's architecture and is trained on the labels (as in the paper) or distilled
from the teacher (``born_again.start``); generation ``k + 1`` (same architecture, new initialisation) is
distilled from generation ``k``, frozen and loaded from its saved ``weights.pt``. Rows: one per generation
(``variant: gen<k>``) and one for their ensemble (mean softmax of generations 0..N). Directories:
``born_again-seed<s>-gen<k>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from kdistill.config import ExperimentConfig, StrictModel
from kdistill.distiller import Supervised
from kdistill.experiment.checks import ModelUse
from kdistill.experiment.context import RunContext
from kdistill.experiment.evaluate import ensemble_row
from kdistill.experiment.roles.base import Role, loss_settings, register_role, sub_seed
from kdistill.experiment.teachers import frozen_from, kd_objective
from kdistill.experiment.train import saved_predictions, train_model
from kdistill.teacher import FrozenTeacher


class BornAgainConfig(StrictModel):
    """Role ``born_again``: born-again networks (Furlanello et al. 2018). Generation 0 has the student's
    architecture; generation ``k + 1`` (same architecture, new initialisation) is distilled from generation
    ``k``, frozen and loaded from its saved weights. Reported: every generation and their ensemble."""

    generations: int = Field(3, ge=1, description="born-again generations after generation 0")
    start: Literal["labels", "teacher"] = Field(
        "labels",
        description="generation 0: trained on the labels (as in Furlanello et al.) or distilled from the teacher",
    )
    T: float | None = Field(None, gt=0, description="null = kd.T")
    alpha: float | None = Field(None, ge=0, le=1, description="null = kd.alpha")


def _section(cfg: ExperimentConfig) -> BornAgainConfig:
    return cfg.section("born_again") or BornAgainConfig()


@register_role
class BornAgain(Role):
    name, section, label, color, order = "born_again", BornAgainConfig, "born-again", "tab:orange", 60
    why = "each generation learns from the previous one's soft targets"

    def models(self, cfg: ExperimentConfig) -> list[ModelUse]:
        teacher = [ModelUse("teacher.model", cfg.teacher.model)] if _section(cfg).start == "teacher" else []
        return [*teacher, ModelUse("student.model", cfg.student.model)]

    def rows_per_seed(self, cfg: ExperimentConfig) -> int:
        return _section(cfg).generations + 2  # generations 0..N and their ensemble

    def describe(self, cfg: ExperimentConfig, variant: str | None = None) -> str:
        ba = _section(cfg)
        n = ba.generations
        if variant == "ensemble":
            return f"mean softmax of born-again generations 0–{n}"
        start = "from the teacher" if ba.start == "teacher" else "on the labels"
        if variant == "gen0":
            return f"born-again generation 0, trained {start}"
        if variant:
            T, alpha = loss_settings(cfg, ba)
            k = int(variant.removeprefix("gen"))
            return f"born-again generation {k}: KD (T={T:g}, α={alpha:g}) from generation {k - 1}"
        return (
            f"born-again networks: generation 0 trained {start}, then generations 1–{n}, each distilled from its "
            "predecessor"
        )

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        cfg, data = ctx.cfg, ctx.data
        ba = _section(cfg)
        T, alpha = loss_settings(cfg, ba)
        spec, train = cfg.student.model, cfg.student.train
        rows: list[dict] = []
        for k in range(ba.generations + 1):
            teacher: Callable[[], FrozenTeacher] | None
            if k == 0:
                teacher = (lambda: ctx.frozen) if ba.start == "teacher" else None
            else:
                prev = ctx.run_dir / rows[-1]["dir"] / "weights.pt"
                teacher = lambda prev=prev: frozen_from(ctx, prev, spec)  # noqa: E731 - bound per generation
            if teacher is None:
                objective, split = Supervised, data.student_labelled
            else:
                key = "teacher" if k == 0 else None  # the run's teacher serves every seed
                objective, split = kd_objective(ctx, teacher, train, T, alpha, key), data.transfer_set
            rows.append(
                train_model(
                    ctx,
                    role=self.name,
                    seed=seed,
                    name=f"born_again-seed{seed}-gen{k}",
                    spec=spec,
                    train=train,
                    split=split,
                    objective=objective,
                    model_seed=sub_seed(seed, k),
                    variant=f"gen{k}",
                    generation=k,
                    student=True,
                    headline=k == ba.generations,
                )
            )
        preds = [saved_predictions(ctx, r) for r in rows]  # from the files: the same whether resumed or not
        seconds, steps = sum(r["train_seconds"] for r in rows), sum(int(r["steps"]) for r in rows)
        tests, vals = [p[0] for p in preds], [p[1] for p in preds]
        rows.append(ensemble_row(ctx, self.name, seed, rows, tests, vals, seconds, steps))
        return rows
