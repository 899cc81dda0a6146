"""The teacher side: a frozen teacher stays frozen, every online teacher forward goes through one frozen
forward (layers included), a source that lacks the layers a term reads is refused, several teachers mix
into the weighted mean of their soft targets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdistill import teacher as teacher_module
from kdistill.augment import Augmenter
from kdistill.config import AugmentConfig
from kdistill.distiller import Distiller
from kdistill.losses import kd_loss, soft_target_kl
from kdistill.teacher import FrozenTeacher, MultiTeacher, OnlineTeacher, bf16_supported, check_layers, mixture_logits
from kdistill.terms import TermContext, build_term
from tests.helpers import make_bn_teacher
from tests.images import AUG, conv_teacher, images


def _student(in_features: int = 6, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(in_features, 5), nn.ReLU(), nn.Linear(5, num_classes))


# ----------------------------------------------------------------------------- FrozenTeacher


def test_frozen_teacher_stays_in_eval_mode(bn_teacher: nn.Module) -> None:
    bn_teacher.train()
    distiller = Distiller(_student(), bn_teacher, T=2.0, alpha=0.5)
    assert isinstance(distiller.teacher, FrozenTeacher)
    distiller.train()
    assert distiller.training and distiller.model.training
    assert not any(m.training for m in distiller.teacher.modules())
    distiller.teacher.train(True)
    assert not any(m.training for m in distiller.teacher.modules())
    distiller.eval()
    distiller.train(True)
    assert not any(m.training for m in distiller.teacher.modules())
    # An already frozen teacher is used as is, not wrapped twice.
    frozen = FrozenTeacher(make_bn_teacher())
    assert Distiller(_student(), frozen).teacher is frozen


def test_frozen_teacher_output_is_deterministic_and_has_no_graph(bn_teacher: nn.Module) -> None:
    teacher = FrozenTeacher(bn_teacher).train()
    x = torch.randn(4, 6, requires_grad=True)
    a, b = teacher(x), teacher(x)
    assert torch.equal(a, b)  # dropout off, BatchNorm uses running statistics
    assert not a.requires_grad and a.grad_fn is None
    bn_teacher_eval = make_bn_teacher().eval()
    assert torch.allclose(a, bn_teacher_eval(x).detach())


def test_frozen_teacher_layers_come_from_the_same_frozen_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online logits and online layers alike: eval mode, inference mode, float32 copies without a graph."""
    teacher = conv_teacher()
    calls = []
    real = teacher_module.frozen_forward

    def spy(model, x, tap=None, fast=False):  # noqa: ANN001, ANN202
        calls.append((tap is not None, fast))
        return real(model, x, tap, fast)

    monkeypatch.setattr(teacher_module, "frozen_forward", spy)
    frozen = FrozenTeacher(teacher.train(), fast=True)
    x = images().x[:5]
    logits, feats = frozen.outputs(x, ["0", "2"])
    fast = bf16_supported(x.device)
    assert calls == [(True, fast)]
    assert set(feats) == {"0", "2"} and feats["0"].shape == (5, 4, 8, 8) and feats["2"].shape == (5, 256)
    for t in (logits, *feats.values()):
        assert t.dtype == torch.float32 and not t.requires_grad and not t.is_inference()
    with torch.no_grad():
        exact = teacher.eval()(x)
    torch.testing.assert_close(logits, exact, atol=0.05 if fast else 1e-6, rtol=0.05 if fast else 1e-6)
    assert not any(m.training for m in teacher.modules())


def test_online_source_augments_and_runs_the_teacher_on_that_batch() -> None:
    frozen = FrozenTeacher(conv_teacher())
    source = OnlineTeacher(frozen)
    split = images()
    batch = {"x": split.x[:6], "y": split.y[:6], "index": split.index[:6]}
    shown = source.student_batch(batch, 0, 0, Augmenter(AUG, torch.Generator().manual_seed(3)))
    assert not torch.equal(shown["x"], batch["x"])  # freshly augmented
    logits, feats = source(shown)
    torch.testing.assert_close(logits, frozen(shown["x"]))
    assert feats == {}


def test_a_source_without_the_terms_layers_is_refused() -> None:
    class LogitsOnly:
        kind, layers = "view cache", ()

    with pytest.raises(ValueError, match=r"view cache, which holds no outputs of teacher layers \['0'\]"):
        check_layers(LogitsOnly(), ["0"])
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    term = build_term("fitnet", TermContext("0", "0", (4, 8, 8), (4, 8, 8), 3, 200, 4.0, "none"), {}, 1.0, 0.0)
    online = Distiller(student, conv_teacher(), terms=[term])  # the default source taps what the terms read
    assert isinstance(online.source, OnlineTeacher) and online.source.layers == ("0",)
    assert Augmenter(AugmentConfig(), torch.Generator()).active is False


# ----------------------------------------------------------------------------- several teachers


def test_multi_teacher_targets_are_the_weighted_mean_of_soft_targets() -> None:
    z1, z2 = [2.0, 0.0, -1.0], [0.0, 1.0, 3.0]
    T, w = 2.0, [1.0, 3.0]  # normalised: 0.25, 0.75

    class Fixed(nn.Module):
        def __init__(self, z: list[float]) -> None:
            super().__init__()
            self.z = nn.Parameter(torch.tensor([z], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.z.expand(x.shape[0], -1)

    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    by_hand = [0.25 * a + 0.75 * b for a, b in zip(softmax(z1), softmax(z2), strict=True)]
    mixed = MultiTeacher([Fixed(z1), Fixed(z2)], weights=w, T=T)
    out = mixed(torch.zeros(2, 1))  # float64 all the way
    assert torch.allclose((out / T).softmax(1), torch.tensor([by_hand] * 2, dtype=torch.float64), atol=1e-12)
    frozen = FrozenTeacher(mixed)(torch.zeros(2, 1))  # as a Distiller's teacher: float32, no grad
    assert not frozen.requires_grad and torch.allclose(frozen.double(), out, atol=1e-5)
    # The KD loss at T therefore sees exactly the averaged soft targets.
    s = torch.tensor([[0.5, -0.5, 1.0]], dtype=torch.float64)
    q = softmax(s[0].tolist())
    kl = sum(m * math.log(m / qc) for m, qc in zip(by_hand, q, strict=True))
    assert float(soft_target_kl(s, out[:1], T)) == pytest.approx(kl, rel=1e-10)
    y = torch.tensor([2])
    ce = -math.log(softmax([2 * v for v in s[0].tolist()])[2])  # softmax(s) at T=1
    assert float(kd_loss(s, out[:1], y, T, 0.4)) == pytest.approx(0.4 * T * T * kl + 0.6 * ce, rel=1e-10)
    assert mixture_logits([torch.tensor([z1])], T=T)[0].tolist() == pytest.approx(  # one model: unchanged softmax
        [T * math.log(p) for p in softmax(z1)]
    )
