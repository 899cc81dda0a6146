"""Distiller: the teacher stays frozen through training, a cached teacher gives the online teacher's loss."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.caches import LogitCache
from kdistill.config import TrainConfig
from kdistill.data import BatchLoader, Split
from kdistill.distiller import Distiller
from kdistill.losses import kd_loss_parts
from kdistill.trainer import fit
from tests.helpers import make_bn_teacher


def _student(in_features: int = 6, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(in_features, 5), nn.ReLU(), nn.Linear(5, num_classes))


def _teacher_state(teacher: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in teacher.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_teacher_params_get_no_grad(bn_teacher: nn.Module) -> None:
    distiller = Distiller(_student(), bn_teacher, T=3.0, alpha=0.7).train()
    assert all(not p.requires_grad for p in distiller.teacher.parameters())
    batch = {"x": torch.randn(8, 6), "y": torch.tensor([0, 1, 2, 0, -1, 1, 2, 2]), "index": torch.arange(8)}
    out = distiller(batch)
    assert out.loss.requires_grad
    out.loss.backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.model.parameters())
    assert set(out.parts) == {"soft", "hard"}
    assert not any(v.requires_grad for v in out.parts.values())


def test_bn_teacher_running_stats_unchanged_by_training_steps(bn_teacher: nn.Module) -> None:
    before = _teacher_state(bn_teacher)
    distiller = Distiller(_student(), bn_teacher, T=4.0, alpha=0.5)
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        distiller.train()
        batch = {"x": torch.randn(8, 6, generator=g) * 3 + 2, "y": torch.randint(0, 3, (8,), generator=g)}
        out = distiller(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    bn = bn_teacher[1]
    assert int(bn.num_batches_tracked) == 0
    _assert_same_state(before, _teacher_state(bn_teacher))


def test_fit_with_distiller_leaves_teacher_untouched(bn_teacher: nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    train = Split(torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g), torch.arange(24))
    val = Split(torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g), torch.arange(10))
    before = _teacher_state(bn_teacher)
    student = _student()
    student_before = _teacher_state(student)
    distiller = Distiller(student, bn_teacher, T=2.0, alpha=0.5)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, eval_batch_size=16)
    res = fit(distiller, train, val, cfg, seed=0, verbose=False, progress=False)
    assert len(res.history) == 2
    _assert_same_state(before, _teacher_state(bn_teacher))
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())


def test_distiller_with_cache_matches_online_teacher(sparse_split: Split, bn_teacher: nn.Module) -> None:
    cache = LogitCache.build(bn_teacher, BatchLoader(sparse_split, 7))
    subset = sparse_split.take(torch.tensor([0, 2, 5, 6, 9, 13, 17]))
    batch = next(iter(BatchLoader(subset, batch_size=5, shuffle=True, seed=2)))
    batch["y"][1] = -1  # one unlabelled row for good measure

    online = Distiller(_student(), bn_teacher, T=3.0, alpha=0.6)
    cached = Distiller(_student(), bn_teacher, T=3.0, alpha=0.6, source=cache)
    online.train()
    cached.train()
    a, b = online(batch), cached(batch)
    torch.testing.assert_close(a.loss, b.loss)
    for k in ("soft", "hard"):
        torch.testing.assert_close(a.parts[k], b.parts[k])
    assert a.parts["soft"] > 0 and a.parts["hard"] > 0
    # The cached loss is the KD loss against the teacher's eval-mode logits of these very samples.
    with torch.no_grad():
        expected = kd_loss_parts(b.logits, make_bn_teacher().eval()(batch["x"]), batch["y"], 3.0, 0.6)["loss"]
    torch.testing.assert_close(b.loss.detach(), expected)
    a.loss.backward()
    b.loss.backward()
    for pa, pb in zip(online.model.parameters(), cached.model.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)
