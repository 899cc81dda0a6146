"""Feature, relation, contrastive and decoupled/relational logit losses against independent values.

Every value is either worked out by hand (arithmetic in the comment) or recomputed by a plain Python
loop over samples / pairs / triplets written from the papers' definitions, all in float64.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.losses import (
    ContrastMemory,
    attention_map,
    attention_transfer_loss,
    crd_loss,
    crd_nce_loss,
    dist_loss,
    dkd_loss_parts,
    dkd_terms,
    hint_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
    soft_target_kl,
)

D = torch.float64


def _close(actual: torch.Tensor, expected: float, tol: float = 1e-10) -> None:
    assert actual.dtype == D
    assert abs(actual.item() - expected) <= tol * max(1.0, abs(expected)), (actual.item(), expected)


def _huber(x: float) -> float:
    """Smooth-L1 with beta = 1, both branches."""
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(x.shape[0], -1).tolist()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _sub(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _norm(a: list[float]) -> float:
    return math.sqrt(_dot(a, a))


# ============================================================================= hint / attention transfer


def test_hint_loss_hand_computed() -> None:
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D)
    t = torch.tensor([[0.0, 2.0], [1.0, 4.0]], dtype=D)
    # squared differences 1, 0, 4, 0 -> mean 5 / 4
    _close(hint_loss(s, t), 1.25)


def test_hint_loss_needs_exact_shape_and_detaches_teacher() -> None:
    with pytest.raises(ValueError, match=re.escape("student (2, 3, 4, 4), teacher (2, 5, 4, 4)")):
        hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    s = torch.randn(2, 3, dtype=D, requires_grad=True)
    t = torch.randn(2, 3, dtype=D, requires_grad=True)
    hint_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


# Student: 2 channels on a 2x2 grid, teacher: 1 channel (AT needs no channel adapter).
#   c0 = [[1, 2], [0, 0]], c1 = [[1, 0], [2, 0]]
#   p=2: mean_c f^2 = [(1+1)/2, (4+0)/2, (0+4)/2, 0] = [1, 2, 2, 0], norm sqrt(1+4+4) = 3 -> [1/3, 2/3, 2/3, 0]
#   p=1: mean_c |f| = [1, 1, 1, 0], norm sqrt(3) -> [1, 1, 1, 0] / sqrt(3)
AT_STUDENT = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[1.0, 0.0], [2.0, 0.0]]]], dtype=D)
#   teacher [[0, 0], [0, 3]]: map [0, 0, 0, 9] -> [0, 0, 0, 1]
AT_TEACHER = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]]]], dtype=D)


def test_attention_map_hand_computed() -> None:
    torch.testing.assert_close(attention_map(AT_STUDENT), torch.tensor([[1 / 3, 2 / 3, 2 / 3, 0.0]], dtype=D))
    torch.testing.assert_close(attention_map(AT_STUDENT, p=1), torch.tensor([[1, 1, 1, 0.0]], dtype=D) / math.sqrt(3))
    torch.testing.assert_close(attention_map(AT_TEACHER), torch.tensor([[0, 0, 0, 1.0]], dtype=D))


def test_attention_transfer_hand_computed() -> None:
    # diff [1/3, 2/3, 2/3, -1] -> squares 1/9 + 4/9 + 4/9 + 1 = 2, mean over 1 sample x 4 positions = 0.5
    _close(attention_transfer_loss(AT_STUDENT, AT_TEACHER), 0.5)
    # Batch of two: the teacher gets a zero second channel (map [0, 0, 0, 9/2], normalised unchanged), and
    # its second sample is the student's own (contributes 0) -> 2 / (2 samples x 4 positions) = 0.25
    s = torch.cat([AT_STUDENT, AT_STUDENT])
    t = torch.cat([torch.cat([AT_TEACHER, torch.zeros_like(AT_TEACHER)], dim=1), AT_STUDENT])
    _close(attention_transfer_loss(s, t), 0.25)


def test_attention_transfer_pools_larger_map() -> None:
    # A 4x4 one-channel teacher whose 2x2 blocks have mean f^2 = [1, 2, 2, 0], i.e. the student's map:
    #   block00 [[2,0],[0,0]] -> 4/4 = 1, block01 [[2,2],[0,0]] -> 8/4 = 2, block10 [[0,0],[2,2]] -> 2, block11 0
    t = torch.tensor(
        [[[[2, 0, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 0, 0]]]],
        dtype=D,
    )
    assert attention_transfer_loss(AT_STUDENT, t).item() < 1e-15
    assert attention_transfer_loss(t, AT_STUDENT).item() < 1e-15  # pooling works in either direction
    # against the 2x2 teacher above, pooling the 4x4 map gives the hand value 0.5 again
    _close(attention_transfer_loss(t, AT_TEACHER), 0.5)


def test_attention_transfer_scale_invariant_and_zero_on_equal_maps(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, 5, 5, generator=gen, dtype=D)
    t = torch.randn(3, 7, 5, 5, generator=gen, dtype=D)
    base = attention_transfer_loss(s, t)
    assert base.item() > 1e-4
    torch.testing.assert_close(attention_transfer_loss(s * 10.0, t * 0.1), base)
    assert attention_transfer_loss(s, s.repeat(1, 2, 1, 1)).item() < 1e-30


def test_attention_transfer_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 3, 3, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(2, 2, 3, 3, generator=gen, dtype=D)
    assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, t, p=3.0), (s,))


def test_attention_bad_arguments() -> None:
    with pytest.raises(ValueError, match="p must be"):
        attention_map(AT_STUDENT, p=0)
    with pytest.raises(ValueError, match=re.escape("student (2, 3), teacher (2, 3)")):
        attention_transfer_loss(torch.zeros(2, 3), torch.zeros(2, 3))


# ============================================================================= similarity preserving


def _sp_reference(s: torch.Tensor, t: torch.Tensor) -> float:
    def gram(x: torch.Tensor) -> list[list[float]]:
        r = _rows(x)
        g = [[_dot(a, b) for b in r] for a in r]
        return [[v / _norm(row) for v in row] for row in g]

    gs, gt = gram(s), gram(t)
    b = len(gs)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_hand_computed() -> None:
    # s = I -> G_s = I; t rows both [1, 0] -> G_t = all ones -> rows [1, 1] / sqrt(2)
    # ||G_s - G_t||^2 = 2 (1 - 1/sqrt2)^2 + 2 (1/sqrt2)^2 = 2 (2 - sqrt2) = 4 - 2 sqrt2; / b^2 = 1 - sqrt2 / 2
    s = torch.eye(2, dtype=D)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D)
    _close(similarity_preserving_loss(s, t), 1 - math.sqrt(2) / 2)


def test_sp_matches_loop_reference_and_invariances(gen: torch.Generator) -> None:
    s = torch.randn(5, 3, 2, generator=gen, dtype=D)
    t = torch.randn(5, 7, generator=gen, dtype=D)
    loss = similarity_preserving_loss(s, t)
    _close(loss, _sp_reference(s, t))
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
    _close(rkd_distance_loss(s, t), 1 / 48)


def test_rkd_angle_right_triangle() -> None:
    s, t = _right_triangle()
    # teacher cosines: 90 deg at A -> 0, at B adjacent/hyp = 3/5, at C 4/5; student: all cos 60 deg = 1/2
    # huber(0.5) + huber(0.1) + huber(0.3) = 0.125 + 0.005 + 0.045 = 0.175, each angle in 2 ordered
    # triplets -> mean 0.175 / 3 = 7/120
    _close(rkd_angle_loss(s, t), 7 / 120)
    # the student may live in another dimension: pad to 5-D and rotate, translate and scale it
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=D))
    s5 = (F.pad(s, (0, 3)) @ q + 2.0) * 3.0
    _close(rkd_angle_loss(s5, t), 7 / 120)
    _close(rkd_distance_loss(s5, t), 1 / 48)


def _rkd_reference(s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """Distance and angle losses from loops over ordered pairs / triplets of distinct samples."""
    rs, rt = _rows(s), _rows(t)
    b = len(rs)
    pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
    ds = {p: _norm(_sub(rs[p[0]], rs[p[1]])) for p in pairs}
    dt = {p: _norm(_sub(rt[p[0]], rt[p[1]])) for p in pairs}
    ms, mt = sum(ds.values()) / len(pairs), sum(dt.values()) / len(pairs)
    dist = sum(_huber(ds[p] / ms - dt[p] / mt) for p in pairs) / len(pairs)

    def cos(r: list[list[float]], i: int, j: int, k: int) -> float:  # angle at vertex j
        u, v = _sub(r[i], r[j]), _sub(r[k], r[j])
        return _dot(u, v) / (_norm(u) * _norm(v))

    triplets = list(itertools.permutations(range(b), 3))
    angle = sum(_huber(cos(rs, *tr) - cos(rt, *tr)) for tr in triplets) / len(triplets)
    return dist, angle


def test_rkd_matches_loop_reference(gen: torch.Generator) -> None:
    # 2-D student points make large cosine differences (> 1, the linear Huber branch) likely.
    s = torch.randn(6, 2, generator=gen, dtype=D)
    t = torch.randn(6, 3, 2, generator=gen, dtype=D)
    dist, angle = _rkd_reference(s, t)
    _close(rkd_distance_loss(s, t), dist)
    _close(rkd_angle_loss(s, t), angle)
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
        r = [[v / (_norm(row) + eps) for v in row] for row in _rows(x)]
        b = len(r)
        k = [[(_dot(r[i], r[j]) + 1) / 2 if i != j else 0.0 for j in range(b)] for i in range(b)]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = conditional(s), conditional(t)
    b = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b


def test_pkt_matches_loop_reference_and_invariances(gen: torch.Generator) -> None:
    s = torch.randn(5, 4, generator=gen, dtype=D)
    t = torch.randn(5, 2, 3, generator=gen, dtype=D)
    loss = pkt_loss(s, t)
    _close(loss, _pkt_reference(s, t))
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


# ============================================================================= bad shapes, for every loss


PAIR_LOSSES = {
    "hint": lambda s, t: hint_loss(s, t),
    "at": lambda s, t: attention_transfer_loss(s, t),
    "sp": lambda s, t: similarity_preserving_loss(s, t),
    "rkd_d": lambda s, t: rkd_distance_loss(s, t),
    "rkd_a": lambda s, t: rkd_angle_loss(s, t),
    "pkt": lambda s, t: pkt_loss(s, t),
    "dkd": lambda s, t: dkd_loss_parts(s.flatten(1), t.flatten(1), torch.zeros(4, dtype=torch.long), 4.0, 1.0, 8.0),
    "dist": lambda s, t: dist_loss(s.flatten(1), t.flatten(1)),
}


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_mismatched_batch_sizes_raise_with_both_shapes(name: str) -> None:
    s, t = torch.zeros(4, 3, 2, 2), torch.zeros(5, 3, 2, 2)
    with pytest.raises(ValueError) as err:
        PAIR_LOSSES[name](s, t)
    msg = str(err.value)
    assert "(4, " in msg and "(5, " in msg, msg


# ============================================================================= DKD


def _kl_rows(s: torch.Tensor, t: torch.Tensor, T: float) -> list[float]:
    out = []
    for zs, zt in zip(s.tolist(), t.tolist(), strict=True):
        es, et = [math.exp(v / T) for v in zs], [math.exp(v / T) for v in zt]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        out.append(sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True)))
    return out


def test_dkd_hand_computed() -> None:
    # teacher logits [log2, log2, 0] -> p_t = [0.4, 0.4, 0.2]; student uniform [1/3]*3; target 0; T = 1
    # TCKD: KL([0.4, 0.6] || [1/3, 2/3]) = 0.4 log 1.2 + 0.6 log 0.9
    # NCKD: non-target teacher [0.4, 0.2]/0.6 = [2/3, 1/3], student [1/2, 1/2]: 2/3 log(4/3) + 1/3 log(2/3)
    t = torch.tensor([[math.log(2), math.log(2), 0.0]], dtype=D)
    s = torch.zeros(1, 3, dtype=D)
    parts = dkd_loss_parts(s, t, torch.tensor([0]), T=1.0, alpha=2.0, beta=8.0)
    tckd = 0.4 * math.log(1.2) + 0.6 * math.log(0.9)  # 0.0097127
    nckd = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)  # 0.0566330
    _close(parts["tckd"], tckd)
    _close(parts["nckd"], nckd)
    _close(parts["loss"], 2 * tckd + 8 * nckd)


def test_dkd_matches_reference_style_masking(gen: torch.Generator) -> None:
    # The reference code's formulation: binary probs summed from the softmax, non-target softmax with the
    # target logit pushed down by 1000; loop over rows.
    T, b, c = 3.0, 5, 6
    s = torch.randn(b, c, generator=gen, dtype=D) * 3
    t = torch.randn(b, c, generator=gen, dtype=D) * 3
    y = torch.tensor([0, 5, 2, 2, 3])
    tckd = nckd = 0.0
    for i in range(b):
        ps, pt = F.softmax(s[i] / T, 0).tolist(), F.softmax(t[i] / T, 0).tolist()
        bs, bt = [ps[y[i]], 1 - ps[y[i]]], [pt[y[i]], 1 - pt[y[i]]]
        tckd += sum(q * math.log(q / p) for p, q in zip(bs, bt, strict=True))
        mask = F.one_hot(y[i], c).to(D) * 1000.0
        qs = F.softmax(s[i] / T - mask, 0).tolist()
        qt = F.softmax(t[i] / T - mask, 0).tolist()
        nckd += sum(q * math.log(q / p) for p, q in zip(qs, qt, strict=True) if q > 0)
    tckd, nckd = tckd * T * T / b, nckd * T * T / b
    parts = dkd_loss_parts(s, t, y, T, alpha=1.0, beta=8.0)
    _close(parts["tckd"], tckd, 1e-9)
    _close(parts["nckd"], nckd, 1e-9)
    _close(parts["loss"], tckd + 8 * nckd, 1e-9)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposes_classic_kd(gen: torch.Generator, T: float) -> None:
    b, c = 6, 5
    s = torch.randn(b, c, generator=gen, dtype=D) * 2
    t = torch.randn(b, c, generator=gen, dtype=D) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    terms = dkd_terms(s, t, y, T, reduction="none")
    p_target = F.softmax(t / T, dim=1).gather(1, y[:, None]).squeeze(1)  # the teacher's target probability
    kl = torch.tensor(_kl_rows(s, t, T), dtype=D) * T * T
    # per sample: T^2 KL = TCKD + (1 - p_t[target]) NCKD
    torch.testing.assert_close(terms["tckd"] + (1 - p_target) * terms["nckd"], kl, atol=1e-12, rtol=1e-10)
    # so alpha = 1, beta = 1 - p_target gives classic KD's T^2-scaled soft term, row by row ...
    for i in range(b):
        row = dkd_loss_parts(s[i : i + 1], t[i : i + 1], y[i : i + 1], T, alpha=1.0, beta=float(1 - p_target[i]))
        torch.testing.assert_close(row["loss"], soft_target_kl(s[i : i + 1], t[i : i + 1], T) * T * T)
    # ... and averaged over the batch
    torch.testing.assert_close((terms["tckd"] + (1 - p_target) * terms["nckd"]).mean(), soft_target_kl(s, t, T) * T * T)


def test_dkd_gradcheck_and_bad_labels(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(3, 4, generator=gen, dtype=D)
    y = torch.tensor([1, 0, 3])
    assert torch.autograd.gradcheck(lambda x: dkd_loss_parts(x, t, y, 2.0, 1.0, 8.0)["loss"], (s,))
    with pytest.raises(ValueError, match="unlabelled"):
        dkd_loss_parts(s, t, torch.tensor([1, -1, 3]), 2.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="labels must be in"):
        dkd_loss_parts(s, t, torch.tensor([1, 4, 3]), 2.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="temperature"):
        dkd_loss_parts(s, t, y, 0.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="beta"):
        dkd_loss_parts(s, t, y, 2.0, 1.0, -1.0)


# ============================================================================= DIST


def _pearson(a: list[float], b: list[float], eps: float = 1e-8) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ca, cb = [v - ma for v in a], [v - mb for v in b]
    return _dot(ca, cb) / (_norm(ca) * _norm(cb) + eps)


def _dist_reference(s: torch.Tensor, t: torch.Tensor, beta: float, gamma: float, T: float) -> float:
    ps, pt = F.softmax(s / T, 1).tolist(), F.softmax(t / T, 1).tolist()
    b, c = len(ps), len(ps[0])
    inter = 1 - sum(_pearson(ps[i], pt[i]) for i in range(b)) / b
    cols = [([ps[i][j] for i in range(b)], [pt[i][j] for i in range(b)]) for j in range(c)]
    intra = 1 - sum(_pearson(x, y) for x, y in cols) / c
    return T * T * (beta * inter + gamma * intra)


def test_dist_matches_loop_reference(gen: torch.Generator) -> None:
    s = torch.randn(5, 4, generator=gen, dtype=D) * 2
    t = torch.randn(5, 4, generator=gen, dtype=D) * 2
    for beta, gamma, T in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (1.0, 0.0, 2.0)]:
        _close(dist_loss(s, t, beta, gamma, T), _dist_reference(s, t, beta, gamma, T), 1e-9)


def test_dist_relaxed_match_and_invariances(gen: torch.Generator) -> None:
    b, c = 6, 5
    t = torch.randn(b, c, generator=gen, dtype=D) * 2
    # not exactly 0: Pearson's denominator carries eps = 1e-8, against squared norms of centred probabilities
    assert dist_loss(t, t).item() < 1e-5
    # A student with the same relations but less confident: p_s = a p_t + (1 - a) / C, a positive affine map
    # of every row (so Pearson-invariant) that keeps rows summing to 1, and the same map of every column.
    p_s = 0.3 * F.softmax(t, 1) + 0.7 / c
    s = p_s.log()
    assert soft_target_kl(s, t, 1.0).item() > 0.05  # KL punishes this student ...
    assert dist_loss(s, t).item() < 1e-5  # ... DIST does not
    s = torch.randn(b, c, generator=gen, dtype=D)
    loss = dist_loss(s, t)
    rows, cols = torch.randperm(b, generator=gen), torch.randperm(c, generator=gen)
    torch.testing.assert_close(dist_loss(s[rows][:, cols], t[rows][:, cols]), loss)  # sample / class order
    shift = torch.randn(b, 1, generator=gen, dtype=D) * 5
    torch.testing.assert_close(dist_loss(s + shift, t - shift), loss)  # per-row logit shifts (softmax)


def test_dist_gradcheck_and_bad_arguments(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(3, 4, generator=gen, dtype=D)
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, 1.0, 2.0, 2.0), (s,))
    with pytest.raises(ValueError, match="b >= 2"):
        dist_loss(s[:1], t[:1])
    dist_loss(s[:1], t[:1], gamma=0.0)  # the inter-class term alone is fine on one row


# ============================================================================= CRD


def test_crd_nce_loss_hand_computed() -> None:
    # n_data = 4 -> Pn = 1/4, K = 2 negatives -> K Pn = 1/2
    # row 1 [1.5 | 0.5, 0]: -log(1.5/2) - log(0.5/1) - log(0.5/0.5) = log(4/3) + log 2
    # row 2 [0.5 | 1.5, 0.5]: -log(0.5/1) - log(0.5/2) - log(0.5/1) = log 2 + log 4 + log 2 = 4 log 2
    scores = torch.tensor([[1.5, 0.5, 0.0], [0.5, 1.5, 0.5]], dtype=D)
    expected = (math.log(4 / 3) + 5 * math.log(2)) / 2  # 1.876709
    _close(crd_nce_loss(scores, 4, eps=0.0), expected)
    assert abs(crd_nce_loss(scores, 4).item() - expected) < 1e-6  # the default eps barely moves it
    with pytest.raises(ValueError, match="negative scores"):
        crd_nce_loss(torch.tensor([[0.5, -0.1]]), 4)
    with pytest.raises(ValueError, match="K >= 1"):
        crd_nce_loss(torch.ones(3, 1), 4)


def test_contrast_memory_buffers_sampling_and_update() -> None:
    mem = ContrastMemory(10, 2, momentum=0.5, generator=torch.Generator().manual_seed(0))
    state = mem.state_dict()
    assert set(state) == {"memory_s", "memory_t", "z_s", "z_t"}
    assert state["memory_s"].shape == (10, 2) and float(state["z_s"]) == -1.0
    torch.testing.assert_close(mem.memory_t.norm(dim=1), torch.ones(10))
    index = torch.tensor([3, 7, 7, 1])
    neg = mem.sample_negatives(index, 5, torch.Generator().manual_seed(1))
    assert neg.shape == (4, 5) and neg.dtype == torch.long and 0 <= int(neg.min()) and int(neg.max()) < 10
    assert torch.equal(neg, mem.sample_negatives(index, 5, torch.Generator().manual_seed(1)))
    # momentum 0.5: normalize(0.5 [1, 0] + 0.5 [0, 1]) = [1, 1] / sqrt 2 (student); teacher row stays [0, 1]
    mem.memory_s[4] = torch.tensor([1.0, 0.0])
    mem.memory_t[4] = torch.tensor([0.0, 1.0])
    before = mem.memory_s.clone()
    mem.update(torch.tensor([4]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(mem.memory_s[4], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(mem.memory_t[4], torch.tensor([0.0, 1.0]))
    assert torch.equal(mem.memory_s[:4], before[:4]) and torch.equal(mem.memory_s[5:], before[5:])
    with pytest.raises(ValueError, match="out of range"):
        mem.sample_negatives(torch.tensor([10]), 3)


@pytest.mark.parametrize("shared", [False, True])
def test_crd_loss_matches_loop_reference(shared: bool) -> None:
    n, d, k, tau = 8, 3, 4, 0.5
    g = torch.Generator().manual_seed(5)
    mem = ContrastMemory(n, d, generator=g).double()
    s = F.normalize(torch.randn(3, d, generator=g, dtype=D), dim=1).requires_grad_(True)
    t = F.normalize(torch.randn(3, d, generator=g, dtype=D), dim=1).requires_grad_(True)
    index = torch.tensor([2, 5, 0])
    if shared:  # one set of k negatives for every row of the batch
        neg = [mem.sample_negatives(index[:1], k, torch.Generator().manual_seed(9))[0].tolist()] * len(index)
    else:
        neg = mem.sample_negatives(index, k, torch.Generator().manual_seed(9)).tolist()
    ms, mt = mem.memory_s.tolist(), mem.memory_t.tolist()  # the memory *before* this batch
    ss, ts = s.tolist(), t.tolist()

    def direction(anchors: list[list[float]], bank: list[list[float]]) -> tuple[float, float]:
        scores = [[math.exp(_dot(a, bank[j]) / tau) for j in [index[i].item(), *neg[i]]] for i, a in enumerate(anchors)]
        z = sum(map(sum, scores)) / (len(scores) * (k + 1)) * n  # first call: Z = mean exp-score * n_data
        kpn, loss = k / n, 0.0
        for row in scores:
            p = [v / z for v in row]
            loss -= math.log(p[0] / (p[0] + kpn + 1e-7)) + sum(math.log(kpn / (q + kpn + 1e-7)) for q in p[1:])
        return loss / len(scores), z

    loss_s, z_s = direction(ss, mt)  # student anchors vs teacher memory
    loss_t, z_t = direction(ts, ms)  # teacher anchors vs student memory
    loss = crd_loss(s, t, index, mem, k, tau, torch.Generator().manual_seed(9), shared_negatives=shared)
    _close(loss, loss_s + loss_t)
    assert abs(float(mem.z_s) - z_s) < 1e-9 * z_s and abs(float(mem.z_t) - z_t) < 1e-9 * z_t
    # the memory was updated after the loss: rows of this batch moved towards the embeddings
    expected_row = F.normalize(0.5 * torch.tensor(ms[2], dtype=D) + 0.5 * s.detach()[0], dim=0)
    torch.testing.assert_close(mem.memory_s[2], expected_row)
    loss.backward()
    assert s.grad is not None and t.grad is not None and s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    # Z stays frozen on later calls
    crd_loss(s.detach() * -1, t.detach(), index, mem, k, tau)
    assert abs(float(mem.z_s) - z_s) < 1e-9 * z_s


def test_crd_loss_decreases_when_student_learns_teacher() -> None:
    torch.manual_seed(0)
    # d_in > n: a linear student can reproduce any teacher embedding of the 32 samples
    n, d_in, d = 32, 40, 8
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d_in, generator=g)
    teacher = F.normalize(torch.randn(n, d, generator=g), dim=1)  # fixed teacher embeddings
    student = nn.Linear(d_in, d)
    mem = ContrastMemory(n, d, momentum=0.5, generator=g)
    index = torch.arange(n)
    with torch.no_grad():  # fill the bank with the current embeddings, as after a first epoch
        for _ in range(6):
            mem.update(index, F.normalize(student(x), dim=1), teacher)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        loss = crd_loss(F.normalize(student(x), dim=1), teacher, index, mem, k=16, temperature=0.1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.3 * first, (first, last)  # about 16 -> 2.5 here
    # and the student really moved towards the teacher: from cos ~0 to well above, and each student
    # embedding's nearest teacher embedding is its own sample's
    sim = F.normalize(student(x), dim=1) @ teacher.T
    assert sim.diagonal().mean().item() > 0.6
    assert torch.equal(sim.argmax(dim=1), index)


def test_crd_loss_bad_arguments() -> None:
    mem = ContrastMemory(8, 3)
    e = F.normalize(torch.randn(4, 3), dim=1)
    with pytest.raises(ValueError, match=re.escape("student (4, 3), teacher (5, 3)")):
        crd_loss(e, torch.randn(5, 3), torch.arange(4), mem, 2)
    with pytest.raises(ValueError, match="temperature"):
        crd_loss(e, e, torch.arange(4), mem, 2, temperature=0.0)
