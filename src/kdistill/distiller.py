"""Wiring: objectives that turn a batch into ``StepOutput(loss, parts, logits)``.

The training loop only ever calls ``objective(batch)`` and sums nothing itself, so the teacher, the
scratch student, the KD student and the label-smoothing student all share one loop.

Use inside your own loop::

    teacher = FrozenTeacher(my_teacher)                # eval + no_grad, even after .train()
    distiller = Distiller(my_student, teacher, T=4.0, alpha=0.5)
    out = distiller({"x": x, "y": y})
    out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from kdistill.data import RowIndex
from kdistill.losses import cross_entropy, kd_loss_parts, label_smoothing_ce
from kdistill.taps import Tapped
from kdistill.terms import LOGITS, Term
from kdistill.views import ViewCache

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def bf16_supported(device: torch.device) -> bool:
    """bf16 runs fast here: CUDA with bf16, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16, AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


class FrozenTeacher(nn.Module):
    """A teacher that cannot be trained by accident.

    Its parameters never require grad, it stays in eval mode (BatchNorm statistics and dropout fixed)
    even when a surrounding module calls ``.train()``, and its forward runs under ``inference_mode``
    (no autograd bookkeeping at all). The logits are cloned out of inference mode as float32, since
    they become the KL's target and autograd may save them for the student's backward pass.

    ``fast=True`` (the online KD path) stores the conv weights and feeds the input in channels_last
    (NHWC) and runs under bf16 autocast where the hardware has bf16 kernels (CUDA, recent x86 CPUs):
    measured on this project's CNN teacher on one CPU thread with AMX, 157 ms -> 40 ms per batch of 128.
    The default is exact float32 (evaluation, caches).
    """

    def __init__(self, model: nn.Module, fast: bool = False) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.fast = fast

    def train(self, mode: bool = True) -> FrozenTeacher:
        # Deliberately ignore ``mode``: a frozen teacher is always in eval mode.
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self.fast and self._bf16(x.device)
        with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=fast):
            if fast and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.model(x).float()
        return out.clone()

    def _bf16(self, device: torch.device) -> bool:
        known: dict = self.__dict__.setdefault("_bf16_on", {})
        if device not in known:
            known[device] = bf16_supported(device)
            if known[device]:
                self.model.to(memory_format=torch.channels_last)  # once; float32 calls accept it as well
        return known[device]


