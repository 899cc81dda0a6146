"""train.ema: the weight average by hand (decay warm-up, BatchNorm statistics, counters copied), only lent to
the model for evaluation, validated and kept by fit, and resumed exactly."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch
from torch import nn

from kdistill.averaging import WeightAverage
from kdistill.config import TrainConfig
from kdistill.data import Batch, Split
from kdistill.distiller import StepOutput, Supervised
from kdistill.io import safe_load
from kdistill.trainer import fit


def _set(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_the_average_by_hand_with_the_decay_warm_up() -> None:
    """d_n = min(decay, (1 + n) / (10 + n)): 0.1, 2/11, 0.25 for the first three updates, then the cap."""
    model = nn.Linear(1, 1, bias=False)
    _set(model, 1.0)
    avg = WeightAverage(model, decay=0.2)
    expected = 1.0
    for n, w in enumerate([2.0, 4.0, -1.0, 3.0]):
        _set(model, w)
        avg.update(model)
        d = min(0.2, (1 + n) / (10 + n))  # 0.1, 0.1818, 0.2 (capped), 0.2
        expected = d * expected + (1 - d) * w
        assert avg.state["weight"].item() == pytest.approx(expected, rel=1e-6)
    # the values themselves, worked once by hand: 1.9, 0.3455 + 3.2727 = 3.6182, 0.7236 - 0.8 = -0.0764, 2.3847
    assert expected == pytest.approx(2.38473, abs=1e-4)


def test_batchnorm_statistics_are_averaged_and_its_counter_copied() -> None:
    bn = nn.BatchNorm1d(2)
    avg = WeightAverage(bn, decay=0.5)
    bn(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))  # running_mean: 0.9 * 0 + 0.1 * [2, 4] = [0.2, 0.4]
    avg.update(bn)  # d = 0.1: 0.1 * 0 + 0.9 * [0.2, 0.4]
    assert torch.allclose(avg.state["running_mean"], torch.tensor([0.18, 0.36]))
    assert avg.state["num_batches_tracked"].item() == 1  # copied, not averaged


def test_applied_lends_the_average_and_gives_the_trained_weights_back() -> None:
    model = nn.Linear(1, 1, bias=False)
    _set(model, 1.0)
    avg = WeightAverage(model, decay=0.9)
    _set(model, 5.0)
    avg.update(model)  # 0.1 * 1 + 0.9 * 5 = 4.6
    with avg.applied(model):
        assert model.weight.item() == pytest.approx(4.6)
        assert model(torch.ones(1, 1)).item() == pytest.approx(4.6)
    assert model.weight.item() == 5.0


def test_a_decay_outside_zero_and_one_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="train.ema must lie strictly between 0 and 1"):
        WeightAverage(nn.Linear(1, 1), decay=1.0)
    with pytest.raises(pydantic.ValidationError, match="ema"):
        TrainConfig(ema=1.5)
    assert "ema" not in TrainConfig().key() and TrainConfig(ema=0.99).key()["ema"] == 0.99  # old keys unchanged


def _splits(n: int = 120) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return Split(x[:80], y[:80], torch.arange(80)), Split(x[80:], y[80:], torch.arange(80, n))


class Recorded(Supervised):
    """Supervised, remembering the weights each step starts from (the previous step's result), and dying after
    ``stop`` steps when asked to."""

    def __init__(self, model: nn.Module, stop: int | None = None) -> None:
        super().__init__(model)
        self.seen: list[torch.Tensor] = []
        self.stop = stop

    def forward(self, batch: Batch) -> StepOutput:
        if self.stop is not None and len(self.seen) >= self.stop:
            raise RuntimeError("died")
        self.seen.append(self.model.weight.detach().clone())
        return super().forward(batch)


def test_fit_validates_and_keeps_the_averaged_weights(tmp_path: Path) -> None:
    """Four one-step epochs, select last: the model fit hands back and best.pt hold the average of the weights
    after steps 1-4 (computed here from the weights each step started from), last.pt the trained ones."""
    train, val = _splits()
    cfg = TrainConfig(epochs=4, batch_size=80, lr=0.5, schedule="constant", select="last", ema=0.9)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    obj = Recorded(model)
    fit(obj, train, val, cfg, seed=0, out_dir=tmp_path, verbose=False)
    last = safe_load(tmp_path / "last.pt")
    after = [*obj.seen[1:], last["state_dict"]["weight"]]  # the weights after each of the 4 steps
    expected = obj.seen[0]
    for n, w in enumerate(after):
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert torch.allclose(model.weight, expected, atol=1e-6)
    assert not torch.allclose(model.weight, after[-1], atol=1e-3)  # the average, not the trained weights
    assert torch.equal(safe_load(tmp_path / "best.pt")["state_dict"]["weight"], model.weight.detach())
    assert last["ema"]["updates"] == 4


def test_a_killed_run_with_ema_resumes_to_the_same_average(tmp_path: Path) -> None:
    train, val = _splits()
    cfg = TrainConfig(epochs=6, batch_size=40, lr=0.2, schedule="cosine", ema=0.8)
    torch.manual_seed(0)
    full = nn.Linear(4, 2)
    ref = fit(Recorded(full), train, val, cfg, seed=0, out_dir=tmp_path / "full", verbose=False)
    torch.manual_seed(0)
    cut = nn.Linear(4, 2)
    with pytest.raises(RuntimeError, match="died"):  # two steps an epoch: dies in epoch 4
        fit(Recorded(cut, stop=7), train, val, cfg, seed=0, out_dir=tmp_path / "cut", verbose=False)
    again = fit(Recorded(cut), train, val, cfg, seed=0, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert torch.equal(cut.weight, full.weight) and again.best_epoch == ref.best_epoch
    a, b = (safe_load(tmp_path / d / "last.pt")["ema"] for d in ("full", "cut"))
    assert a["updates"] == b["updates"] == 12 and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert [h["val_nll"] for h in again.history] == [h["val_nll"] for h in ref.history]
