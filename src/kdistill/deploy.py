"""What a model costs to deploy: parameters, FLOPs, weights on disk, CPU latency.

``measure_many`` times several models in one process, interleaved round by round, so that a change
of machine load (other jobs, frequency scaling) hits teacher and students alike and their latency
*ratios* stay fair even when the absolute numbers drift. ``measure`` is the one-model shortcut;
``verdict`` turns a teacher's and a student's figures into one line::

    x5.8 smaller, x3.1 faster (batch 1), -1.10 points
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdistill.environment import torch_threads
from kdistill.models import count_params, module_device

DEFAULT_BATCH_SIZES = (1, 64)


MakeInput = Callable[[int, torch.Generator], torch.Tensor]


def flops_per_sample(model: nn.Module, input_shape: Sequence[int], make_input: MakeInput | None = None) -> int:
    """FLOPs of one forward pass on one sample, counted by ``torch.utils.flop_counter``.

    One multiply-add is 2 FLOPs (a ``Linear(i, o)`` costs ``2 * i * o``). Only the operators torch
    counts (matmuls, convolutions, attention) are included: element-wise work (bias, BatchNorm,
    ReLU, pooling) is not, as usual for FLOP figures. ``make_input(batch, generator)`` gives inputs of another
    kind (token ids) instead of zeros of ``input_shape``.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape) if make_input is None else make_input(1, torch.Generator().manual_seed(0))
        x = x.to(module_device(model))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def weights_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's ``state_dict`` as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def measure(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    threads: int = 1,
    repeats: int = 20,
    warmup: int = 5,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    min_repeat_s: float = 0.005,
) -> dict[str, Any]:
    """Deployment figures of one model; see :func:`measure_many` for the keys.

    To compare models (teacher vs students), call :func:`measure_many` with all of them instead:
    their timings are then interleaved, which keeps the ratios fair on a busy machine.
    """
    return measure_many(
        {"model": model},
        input_shape,
        threads=threads,
        repeats=repeats,
        warmup=warmup,
        batch_sizes=batch_sizes,
        min_repeat_s=min_repeat_s,
    )["model"]


