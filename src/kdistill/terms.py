"""Loss terms: which student and teacher tensors a method reads, and the pure function it calls.

A term is built for one (student layer, teacher layer) pair from the per-sample shapes of one probe
forward (:class:`TermContext`); any adapter or embedding head it needs is its own submodule, so it
trains with the student and is saved in checkpoints. ``"logits"`` names the model's output.

Adding a method touches three places: a pure function in ``kdistill.losses``, a short ``Term``
subclass here decorated with ``@register("name")`` (its keyword-only ``__init__`` arguments are the
method's config options, validated by name), and a config under ``configs/``.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.adapters import AdapterError, Pool, Pooled, make_adapter, pooled_shape
from kdistill.data import Batch, Split
from kdistill.losses import (
    ContrastMemory,
    attention_transfer_loss,
    crd_loss,
    dist_loss,
    dkd_loss_parts,
    gradient_reversal,
    hint_loss,
    learned_temperature_kd,
    logit_standardized_kd,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
    wttm_loss,
)
from kdistill.suggest import suggest_key
from kdistill.taps import LayerError, probe_shapes

LOGITS = "logits"


class TermError(ValueError):
    """A term's method, options or layers are invalid; the message names the fix."""


@dataclass(frozen=True)
class TermContext:
    """What a term may know when it is built: its layers, their per-sample shapes, the data."""

    student_layer: str
    teacher_layer: str
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]
    num_classes: int
    n_data: int  # size of the sample-index space (rows of a per-sample memory)
    T: float  # the experiment's kd.T, the default temperature of logit methods
    pool: Pool = "none"


class Term(nn.Module):
    """One loss term for one layer pair. Subclasses implement :meth:`loss` with a pure function."""

    method: ClassVar[str] = ""
    default_layers: ClassVar[tuple[str, str] | None] = None  # None: the config must name the layers
    needs_index: ClassVar[bool] = False  # reads batch["index"] (a per-sample memory)
    needs_labels: ClassVar[bool] = False  # reads batch["y"] for every row

    def __init__(self, ctx: TermContext) -> None:
        super().__init__()
        self.student_layer = ctx.student_layer
        self.teacher_layer = ctx.teacher_layer
        self.weight = 1.0
        self.warmup_epochs = 0.0

    def weight_at(self, epoch: int) -> float:
        """The term's weight in epoch ``epoch`` (0-based): linear warm-up to ``weight`` (DKD's schedule)."""
        if self.warmup_epochs > 0:
            return self.weight * min(1.0, (epoch + 1) / self.warmup_epochs)
        return self.weight

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each epoch (0-based), for terms with a schedule of their own (CTKD)."""

    def logged(self) -> dict[str, float]:
        """Values worth a line in the training log besides the loss (a learned temperature)."""
        return {}

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss(s, t, batch)

    def extra_repr(self) -> str:
        return f"{self.student_layer!r} <- {self.teacher_layer!r}, weight={self.weight}"


TERMS: dict[str, type[Term]] = {}


def register(name: str) -> Callable[[type[Term]], type[Term]]:
    def deco(cls: type[Term]) -> type[Term]:
        cls.method = name
        TERMS[name] = cls
        return cls

    return deco


def _need_map(ctx: TermContext, method: str) -> None:
    pairs = (("student", ctx.student_layer, ctx.student_shape), ("teacher", ctx.teacher_layer, ctx.teacher_shape))
    for who, layer, shape in pairs:
        if len(shape) != 3:
            raise AdapterError(
                f"{method} compares feature maps (channels, height, width), but the {who} layer {layer!r} gives "
                f"{tuple(shape)}; pick convolutional layers (see `kdistill layers`)"
            )


# ----------------------------------------------------------------------------- feature terms


@register("fitnet")
class FitNet(Term):
    """FitNets hint (Romero et al. 2015): MSE between the adapted student feature and the teacher's."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        self.adapt_s, self.adapt_t = make_adapter(
            ctx.student_layer, ctx.student_shape, ctx.teacher_layer, ctx.teacher_shape, ctx.pool
        )

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return hint_loss(self.adapt_s(s), self.adapt_t(t))


@register("at")
class AttentionTransfer(Term):
    """Attention transfer (Zagoruyko & Komodakis 2017) on spatial maps; channel counts may differ."""

    def __init__(self, ctx: TermContext, *, p: float = 2.0) -> None:
        super().__init__(ctx)
        _need_map(ctx, "at")
        self.p = p

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return attention_transfer_loss(s, t, self.p)


