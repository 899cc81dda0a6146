"""Deep mutual learning (kdistill.mutual): no gradient between peers, one forward per peer per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill.config import TrainConfig
from kdistill.data import Split
from kdistill.losses import kd_loss
from kdistill.mutual import Cohort
from kdistill.trainer import fit


def _mlp(hidden: int, seed: int, n_in: int = 6, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def test_peer_loss_sends_gradient_into_that_peer_only() -> None:
    peers = [_mlp(8, 0), _mlp(5, 1), _mlp(8, 2)]  # different shapes and initialisations
    cohort = Cohort(peers, T=2.0, alpha=0.7)
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(16, 6, generator=g), "y": torch.randint(0, 3, (16,), generator=g)}
    losses, logits, _ = cohort.peer_losses(batch)
    alone = []
    for i, loss in enumerate(losses):
        cohort.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for j, peer in enumerate(peers):
            grads = [p.grad for p in peer.parameters()]
            if j == i:
                assert all(gr is not None for gr in grads) and any(float(gr.abs().sum()) > 0 for gr in grads)
            else:
                assert all(gr is None for gr in grads), f"peer {i}'s loss reached peer {j}"
        alone.append([p.grad.clone() for p in peers[i].parameters()])
        # The loss is kd_loss against each other peer's (detached) logits, averaged over the other peers.
        others = [kd_loss(logits[i], logits[j].detach(), batch["y"], 2.0, 0.7) for j in range(3) if j != i]
        assert float(loss.detach()) == pytest.approx(float(sum(others).detach() / 2), rel=1e-6)
    # The objective's loss (their sum) gives each peer exactly the gradient of its own loss.
    cohort.zero_grad(set_to_none=True)
    cohort(batch).loss.backward()
    for peer, own in zip(peers, alone, strict=True):
        for p, gr in zip(peer.parameters(), own, strict=True):
            torch.testing.assert_close(p.grad, gr)


def test_every_peer_runs_once_per_training_step_in_fit() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(100, 6, generator=g), torch.randint(0, 3, (100,), generator=g)
    train, val = Split(x[:80], y[:80], torch.arange(80)), Split(x[80:], y[80:], torch.arange(80, 100))
    peers = [_mlp(8, 0), _mlp(4, 1), _mlp(8, 2)]
    calls = {"train": [0, 0, 0], "eval": [0, 0, 0]}

    def counter(i: int):
        def hook(module: nn.Module, args, output) -> None:
            calls["train" if module.training else "eval"][i] += 1

        return hook

    for i, p in enumerate(peers):
        p.register_forward_hook(counter(i))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, eval_batch_size=8)
    res = fit(Cohort(peers, T=2.0, alpha=0.5), train, val, cfg, seed=0, verbose=False, progress=False)
    assert res.steps == 3 * 5
    assert calls["train"] == [res.steps] * 3  # one forward per peer per optimizer step
    assert calls["eval"] == [3 * 3] * 3  # validation: 3 epochs x 3 batches of 8 (20 rows), once per peer


def test_cohort_of_one_peer_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 peers"):
        Cohort([_mlp(4, 0)])
