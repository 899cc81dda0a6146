"""Several models at once, on the same logit losses as the one-teacher :class:`~kdistill.distiller.Distiller`.

- :class:`Cohort`: deep mutual learning (Zhang et al. 2018), peers trained together, each on the labels
  and on the other peers' detached soft targets; an objective for :func:`kdistill.trainer.fit`.
- :class:`MultiTeacher`: several teachers as one, whose logits carry the weighted mean of their soft
  targets; wrap it in :class:`~kdistill.distiller.FrozenTeacher` (``Distiller`` does) and distill as usual.
- :func:`mixture_logits`: the logits of a weighted mean of softmaxes (ensembles of generations or peers).

Use inside your own loop::

    cohort = Cohort([net_a, net_b], T=2.0, alpha=0.5)     # cohort.model holds both peers
    out = cohort({"x": x, "y": y}); out.loss.backward()  # one optimizer over cohort.parameters()
    teacher = FrozenTeacher(MultiTeacher([t1, t2], weights=[0.7, 0.3], T=4.0))
    distiller = Distiller(student, teacher, T=4.0, alpha=0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.distiller import Batch, StepOutput
from kdistill.losses import kd_loss_parts
from kdistill.losses.logits import _check_temperature


def _weights(weights: Sequence[float] | torch.Tensor | None, n: int) -> torch.Tensor:
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"need one weight per model ({n}), got {tuple(w.shape)} weights")
    if not bool((w >= 0).all()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    return w / w.sum()


def mixture_logits(
    logits: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor | None = None, T: float = 1.0
) -> torch.Tensor:
    """``T * log(sum_k w_k softmax(z_k / T))`` with ``w`` normalised to sum 1 (equal when ``None``).

    Its softmax at temperature ``T`` is exactly the weighted mean of the models' softmaxes at ``T``, so
    a KD loss at the same ``T`` sees the averaged soft targets, and at ``T = 1`` it is the log of an
    ensemble's mean probability (a valid logit vector for argmax, cross-entropy and calibration).
    Computed as a log-sum-exp of log-softmaxes, in at least float32: no probability underflows to 0.
    """
    _check_temperature(T)
    if not logits:
        raise ValueError("mixture_logits needs at least one set of logits")
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"cannot average models with different output shapes: {sorted(shapes)}")
    dtype = torch.promote_types(logits[0].dtype, torch.float32)
    z = torch.stack([t.to(dtype) for t in logits])  # (models, batch, classes)
    w = _weights(weights, len(logits)).to(device=z.device, dtype=dtype)
    log_mix = torch.logsumexp(F.log_softmax(z / T, dim=-1) + w.log()[:, None, None], dim=0)
    return T * log_mix


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


class Cohort(nn.Module):
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
        _check_temperature(T)
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
            terms = [kd_loss_parts(z, other.detach(), batch["y"], self.T, self.alpha)
                     for j, other in enumerate(logits) if j != i]  # fmt: skip
            loss = torch.stack([t["loss"] for t in terms]).mean()
            losses.append(loss)
            parts[f"peer{i}_soft"] = torch.stack([t["soft"] for t in terms]).mean().detach()
            parts[f"peer{i}_hard"] = terms[0]["hard"].detach()  # the same CE against every other peer
        return losses, logits, parts

    def forward(self, batch: Batch) -> StepOutput:
        losses, logits, parts = self.peer_losses(batch)
        ensemble = mixture_logits([z.detach() for z in logits])  # fit's train accuracy: the cohort's
        return StepOutput(torch.stack(losses).sum(), ensemble, parts)


class MultiTeacher(nn.Module):
    """Several teachers as one: ``forward(x)`` returns :func:`mixture_logits` of their logits at ``T``.

    ``softmax(forward(x) / T)`` is exactly ``sum_k w_k softmax(z_k / T)``, so the usual KD loss at the
    same ``T`` distills the weighted mean of the teachers' soft targets. (At another temperature the
    logits mean something else: build it with the ``T`` of the loss.) The teachers must predict the same
    classes; they are not frozen here: wrap this module in ``FrozenTeacher``.
    """

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float] | None = None, T: float = 4.0) -> None:
        super().__init__()
        if len(teachers) < 1:
            raise ValueError("MultiTeacher needs at least one teacher")
        _check_temperature(T)
        self.teachers = nn.ModuleList(teachers)
        self.weights = [float(w) for w in _weights(weights, len(teachers))]
        self.T = T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [t(x) for t in self.teachers]
        widths = [int(o.shape[-1]) for o in outs]
        if len(set(widths)) != 1:
            raise ValueError(f"the teachers output different numbers of classes: {widths}")
        return mixture_logits(outs, self.weights, self.T)
