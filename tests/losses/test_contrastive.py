"""CRD (kdistill.losses.contrastive) against hand-computed values and a loop reference."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.losses import (
    ContrastMemory,
    crd_loss,
    crd_nce_loss,
)
from tests.losses.reference import D, close, dot

# ============================================================================= CRD


def test_crd_nce_loss_hand_computed() -> None:
    # n_data = 4 -> Pn = 1/4, K = 2 negatives -> K Pn = 1/2
    # row 1 [1.5 | 0.5, 0]: -log(1.5/2) - log(0.5/1) - log(0.5/0.5) = log(4/3) + log 2
    # row 2 [0.5 | 1.5, 0.5]: -log(0.5/1) - log(0.5/2) - log(0.5/1) = log 2 + log 4 + log 2 = 4 log 2
    scores = torch.tensor([[1.5, 0.5, 0.0], [0.5, 1.5, 0.5]], dtype=D)
    expected = (math.log(4 / 3) + 5 * math.log(2)) / 2  # 1.876709
    close(crd_nce_loss(scores, 4, eps=0.0), expected)
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
        scores = [[math.exp(dot(a, bank[j]) / tau) for j in [index[i].item(), *neg[i]]] for i, a in enumerate(anchors)]
        z = sum(map(sum, scores)) / (len(scores) * (k + 1)) * n  # first call: Z = mean exp-score * n_data
        kpn, loss = k / n, 0.0
        for row in scores:
            p = [v / z for v in row]
            loss -= math.log(p[0] / (p[0] + kpn + 1e-7)) + sum(math.log(kpn / (q + kpn + 1e-7)) for q in p[1:])
        return loss / len(scores), z

    loss_s, z_s = direction(ss, mt)  # student anchors vs teacher memory
    loss_t, z_t = direction(ts, ms)  # teacher anchors vs student memory
    loss = crd_loss(s, t, index, mem, k, tau, torch.Generator().manual_seed(9), shared_negatives=shared)
    close(loss, loss_s + loss_t)
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
