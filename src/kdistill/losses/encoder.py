"""Pure losses for distilling sentence encoders (no config, no module state, no names).

- :func:`mean_pool`: the sentence embedding of sentence-transformers models, the mean of the token states
  where ``mask`` is 1 (padding never counts).
- :func:`embedding_mse`, :func:`embedding_cosine_loss`: the student's pooled embedding against the teacher's
  (``1 - cos`` averaged over sentences).
- :func:`self_relation`, :func:`relation_kl`, :func:`minilm_relation_loss`: MiniLM's deep self-attention
  distillation (Wang et al. 2020): per head, the attention distribution ``softmax(q k^T / sqrt(d))`` and the
  value relation ``softmax(v v^T / sqrt(d))`` of the last layer, teacher against student with a KL per query
  row. Rows are ``L x L`` per head, so the head dimension ``d`` may differ between the models; the number of
  heads must agree. Padded keys get no probability and padded query rows are not averaged.
  :func:`split_heads` cuts ``[B, L, D]`` projections into ``H`` relation heads (MiniLMv2: the number of
  relation heads is chosen, not the models', so a narrower student with other heads can still be compared).
- :func:`masked_mse`: token states of one layer, student (after its adapter) against teacher, padding left out.
- :func:`info_nce`: SimCSE's contrastive loss between two views of a batch (the no-teacher baseline).
- :func:`similarity_kl`: CompRess-style similarity distillation (Abbasi Koohpayegani et al. 2020, SEED): each
  sentence's softmax over its cosine similarities to a bank of anchor embeddings (the teacher's, of the training
  sentences), teacher against student. It trains the order of the neighbours, what retrieval with the student
  uses; matching each embedding alone (cosine) spends the student's capacity on what all sentences share.
- :func:`similarity_mse`: the squared difference of the student's and the teacher's cosine similarities to the
  same anchors, ``mean_{i,n} ((ŝ_i - t̂_i) · a_n)^2 = mean_i e_i^T M e_i`` with ``M`` the anchors' second
  moment: the error ``e_i`` of a sentence costs what it does to its similarities with other sentences, so
  errors inside the directions the sentences spread along (which reorder neighbours) cost more than errors
  across them (which a cosine loss prices the same).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdistill.losses.checks import check_temperature, float_dtype


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, L, D]`` token states -> ``[B, D]``: the mean over the positions where ``mask`` ``[B, L]`` is 1."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        shapes = f"{tuple(hidden.shape)} and {tuple(mask.shape)}"
        raise ValueError(f"mean_pool needs states [B, L, D] and a mask [B, L], got {shapes}")
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the embeddings ``[B, D]`` (mean over sentences and dimensions)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} differ; "
            "put a linear adapter on the student when the widths differ"
        )
    return F.mse_loss(student, teacher.detach())


def embedding_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cos(student, teacher)`` averaged over sentences: direction only, what nearest neighbours use."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} differ; "
            "put a linear adapter on the student when the widths differ"
        )
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


def self_relation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log of ``softmax(a b^T / sqrt(d))`` over the keys, ``[B, H, L, L]``, from ``a``, ``b`` ``[B, H, L, d]``;
    keys where ``mask`` ``[B, L]`` is 0 get probability 0."""
    if a.dim() != 4 or a.shape != b.shape:
        shapes = f"{tuple(a.shape)}, {tuple(b.shape)}"
        raise ValueError(f"relations need two [B, H, L, d] tensors of one shape, got {shapes}")
    dtype = float_dtype(a, b)
    scores = a.to(dtype) @ b.to(dtype).transpose(-1, -2) / math.sqrt(a.shape[-1])
    keys = mask.to(torch.bool)[:, None, None, :]
    return F.log_softmax(scores.masked_fill(~keys, float("-inf")), dim=-1)


def _kl_rows(teacher_log: torch.Tensor, student_log: torch.Tensor) -> torch.Tensor:
    """``KL(p_t || p_s)`` over the last dimension of two log-distributions; entries where the teacher puts
    probability 0 (masked with -inf in both) add nothing instead of ``0 * (-inf - -inf) = nan``."""
    t = teacher_log.detach()
    p = t.exp()
    return torch.where(p > 0, p * (t - student_log), torch.zeros_like(p)).sum(-1)


