"""Sentence-encoder losses against hand-computed values; padding never counts; MiniLM relations per head."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.losses.encoder import (
    embedding_cosine_loss,
    embedding_mse,
    mean_pool,
    minilm_relation_loss,
    relation_kl,
    self_relation,
)


def test_mean_pool_ignores_padding() -> None:
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    assert torch.equal(mean_pool(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"mean_pool needs states \[B, L, D\] and a mask \[B, L\]"):
        mean_pool(h, torch.ones(1, 2))


def test_embedding_losses_hand_computed() -> None:
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert float(embedding_mse(s, t)) == pytest.approx((1 + 1 + 1 + 1) / 4)
    # cos = 0 for the first pair (orthogonal), 1 for the second (same direction): mean(1 - cos) = 0.5
    assert float(embedding_cosine_loss(s, t)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="linear adapter"):
        embedding_cosine_loss(s, torch.zeros(2, 3))


def test_self_relation_is_a_softmax_over_unpadded_keys() -> None:
    a = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]]])  # [1, 1, 3, 2]
    mask = torch.tensor([[1, 1, 0]])
    rel = self_relation(a, a, mask).exp()
    # row 0: scores (1, 0) / sqrt(2) over the two real keys; the padded key gets nothing
    e = math.exp(1 / math.sqrt(2))
    assert rel[0, 0, 0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1), 0.0])
    assert torch.allclose(rel.sum(-1), torch.ones(1, 1, 3))


def test_relation_kl_hand_computed_and_padding_never_counts() -> None:
    t = torch.log(torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]]))
    s = torch.log(torch.tensor([[[[0.75, 0.25], [0.9, 0.1]]]]))
    want = (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25) + 0.0) / 2  # two query rows
    assert float(relation_kl(t, s, torch.ones(1, 2))) == pytest.approx(want)
    torch.manual_seed(0)
    B, H, L, d = 2, 3, 5, 4
    tq, tk, tv = (torch.randn(B, H, L, d) for _ in range(3))
    sq, sk, sv = (torch.randn(B, H, L, 2) for _ in range(3))  # another head width: allowed
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base = minilm_relation_loss((tq, tk, tv), (sq, sk, sv), mask)
    for x in (tq, tk, tv, sq, sk, sv):  # whatever sits at the padded positions changes nothing
        x[0, :, 3:] = torch.randn_like(x[0, :, 3:]) * 50
    assert float(minilm_relation_loss((tq, tk, tv), (sq, sk, sv), mask)) == pytest.approx(float(base), rel=1e-5)
    assert float(minilm_relation_loss((tq, tk, tv), (tq, tk, tv), mask)) == pytest.approx(0.0, abs=1e-6)


def test_minilm_gradients_reach_the_student_only_and_heads_must_agree() -> None:
    torch.manual_seed(1)
    t = tuple(torch.randn(1, 2, 4, 3, requires_grad=True) for _ in range(3))
    s = tuple(torch.randn(1, 2, 4, 3, requires_grad=True) for _ in range(3))
    minilm_relation_loss(t, s, torch.ones(1, 4)).backward()
    assert all(x.grad is None for x in t) and all(x.grad is not None for x in s)
    with pytest.raises(ValueError, match="batch, heads and tokens must agree"):
        minilm_relation_loss(t, tuple(torch.randn(1, 3, 4, 3) for _ in range(3)), torch.ones(1, 4))