def measure_many(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    *,
    threads: int = 1,
    repeats: int = 20,
    warmup: int = 5,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    min_repeat_s: float = 0.005,
    make_input: MakeInput | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure every model of ``models`` (name -> module) on inputs of shape ``(batch, *input_shape)``.

    Returns, per name, a dict with

    - ``params``: number of parameters;
    - ``flops_per_sample``: FLOPs of one sample's forward pass (:func:`flops_per_sample`);
    - ``weights_bytes``: size of the ``state_dict`` serialized by ``torch.save``;
    - ``latency_ms_b{B}`` for each batch size B (default ``latency_ms_b1`` and ``latency_ms_b64``):
      median wall time of one forward call of a batch of B, in milliseconds, on the CPU, in eval
      mode under ``torch.inference_mode``, after ``warmup`` calls;
    - ``threads``, ``repeats``, ``warmup``, ``batch_sizes``: how it was timed.

    Each of the ``repeats`` rounds times every (batch size, model) once, the model order rotating
    from round to round; one timing is ``n`` back-to-back calls with ``n`` chosen per model and batch
    size so that it lasts at least ``min_repeat_s`` (short calls are below the timer's noise).
    ``torch.set_num_threads(threads)`` holds during the timings and is restored afterwards; the
    models' train/eval mode is restored too. Models on another device are timed as CPU copies.
    ``make_input(batch, generator)`` gives the inputs when they are not float tensors of ``input_shape``
    (a sentence encoder's token ids).
    """
    if not models:
        raise ValueError("measure_many: no models given")
    if repeats < 1 or warmup < 0 or threads < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(
            f"measure_many: need repeats >= 1, warmup >= 0, threads >= 1 and positive batch sizes "
            f"(got repeats={repeats}, warmup={warmup}, threads={threads}, batch_sizes={list(batch_sizes)})"
        )
    names = list(models)
    cpu = {name: on_cpu(m) for name, m in models.items()}
    figures: dict[str, dict[str, Any]] = {
        name: {
            "params": count_params(m),
            "flops_per_sample": flops_per_sample(m, input_shape, make_input),
            "weights_bytes": weights_bytes(m),
        }
        for name, m in cpu.items()
    }
    gen = torch.Generator().manual_seed(0)
    make = make_input or (lambda b, g: torch.randn(b, *input_shape, generator=g))
    inputs = {b: make(b, gen) for b in batch_sizes}
    modes = {name: m.training for name, m in cpu.items()}
    calls: dict[tuple[str, int], int] = {}
    try:
        for m in cpu.values():
            m.eval()
        with torch_threads(threads), torch.inference_mode():
            for b, x in inputs.items():
                for name in names:
                    for _ in range(warmup):
                        cpu[name](x)
                    calls[name, b] = _calls_per_timing(cpu[name], x, min_repeat_s)
            samples = _timed_rounds(cpu, inputs, calls, repeats)
    finally:
        for name, m in cpu.items():
            m.train(modes[name])
    for name in names:
        for b in batch_sizes:
            figures[name][f"latency_ms_b{b}"] = statistics.median(samples[name, b])
        figures[name].update(threads=threads, repeats=repeats, warmup=warmup, batch_sizes=list(batch_sizes))
    return figures


def _timed_rounds(
    models: dict[str, nn.Module], inputs: dict[int, torch.Tensor], calls: dict[tuple[str, int], int], repeats: int
) -> dict[tuple[str, int], list[float]]:
    """``repeats`` rounds, each timing every (model, batch size) once, the model order rotating per round;
    milliseconds per call."""
    names = list(models)
    samples: dict[tuple[str, int], list[float]] = {(n, b): [] for n in names for b in inputs}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for b, x in inputs.items():
            for name in order:
                n = calls[name, b]
                t0 = time.perf_counter()
                for _ in range(n):
                    models[name](x)
                samples[name, b].append((time.perf_counter() - t0) / n * 1000.0)
    return samples


def _calls_per_timing(model: nn.Module, x: torch.Tensor, min_s: float) -> int:
    """Smallest n of 1, 2, 5, 10, 20, 50, ... whose n calls last at least ``min_s`` (as ``timeit``)."""
    n = 1
    while True:
        for k in (1, 2, 5):
            t0 = time.perf_counter()
            for _ in range(n * k):
                model(x)
            if time.perf_counter() - t0 >= min_s or n * k >= 10_000:
                return n * k
        n *= 10


def on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when it lives on the CPU, else a CPU copy (the original stays where it is)."""
    return model if module_device(model).type == "cpu" else copy.deepcopy(model).cpu()


def _ratio(r: float) -> str:
    return f"x{r:.0f}" if r >= 100 else f"x{r:.1f}"


def _compare(big: float, small: float, fewer: str, more: str) -> str | None:
    """``x5.8 smaller`` when ``small`` is 5.8 times below ``big``; ``x1.3 larger`` the other way round."""
    if not (big > 0 and small > 0) or math.isnan(big) or math.isnan(small):
        return None
    return f"{_ratio(big / small)} {fewer}" if big >= small else f"{_ratio(small / big)} {more}"


def verdict(
    teacher_fig: Mapping[str, Any],
    student_fig: Mapping[str, Any],
    teacher_acc: float | None = None,
    student_acc: float | None = None,
) -> str:
    """One line comparing a student with its teacher, e.g. ``x5.8 smaller, x3.1 faster (batch 1), -1.10 points``.

    ``*_fig`` are :func:`measure` dicts: size is compared on ``weights_bytes`` (``params`` when
    absent), speed on ``latency_ms_b1``. Accuracies are fractions in [0, 1] as in ``summary.json``;
    the difference is given in percentage points, student minus teacher. Parts whose figures are
    missing are left out.
    """
    parts: list[str] = []
    size_key = "weights_bytes" if "weights_bytes" in teacher_fig and "weights_bytes" in student_fig else "params"
    if size_key in teacher_fig and size_key in student_fig:
        size = _compare(float(teacher_fig[size_key]), float(student_fig[size_key]), "smaller", "larger")
        if size:
            parts.append(size)
    if "latency_ms_b1" in teacher_fig and "latency_ms_b1" in student_fig:
        speed = _compare(float(teacher_fig["latency_ms_b1"]), float(student_fig["latency_ms_b1"]), "faster", "slower")
        if speed:
            parts.append(f"{speed} (batch 1)")
    if teacher_acc is not None and student_acc is not None:
        diff = 100.0 * (float(student_acc) - float(teacher_acc))
        if not math.isnan(diff):
            parts.append(f"{round(diff, 2) + 0.0:+.2f} points")  # + 0.0: no "-0.00" for a tiny loss
    return ", ".join(parts)
