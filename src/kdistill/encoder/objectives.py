"""Objectives for sentence encoders, trained by the same :func:`kdistill.trainer.fit` as every other model.

- :class:`EncoderDistiller`: the student's sentence embedding against the teacher's (cosine and MSE; a student
  narrower than the teacher carries a linear head into the teacher's space), optionally hidden states of named
  layers (the project's :class:`~kdistill.taps.Tapped` and :func:`~kdistill.adapters.make_adapter`, padding
  left out) and MiniLM's attention and value relations of one layer per model (query/key/value taken from the
  named linear layers, split into ``relation_heads`` heads), and the similarity distribution of each sentence
  over a bank of the teacher's training embeddings (:func:`~kdistill.losses.encoder.similarity_kl`). The
  teacher's embeddings come from a cache (rows by sample index) unless a term needs its hidden states; then it
  runs online, frozen.
- :class:`ContrastiveScratch`: the no-teacher row, unsupervised SimCSE (Gao et al. 2021) on the same
  sentences: two dropout views of each sentence, the other sentences of the batch as negatives.

Batches hold padded token ids; each step trims the columns that are padding in every row, so a batch of short
sentences costs what short sentences cost.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.adapters import make_adapter
from kdistill.augment import Augmenter
from kdistill.data import Batch, Split
from kdistill.distiller import Objective, StepOutput
from kdistill.encoder.models import SentenceEncoder
from kdistill.losses.encoder import (
    embedding_cosine_loss,
    embedding_mse,
    info_nce,
    masked_mse,
    minilm_relation_loss,
    similarity_kl,
    similarity_mse,
    split_heads,
)
from kdistill.metrics import EvalResult
from kdistill.models import module_device
from kdistill.taps import Tapped
from kdistill.teacher import FrozenTeacher


def trim(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the trailing columns that are padding in every row."""
    used = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(used.max()) + 1] if len(used) else ids[:, :1]


