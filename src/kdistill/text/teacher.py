"""Where a language-model student's teacher distributions come from.

- :class:`OnlineLM`: the frozen teacher runs on every batch (needed on-policy: the tokens are new).
- :class:`TopKCache`: off-policy on a fixed corpus the teacher's next-token distribution at every position
  of every block never changes, so it is computed once. A full distribution (``V`` floats per token) is too
  big to keep, so the cache holds the ``k`` most likely tokens per position: their ids and log-probabilities
  as float16, plus one float16 for the rest. **The choice for the rest**: the ``V - k`` tokens outside the
  top ``k`` share the remaining probability ``1 - sum(top k)`` equally (at ``T = 1``), so the rebuilt
  distribution sums to 1, has no zeros (reverse KL and the JSD stay finite) and is exact when ``k = V``.
  Rows are keyed by the block's sample index (``batch["index"]``), as the image caches are, so a lookup
  returns the teacher's distribution on exactly the block the student sees.

:func:`sample` draws continuations from a model (no gradient through the sampling).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.data import Batch, BatchLoader, Split
from kdistill.io import replace_dir
from kdistill.teacher import FrozenTeacher


class OnlineLM(nn.Module):
    """The frozen teacher's logits on the batch's tokens, computed now."""

    def __init__(self, teacher: FrozenTeacher) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.teacher(batch["x"]).float()


class TopKCache(nn.Module):
    """The teacher's top-``k`` next-token log-probabilities of every block, looked up by sample index."""

    def __init__(self, ids: torch.Tensor | np.ndarray, logp: torch.Tensor | np.ndarray, vocab_size: int) -> None:
        super().__init__()
        self.ids, self.logp, self.vocab_size = ids, logp, vocab_size  # [N, L, k] ints; [N, L, k + 1] float16
        self.k = int(ids.shape[-1])

    @classmethod
    @torch.no_grad()
    def build(
        cls, teacher: FrozenTeacher, split: Split, k: int, vocab_size: int, path: Path | None = None, batch: int = 64
    ) -> TopKCache:
        """Run the teacher once over ``split``; with ``path``, the arrays are memory-mapped ``.npy`` files there
        (written to a temporary directory first, so an interrupted build leaves nothing half-written)."""
        k = min(k, vocab_size)
        n, L = int(split.index.max()) + 1, split.x.shape[1]  # rows by sample index (a subset leaves gaps)
        id_dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
        if path is not None and (path / "logp.npy").is_file():
            return cls.open(path, vocab_size)
        tmp = None
        if path is not None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            ids = np.lib.format.open_memmap(tmp / "ids.npy", "w+", id_dtype, (n, L, k))
            logp = np.lib.format.open_memmap(tmp / "logp.npy", "w+", np.float16, (n, L, k + 1))
        else:
            ids, logp = np.empty((n, L, k), id_dtype), np.empty((n, L, k + 1), np.float16)
        dev = next(teacher.parameters()).device
        for b in BatchLoader(split, batch):
            lp = torch.log_softmax(teacher(b["x"].to(dev)).float(), -1)
            top, where = lp.topk(k, dim=-1)
            rest = (1.0 - top.exp().sum(-1)).clamp_min(1e-12)
            tail = torch.log(rest / (vocab_size - k)) if k < vocab_size else torch.full_like(rest, -1e4)
            rows = b["index"].numpy()
            ids[rows] = where.cpu().numpy().astype(id_dtype)
            logp[rows] = torch.cat([top, tail[..., None]], -1).clamp_min(-6e4).cpu().numpy().astype(np.float16)
        if tmp is None:
            return cls(torch.from_numpy(ids), torch.from_numpy(logp), vocab_size)
        del ids, logp  # flush the memory maps before the directory is moved into place
        replace_dir(tmp, path)
        return cls.open(path, vocab_size)

    @classmethod
    def open(cls, path: Path, vocab_size: int) -> TopKCache:
        return cls(np.load(path / "ids.npy", mmap_mode="r"), np.load(path / "logp.npy", mmap_mode="r"), vocab_size)

    def row_bytes(self) -> int:
        """Bytes one block takes in the cache (ids and float16 log-probabilities of every position)."""
        return int(self.ids[0].nbytes + self.logp[0].nbytes)

    def dense(self, index: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, L, V]`` (float32) of the rows ``index``: the top ``k`` where they were, the
        shared tail value elsewhere."""
        rows = index.cpu().numpy()
        ids = torch.as_tensor(np.asarray(self.ids[rows]), dtype=torch.long)
        lp = torch.as_tensor(np.asarray(self.logp[rows]), dtype=torch.float32)
        out = lp[..., -1:].expand(*lp.shape[:-1], self.vocab_size).clone()
        return out.scatter_(-1, ids, lp[..., :-1])

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.dense(batch["index"]).to(batch["x"].device)


@torch.no_grad()
def sample(
    model: nn.Module,
    prefix: torch.Tensor,
    new_tokens: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    context: int | None = None,
) -> torch.Tensor:
    """``prefix`` ``[B, P]`` continued by ``new_tokens`` tokens drawn from ``model`` (eval mode, no gradient);
    greedy when ``temperature == 0``. ``context``: the most tokens the model is shown at once."""
    was = model.training
    model.eval()
    seq = prefix
    for _ in range(new_tokens):
        window = seq if context is None else seq[:, -context:]
        logits = model(window)[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = torch.softmax(logits / temperature, -1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(seq.device)
        seq = torch.cat([seq, nxt], 1)
    model.train(was)
    return seq


def bits_per_token(nll_nats: float) -> float:
    return nll_nats / math.log(2)