def relation_kl(teacher_log: torch.Tensor, student_log: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(teacher row || student row)`` averaged over batch, heads and the query rows where ``mask`` is 1."""
    if teacher_log.shape != student_log.shape:
        raise ValueError(
            f"teacher relations {tuple(teacher_log.shape)} and student relations {tuple(student_log.shape)} differ; "
            "MiniLM needs the same number of heads and the same tokens in both models"
        )
    per_row = _kl_rows(teacher_log, student_log)  # [B, H, L]; padded keys: p = 0, no term
    rows = mask.to(torch.bool)[:, None, :].expand_as(per_row)
    if not bool(rows.any()):
        return per_row.sum() * 0.0
    return per_row[rows].mean()


def minilm_relation_loss(
    teacher_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    student_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
) -> torch.Tensor:
    """MiniLM: attention-distribution KL plus value-relation KL of one layer (each ``[B, H, L, d]``)."""
    (tq, tk, tv), (sq, sk, sv) = teacher_qkv, student_qkv
    if tq.shape[:3] != sq.shape[:3]:
        raise ValueError(
            f"teacher heads {tuple(tq.shape)} and student heads {tuple(sq.shape)}: MiniLM compares [B, H, L, L] "
            "relations, so batch, heads and tokens must agree (the head width may differ)"
        )
    attention = relation_kl(self_relation(tq, tk, mask), self_relation(sq, sk, mask), mask)
    values = relation_kl(self_relation(tv, tv, mask), self_relation(sv, sv, mask), mask)
    return attention + values


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, D]`` -> ``[B, H, L, D / H]`` (the layout of multi-head attention's projections)."""
    B, L, D = x.shape
    if D % heads:
        raise ValueError(f"cannot split width {D} into {heads} heads")
    return x.view(B, L, heads, D // heads).transpose(1, 2)


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``[B, L, D]`` token states over the positions where ``mask`` is 1."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student states {tuple(student.shape)} and teacher states {tuple(teacher.shape)} differ; an adapter "
            "maps the student's width to the teacher's"
        )
    keep = mask.to(torch.bool)
    if not bool(keep.any()):
        return student.sum() * 0.0
    return F.mse_loss(student[keep], teacher.detach()[keep])


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Cross-entropy of each row of ``a`` picking its own row of ``b`` among all rows of ``b`` by cosine / T."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce needs two [B, D] views of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    sim = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / temperature
    return F.cross_entropy(sim, torch.arange(len(a), device=a.device))


def _unit_rows(
    name: str, student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bank terms' inputs, checked and as unit rows in one float dtype: student ``[B, D]``, teacher ``[B, D]``
    and anchors ``[N, D]`` (teacher and anchors detached: constants)."""
    if student.shape != teacher.shape or student.dim() != 2 or bank.dim() != 2 or bank.shape[1] != student.shape[1]:
        shapes = f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)}, bank {tuple(bank.shape)}"
        raise ValueError(f"{name} needs [B, D] student and teacher embeddings and an [N, D] bank, got {shapes}")
    dtype = float_dtype(student, teacher)
    return (
        F.normalize(student.to(dtype), dim=-1),
        F.normalize(teacher.detach().to(dtype), dim=-1),
        F.normalize(bank.detach().to(dtype), dim=-1),
    )


def similarity_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    bank: torch.Tensor,
    temperature: float = 0.05,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(softmax(cos(t_i, bank) / T) || softmax(cos(s_i, bank) / T))`` averaged over the rows ``i`` of
    ``student`` and ``teacher`` ``[B, D]``; ``bank`` ``[N, D]`` holds the anchors (treated as constants).
    ``exclude`` ``[B, N]`` (bool) drops anchors from a row's softmax, e.g. the sentence itself, whose similarity
    to its own teacher embedding is 1 for the teacher and would swamp its distribution."""
    s_unit, t_unit, anchors = _unit_rows("similarity_kl", student, teacher, bank)
    check_temperature(temperature)
    s, t = s_unit @ anchors.T / temperature, t_unit @ anchors.T / temperature
    if exclude is not None:
        if exclude.shape != s.shape:
            raise ValueError(f"exclude must be [B, N] = {tuple(s.shape)}, got {tuple(exclude.shape)}")
        s, t = s.masked_fill(exclude, float("-inf")), t.masked_fill(exclude, float("-inf"))
    # excluded anchors: p = 0, no term
    return _kl_rows(F.log_softmax(t, dim=-1), F.log_softmax(s, dim=-1)).mean()


def similarity_mse(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``mean_{i, n} (cos(s_i, a_n) - cos(t_i, a_n))^2`` over the rows ``i`` of ``student`` and ``teacher``
    ``[B, D]`` and the anchors ``a_n`` of ``bank`` ``[N, D]`` (treated as constants). Equal to
    ``mean_i e_i^T M e_i`` with ``e_i = ŝ_i - t̂_i`` and ``M = mean_n â_n â_n^T``."""
    s_unit, t_unit, anchors = _unit_rows("similarity_mse", student, teacher, bank)
    return ((s_unit - t_unit) @ anchors.T).pow(2).mean()
