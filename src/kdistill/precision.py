"""Lower-precision copies of a trained model for CPU inference, the other way to make a model faster: a user
deciding between a distilled student and a quantised teacher (or both) needs them measured side by side.

- :func:`int8_copy`: PyTorch's dynamic quantisation of every ``nn.Linear`` (int8 weights, activations quantised
  per call), with one weight scale per output row by default: a row with large weights then no longer coarsens
  every other row's grid (on all-MiniLM-L6-v2 it keeps 0.797 of the float model's top-10 neighbours instead of
  0.718 with one scale per matrix, at the same speed; ``benchmarks/results/encoder_int8.md``). Given a
  ``calibrate`` function it first smooths the activations (:func:`smooth_copy`).
- :func:`smooth_copy`: SmoothQuant (Xiao et al. 2023) for dynamic int8. What int8 loses on a transformer is the
  activations, not the weights: rounding the weights alone keeps 0.975 of all-MiniLM-L6-v2's neighbours, but a
  handful of input channels 13-16 times larger than the median set the one scale of each call's activations and
  leave the others a few levels of the grid. Dividing each input channel by ``s_j = max|x_j|^a / max|W_:j|^(1-a)``
  and multiplying the weight's column j by ``s_j`` leaves the float function as it was and moves that range into
  the weights, which have one scale per row: 0.906 of the neighbours instead of 0.797 at ``a`` 0.85.
- :func:`low_precision`: one of :data:`VARIANTS` by name, bf16 included (fast only on CPUs with bf16 kernels).

Every function returns a copy; the model passed in is left as it was.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

VARIANTS = ("int8", "int8-pc", "int8-sq", "bf16")
# Chosen on all-MiniLM-L6-v2's 655 validation sentences: its int8 copy keeps 0.669 / 0.817 / 0.880 / 0.907 /
# 0.914 / 0.907 / 0.890 / 0.897 of its top-10 neighbours at alpha 0.5 / 0.6 / 0.7 / 0.8 / 0.85 / 0.9 / 0.95 / 1,
# 0.809 unsmoothed (SmoothQuant's paper uses 0.5 for its language models; this encoder needs more migration)
SMOOTH_ALPHA = 0.85

Calibrate = Callable[[nn.Module], Any]  # runs the model on representative inputs; what it returns is ignored


class SmoothedLinear(nn.Module):
    """``linear(x * inv_scale)``: a Linear whose input channels arrive divided by SmoothQuant's scales (its weight
    columns multiplied by them, so that the float function is unchanged). Dynamic quantisation swaps the inner
    ``linear``; the multiplication stays in float, one small elementwise op per call."""

    def __init__(self, linear: nn.Linear, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


@torch.no_grad()
def input_ranges(model: nn.Module, calibrate: Calibrate) -> dict[str, torch.Tensor]:
    """Per ``nn.Linear`` of ``model`` (by dotted name): the largest ``|x|`` of each input channel over whatever
    ``calibrate(model)`` runs through it, in eval mode. A Linear that never ran is left out."""
    ranges: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_: nn.Module, inputs: tuple[torch.Tensor, ...], __: Any) -> None:
            x = inputs[0].detach().float()
            amax = x.reshape(-1, x.shape[-1]).abs().amax(0).cpu()
            ranges[name] = torch.maximum(ranges[name], amax) if name in ranges else amax

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    was = model.training
    try:
        model.eval()
        calibrate(model)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    if not ranges:
        raise ValueError("smoothing: calibrate(model) ran no nn.Linear of the model; give it inputs the model reads")
    return ranges


@torch.no_grad()
def smooth_copy(model: nn.Module, calibrate: Calibrate, alpha: float = SMOOTH_ALPHA) -> nn.Module:
    """A CPU float copy of ``model`` (eval mode) in which every ``nn.Linear`` that ``calibrate`` reached is a
    :class:`SmoothedLinear` with ``s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)``: the same function (up to
    float rounding), with activations whose channels span far less range, ready for :func:`int8_copy`.
    ``alpha`` 1 equalises the activations' channels entirely; 0 the weights' columns."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha {alpha} must lie in [0, 1] (SmoothQuant's migration strength)")
    ranges = input_ranges(model, calibrate)
    out = copy.deepcopy(model).cpu().eval()
    wrapped: dict[nn.Module, nn.Module] = {}  # by the Linear's identity: one wrapper wherever it is used
    for name, lin in out.named_modules():
        if not isinstance(lin, nn.Linear) or name not in ranges:
            continue
        w_max = lin.weight.abs().amax(0).float().clamp(min=1e-5)
        s = (ranges[name].clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)
        # a new tensor, not in place: a weight tied to another module (a language model's head and its token
        # embeddings) must keep its values there
        lin.weight = nn.Parameter(lin.weight.detach() * s.to(lin.weight.dtype))
        wrapped[lin] = SmoothedLinear(lin, (1 / s).to(lin.weight.dtype))
    return replace_modules(out, wrapped).eval()


