"""Plain-Python reference arithmetic shared by the loss tests (float64 throughout)."""

from __future__ import annotations

import math

import torch

D = torch.float64


def close(actual: torch.Tensor, expected: float, tol: float = 1e-10) -> None:
    assert actual.dtype == D
    assert abs(actual.item() - expected) <= tol * max(1.0, abs(expected)), (actual.item(), expected)


def huber(x: float) -> float:
    """Smooth-L1 with beta = 1, both branches."""
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def rows(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(x.shape[0], -1).tolist()


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def sub(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def norm(a: list[float]) -> float:
    return math.sqrt(dot(a, a))
