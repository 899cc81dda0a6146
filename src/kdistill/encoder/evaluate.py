"""What a user of a smaller sentence encoder checks before swapping it in: does it embed held-out sentences
where the teacher does, and does it find the same neighbours?

- :func:`embed`: every sentence of a split, in order (batched by length: padding costs nothing).
- :func:`mean_cosine`: the mean cosine between two embeddings of the same sentences.
- :func:`neighbour_agreement`: for each query sentence, the share of the teacher's top-k nearest neighbours
  (cosine, among all candidate sentences but itself) that are also among the student's top-k.
- :func:`linear_map`: the (ridge-)least-squares linear map (with bias) from one embedding space to another, fitted on
  training sentences; it gives a student without a head into the teacher's space (the no-teacher row, or a
  narrower student) a cosine with the teacher at all, and the most favourable one a linear map allows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.data import Split
from kdistill.models import module_device


@torch.no_grad()
def embed(model: nn.Module, split: Split, pad_id: int, batch_size: int = 128) -> torch.Tensor:
    """Embeddings ``[N, D]`` (float32, CPU) of every row of ``split`` in eval mode, in the split's order; the
    model runs where its weights are."""
    was = model.training
    dev = module_device(model)
    model.eval()
    x = split.x
    lengths = (x != pad_id).sum(1)
    order = torch.argsort(lengths, stable=True)
    out: torch.Tensor | None = None
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        ids = x[rows, : max(1, int(lengths[rows].max()))]
        e = model(ids.to(dev)).float().cpu()
        if out is None:
            out = torch.empty(len(x), e.shape[1])
        out[rows] = e
    model.train(was)
    assert out is not None
    return out


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"embeddings {tuple(a.shape)} and {tuple(b.shape)}: map one into the other's space first")
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def top_k(emb: torch.Tensor, queries: int, k: int) -> torch.Tensor:
    """Indices ``[queries, k]`` of the k most cosine-similar rows of ``emb`` for each of its first ``queries``
    rows, the row itself excluded."""
    e = F.normalize(emb.float(), dim=-1)
    sim = e[:queries] @ e.T
    sim[torch.arange(queries), torch.arange(queries)] = -float("inf")
    return sim.topk(k, dim=1).indices


def neighbour_agreement(student: torch.Tensor, teacher: torch.Tensor, queries: int, k: int = 10) -> float:
    """Mean over the first ``queries`` sentences of ``|topk_student ∩ topk_teacher| / k``; the two embeddings
    may have different widths (neighbours are found in each model's own space)."""
    n = len(teacher)
    if len(student) != n:
        raise ValueError(f"{len(student)} student and {n} teacher embeddings: they must embed the same sentences")
    if not 1 <= k < n:
        raise ValueError(f"k = {k} neighbours need more than k candidates (have {n})")
    q = min(queries, n)
    s, t = top_k(student, q, k), top_k(teacher, q, k)
    hits = (s.unsqueeze(2) == t.unsqueeze(1)).any(2).sum(1).float()
    return float((hits / k).mean())


def linear_map(source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-4) -> nn.Linear:
    """The least-squares ``nn.Linear`` with ``layer(source) ≈ target`` (both ``[N, D]``, rows aligned), with a
    small ridge (``ridge`` times the mean of the centred Gram matrix' diagonal): near-collinear embeddings
    (an untrained model's are) would otherwise turn rounding noise into a different map on every run."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} and {len(target)} rows: the map needs the same sentences in both")
    x, y = source.double(), target.double()
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    gram = xc.T @ xc
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), xc.T @ (y - my))  # [D_s, D_t]
    layer = nn.Linear(source.shape[1], target.shape[1])
    with torch.no_grad():
        layer.weight.copy_(w.T.float())
        layer.bias.copy_((my - mx @ w).float())
    return layer
