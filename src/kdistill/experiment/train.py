"""The one way a role trains a model: build -> objective -> fit -> save -> predict -> row -> row.json.

Every trained model gets a directory of its own in the run (``<role>-seed<s>``, ``born_again-seed<s>-gen<k>``,
...) holding ``metrics.jsonl``, ``best.pt``, ``last.pt``, ``weights.pt``, ``predictions.pt`` (test and
validation logits, for reports and ensembles) and, written last, ``row.json``: its presence marks the model
finished, so that ``--resume`` keeps it and continues with the next.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill import dist
from kdistill.config import ModelSpec, TrainConfig
from kdistill.data import Split
from kdistill.distiller import Objective
from kdistill.experiment.context import RunContext, log
from kdistill.experiment.evaluate import model_row
from kdistill.io import atomic_save, atomic_write_text, safe_load
from kdistill.models import build_model, count_params, save_model_file
from kdistill.trainer import FitResult, fit, predict


def train_model(
    ctx: RunContext,
    *,
    role: str,
    seed: int,
    name: str,
    spec: ModelSpec,
    train: TrainConfig,
    split: Split,
    objective: Callable[[nn.Module], Objective],
    model_seed: int | None = None,
    **fields: Any,
) -> dict:
    """Train one model into ``run_dir/name`` and return its summary row (kept as it is when resuming a run
    that finished it).

    The model is initialised right after ``torch.manual_seed(model_seed)`` (default ``seed``); then
    ``objective(model)`` builds what trains it (a teacher, adapters: anything drawing random numbers draws
    them here, in this order) and :func:`~kdistill.trainer.fit` trains it on ``split``. ``fields`` go into
    the row (variant, headline, ...).
    """
    out = ctx.run_dir / name
    kept = kept_rows(ctx, out)
    if kept is not None:
        return kept
    model_seed = seed if model_seed is None else model_seed
    torch.manual_seed(model_seed)
    model = build_model(spec.arch, ctx.data.input_shape, ctx.data.num_classes, spec.kwargs).to(ctx.device)
    obj = objective(model)
    res = fit(
        obj, split, ctx.data.val, train, seed=model_seed, out_dir=out, desc=name, device=ctx.device, resume=ctx.resume
    )
    row, _, _ = finish_model(ctx, model, spec, out, role, seed, res, extra_params=obj.extra_params(), **fields)
    mark_finished(out, row)
    return row


def finish_model(
    ctx: RunContext, model: nn.Module, spec: ModelSpec, out: Path, role: str, seed: int, res: FitResult, **fields: Any
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A trained model's weights file, predictions and row (and its test and validation logits)."""
    data = ctx.data
    if dist.is_main():
        save_model_file(
            model,
            spec.model_dump(),
            data.input_shape,
            data.num_classes,
            out / "weights.pt",
            data.extra.get("normalize"),
            role=role,
            seed=seed,
            variant=fields.get("variant"),
            best_epoch=res.best_epoch,
        )
    test_logits = predict(model, data.test)
    val_logits = predict(model, data.val)
    directory = fields.pop("dir", out.relative_to(ctx.run_dir).as_posix())
    row = model_row(
        ctx,
        role,
        seed,
        spec.arch,
        count_params(model),
        test_logits,
        val_logits,
        res.train_seconds,
        dir=directory,
        best_epoch=res.best_epoch,
        steps=res.steps,
        precision=res.precision,
        **fields,
    )
    if dist.is_main():
        atomic_save({"test_logits": test_logits, "val_logits": val_logits}, out / "predictions.pt")
    log(f"{directory}: test acc {row['test_acc']:.4f} ({row['test_errors']} errors), {res.train_seconds:.0f}s")
    return row, test_logits, val_logits


def kept_rows(ctx: RunContext, out: Path) -> Any:
    """The finished rows of ``out`` when resuming (its ``row.json``), else None."""
    if ctx.resume and (out / "row.json").is_file():
        log(f"{out.name}: already finished (before an interruption, or by a --jobs worker), kept")
        return json.loads((out / "row.json").read_text())
    return None


def mark_finished(out: Path, rows: Any) -> None:
    """Write ``row.json`` (rank 0), after everything else of the model: its presence marks it finished."""
    if dist.is_main():
        atomic_write_text(out / "row.json", json.dumps(rows))
    dist.barrier()  # a next stage loads this one's weights.pt, which rank 0 wrote


def saved_predictions(ctx: RunContext, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished model's test and validation logits, from its files (the same whether resumed or not)."""
    p = safe_load(ctx.run_dir / row["dir"] / "predictions.pt")
    return p["test_logits"], p["val_logits"]
