"""Contrastive representation distillation (Tian, Krishnan & Isola 2020), NCE form.

Everything here but :class:`ContrastMemory` is pure. The memory is the one piece of state CRD needs:
a bank with one unit-norm embedding per training sample for each network, updated with momentum, and
the two normalising constants Z, estimated once on the first batch and then frozen. All of it lives in
buffers, so it is saved with the module's ``state_dict`` and moved by ``.to(device)``.

The embedding heads (linear + L2 normalisation on each side) are the caller's: :func:`crd_loss` takes
already-normalised ``(b, feat_dim)`` embeddings. Unlike the other losses, the teacher embedding is
*not* detached here, because CRD trains the teacher's embedding head as well (detach the teacher's
backbone feature before the head, not the head's output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.losses.checks import float_dtype


class ContrastMemory(nn.Module):
    """Memory bank for CRD: ``memory_s`` / ``memory_t`` of shape ``(n_data, feat_dim)``, ``z_s`` / ``z_t`` scalars.

    ``z_s`` normalises the scores of student anchors against the teacher memory, ``z_t`` those of teacher
    anchors against the student memory; ``-1`` means "not estimated yet". Rows start as random unit vectors.
    """

    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z_s: torch.Tensor
    z_t: torch.Tensor

    def __init__(
        self, n_data: int, feat_dim: int, momentum: float = 0.5, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if n_data < 1 or feat_dim < 1:
            raise ValueError(f"ContrastMemory needs n_data >= 1 and feat_dim >= 1, got {n_data} and {feat_dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
        self.n_data = n_data
        self.feat_dim = feat_dim
        self.momentum = momentum
        init = F.normalize(torch.randn(2, n_data, feat_dim, generator=generator), dim=2)
        self.register_buffer("memory_s", init[0].clone())
        self.register_buffer("memory_t", init[1].clone())
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def _check_index(self, index: torch.Tensor) -> None:
        if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"sample index must be a 1-D integer tensor, got {index.dtype} {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n_data):
            lo, hi = int(index.min()), int(index.max())
            raise ValueError(f"sample index out of range [0, {self.n_data}): min {lo}, max {hi}")

    def sample_negatives(self, index: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(b, k)`` indices drawn uniformly from ``[0, n_data)``, on the memory's device.

        Like the paper's uniform sampler, nothing is excluded: a row's own index may be drawn as a
        negative (probability ``k / n_data``, negligible for a real data set).
        """
        self._check_index(index)
        if k < 1:
            raise ValueError(f"CRD needs at least one negative, got k={k}")
        device = generator.device if generator is not None else self.memory_s.device
        neg = torch.randint(self.n_data, (index.shape[0], k), generator=generator, device=device)
        return neg.to(self.memory_s.device)

    @torch.no_grad()
    def update(self, index: torch.Tensor, s_emb: torch.Tensor, t_emb: torch.Tensor) -> None:
        """``row <- normalize(momentum * row + (1 - momentum) * emb)`` for each sample in ``index``.

        If ``index`` repeats a sample, which of its writes wins is unspecified.
        """
        self._check_index(index)
        index = index.long()  # index_copy_ wants int64
        for name, emb in (("student", s_emb), ("teacher", t_emb)):
            if emb.shape != (index.shape[0], self.feat_dim):
                raise ValueError(
                    f"{name} embedding must be (batch, feat_dim) = ({index.shape[0]}, {self.feat_dim}), "
                    f"got {tuple(emb.shape)}"
                )
        for memory, emb in ((self.memory_s, s_emb), (self.memory_t, t_emb)):
            mixed = memory[index] * self.momentum + emb.detach().to(memory.dtype) * (1.0 - self.momentum)
            memory.index_copy_(0, index, F.normalize(mixed, dim=1))