class _Flat(Term):
    """Terms on flattened per-sample activations; ``pool: avg`` averages feature maps first."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        self.pre = Pooled() if ctx.pool == "avg" else nn.Identity()


@register("sp")
class SimilarityPreserving(_Flat):
    """Similarity-preserving KD (Tung & Mori 2019): match the batch's sample-similarity matrices."""

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return similarity_preserving_loss(self.pre(s), self.pre(t))


@register("rkd")
class RKD(_Flat):
    """Relational KD (Park et al. 2019): distance- and angle-wise relations between samples.

    The angle term compares every triplet, ``b^3`` of them: with b = 128 that made an epoch 15x slower
    than plain training on a CPU. ``angle_rows`` (default 32) computes it on the first rows of the
    (shuffled, hence random) batch only, 64x fewer triplets; ``null`` uses the whole batch as the paper.
    """

    def __init__(
        self, ctx: TermContext, *, distance: float = 1.0, angle: float = 2.0, angle_rows: int | None = 32
    ) -> None:
        super().__init__(ctx)
        if angle_rows is not None and angle_rows < 3:
            raise TermError(f"rkd angle_rows={angle_rows}: an angle needs 3 samples; use >= 3 or null (whole batch)")
        self.distance, self.angle = distance, angle  # the paper's 25 : 50
        self.angle_rows = angle_rows

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        s, t = self.pre(s), self.pre(t)
        out = s.new_zeros(())
        if self.distance:
            out = out + self.distance * rkd_distance_loss(s, t)
        if self.angle:
            k = len(s) if self.angle_rows is None else self.angle_rows
            out = out + self.angle * rkd_angle_loss(s[:k], t[:k])
        return out


