"""The one training loop: the best validation epoch's weights come back, an objective with nothing to train
and a loss that stops being finite are clear errors that lose nothing, the objective decides what the
model is shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.augment import Augmenter
from kdistill.config import TrainConfig
from kdistill.data import Batch, Split
from kdistill.distiller import Objective, StepOutput, Supervised
from kdistill.io import safe_load
from kdistill.losses import cross_entropy
from kdistill.trainer import evaluate, fit


def _splits(n: int = 120) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()  # linearly separable: a linear model learns it in one epoch
    return Split(x[:80], y[:80], torch.arange(80)), Split(x[80:], y[80:], torch.arange(80, n))


class Sabotaged(Objective):
    """Learns the labels in epoch 1, then the flipped labels: validation accuracy peaks at epoch 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.model(batch["x"])
        y = batch["y"] if self.epoch == 0 else 1 - batch["y"]
        return StepOutput(cross_entropy(logits, y), logits)


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "batch_size": 16, "lr": 0.5, "schedule": "constant", **kw})


def test_the_best_validation_epoch_is_restored(tmp_path: Path) -> None:
    train, val = _splits()
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    res = fit(Sabotaged(model), train, val, _cfg(), seed=0, out_dir=tmp_path, verbose=False)
    accs = [h["val_acc"] for h in res.history]
    assert res.best_epoch == 1 and accs[0] == max(accs) > accs[-1] + 0.3  # the sabotage worked
    assert res.best_val_acc == accs[0] == evaluate(model, val).acc  # the model holds epoch 1's weights
    best = safe_load(tmp_path / "best.pt")
    assert best["epoch"] == 1 and all(torch.equal(v, model.state_dict()[k]) for k, v in best["state_dict"].items())
    last = safe_load(tmp_path / "last.pt")
    assert last["epoch"] == 4 and not torch.equal(last["state_dict"]["weight"], model.weight.detach())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")


def test_nothing_trainable_is_a_clear_error() -> None:
    train, val = _splits()
    model = nn.Linear(4, 2)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen: the objective has no trainable parameters"):
        fit(Supervised(model), train, val, _cfg(), seed=0, desc="frozen", verbose=False)


class BlowsUp(Supervised):
    """The loss becomes NaN at the 8th step (epoch 2 of 5 steps)."""

    steps = 0

    def forward(self, batch: Batch) -> StepOutput:
        out = super().forward(batch)
        BlowsUp.steps += 1
        return StepOutput(out.loss * float("nan"), out.logits) if BlowsUp.steps == 8 else out


def test_a_non_finite_loss_stops_with_its_place_and_keeps_the_last_good_epoch(tmp_path: Path) -> None:
    train, val = _splits()
    BlowsUp.steps = 0
    want = (
        r"kd s0: loss became nan at epoch 2, step \d+ of \d+ \(last finite loss: [0-9.e+-]+\); lower the learning rate"
    )
    with pytest.raises(FloatingPointError, match=want):
        fit(BlowsUp(nn.Linear(4, 2)), train, val, _cfg(), seed=0, out_dir=tmp_path, desc="kd s0", verbose=False)
    last = safe_load(tmp_path / "last.pt")  # epoch 1's checkpoint, whole: --resume can start from it
    assert last["epoch"] == 1 and torch.isfinite(last["state_dict"]["weight"]).all()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


class Shows(Supervised):
    """Shows the model a batch of its own making and remembers what the forward got."""

    seen: list[torch.Tensor] = []

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        return {**batch, "x": torch.full_like(batch["x"], float(epoch))}

    def forward(self, batch: Batch) -> StepOutput:
        Shows.seen.append(batch["x"][0, 0].clone())
        return super().forward(batch)


def test_the_objective_decides_what_the_model_is_shown() -> None:
    train, val = _splits()
    Shows.seen = []
    fit(Shows(nn.Linear(4, 2)), train, val, _cfg(epochs=2), seed=0, verbose=False)
    assert [float(v) for v in Shows.seen] == [0.0] * 5 + [1.0] * 5  # 80 rows, batches of 16, per epoch


class StopsAt(Supervised):
    """Plain training that raises after ``stop`` optimizer steps (a process dying mid-run, in-process)."""

    def __init__(self, model: nn.Module, stop: int | None) -> None:
        super().__init__(model)
        self.stop, self.steps = stop, 0

    def forward(self, batch: Batch) -> StepOutput:
        self.steps += 1
        if self.stop is not None and self.steps > self.stop:
            raise RuntimeError("died")
        return super().forward(batch)


