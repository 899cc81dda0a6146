"""Role ``dml``: deep mutual learning (Zhang et al. 2018).

A :class:`~kdistill.mutual.Cohort` of peers trained together from scratch (``student.train``'s recipe,
one ``fit``), one forward per peer per step; each peer learns from the labels and from the other peers'
detached soft targets. Rows: one per peer (``variant: peer<i>``) and one for the peers' ensemble.

Run directory: ``dml-seed<s>/`` holds the cohort's fit (metrics, best.pt, last.pt) and ``row.json`` with
every row; ``dml-seed<s>/peer<i>/`` the weights and predictions of peer ``i``.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator

from kdistill.config import ExperimentConfig, ModelSpec, StrictModel
from kdistill.experiment.checks import ModelUse
from kdistill.experiment.context import RunContext
from kdistill.experiment.evaluate import ensemble_row
from kdistill.experiment.roles.base import Role, loss_settings, register_role, sub_seed
from kdistill.experiment.train import finish_model, kept_rows, mark_finished
from kdistill.models import build_model
from kdistill.mutual import Cohort
from kdistill.trainer import fit


class DMLConfig(StrictModel):
    """Role ``dml``: deep mutual learning (Zhang et al. 2018). A cohort of peers trained together from
    scratch with ``student.train``'s recipe, one forward per peer per step; each peer's loss is
    ``(1 - alpha) CE + alpha T^2 KL(peer_j || peer_i)`` averaged over the other peers ``j``, whose soft
    targets are detached (no gradient flows from one peer's loss into another peer)."""

    peers: list[ModelSpec] | None = Field(
        None, description="the cohort: >= 2 model specs, any architectures; null = two copies of student.model"
    )
    T: float | None = Field(None, gt=0, description="temperature of the peers' soft targets; null = kd.T")
    alpha: float | None = Field(None, ge=0, le=1, description="weight of the soft-target term; null = kd.alpha")

    @field_validator("peers")
    @classmethod
    def _cohort(cls, v: list[ModelSpec] | None) -> list[ModelSpec] | None:
        if v is not None and len(v) < 2:
            raise ValueError(
                f"a cohort needs at least 2 peers, got {len(v)}; add a peer (e.g. a copy of student.model), "
                "or train one model alone with role scratch"
            )
        return v


def _section(cfg: ExperimentConfig) -> DMLConfig:
    return cfg.section("dml") or DMLConfig()


def peer_specs(cfg: ExperimentConfig) -> list[ModelSpec]:
    return list(_section(cfg).peers or [cfg.student.model, cfg.student.model])


@register_role
class DML(Role):
    name, section, label, color, order = "dml", DMLConfig, "DML", "tab:purple", 70
    why = "the cohort's peers learn from each other's soft targets"

    def models(self, cfg: ExperimentConfig) -> list[ModelUse]:
        if _section(cfg).peers is None:
            return [ModelUse("student.model", cfg.student.model)]
        return [ModelUse(f"dml.peers[{i}]", spec) for i, spec in enumerate(peer_specs(cfg))]

    def rows_per_seed(self, cfg: ExperimentConfig) -> int:
        return len(peer_specs(cfg)) + 1  # the peers and their ensemble

    def describe(self, cfg: ExperimentConfig, variant: str | None = None) -> str:
        n = len(peer_specs(cfg))
        if variant == "ensemble":
            return f"mean softmax of the {n} DML peers"
        which = f"peer {variant.removeprefix('peer')} of " if variant else ""
        T, alpha = loss_settings(cfg, _section(cfg))
        return (
            f"{which}a cohort of {n} trained together from scratch: CE + the other peers' soft targets "
            f"(T={T:g}, α={alpha:g})"
        )

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        cfg, data = ctx.cfg, ctx.data
        name = f"dml-seed{seed}"
        out = ctx.run_dir / name
        kept = kept_rows(ctx, out)
        if kept is not None:
            return kept
        specs = peer_specs(cfg)
        peers = []
        for i, spec in enumerate(specs):
            torch.manual_seed(sub_seed(seed, i))  # distinct initialisations: identical peers would stay identical
            peers.append(build_model(spec.arch, data.input_shape, data.num_classes, spec.kwargs))
        T, alpha = loss_settings(cfg, _section(cfg))
        cohort = Cohort(peers, T=T, alpha=alpha).to(ctx.device)
        res = fit(
            cohort,
            data.transfer_set,
            data.val,
            cfg.student.train,
            seed=seed,
            out_dir=out,
            desc=name,
            device=ctx.device,
            resume=ctx.resume,
        )
        rows, tests, vals = [], [], []
        for i, (peer, spec) in enumerate(zip(peers, specs, strict=True)):
            is_student = spec == cfg.student.model
            row, test, val = finish_model(
                ctx,
                peer,
                spec,
                out / f"peer{i}",
                "dml",
                seed,
                res,
                variant=f"peer{i}",
                peer=i,
                student=is_student,
                headline=is_student,
            )
            rows.append(row)
            tests.append(test)
            vals.append(val)
        rows.append(ensemble_row(ctx, "dml", seed, rows, tests, vals, res.train_seconds, res.steps))
        mark_finished(out, rows)
        return rows