class _EncoderObjective(Objective):
    model: SentenceEncoder

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        return batch  # token ids are not augmented

    def batch_loss(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """The validation loss of rows ``start ..`` of the split (``ids`` already trimmed)."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, split: Split, batch_size: int) -> EvalResult:
        """Model selection on the validation sentences: ``nll`` is the objective's own validation loss, the mean
        over sentences of :meth:`batch_loss`; the model's train/eval mode is restored afterwards."""
        was = self.model.training
        dev = module_device(self.model)
        total = 0.0
        for i in range(0, len(split), batch_size):
            ids = trim(split.x[i : i + batch_size], self.model.pad_id).to(dev)
            total += float(self.batch_loss(ids, i)) * len(ids)
        self.model.train(was)
        return EvalResult(acc=float("nan"), errors=0, nll=total / len(split), n=len(split))


class EncoderDistiller(_EncoderObjective):
    def __init__(
        self,
        student: SentenceEncoder,
        teacher: SentenceEncoder,
        *,
        cache: torch.Tensor | None = None,
        val_cache: torch.Tensor | None = None,
        cosine: float = 1.0,
        mse: float = 0.0,
        hidden: list[tuple[str, str]] | None = None,
        hidden_weight: float = 1.0,
        relations: float = 0.0,
        relation_layers: tuple[str, str] | None = None,
        relation_heads: int | None = None,
        similarity: float = 0.0,
        similarity_temperature: float = 0.05,
        similarity_mse: float = 0.0,
        bank: torch.Tensor | None = None,
        bank_rows: torch.Tensor | None = None,
    ) -> None:
        """``bank`` ``[N, D]``: the teacher's embeddings the similarity term compares against, ``bank_rows``
        ``[N]`` the training-split index of each (a sentence is left out of its own softmax); by default the
        cache itself."""
        super().__init__()
        self.model = student
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.cosine, self.mse, self.hidden_weight, self.relations = cosine, mse, hidden_weight, relations
        self.pairs = list(hidden or [])
        s_specs = [s for s, _ in self.pairs]
        t_specs = [t for _, t in self.pairs]
        self.rel = relation_layers
        t_model: SentenceEncoder = self.teacher.model
        self.relation_heads = relation_heads or int(t_model.hf.config.num_attention_heads)
        if relations > 0:
            if relation_layers is None:
                raise ValueError("relations > 0 needs relation_layers (student attention, teacher attention)")
            s_specs += [f"{relation_layers[0]}.{p}" for p in ("query", "key", "value")]
            t_specs += [f"{relation_layers[1]}.{p}" for p in ("query", "key", "value")]
            for who, enc in (("student", student), ("teacher", t_model)):
                if enc.width % self.relation_heads:
                    raise ValueError(
                        f"relation_heads {self.relation_heads} does not divide the {who}'s width {enc.width}; "
                        "choose a number of relation heads that divides both widths (MiniLMv2 re-splits q, k, v)"
                    )
        # Taps are not submodules: the student's and teacher's weights must not appear twice in the state dict.
        self._taps = (
            Tapped(student.hf, list(dict.fromkeys(s_specs)), clone=False) if s_specs else None,
            Tapped(t_model.hf, list(dict.fromkeys(t_specs)), clone=False) if t_specs else None,
        )
        adapters = [make_adapter(s, (student.width,), t, (t_model.width,))[0] for s, t in self.pairs]
        self.adapters = nn.ModuleList(adapters)
        self.online = bool(t_specs) or cache is None
        self.similarity, self.similarity_temperature = similarity, similarity_temperature
        self.similarity_mse = similarity_mse
        if similarity > 0 or similarity_mse > 0:
            bank = cache if bank is None else bank
            if bank is None:
                raise ValueError(
                    "similarity or similarity_mse > 0 needs a bank of teacher embeddings (or the teacher's cache)"
                )
            rows = torch.arange(len(bank)) if bank_rows is None else bank_rows
            if rows.shape != (len(bank),):
                raise ValueError(f"bank_rows {tuple(rows.shape)} must give one training index per bank row")
            self.register_buffer("bank", bank.float(), persistent=False)
            self.register_buffer("bank_rows", rows, persistent=False)
        self.register_buffer("cache", cache, persistent=False)
        self.register_buffer("val_cache", val_cache, persistent=False)

    def extra_params(self) -> int:
        return sum(p.numel() for p in self.adapters.parameters())

    def _teacher(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        t_model: SentenceEncoder = self.teacher.model
        with torch.no_grad():
            if self._taps[1] is None:
                return t_model(ids), {}
            out = self._taps[1](ids, attention_mask=mask)
            return t_model.pool(out.logits.last_hidden_state, mask), out.feats

    def _student(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self._taps[0] is None:
            return self.model(ids), {}
        out = self._taps[0](ids, attention_mask=mask)
        return self.model.pool(out.logits.last_hidden_state, mask), out.feats

    def forward(self, batch: Batch) -> StepOutput:
        ids = trim(batch["x"], self.model.pad_id)
        mask = (ids != self.model.pad_id).long()
        s_emb, s_feats = self._student(ids, mask)
        if self.online:
            t_emb, t_feats = self._teacher(ids, mask)
        else:
            t_emb, t_feats = self.cache[batch["index"]].to(s_emb.dtype), {}
        parts: dict[str, torch.Tensor] = {}
        loss = s_emb.new_zeros(())
        if self.cosine > 0:
            parts["cosine"] = embedding_cosine_loss(s_emb, t_emb)
            loss = loss + self.cosine * parts["cosine"]
        if self.mse > 0:
            parts["mse"] = embedding_mse(s_emb, t_emb)
            loss = loss + self.mse * parts["mse"]
        for (s, t), adapter in zip(self.pairs, self.adapters, strict=True):
            term = masked_mse(adapter(s_feats[s]), t_feats[t], mask)
            parts[f"hidden:{s}"] = term
            loss = loss + self.hidden_weight * term
        if self.relations > 0:
            s_l, t_l = self.rel
            h = self.relation_heads
            sq = tuple(split_heads(s_feats[f"{s_l}.{p}"], h) for p in ("query", "key", "value"))
            tq = tuple(split_heads(t_feats[f"{t_l}.{p}"], h) for p in ("query", "key", "value"))
            parts["relations"] = minilm_relation_loss(tq, sq, mask)
            loss = loss + self.relations * parts["relations"]
        if self.similarity > 0:
            own = batch["index"][:, None] == self.bank_rows[None, :]  # each sentence out of its own softmax
            parts["similarity"] = similarity_kl(s_emb, t_emb, self.bank, self.similarity_temperature, own)
            loss = loss + self.similarity * parts["similarity"]
        if self.similarity_mse > 0:
            parts["similarity_mse"] = similarity_mse(s_emb, t_emb, self.bank)
            loss = loss + self.similarity_mse * parts["similarity_mse"]
        return StepOutput(loss, s_emb, {k: v.detach() for k, v in parts.items()})

    def batch_loss(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """``1 - cos`` between the student's (eval mode) and the teacher's embeddings."""
        self.model.eval()
        t = self.val_cache[start : start + len(ids)] if self.val_cache is not None else self.teacher.model(ids)
        return embedding_cosine_loss(self.model(ids), t.float())


class ContrastiveScratch(_EncoderObjective):
    """Unsupervised SimCSE: the same batch encoded twice (dropout on), each sentence's other view the positive."""

    def __init__(self, model: SentenceEncoder, temperature: float = 0.05) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, batch: Batch) -> StepOutput:
        ids = trim(batch["x"], self.model.pad_id)
        a, b = self.model(ids), self.model(ids)
        loss = info_nce(a, b, self.temperature)
        return StepOutput(loss, a, {"info_nce": loss.detach()})

    def validate(self, split: Split, batch_size: int) -> EvalResult:
        """The InfoNCE of the validation sentences, dropout on with a fixed seed (the training RNG untouched)."""
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return super().validate(split, batch_size)

    def batch_loss(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        self.model.train()  # two dropout views, as in training
        return info_nce(self.model(ids), self.model(ids), self.temperature)
