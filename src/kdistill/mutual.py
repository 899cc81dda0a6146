"""Mutual learning: peers that teach each other, on the same logit loss as the one-teacher
:class:`~kdistill.distiller.Distiller`.

:class:`Cohort` is deep mutual learning (Zhang et al. 2018): peers trained together, each on the labels
and on the other peers' detached soft targets; an objective for :func:`kdistill.trainer.fit`. (Several
teachers for one student are :class:`~kdistill.teacher.MultiTeacher`.)

Use inside your own loop::

    cohort = Cohort([net_a, net_b], T=2.0, alpha=0.5)     # cohort.model holds both peers
    out = cohort({"x": x, "y": y}); out.loss.backward()  # one optimizer over cohort.parameters()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdistill.data import Batch
from kdistill.distiller import Objective, StepOutput
from kdistill.losses import kd_loss_parts
from kdistill.losses.checks import check_temperature
from kdistill.teacher import mixture_logits


class CohortModel(nn.Module):
    """The peers of a cohort as one module, so that ``fit`` handles the cohort as its model.

    Its ``state_dict`` holds every peer (``peers.<i>.*``), so ``fit``'s checkpoints (``best.pt``,
    ``last.pt``, resume) and its restore of the best epoch cover the whole cohort at once. ``forward``
    returns the cohort's ensemble prediction, the log of the peers' mean softmax, which is what ``fit``
    scores on validation: the best epoch is chosen for the cohort, symmetrically in its peers.
    """

    def __init__(self, peers: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(peers) < 2:
            raise ValueError(f"a cohort needs at least 2 peers, got {len(peers)}")
        self.peers = nn.ModuleList(peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mixture_logits([peer(x) for peer in self.peers])


class Cohort(Objective):
    """Deep mutual learning: every peer learns from the labels and from the other peers.

    Peer ``i``'s loss is ``(1 - alpha) CE(z_i, y) + alpha T^2 mean_{j != i} KL(p_j^T || p_i^T)``, i.e.
    :func:`~kdistill.losses.kd_loss_parts` against each other peer, averaged. The other peers' logits are
    detached, so peer ``i``'s loss sends gradient into peer ``i`` alone; the objective's loss is the sum of
    the peers' losses, whose gradient for each peer is therefore exactly the gradient of its own loss.
    Each step runs one forward per peer, on the same batch.

    Training with one optimizer over the whole cohort (what ``fit`` does) is the same as one optimizer
    per peer: SGD (momentum, Nesterov, weight decay) and Adam/AdamW keep their state per parameter,
    the learning-rate schedule is shared anyway, and ``fit`` clips no gradient norm (a global norm would
    couple the peers). The peers' rows then share one training time and one data order.
    """

    def __init__(self, peers: Sequence[nn.Module], T: float = 4.0, alpha: float = 0.5) -> None:
        super().__init__()
        check_temperature(T)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.model = CohortModel(peers)
        self.T = T
        self.alpha = alpha

    @property
    def peers(self) -> nn.ModuleList:
        return self.model.peers

    def peer_losses(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        """Each peer's loss and logits (one forward per peer), and the parts to log per peer."""
        logits = [peer(batch["x"]) for peer in self.peers]
        losses: list[torch.Tensor] = []
        parts: dict[str, torch.Tensor] = {}
        for i, z in enumerate(logits):
            terms = [
                kd_loss_parts(z, other.detach(), batch["y"], self.T, self.alpha)
                for j, other in enumerate(logits)
                if j != i
            ]
            loss = torch.stack([t["loss"] for t in terms]).mean()
            losses.append(loss)
            parts[f"peer{i}_soft"] = torch.stack([t["soft"] for t in terms]).mean().detach()
            parts[f"peer{i}_hard"] = terms[0]["hard"].detach()  # the same CE against every other peer
        return losses, logits, parts

    def forward(self, batch: Batch) -> StepOutput:
        losses, logits, parts = self.peer_losses(batch)
        ensemble = mixture_logits([z.detach() for z in logits])  # fit's train accuracy: the cohort's
        return StepOutput(torch.stack(losses).sum(), ensemble, parts)