class LogitCache:
    """Teacher outputs stored per sample, keyed by ``batch["index"]``: logits, and optionally layers.

    Valid only when the student sees exactly the inputs the teacher saw (no random augmentation); the
    pipeline falls back to running the teacher online otherwise. Rows are addressed by the sample's
    index in its original split, so shuffling, subsets and transfer sets all find the right row; a
    lookup table maps index to row, so a sparse subset costs memory for its own rows only.
    ``feats`` holds captured teacher layers (``{spec: (n, ...)}``) for terms that read them.
    """

    def __init__(self, logits: torch.Tensor, index: torch.Tensor, feats: dict[str, torch.Tensor] | None = None) -> None:
        if index.dim() != 1 or len(index) != len(logits):
            raise ValueError(f"LogitCache needs one distinct index per row: logits {tuple(logits.shape)}, "
                             f"index {tuple(index.shape)}")  # fmt: skip
        self.logits = logits
        self.index = index
        self.feats = dict(feats or {})
        self._rows = RowIndex(index, "teacher logit cache")

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, batches: Iterable[Batch], layers: Sequence[str] = ()) -> LogitCache:
        """Run the teacher (eval mode) once over ``batches``; ``layers`` are teacher layers to keep too."""
        model = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
        was_training = model.training
        model.eval()
        tap = Tapped(model, list(layers)) if layers else None
        logits, index, feats = [], [], {name: [] for name in layers}
        try:
            for b in batches:
                if tap is None:
                    out = model(b["x"])
                else:
                    out, captured = tap(b["x"])
                    for name, v in captured.items():
                        feats[name].append(v.float())
                logits.append(out.float())
                index.append(b["index"])
        finally:
            if tap is not None:
                tap.close()
            model.train(was_training)
        return cls(torch.cat(logits), torch.cat(index), {n: torch.cat(v) for n, v in feats.items()})

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.logits, self._rows.table, *self.feats.values()])

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        return self.logits[self._rows(index)]

    def features(self, index: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        rows = self._rows(index)
        return {n: self.feats[n][rows] for n in names}


class Supervised(nn.Module):
    """Hard-label training (teacher, scratch student) or label smoothing when ``smoothing > 0``."""

    def __init__(self, model: nn.Module, smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.smoothing = smoothing

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.model(batch["x"])
        if self.smoothing > 0:
            loss = label_smoothing_ce(logits, batch["y"], self.smoothing)
            return StepOutput(loss, logits, {"ls_ce": loss.detach()})
        loss = cross_entropy(logits, batch["y"])
        return StepOutput(loss, logits, {"ce": loss.detach()})


class Distiller(nn.Module):
    """Student trained on a frozen teacher's soft targets (temperature ``T``) plus hard labels, plus terms.

    ``loss = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE + sum_i w_i(epoch) * term_i``. Each
    :class:`~kdistill.terms.Term` names a (student layer, teacher layer) pair; the layers are captured
    with forward hooks (:class:`~kdistill.taps.Tapped`), so neither model's code changes. A term whose
    weight is 0 in the current epoch is not computed.

    ``cache`` (optional) replaces the teacher's forward pass by a lookup of precomputed outputs: a
    :class:`LogitCache` (one row per sample: only correct without random augmentation) or a
    :class:`~kdistill.views.ViewCache` (``K`` fixed augmented views per sample; the training loop then
    shows the student exactly those views, and ``batch["view"]`` says which one).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        alpha: float = 0.5,
        cache: LogitCache | ViewCache | None = None,
        terms: Sequence[Term] = (),
    ) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.T = T
        self.alpha = alpha
        self.cache = cache
        self.terms = nn.ModuleList(terms)
        self.epoch = 0
        s_layers = [t.student_layer for t in terms if t.student_layer != LOGITS]
        t_layers = [t.teacher_layer for t in terms if t.teacher_layer != LOGITS]
        if t_layers and isinstance(cache, ViewCache):
            raise ValueError(
                f"terms read teacher layers {sorted(set(t_layers))}, but a view cache stores logits only; "
                "run the teacher online (kd.cache.mode=online) for feature terms with augmentation"
            )
        missing = sorted(set(t_layers) - set(cache.feats)) if isinstance(cache, LogitCache) else []
        if missing:
            raise ValueError(
                f"the teacher cache holds no outputs of teacher layers {missing}; build it with "
                f"LogitCache.build(..., layers={sorted(set(t_layers))}) or run the teacher online (cache=None)"
            )
        self.t_layers = sorted(set(t_layers))
        # Kept out of the module tree (plain attributes): they wrap the same student and teacher, whose
        # parameters and state_dict entries are already registered above.
        self.__dict__["_s_tap"] = Tapped(student, s_layers) if s_layers else None
        online = t_layers and cache is None
        self.__dict__["_t_tap"] = Tapped(self.teacher.model, t_layers) if online else None

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of each epoch (term weight schedules)."""
        self.epoch = epoch

    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        if isinstance(self.cache, ViewCache):
            return self.cache(batch["index"], batch["view"]).to(batch["x"].device)
        if self.cache is not None:
            return self.cache(batch["index"]).to(batch["x"].device)
        return self.teacher(batch["x"])

    def check_batch(self, batch: Batch) -> None:
        """Fail before training when a term needs what the batches lack (CRD's sample indices)."""
        for term in self.terms:
            if term.needs_index and "index" not in batch:
                raise ValueError(
                    f"the {term.method} term keeps a per-sample memory and needs batch['index'] (each sample's "
                    "position in its dataset); yield it from your loader, as kdistill's BatchLoader does"
                )

    def forward(self, batch: Batch) -> StepOutput:
        if not getattr(self, "_checked", False):  # once: the first batch, before any update
            self.check_batch(batch)
            self._checked = True
        x = batch["x"]
        if self._s_tap is not None:
            logits, s_feats = self._s_tap(x)
        else:
            logits, s_feats = self.model(x), {}
        if self._t_tap is not None:
            with torch.no_grad():
                t_logits, t_feats = self._t_tap(x)
        elif isinstance(self.cache, LogitCache):
            feats = self.cache.features(batch["index"].cpu(), self.t_layers)
            t_logits, t_feats = self.teacher_logits(batch), {k: v.to(x.device) for k, v in feats.items()}
        else:
            t_logits, t_feats = self.teacher_logits(batch), {}
        s_feats[LOGITS], t_feats[LOGITS] = logits, t_logits
        parts = kd_loss_parts(logits, t_logits, batch["y"], self.T, self.alpha)
        loss = parts.pop("loss")
        for term in self.terms:
            w = term.weight_at(self.epoch)
            if w == 0:
                continue
            value = w * term(s_feats[term.student_layer], t_feats[term.teacher_layer], batch)
            loss = loss + value
            parts[term.method] = parts.get(term.method, 0.0) + value
        return StepOutput(loss, logits, {k: v.detach() for k, v in parts.items()})

    def extra_params(self) -> int:
        """Trainable parameters outside the student (adapters, embedding heads): the price of the terms."""
        return sum(p.numel() for p in self.terms.parameters() if p.requires_grad)