def replace_modules(model: nn.Module, new: dict[nn.Module, nn.Module]) -> nn.Module:
    """``model`` with each key module (by identity) replaced by its value wherever it sits, a module shared by
    several parents in each of them; in place. Returns the model, or the value when the model itself is a key."""
    if model in new:
        return new[model]
    for parent in list(model.modules()):  # listed first: the replacements' own children are not visited
        for name, child in list(parent._modules.items()):  # named_children would skip a repeated child
            if child is not None and child in new:
                setattr(parent, name, new[child])
    return model


def int8_rows(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to the grid :func:`int8_copy` stores it on: int8 (-128..127) with one symmetric scale per
    output row, ``max|w| / 127.5`` (PyTorch's per-channel symmetric observer); int8's weight error alone. A
    row's largest magnitude lies half-way between two levels, and the kernel may round it one step the other way."""
    scale = (weight.abs().amax(1, keepdim=True) / 127.5).clamp_min(1e-12)
    return (weight / scale).round().clamp(-128, 127) * scale


def int8_copy(
    model: nn.Module,
    per_channel: bool = True,
    calibrate: Calibrate | None = None,
    alpha: float = SMOOTH_ALPHA,
    keep_float: Callable[[str], bool] | None = None,
) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with every ``nn.Linear`` dynamically quantised to int8: one weight
    scale per output row (``per_channel``) or per matrix (PyTorch's default recipe); smoothed first
    (:func:`smooth_copy`, strength ``alpha``) when ``calibrate`` is given. ``keep_float(name)`` true leaves that
    Linear (by dotted name in ``model``) in float: mixed precision, or finding where int8 loses."""
    q = getattr(torch.ao, "quantization", None)
    quantize = getattr(q, "quantize_dynamic", None)
    if quantize is None:  # moved to torchao in newer PyTorch; say so instead of an AttributeError
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic: int8 copies need a PyTorch "
            "that has it (2.x up to at least 2.13)"
        )
    qconfig = q.per_channel_dynamic_qconfig if per_channel else q.default_dynamic_qconfig
    own = smooth_copy(model, calibrate, alpha) if calibrate is not None else copy.deepcopy(model).cpu()
    spec: Any = {nn.Linear: qconfig}
    if keep_float is not None:  # the Linears to quantise, by name in the copy (a smoothed one sits one level down)
        spec = {
            n: qconfig for n, m in own.named_modules() if isinstance(m, nn.Linear) and not keep_float(_source(own, n))
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice, printed once per call
        # in place on our own CPU copy: left to itself, quantize_dynamic would deep-copy the model a second time
        return quantize(own, spec, dtype=torch.qint8, inplace=True).eval()


def _source(copy_: nn.Module, name: str) -> str:
    """The name a Linear of a (smoothed) copy had in the model it was copied from."""
    parent, _, child = name.rpartition(".")
    wrapped = child == "linear" and isinstance(copy_.get_submodule(parent) if parent else copy_, SmoothedLinear)
    return parent if wrapped else name


def low_precision(
    model: nn.Module, variant: str, calibrate: Calibrate | None = None, alpha: float = SMOOTH_ALPHA
) -> nn.Module:
    """The ``variant`` copy of ``model``: ``int8`` (one weight scale per matrix), ``int8-pc`` (per output row),
    ``int8-sq`` (per row after SmoothQuant of strength ``alpha``, which needs ``calibrate``) or ``bf16`` (weights
    and activations in bfloat16)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown precision {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "bf16":
        return copy.deepcopy(model).cpu().eval().to(torch.bfloat16)
    if variant == "int8-sq":
        if calibrate is None:
            raise ValueError("int8-sq (SmoothQuant) needs calibrate: a function that runs the model on sample inputs")
        return int8_copy(model, calibrate=calibrate, alpha=alpha)
    return int8_copy(model, per_channel=variant == "int8-pc")
