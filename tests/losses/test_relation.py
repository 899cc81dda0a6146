"""Similarity-preserving, RKD and PKT losses (kdistill.losses.relation) against loops over samples,
pairs and triplets written from the papers' definitions, in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import (
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)
from tests.losses.reference import D, close, dot, huber, norm, rows, sub

# ============================================================================= similarity preserving


def _sp_reference(s: torch.Tensor, t: torch.Tensor) -> float:
    def gram(x: torch.Tensor) -> list[list[float]]:
        r = rows(x)
        g = [[dot(a, b) for b in r] for a in r]
        return [[v / norm(row) for v in row] for row in g]

    gs, gt = gram(s), gram(t)
    b = len(gs)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_hand_computed() -> None:
    # s = I -> G_s = I; t rows both [1, 0] -> G_t = all ones -> rows [1, 1] / sqrt(2)
    # ||G_s - G_t||^2 = 2 (1 - 1/sqrt2)^2 + 2 (1/sqrt2)^2 = 2 (2 - sqrt2) = 4 - 2 sqrt2; / b^2 = 1 - sqrt2 / 2
    s = torch.eye(2, dtype=D)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D)
    close(similarity_preserving_loss(s, t), 1 - math.sqrt(2) / 2)


def test_sp_matches_loop_reference_and_invariances(gen: torch.Generator) -> None:
    s = torch.randn(5, 3, 2, generator=gen, dtype=D)
    t = torch.randn(5, 7, generator=gen, dtype=D)
    loss = similarity_preserving_loss(s, t)
    close(loss, _sp_reference(s, t))
    assert loss.item() > 1e-3
    torch.testing.assert_close(similarity_preserving_loss(s * 7.5, t * 0.01), loss)  # feature scale
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(similarity_preserving_loss(s[perm], t[perm]), loss)  # batch order
    assert similarity_preserving_loss(t, t).item() == 0.0


# ============================================================================= RKD


def _right_triangle() -> tuple[torch.Tensor, torch.Tensor]:
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=D)  # 3-4-5 right triangle
    student = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]], dtype=D)  # equilateral
    return student, teacher


def test_rkd_distance_right_triangle() -> None:
    s, t = _right_triangle()
    # teacher distances 3, 4, 5 (mean 4) -> 0.75, 1, 1.25; student 2, 2, 2 -> 1, 1, 1
    # huber(0.25) = 0.03125 twice, huber(0) once -> 0.0625 / 3 pairs = 1/48
    close(rkd_distance_loss(s, t), 1 / 48)


def test_rkd_angle_right_triangle() -> None:
    s, t = _right_triangle()
    # teacher cosines: 90 deg at A -> 0, at B adjacent/hyp = 3/5, at C 4/5; student: all cos 60 deg = 1/2
    # huber(0.5) + huber(0.1) + huber(0.3) = 0.125 + 0.005 + 0.045 = 0.175, each angle in 2 ordered
    # triplets -> mean 0.175 / 3 = 7/120
    close(rkd_angle_loss(s, t), 7 / 120)
    # the student may live in another dimension: pad to 5-D and rotate, translate and scale it
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=D))
    s5 = (F.pad(s, (0, 3)) @ q + 2.0) * 3.0
    close(rkd_angle_loss(s5, t), 7 / 120)
    close(rkd_distance_loss(s5, t), 1 / 48)


def _rkd_reference(s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """Distance and angle losses from loops over ordered pairs / triplets of distinct samples."""
    rs, rt = rows(s), rows(t)
    b = len(rs)
    pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
    ds = {p: norm(sub(rs[p[0]], rs[p[1]])) for p in pairs}
    dt = {p: norm(sub(rt[p[0]], rt[p[1]])) for p in pairs}
    ms, mt = sum(ds.values()) / len(pairs), sum(dt.values()) / len(pairs)
    dist = sum(huber(ds[p] / ms - dt[p] / mt) for p in pairs) / len(pairs)

    def cos(r: list[list[float]], i: int, j: int, k: int) -> float:  # angle at vertex j
        u, v = sub(r[i], r[j]), sub(r[k], r[j])
        return dot(u, v) / (norm(u) * norm(v))

    triplets = list(itertools.permutations(range(b), 3))
    angle = sum(huber(cos(rs, *tr) - cos(rt, *tr)) for tr in triplets) / len(triplets)
    return dist, angle


def test_rkd_matches_loop_reference(gen: torch.Generator) -> None:
    # 2-D student points make large cosine differences (> 1, the linear Huber branch) likely.
    s = torch.randn(6, 2, generator=gen, dtype=D)
    t = torch.randn(6, 3, 2, generator=gen, dtype=D)
    dist, angle = _rkd_reference(s, t)
    close(rkd_distance_loss(s, t), dist)
    close(rkd_angle_loss(s, t), angle)
    assert rkd_distance_loss(t, t).item() < 1e-20 and rkd_angle_loss(t, t).item() == 0.0


def test_rkd_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(4, 5, generator=gen, dtype=D)
    assert torch.autograd.gradcheck(lambda x: rkd_angle_loss(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: rkd_distance_loss(x, t), (s,))


def test_rkd_needs_enough_samples() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        rkd_angle_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least 2"):
        rkd_distance_loss(torch.zeros(1, 3), torch.zeros(1, 3))


# ============================================================================= PKT


def _pkt_reference(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> float:
    def conditional(x: torch.Tensor) -> list[list[float]]:
        r = [[v / (norm(row) + eps) for v in row] for row in rows(x)]
        b = len(r)
        k = [[(dot(r[i], r[j]) + 1) / 2 if i != j else 0.0 for j in range(b)] for i in range(b)]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = conditional(s), conditional(t)
    b = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b


def test_pkt_matches_loop_reference_and_invariances(gen: torch.Generator) -> None:
    s = torch.randn(5, 4, generator=gen, dtype=D)
    t = torch.randn(5, 2, 3, generator=gen, dtype=D)
    loss = pkt_loss(s, t)
    close(loss, _pkt_reference(s, t))
    assert loss.item() > 1e-3
    assert pkt_loss(t, t).item() == 0.0
    scale = torch.tensor([[0.5], [3.0], [1.0], [20.0], [0.2]], dtype=D)  # per-sample positive scales
    # exact up to the eps = 1e-7 added to each norm
    torch.testing.assert_close(pkt_loss(s * scale, t), loss, rtol=1e-5, atol=0)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(pkt_loss(s[perm], t[perm]), loss)


def test_pkt_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(4, 6, generator=gen, dtype=D)
    assert torch.autograd.gradcheck(lambda x: pkt_loss(x, t), (s,))
