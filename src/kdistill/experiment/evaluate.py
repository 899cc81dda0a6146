"""Summary rows from predictions already made: one function for a model, an ensemble and the teacher.

A row is plain data (it goes into ``summary.json``): role, seed, architecture, parameters, test accuracy,
errors, NLL and calibration, validation accuracy, training time, and, when classes were left out of the
transfer set, the left-out report (raw and with the classes' bias corrected).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdistill.config import ExperimentConfig
from kdistill.data import DataBundle
from kdistill.deploy import measure_many, verdict
from kdistill.experiment.context import RunContext, log
from kdistill.left_out import label_free_shift, shift_logits
from kdistill.metrics import class_accuracy, expected_calibration_error, score
from kdistill.models import build_model
from kdistill.teacher import mixture_logits


def model_row(
    ctx: RunContext,
    role: str,
    seed: int,
    arch: str,
    params: int,
    test_logits: torch.Tensor,
    val_logits: torch.Tensor,
    seconds: float,
    left_out: bool = True,
    **fields: Any,
) -> dict:
    """The summary row of a model's (or an ensemble's) test and validation predictions.

    ``left_out=False`` skips the left-out report (the teacher saw every class). ``fields`` are kept as
    given (variant, best epoch, ...).
    """
    data = ctx.data
    ev = score(test_logits, data.test.y)
    row = {
        "role": role,
        "seed": seed,
        "arch": arch,
        "params": params,
        "test_acc": ev.acc,
        "test_errors": ev.errors,
        "test_nll": ev.nll,
        "train_seconds": round(seconds, 2),
        **fields,
        "val_acc": score(val_logits, data.val.y).acc,
        "test_ece": expected_calibration_error(test_logits.softmax(1), data.test.y),
    }
    if left_out and data.excluded_classes:
        row.update(left_out_report(test_logits, val_logits, ctx.t_val, data, ctx.cfg.kd.bias_shift))
    return row


def ensemble_row(
    ctx: RunContext,
    role: str,
    seed: int,
    members: list[dict],
    tests: list[torch.Tensor],
    vals: list[torch.Tensor],
    seconds: float,
    steps: int,
) -> dict:
    """The members' ensemble (mean softmax) scored like a model; ``extra_params``: beyond one member."""
    params = sum(int(m["params"]) for m in members)
    names = [m["variant"] for m in members]
    row = model_row(
        ctx,
        role,
        seed,
        "+".join(m["arch"] for m in members),
        params,
        mixture_logits(tests),
        mixture_logits(vals),
        seconds,
        variant="ensemble",
        ensemble=True,
        members=names,
        dir=None,
        student=False,
        headline=False,
        extra_params=params - int(members[0]["params"]),
        steps=steps,
    )
    acc = f"test acc {row['test_acc']:.4f} ({row['test_errors']} errors)"
    log(f"{role} seed {seed}: ensemble of {', '.join(names)}: {acc}")
    return row


def left_out_report(
    test_logits: torch.Tensor, s_val: torch.Tensor, t_val: torch.Tensor, data: DataBundle, fixed: float | None
) -> dict:
    """Accuracy on the left-out classes and overall, raw and with their logits' bias corrected.

    ``test_logits``: the student's on the test set; ``s_val`` / ``t_val``: student's and teacher's on the
    validation images, from which the label-free shift is estimated (their labels are not read); test
    labels are only used to score, as for every other number in the summary.
    """
    classes = data.excluded_classes
    shifts = [label_free_shift(s_val, t_val, c) for c in classes]
    out: dict[str, Any] = {
        "left_out": classes,
        "left_out_acc": class_accuracy(test_logits, data.test.y, classes),
        "label_free_shift": [round(b, 3) for b in shifts],
    }
    variants = {"label_free": shifts} | ({"fixed_shift": [fixed] * len(classes)} if fixed is not None else {})
    for name, shift in variants.items():
        corrected = shift_logits(test_logits, classes, shift)
        out[f"{name}_test_acc"] = float((corrected.argmax(1) == data.test.y).float().mean())
        out[f"{name}_left_out_acc"] = class_accuracy(corrected, data.test.y, classes)
    return out


def deployment(cfg: ExperimentConfig, teacher: nn.Module, data: DataBundle, rows: list[dict], smoke: bool) -> dict:
    """Parameters, FLOPs, weights size and CPU latency of teacher and student, timed in one process
    (interleaved, one thread), plus a one-line verdict per student role against the teacher (on the mean
    test accuracy of the role's headline rows)."""
    spec = cfg.student.model
    student = build_model(spec.arch, data.input_shape, data.num_classes, spec.kwargs)  # same arch as every student
    repeats, warmup = (3, 1) if smoke else (20, 5)
    figs = measure_many(
        {"teacher": teacher, "student": student}, data.input_shape, threads=1, repeats=repeats, warmup=warmup
    )
    acc = {role: [r["test_acc"] for r in rows if r["role"] == role and r.get("headline", True)] for role in cfg.roles}
    t_acc = next(r["test_acc"] for r in rows if r["role"] == "teacher")
    verdicts = {role: verdict(figs["teacher"], figs["student"], t_acc, sum(a) / len(a)) for role, a in acc.items() if a}
    log(f"deploy: student vs teacher, {'; '.join(f'{r}: {v}' for r, v in verdicts.items())}")
    return {**figs, "verdicts": verdicts}