def test_a_long_run_checkpoints_every_epochs_over_50_and_resumes_exactly(tmp_path: Path) -> None:
    """120 epochs of one step: last.pt and metrics.jsonl every 2 epochs (not 120 times); a run that dies after
    step 75 resumes from epoch 74 and ends with the weights of an uninterrupted run."""
    train, val = _splits()
    cfg = TrainConfig(epochs=120, batch_size=80, optimizer="sgd", lr=0.01, schedule="cosine")
    torch.manual_seed(0)
    full = nn.Linear(4, 2)
    fit(StopsAt(full, None), train, val, cfg, seed=0, out_dir=tmp_path / "full", verbose=False)
    torch.manual_seed(0)
    cut = nn.Linear(4, 2)
    with pytest.raises(RuntimeError, match="died"):
        fit(StopsAt(cut, 75), train, val, cfg, seed=0, out_dir=tmp_path / "cut", verbose=False)
    assert safe_load(tmp_path / "cut" / "last.pt")["epoch"] == 74
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 74
    fit(StopsAt(cut, None), train, val, cfg, seed=0, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert torch.equal(cut.weight, full.weight) and torch.equal(cut.bias, full.bias)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 120


def test_validations_spread_the_picks_and_a_resumed_run_keeps_the_interval_sums(tmp_path: Path) -> None:
    """``validations=4`` over 10 epochs validates after epochs 3, 6, 9 and 10: the same model and numbers at those
    epochs as validating every epoch, training metrics averaged over the interval, the kept epoch one of the four;
    a run that dies mid-interval (after epoch 4's checkpoint) resumes to the same rows and weights."""
    train, val = _splits()
    base = {"epochs": 10, "batch_size": 80, "optimizer": "sgd", "lr": 0.01, "schedule": "cosine"}
    torch.manual_seed(0)
    every = nn.Linear(4, 2)
    ref = fit(Supervised(every), train, val, TrainConfig(**base), seed=0, verbose=False)
    cfg = TrainConfig(**base, validations=4)
    torch.manual_seed(0)
    spread = nn.Linear(4, 2)
    res = fit(StopsAt(spread, None), train, val, cfg, seed=0, out_dir=tmp_path / "full", verbose=False)
    assert [h["epoch"] for h in res.history] == [3, 6, 9, 10]
    by_epoch = {h["epoch"]: h for h in ref.history}
    for row in res.history:
        assert row["val_acc"] == by_epoch[row["epoch"]]["val_acc"]
        assert row["val_nll"] == pytest.approx(by_epoch[row["epoch"]]["val_nll"], abs=0)
    first = [by_epoch[e]["train_loss"] for e in (1, 2, 3)]
    assert res.history[0]["train_loss"] == pytest.approx(sum(first) / 3, rel=1e-12)
    assert res.history[-1]["train_loss"] == by_epoch[10]["train_loss"]  # an interval of one epoch
    assert res.best_epoch in (3, 6, 9, 10)
    accs = {h["epoch"]: h["val_acc"] for h in res.history}
    assert res.best_val_acc == max(accs.values()) and accs[res.best_epoch] == res.best_val_acc
    torch.manual_seed(0)
    cut = nn.Linear(4, 2)
    with pytest.raises(RuntimeError, match="died"):  # one step per epoch: dies during epoch 5, last.pt is epoch 4's
        fit(StopsAt(cut, 4), train, val, cfg, seed=0, out_dir=tmp_path / "cut", verbose=False)
    assert safe_load(tmp_path / "cut" / "last.pt")["pending"]["epochs"] == 1  # epoch 4, not yet validated
    again = fit(StopsAt(cut, None), train, val, cfg, seed=0, out_dir=tmp_path / "cut", verbose=False, resume=True)

    def drop_time(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert drop_time(again.history) == drop_time(res.history) and torch.equal(cut.weight, spread.weight)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_the_fused_optimizer_updates_as_the_per_parameter_loop(optimizer: str) -> None:
    """make_optimizer asks for PyTorch's fused kernels (faster on a CPU): the same update as the reference loop up
    to float rounding, over 25 steps of a real training (and foreach off a CPU / CUDA device)."""
    from kdistill.trainer import make_optimizer

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.Linear(300, 10))
    ours = nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.Linear(300, 10))
    ours.load_state_dict(ref.state_dict())
    start = ref[0].weight.detach().clone()
    cfg = _cfg(optimizer=optimizer, lr=0.05, weight_decay=5e-4)
    opt = make_optimizer(list(ours.parameters()), cfg)
    assert opt.defaults["fused"] is True
    elsewhere = make_optimizer([nn.Parameter(torch.empty(3, device="meta"))], cfg)  # no fused kernels there
    assert elsewhere.defaults["foreach"] is True and not elsewhere.defaults["fused"]
    kw = {"lr": 0.05, "weight_decay": 5e-4, "foreach": False}
    if optimizer == "sgd":
        base = torch.optim.SGD(ref.parameters(), momentum=0.9, nesterov=True, **kw)
    else:
        base = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(ref.parameters(), **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        x, y = torch.randn(64, 20, generator=g), torch.randint(0, 10, (64,), generator=g)
        for model, o in ((ref, base), (ours, opt)):
            o.zero_grad(set_to_none=True)
            cross_entropy(model(x), y).backward()
            o.step()
    assert (ref[0].weight - start).abs().max() > 1e-3  # the weights moved: the comparison is not vacuous
    for a, b in zip(ref.state_dict().values(), ours.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