def crd_nce_loss(scores: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """The CRD NCE loss on ``(b, K + 1)`` scores, column 0 the positive pair, columns 1..K the negatives.

    ``scores`` must be the model's density estimates ``P = exp(<u, v> / tau) / Z`` (exponentiated and
    Z-normalised, hence >= 0), not raw dot products. With the noise density ``Pn = 1 / n_data``::

        loss = -log(P_pos / (P_pos + K Pn)) - sum_neg log(K Pn / (P_neg + K Pn)),  averaged over rows

    ``eps`` is added to each denominator, as in the reference code.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"crd_nce_loss needs (batch, 1 + K) scores with K >= 1, got shape {tuple(scores.shape)}")
    if n_data < 1:
        raise ValueError(f"n_data must be >= 1, got {n_data}")
    if bool((scores < 0).any()):
        raise ValueError(
            "crd_nce_loss got negative scores: it expects exp(<u, v> / tau) / Z density estimates, not raw dot products"
        )
    k_pn = (scores.shape[1] - 1) / n_data
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + k_pn + eps))
    log_d0 = torch.log(k_pn / (neg + k_pn + eps))
    return -(log_d1 + log_d0.sum(dim=1)).mean()


def crd_loss(
    s_emb: torch.Tensor,
    t_emb: torch.Tensor,
    index: torch.Tensor,
    memory: ContrastMemory,
    k: int,
    temperature: float = 0.07,
    generator: torch.Generator | None = None,
    shared_negatives: bool = False,
) -> torch.Tensor:
    """Both CRD directions, summed: student anchors vs teacher memory, and teacher anchors vs student memory.

    ``s_emb`` / ``t_emb``: unit-norm ``(b, feat_dim)`` embeddings of the samples whose data-set indices
    are ``index``. The positive for row i is the other network's memory row ``index[i]``; ``k``
    negatives are drawn uniformly per row. Scores are ``exp(<anchor, memory row> / temperature) / Z``;
    on the first call each Z is set to ``mean(exp score) * n_data`` and stored (frozen) in ``memory``.
    ``shared_negatives=True`` draws one set of ``k`` negatives for the whole batch instead of one per
    row: the scores become a ``(b, d) x (d, k)`` matrix product instead of gathering ``b * k`` memory
    rows, ``b`` times less memory traffic (what makes CRD affordable on a CPU); each row's loss is
    still an unbiased NCE estimate, the rows' negatives are merely correlated.
    The memory is updated with this batch *after* the loss is computed, so the positives are the
    embeddings from earlier epochs, as in the paper. Gradients reach both embeddings, never the memory.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"CRD temperature must be a finite number > 0, got {temperature}")
    expected = (index.shape[0], memory.feat_dim) if index.dim() == 1 else None
    if expected is None or s_emb.shape != expected or t_emb.shape != expected:
        raise ValueError(
            f"crd_loss needs (batch, feat_dim={memory.feat_dim}) embeddings and a (batch,) index, got "
            f"student {tuple(s_emb.shape)}, teacher {tuple(t_emb.shape)}, index {tuple(index.shape)}"
        )
    dtype = float_dtype(s_emb, t_emb)
    s, t = s_emb.to(dtype), t_emb.to(dtype)
    if shared_negatives:
        neg = memory.sample_negatives(index[:1], k, generator)[0]  # (k,) for every row
        pos = index.to(neg.device)

        def scores(anchor: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
            positive = (bank[pos].to(dtype) * anchor).sum(1, keepdim=True)
            return torch.exp(torch.cat([positive, anchor @ bank[neg].to(dtype).T], dim=1) / temperature)

        exp_s, exp_t = scores(s, memory.memory_t), scores(t, memory.memory_s)
    else:
        neg = memory.sample_negatives(index, k, generator)
        idx = torch.cat([index[:, None].to(neg.device), neg], dim=1)  # column 0: the positive
        exp_s = torch.exp(torch.einsum("bkd,bd->bk", memory.memory_t[idx].to(dtype), s) / temperature)
        exp_t = torch.exp(torch.einsum("bkd,bd->bk", memory.memory_s[idx].to(dtype), t) / temperature)
    with torch.no_grad():
        # Z stays fixed after the first batch so the loss has a stable target (the paper's estimate).
        if float(memory.z_s) <= 0:
            memory.z_s.fill_(float(exp_s.mean()) * memory.n_data)
        if float(memory.z_t) <= 0:
            memory.z_t.fill_(float(exp_t.mean()) * memory.n_data)
    loss = crd_nce_loss(exp_s / memory.z_s.to(dtype), memory.n_data) + crd_nce_loss(
        exp_t / memory.z_t.to(dtype), memory.n_data
    )
    memory.update(index, s_emb, t_emb)
    return loss
