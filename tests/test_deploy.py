"""Deployment figures: FLOPs and parameters in closed form, sane latencies, the one-line verdict."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from kdistill.deploy import flops_per_sample, measure, measure_many, verdict, weights_bytes
from kdistill.models import build_model

FAST = {"repeats": 3, "warmup": 1, "min_repeat_s": 0.001}


def test_linear_flops_and_params_in_closed_form() -> None:
    fig = measure(nn.Linear(10, 7), (10,), **FAST)
    assert fig["flops_per_sample"] == 2 * 10 * 7
    assert fig["params"] == 10 * 7 + 7
    assert fig["latency_ms_b1"] > 0 and fig["latency_ms_b64"] > 0
    assert fig["threads"] == 1 and fig["repeats"] == 3 and fig["warmup"] == 1 and fig["batch_sizes"] == [1, 64]


def test_mlp_and_conv_flops_in_closed_form() -> None:
    mlp = build_model("mlp", (1, 8, 8), 4, {"hidden": [16, 8]})
    assert flops_per_sample(mlp, (1, 8, 8)) == 2 * (64 * 16 + 16 * 8 + 8 * 4)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    assert flops_per_sample(conv, (3, 6, 6)) == 2 * (3 * 3 * 3) * 5 * 6 * 6  # per output: 27 MACs


def test_weights_bytes_is_the_serialized_state_dict() -> None:
    model = nn.Linear(100, 50)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert weights_bytes(model) == len(buf.getvalue())
    assert 4 * (100 * 50 + 50) < weights_bytes(model) < 4 * (100 * 50 + 50) + 4096


def test_measure_restores_mode_and_threads() -> None:
    model = build_model("cnn", (1, 8, 8), 3, {"channels": [4, 8]}).train()
    torch.set_num_threads(1)
    fig = measure(model, (1, 8, 8), threads=2, batch_sizes=(1, 4), **FAST)
    assert model.training and torch.get_num_threads() == 1
    assert fig["threads"] == 2 and set(fig) >= {"latency_ms_b1", "latency_ms_b4"}
    assert fig["params"] == sum(p.numel() for p in model.parameters())


def test_measure_many_interleaves_and_ranks_models() -> None:
    torch.manual_seed(0)
    big = nn.Sequential(*[nn.Linear(384, 384) for _ in range(4)])
    small = nn.Linear(384, 4)
    figs = measure_many({"teacher": big, "student": small}, (384,), batch_sizes=(64,), **FAST)
    assert set(figs) == {"teacher", "student"}
    # Which one is faster is a timing claim, and timing claims live in benchmarks/, not in tests: here only that
    # both were timed and give finite, positive latencies.
    assert all(0 < f["latency_ms_b64"] < float("inf") for f in figs.values())
    assert figs["teacher"]["flops_per_sample"] == 4 * 2 * 384 * 384
    line = verdict(figs["teacher"], figs["student"], 0.9, 0.9)
    assert "smaller" in line and "faster (batch 1)" not in line  # only batch 64 was timed


def test_measure_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="repeats"):
        measure(nn.Linear(2, 2), (2,), repeats=0)
    with pytest.raises(ValueError, match="no models"):
        measure_many({}, (2,))


def test_verdict_formatting() -> None:
    teacher = {"weights_bytes": 5800, "params": 1450, "latency_ms_b1": 3.1}
    student = {"weights_bytes": 1000, "params": 250, "latency_ms_b1": 1.0}
    assert verdict(teacher, student, 0.9, 0.889) == "x5.8 smaller, x3.1 faster (batch 1), -1.10 points"
    assert verdict(teacher, student, 0.88, 0.8925) == "x5.8 smaller, x3.1 faster (batch 1), +1.25 points"
    assert verdict(teacher, student, 0.9, 0.9 - 1e-9).endswith("+0.00 points")
    # The other way round: larger and slower; no accuracies, no points; params when sizes are absent.
    assert verdict(student, teacher) == "x5.8 larger, x3.1 slower (batch 1)"
    assert verdict({"params": 25_000}, {"params": 100}) == "x250 smaller"