@register("pkt")
class PKT(_Flat):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): match cosine-kernel densities."""

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return pkt_loss(self.pre(s), self.pre(t))


@register("crd")
class CRD(Term):
    """Contrastive representation distillation (Tian et al. 2020) with a memory bank of negatives.

    Linear embedding heads (student and teacher side) map pooled features to ``feat_dim`` unit vectors;
    both heads train (the teacher's backbone stays frozen). The memory holds one embedding per sample
    index, so batches must carry ``index``. ``shared_negatives`` (default) draws one set of negatives
    per batch rather than per sample: the paper's per-sample draw gathers ``batch x negatives`` memory
    rows per step, which made an epoch ~50x slower than plain training on a CPU.
    """

    needs_index = True

    def __init__(
        self,
        ctx: TermContext,
        *,
        feat_dim: int = 128,
        negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
        shared_negatives: bool = True,
    ) -> None:
        super().__init__(ctx)
        s_shape, t_shape = pooled_shape(ctx.student_shape, "avg"), pooled_shape(ctx.teacher_shape, "avg")
        for who, layer, shape in (("student", ctx.student_layer, s_shape), ("teacher", ctx.teacher_layer, t_shape)):
            if len(shape) != 1:
                raise AdapterError(f"crd embeds vectors or pooled maps; the {who} layer {layer!r} gives {shape}")
        self.pre = Pooled()
        self.embed_s = nn.Linear(s_shape[0], feat_dim)
        self.embed_t = nn.Linear(t_shape[0], feat_dim)
        self.memory = ContrastMemory(ctx.n_data, feat_dim, momentum, generator=torch.Generator().manual_seed(0))
        self.negatives, self.temperature, self.shared = negatives, temperature, shared_negatives
        self.gen = torch.Generator().manual_seed(1)  # negatives drawn reproducibly

    # The negatives' generator is part of the checkpoint (as the module's extra state), so that a
    # resumed run draws the very negatives the uninterrupted one would have drawn.
    def get_extra_state(self) -> dict:
        return {"gen": self.gen.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.gen.set_state(state["gen"])

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        es = F.normalize(self.embed_s(self.pre(s)), dim=1)
        et = F.normalize(self.embed_t(self.pre(t).detach()), dim=1)
        return crd_loss(es, et, batch["index"], self.memory, self.negatives, self.temperature, self.gen, self.shared)


# ----------------------------------------------------------------------------- logit terms


class _LogitTerm(Term):
    default_layers = (LOGITS, LOGITS)

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        if (ctx.student_layer, ctx.teacher_layer) != (LOGITS, LOGITS):
            raise TermError(f"{self.method} reads logits; leave `layers` out (or set [logits, logits])")


@register("dkd")
class DKD(_LogitTerm):
    """Decoupled KD (Zhao et al. 2022): ``alpha * TCKD + beta * NCKD``; needs every row labelled."""

    needs_labels = True

    def __init__(self, ctx: TermContext, *, alpha: float = 1.0, beta: float = 8.0, T: float | None = None) -> None:
        super().__init__(ctx)
        self.alpha, self.beta, self.T = alpha, beta, ctx.T if T is None else T

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return dkd_loss_parts(s, t, batch["y"], self.T, self.alpha, self.beta)["loss"]


@register("dist")
class DIST(_LogitTerm):
    """DIST (Huang et al. 2022): Pearson correlation of predictions, across classes and across samples."""

    def __init__(self, ctx: TermContext, *, beta: float = 1.0, gamma: float = 1.0, T: float = 1.0) -> None:
        super().__init__(ctx)
        self.beta, self.gamma, self.T = beta, gamma, T

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return dist_loss(s, t, self.beta, self.gamma, self.T)


@register("logit_std")
class LogitStandardization(_LogitTerm):
    """Logit standardization (Sun et al., CVPR 2024): KD between z-scored logits at temperature ``T``."""

    def __init__(self, ctx: TermContext, *, T: float | None = None) -> None:
        super().__init__(ctx)
        self.T = ctx.T if T is None else T

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return logit_standardized_kd(s, t, self.T)


@register("wttm")
class WTTM(_LogitTerm):
    """Weighted transformed teacher matching (Zheng & Yang, ICLR 2024): temperature on the teacher only."""

    def __init__(self, ctx: TermContext, *, gamma: float = 0.25) -> None:
        super().__init__(ctx)
        if not (0.0 < gamma <= 1.0):
            raise TermError(f"wttm gamma={gamma}: must be in (0, 1] (the teacher's temperature is 1/gamma)")
        self.gamma = gamma

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return wttm_loss(s, t, self.gamma)


@register("ctkd")
class CTKD(_LogitTerm):
    """Curriculum temperature KD (Li et al., AAAI 2023): one learned temperature, trained adversarially.

    ``T = t_min + (t_max - t_min) * sigmoid(theta)`` starts at ``T`` (default: the experiment's kd.T); a
    gradient reversal makes ``theta`` ascend the KD loss while the student descends it. The reversal's
    strength follows the curriculum ``lambda(epoch) = lambda_max * (1 - cos(pi * min(epoch / ramp_epochs, 1))) / 2``:
    0 in the first epoch (an easy, fixed temperature), ``lambda_max`` from ``ramp_epochs`` on. ``theta`` is a
    parameter of the term, so it is saved in checkpoints and resumes with the run.
    """

    def __init__(
        self,
        ctx: TermContext,
        *,
        T: float | None = None,
        t_min: float = 1.0,
        t_max: float = 21.0,
        lambda_max: float = 1.0,
        ramp_epochs: float = 10.0,
    ) -> None:
        super().__init__(ctx)
        T0 = ctx.T if T is None else T
        if not (0 < t_min < T0 < t_max and math.isfinite(t_max)):
            raise TermError(f"ctkd needs 0 < t_min < T < t_max, got t_min={t_min}, T={T0}, t_max={t_max}")
        if not (lambda_max >= 0 and ramp_epochs > 0):
            raise TermError(f"ctkd needs lambda_max >= 0 and ramp_epochs > 0, got {lambda_max}, {ramp_epochs}")
        self.t_min, self.t_max = t_min, t_max
        self.lambda_max, self.ramp_epochs = lambda_max, ramp_epochs
        u = (T0 - t_min) / (t_max - t_min)
        self.theta = nn.Parameter(torch.tensor(math.log(u / (1 - u))))
        self.scale = 0.0

    def set_epoch(self, epoch: int) -> None:
        self.scale = self.lambda_max * (1 - math.cos(math.pi * min(epoch / self.ramp_epochs, 1.0))) / 2

    def temperature(self) -> torch.Tensor:
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(self.theta)

    def logged(self) -> dict[str, float]:
        return {"ctkd_T": float(self.temperature().detach())}

    def loss(self, s: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        return learned_temperature_kd(s, t, gradient_reversal(self.temperature(), self.scale))


# ----------------------------------------------------------------------------- building


def method_options(method: str) -> dict[str, Any]:
    """The options (keyword-only ``__init__`` arguments) of a method, with their defaults."""
    cls = get_method(method)
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_method(method: str) -> type[Term]:
    if method not in TERMS:
        close = difflib.get_close_matches(method, list(TERMS), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TermError(f"unknown method {method!r}{hint} (available: {', '.join(sorted(TERMS))})")
    return TERMS[method]


def check_options(method: str, options: dict[str, Any]) -> None:
    valid = method_options(method)
    for key in options:
        if key not in valid:
            close = suggest_key(key, list(valid))
            hint = f"; did you mean {close!r}?" if close else ""
            listed = ", ".join(valid) if valid else "none"
            raise TermError(f"{method} has no option {key!r}{hint} (its options: {listed})")


def layer_pairs(method: str, layers: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if layers:
        return [tuple(p) for p in layers]  # type: ignore[misc]
    default = get_method(method).default_layers
    if default is None:
        raise TermError(
            f"{method} needs `layers`: a list of [student_layer, teacher_layer] pairs (dotted module names; "
            "`kdistill layers MODEL --input-shape ...` lists them)"
        )
    return [default]


def build_term(
    method: str,
    ctx: TermContext,
    options: dict[str, Any] | None = None,
    weight: float = 1.0,
    warmup_epochs: float = 0.0,
) -> Term:
    options = options or {}
    check_options(method, options)
    term = get_method(method)(ctx, **options)
    term.weight, term.warmup_epochs = float(weight), float(warmup_epochs)
    return term


class TermSpec(Protocol):
    """One configured term (``kdistill.config.TermConfig`` is one)."""

    method: str
    weight: float
    warmup_epochs: float
    layers: list[tuple[str, str]] | None
    pool: Pool
    options: dict[str, Any]


def teacher_layers(specs: Sequence[TermSpec]) -> list[str]:
    """Teacher layers that the active terms read (a teacher cache keeps them beside the logits)."""
    names = {t for spec in specs if spec.weight > 0 for _, t in layer_pairs(spec.method, spec.layers)}
    return sorted(names - {LOGITS})


def build_terms(
    specs: Sequence[TermSpec],
    student: nn.Module,
    teacher: nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
    transfer: Split,
    T: float,
) -> list[Term]:
    """The terms of ``specs`` for this student and teacher, sized by one probe forward of each model.

    Every problem (unknown layer, shapes no adapter can match, a method that needs what the data lacks)
    is a :class:`TermError` naming ``terms[i]``, raised before any training. Terms of weight 0 are not
    built. ``transfer`` is the set the student distills on (labels and sample indices).
    """
    terms: list[Term] = []
    n_data = int(transfer.index.max()) + 1
    unlabelled = int((transfer.y < 0).sum())
    for i, spec in enumerate(specs):
        if spec.weight == 0:
            continue  # switched off: not built, not computed
        where = f"terms[{i}] ({spec.method})"
        if get_method(spec.method).needs_labels and unlabelled:
            raise TermError(
                f"{where} reads every sample's label, but the KD transfer set has {unlabelled} unlabelled images "
                "(kd.transfer=all); use kd.transfer=labelled or a method that needs no labels"
            )
        pairs = layer_pairs(spec.method, spec.layers)
        try:
            s_shapes = _shapes(student, [s for s, _ in pairs], input_shape, num_classes)
            t_shapes = _shapes(teacher, [t for _, t in pairs], input_shape, num_classes)
            for s_layer, t_layer in pairs:
                ctx = TermContext(
                    s_layer, t_layer, s_shapes[s_layer], t_shapes[t_layer], num_classes, n_data, T, spec.pool
                )
                terms.append(build_term(spec.method, ctx, spec.options, spec.weight, spec.warmup_epochs))
        except (LayerError, AdapterError, TermError) as e:
            raise TermError(f"{where}: {e}") from None
    return terms


def _shapes(model: nn.Module, layers: list[str], input_shape: Sequence[int], num_classes: int) -> dict[str, tuple]:
    names = sorted({n for n in layers if n != LOGITS})
    shapes = probe_shapes(model, names, input_shape) if names else {}
    return {**shapes, LOGITS: (num_classes,)}
