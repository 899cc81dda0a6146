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
    similarity_kl,
    similarity_mse,
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


def test_similarity_kl_hand_computed() -> None:
    # anchors e1, e2; teacher along e1, student along e2 (lengths do not matter: cosines), T = 0.5:
    # teacher logits [2, 0], student logits [0, 2]; KL = sum p_t (log p_t - log p_s)
    bank = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    t, s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    log_p_s = [-math.log1p(math.exp(2)), 2 - math.log1p(math.exp(2))]
    expected = sum(pi * (math.log(pi) - qi) for pi, qi in zip(p, log_p_s, strict=True))
    assert float(similarity_kl(s, t, bank, 0.5)) == pytest.approx(expected, rel=1e-6)
    assert float(similarity_kl(t * 7, t, bank, 0.5)) == pytest.approx(0.0, abs=1e-7)  # same directions


def test_similarity_mse_hand_computed_and_its_closed_form() -> None:
    # anchors e1 and (e1 + e2)/sqrt2 (lengths do not matter); teacher along e1, student along e2:
    # cosines teacher [1, 1/sqrt2], student [0, 1/sqrt2] -> squared differences [1, 0], mean 0.5
    bank = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    t, s = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]])
    assert float(similarity_mse(s, t, bank)) == pytest.approx(0.5, rel=1e-6)
    assert float(similarity_mse(t * 7, t, bank)) == pytest.approx(0.0, abs=1e-7)  # same directions
    # e^T M e with M the normalised anchors' second moment, averaged over the rows
    torch.manual_seed(4)
    s, t, bank = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6), torch.randn(9, 6)
    a = torch.nn.functional.normalize(bank.double(), dim=-1)
    e = torch.nn.functional.normalize(s, dim=-1) - torch.nn.functional.normalize(t.double(), dim=-1)
    closed = torch.einsum("id,de,ie->i", e, a.T @ a / len(a), e).mean()
    assert float(similarity_mse(s, t, bank)) == pytest.approx(float(closed), rel=1e-12)
    # an error partly across the anchors' span costs less than one of the same size along it
    bank = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    across, along = torch.tensor([[1.0, 1.0, 0.5]]), torch.tensor([[1.0, 1.5, 0.0]])
    assert float(similarity_mse(across, t, bank)) < float(similarity_mse(along, t, bank))


def test_similarity_mse_gradients_reach_the_student_only_and_bad_input_is_named() -> None:
    torch.manual_seed(3)
    s, t, bank = (torch.randn(*shape, requires_grad=True) for shape in ((2, 4), (2, 4), (5, 4)))
    similarity_mse(s, t, bank).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None and bank.grad is None
    with pytest.raises(ValueError, match=r"similarity_mse needs .* bank \(5, 3\)"):
        similarity_mse(s, t, torch.randn(5, 3))


def test_similarity_kl_exclusion_equals_leaving_the_anchor_out() -> None:
    torch.manual_seed(2)
    s, t, bank = torch.randn(3, 4), torch.randn(3, 4), torch.randn(6, 4)
    exclude = torch.zeros(3, 6, dtype=torch.bool)
    exclude[:, 5] = True
    dropped = similarity_kl(s, t, bank[:5], 0.1)
    assert float(similarity_kl(s, t, bank, 0.1, exclude)) == pytest.approx(float(dropped), rel=1e-6)
    # per-row exclusion: row i without anchor i (the sentence itself) is the mean of the rows' own losses
    own = torch.eye(3, 6, dtype=torch.bool)
    keep = [[j for j in range(6) if j != i] for i in range(3)]
    rows = [float(similarity_kl(s[i : i + 1], t[i : i + 1], bank[keep[i]], 0.1)) for i in range(3)]
    assert float(similarity_kl(s, t, bank, 0.1, own)) == pytest.approx(sum(rows) / 3, rel=1e-6)


def test_similarity_kl_gradients_reach_the_student_only_and_bad_input_is_named() -> None:
    torch.manual_seed(3)
    s, t, bank = (torch.randn(*shape, requires_grad=True) for shape in ((2, 4), (2, 4), (5, 4)))
    similarity_kl(s, t, bank, 0.05).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None and bank.grad is None
    with pytest.raises(ValueError, match=r"an \[N, D\] bank, got student \(2, 4\), teacher \(2, 4\), bank \(5, 3\)"):
        similarity_kl(s, t, torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature T must be a finite number > 0"):
        similarity_kl(s, t, bank, 0.0)
    with pytest.raises(ValueError, match=r"exclude must be \[B, N\] = \(2, 5\)"):
        similarity_kl(s, t, bank, 0.05, torch.zeros(2, 4, dtype=torch.bool))
