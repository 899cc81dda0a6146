"""The config of a regression run (``task: regression``): validated like every other config (unknown keys are
errors with a suggestion, dotted overrides on the command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kdistill.config import PlainRunConfig, StrictModel, TrainConfig, validate_file

ROLES = ("scratch", "kd", "kd_weighted")


class ToyConfig(StrictModel):
    """Noisy samples ``y = f(x) + noise`` of a known 1-D function, drawn once from ``data.seed``."""

    function: Literal["wave", "cubic"] = Field("wave", description="wave: sin(3x) + 0.3x; cubic: x^3 / 4 - x")
    low: float = -3.0
    high: float = 3.0
    n_train: int = Field(2000, ge=4, description="training inputs: the teacher's labels, the students' transfer set")
    n_val: int = Field(200, ge=2)
    n_test: int = Field(1000, ge=2)
    noise: float = Field(0.3, ge=0, description="standard deviation of the Gaussian label noise")


class RegressionData(StrictModel):
    source: Literal["toy1d", "diabetes", "npz"] = Field(
        "toy1d", description="toy1d: a known 1-D function; diabetes: scikit-learn's bundled table; npz: data.path"
    )
    path: str | None = Field(
        None, description="npz: a .npz with float x_train, y_train, x_test, y_test (optional x_val, y_val)"
    )
    toy: ToyConfig = Field(default_factory=ToyConfig)
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="of train, when the source has no validation split")
    test_fraction: float = Field(0.3, gt=0, lt=0.5, description="diabetes: rows held out for the test")
    seed: int = Field(0, description="draws the toy data and the splits; the same for every student seed")
    integer_targets: bool = Field(
        False, description="accept integer y (counts, years): refused by default, since class labels look the same"
    )

    @model_validator(mode="after")
    def _path(self) -> RegressionData:
        if self.source == "npz" and not self.path:
            raise ValueError("data.source npz needs data.path (a .npz with x_train, y_train, x_test, y_test)")
        if self.source != "npz" and self.path:
            raise ValueError(f"data.path is read by data.source npz only (source is {self.source!r}); remove it")
        return self


class GBRConfig(StrictModel):
    """scikit-learn's GradientBoostingRegressor, one per output; members differ by ``random_state``."""

    n_estimators: int = Field(300, ge=1)
    max_depth: int = Field(3, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    subsample: float = Field(0.8, gt=0, le=1, description="< 1 makes the members differ (their spread)")


class RegressionTeacher(StrictModel):
    kind: Literal["mlp_ensemble", "gbr", "module"] = Field(
        "mlp_ensemble",
        description="mlp_ensemble / gbr: trained here on every training label (several members: their mean is the "
        "target, their spread the uncertainty); module: your trained nn.Module (arch + checkpoint)",
    )
    members: int = Field(5, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="mlp_ensemble: hidden widths")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            epochs=200, batch_size=128, optimizer="adam", lr=3e-3, weight_decay=0.0, select="nll", eval_batch_size=4096
        )
    )
    gbr: GBRConfig = Field(default_factory=GBRConfig)
    arch: str | None = Field(None, description="module: package.module:factory building your teacher")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="module: its state_dict file (torch.save)")

    @model_validator(mode="after")
    def _module(self) -> RegressionTeacher:
        if self.kind == "module" and not self.arch:
            raise ValueError("teacher.kind module needs teacher.arch (package.module:factory) and teacher.checkpoint")
        return self


class RegressionStudent(StrictModel):
    hidden: list[int] = Field(default_factory=lambda: [16], description="[] is a linear model")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            steps=2000, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0, select="last", eval_batch_size=4096
        )
    )


class RegressionDistill(StrictModel):
    alpha: float = Field(0.5, ge=0, le=1, description="(1 - alpha) * loss(s, y) + alpha * loss(s, teacher)")
    loss: Literal["mse", "huber"] = "mse"
    delta: float = Field(1.0, gt=0, description="huber threshold (targets are standardized)")
    max_weight: float = Field(10.0, gt=0, description="kd_weighted: cap of the 1 / variance weights (mean 1)")


class RegressionExperimentConfig(PlainRunConfig):
    task: Literal["regression"] = "regression"
    name: str = "regression"
    roles: list[Literal["scratch", "kd", "kd_weighted"]] = Field(
        default_factory=lambda: list(ROLES),
        description="scratch: labels only; kd: labels + the teacher's predictions on every training input; "
        "kd_weighted: the same, each teacher target weighted by 1 / its variance",
    )
    budgets: list[int | None] = Field(
        default_factory=lambda: [None], description="labelled training rows per student (null: all of them)"
    )
    data: RegressionData = Field(default_factory=RegressionData)
    teacher: RegressionTeacher = Field(default_factory=RegressionTeacher)
    student: RegressionStudent = Field(default_factory=RegressionStudent)
    distill: RegressionDistill = Field(default_factory=RegressionDistill)
    curve_points: int = Field(400, ge=10, description="toy1d: points of the drawn curves")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int | None]) -> list[int | None]:
        if not v or len(set(v)) != len(v) or any(b is not None and b < 2 for b in v):
            raise ValueError(f"budgets: distinct label counts >= 2 (null: all), at least one; got {v}")
        return v

    @model_validator(mode="after")
    def _select(self) -> RegressionExperimentConfig:
        for where, train in (("teacher", self.teacher.train), ("student", self.student.train)):
            if train.select == "acc":
                raise ValueError(
                    f"{where}.train.select acc: a regression model has no accuracy; use nll (lowest validation MSE) "
                    "or last (the last epoch; what students with a label budget use)"
                )
        return self

    @model_validator(mode="after")
    def _roles(self) -> RegressionExperimentConfig:
        if not self.roles or len(set(self.roles)) != len(self.roles):
            raise ValueError(f"roles: distinct names from {list(ROLES)}, at least one; got {self.roles}")
        spread = self.teacher.kind != "module" and self.teacher.members >= 2
        if "kd_weighted" in self.roles and not spread:
            raise ValueError(
                "role kd_weighted weights the teacher's targets by 1 / their variance, which needs a teacher with a "
                "spread: teacher.kind mlp_ensemble or gbr with teacher.members >= 2 (or drop kd_weighted)"
            )
        return self


def load_regression_config(path: str | Path | None, overrides: list[str] | None = None) -> RegressionExperimentConfig:
    return validate_file(RegressionExperimentConfig, path, overrides)
