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
  the weights, which have one scale per row: 0.909 of the neighbours instead of 0.797 at ``a`` 0.85.
- :class:`FusedLinears`: Linears that read the same input tensor (a transformer's query, key and value) as one
  matrix with their rows stacked. In float this buys nothing measurable on a CPU, but dynamic int8 quantises
  each Linear's input on every call, so three Linears on one input pay for three quantisations (and, smoothed,
  three multiplications); fused they pay for one, with per-row int8 weights bit for bit the same. Given a
  ``calibrate`` function, :func:`int8_copy` finds such groups by watching which Linears receive the very same
  tensor.
- :func:`low_precision`: one of :data:`VARIANTS` by name, bf16 included (fast only on CPUs with bf16 kernels).

Every function returns a copy; the model passed in is left as it was.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

VARIANTS = ("int8", "int8-pc", "int8-sq", "bf16")
# Chosen on all-MiniLM-L6-v2's 655 validation sentences: its int8 copy keeps 0.669 / 0.817 / 0.880 / 0.907 /
# 0.914 / 0.907 / 0.890 / 0.897 of its top-10 neighbours at alpha 0.5 / 0.6 / 0.7 / 0.8 / 0.85 / 0.9 / 0.95 / 1,
# 0.809 unsmoothed (SmoothQuant's paper uses 0.5 for its language models; this encoder needs more migration); with
# query, key and value fused (one scale for the three) 0.85 is still the best, 0.912 (0.910 at 0.8, 0.903 at 0.9)
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


class FusedLinears(nn.Module):
    """Several Linears with one input, as one: ``linear`` holds their weights stacked row-wise (a Linear without a
    bias gets zeros), ``inv_scale`` (optional) is a SmoothQuant division shared by all of them. Each former
    Linear becomes a :class:`LinearPart`; the first part called on an input computes every part's output, and
    the others take theirs from it for the same tensor (by identity, and unchanged since: its version counter
    where it has one). Once every part has been served the input is let go; the cache is per thread."""

    def __init__(self, linears: list[nn.Linear], inv_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        w = linears[0].weight
        if len({lin.in_features for lin in linears}) != 1:
            raise ValueError(f"FusedLinears: inputs differ in width {[lin.in_features for lin in linears]}")
        self.sizes = [lin.out_features for lin in linears]
        self.linear = nn.Linear(linears[0].in_features, sum(self.sizes), device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.linear.weight.copy_(torch.cat([lin.weight for lin in linears]))
            biases = [lin.bias if lin.bias is not None else torch.zeros_like(lin.weight[:, 0]) for lin in linears]
            self.linear.bias.copy_(torch.cat(biases))
        self.register_buffer("inv_scale", inv_scale)
        self._served: dict[int, tuple] = {}  # thread id -> (input, its version, outputs not yet taken)

    def forward(self, x: torch.Tensor, part: int) -> torch.Tensor:
        key = threading.get_ident()
        version = None if x.is_inference() else x._version  # inference tensors keep no version counter
        held = self._served.get(key)
        if held is None or held[0] is not x or held[1] != version or held[2][part] is None:
            y = self.linear(x if self.inv_scale is None else x * self.inv_scale)
            held = (x, version, list(y.split(self.sizes, -1)))
            self._served[key] = held
        out, held[2][part] = held[2][part], None
        if all(o is None for o in held[2]):
            del self._served[key]  # every part served: hold no activations between calls
        return out

    def __getstate__(self) -> dict:  # a copy starts with nothing cached (copy.deepcopy, pickling)
        return {**self.__dict__, "_served": {}}


class LinearPart(nn.Module):
    """One former Linear of a :class:`FusedLinears`: ``fused(x, part)``."""

    def __init__(self, fused: FusedLinears, part: int) -> None:
        super().__init__()
        self.fused, self.part = fused, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x, self.part)


@torch.no_grad()
def observe_inputs(model: nn.Module, calibrate: Calibrate) -> tuple[dict[str, torch.Tensor], list[tuple[str, ...]]]:
    """Run ``calibrate(model)`` in eval mode and return, per ``nn.Linear`` by dotted name, the largest ``|x|`` of
    each input channel (a Linear that never ran is left out), and the groups of Linears that received the very
    same input tensor on every call (in the order they first ran, groups of two or more)."""
    ranges: dict[str, torch.Tensor] = {}
    recent: list[tuple[torch.Tensor, list[str]]] = []  # the last few inputs and who read them
    readers: dict[str, set[tuple[str, ...]]] = {}  # Linear -> every set of co-readers it was part of

    def close(entry: tuple[torch.Tensor, list[str]]) -> None:
        for n in entry[1]:
            readers.setdefault(n, set()).add(tuple(entry[1]))

    def hook(name: str) -> Callable[..., None]:
        def record(_: nn.Module, inputs: tuple[torch.Tensor, ...], __: Any) -> None:
            x = inputs[0]
            amax = x.detach().float().reshape(-1, x.shape[-1]).abs().amax(0).cpu()
            ranges[name] = torch.maximum(ranges[name], amax) if name in ranges else amax
            entry = next((e for e in recent if e[0] is x), None)
            if entry is not None:
                if name not in entry[1]:  # one Linear run twice on one tensor is no group
                    entry[1].append(name)
                return
            recent.append((x, [name]))  # held, so that no other tensor can take its identity meanwhile
            if len(recent) > 8:
                close(recent.pop(0))

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
    for entry in recent:
        close(entry)
    if not ranges:
        raise ValueError(
            "int8 calibration: calibrate(model) ran no nn.Linear of the model; give it inputs the model reads"
        )
    # a group: the same co-readers on every call of each of its members (a Linear also run elsewhere stays alone)
    groups = {g for sets in readers.values() for g in sets if len(g) > 1 and all(readers[n] == {g} for n in g)}
    return ranges, sorted(groups, key=lambda g: list(ranges).index(g[0]))


def input_ranges(model: nn.Module, calibrate: Calibrate) -> dict[str, torch.Tensor]:
    """Per ``nn.Linear`` of ``model`` (by dotted name): the largest ``|x|`` of each input channel over whatever
    ``calibrate(model)`` runs through it, in eval mode. A Linear that never ran is left out."""
    return observe_inputs(model, calibrate)[0]


@torch.no_grad()
def smooth_copy(
    model: nn.Module,
    calibrate: Calibrate,
    alpha: float | None = SMOOTH_ALPHA,
    fuse: bool = False,
    apart: Callable[[str], object] | None = None,
) -> nn.Module:
    """A CPU float copy of ``model`` (eval mode) in which every ``nn.Linear`` that ``calibrate`` reached is a
    :class:`SmoothedLinear` with ``s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)``: the same function (up to
    float rounding), with activations whose channels span far less range, ready for :func:`int8_copy`.
    ``alpha`` 1 equalises the activations' channels entirely; 0 the weights' columns; ``None`` smooths nothing.

    ``fuse``: each group of Linears that read the same input on every call (:func:`observe_inputs`) becomes one
    :class:`FusedLinears`, smoothed with one scale for the group (``max|W_:j|`` over all its members); Linears
    for which ``apart(name)`` differs are never fused together (a group is split by it)."""
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha {alpha} must lie in [0, 1] (SmoothQuant's migration strength)")
    ranges, groups = observe_inputs(model, calibrate)
    out = copy.deepcopy(model).cpu().eval()
    linears = {n: m for n, m in out.named_modules() if isinstance(m, nn.Linear) and n in ranges}
    if apart is not None:  # split each group by apart(name), keeping its order
        groups = [tuple(n for n in g if apart(n) == key) for g in groups for key in dict.fromkeys(map(apart, g))]
    groups = [g for g in groups if fuse and len(g) > 1]

    def scale(names: tuple[str, ...]) -> torch.Tensor:  # the members of a group share their input's range
        assert alpha is not None
        w_max = torch.stack([linears[n].weight.detach().abs().amax(0).float() for n in names]).amax(0)
        return (ranges[names[0]].clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

    new: dict[nn.Module, nn.Module] = {}  # by the Linear's identity: one replacement wherever it is used
    for g in groups:
        members = [linears[n] for n in g]
        s = None if alpha is None else scale(g)
        fused = FusedLinears(members, None if s is None else (1 / s).to(members[0].weight.dtype))
        if s is not None:
            fused.linear.weight.mul_(s.to(fused.linear.weight.dtype))  # its own new weight, tied to nothing
        new |= {lin: LinearPart(fused, i) for i, lin in enumerate(members)}
    for name, lin in linears.items():
        if alpha is None or lin in new:
            continue
        s = scale((name,))
        # a new tensor, not in place: a weight tied to another module (a language model's head and its token
        # embeddings) must keep its values there
        lin.weight = nn.Parameter(lin.weight.detach() * s.to(lin.weight.dtype))
        new[lin] = SmoothedLinear(lin, (1 / s).to(lin.weight.dtype))
    return replace_modules(out, new).eval()


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
    alpha: float | None = SMOOTH_ALPHA,
    keep_float: Callable[[str], bool] | None = None,
    fuse: bool = True,
) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with every ``nn.Linear`` dynamically quantised to int8: one weight
    scale per output row (``per_channel``) or per matrix (PyTorch's default recipe). Given ``calibrate``, first
    smoothed (:func:`smooth_copy`, strength ``alpha``; ``None``: not smoothed) and, with ``fuse`` and
    ``per_channel``, each group of Linears reading one input fused into one (:class:`FusedLinears`: one
    activation quantisation instead of several). ``keep_float(name)`` true leaves that Linear (by dotted name in
    ``model``) in float: mixed precision, or finding where int8 loses."""
    q = getattr(torch.ao, "quantization", None)
    quantize = getattr(q, "quantize_dynamic", None)
    if quantize is None:  # moved to torchao in newer PyTorch; say so instead of an AttributeError
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic: int8 copies need a PyTorch "
            "that has it (2.x up to at least 2.13)"
        )
    qconfig = q.per_channel_dynamic_qconfig if per_channel else q.default_dynamic_qconfig
    fuse = fuse and per_channel  # fused only per row: one scale per matrix would become one for the whole group
    if calibrate is not None and (alpha is not None or fuse):  # else nothing to calibrate for
        own = smooth_copy(model, calibrate, alpha, fuse=fuse, apart=keep_float)
    else:
        own = copy.deepcopy(model).cpu()
    spec: Any = {nn.Linear: qconfig}
    if keep_float is not None:  # the Linears to quantise, by name in the copy (a wrapped one sits lower down)
        spec = {
            n: qconfig for n, m in own.named_modules() if isinstance(m, nn.Linear) and not keep_float(_source(own, n))
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice, printed once per call
        # in place on our own CPU copy: left to itself, quantize_dynamic would deep-copy the model a second time
        return quantize(own, spec, dtype=torch.qint8, inplace=True).eval()


def _source(copy_: nn.Module, name: str) -> str:
    """The name a Linear of a smoothed or fused copy had in the model it was copied from (for a fused one, the
    first of its group's names: :func:`smooth_copy` fuses only Linears that ``apart`` keeps together)."""
    parent, _, child = name.rpartition(".")
    if child != "linear" or not parent:
        return name
    holder = copy_.get_submodule(parent)
    if isinstance(holder, SmoothedLinear):
        return parent
    if isinstance(holder, FusedLinears):  # named under the first LinearPart that holds it: <part>.fused
        return parent.rpartition(".")[0]
    return name


def low_precision(
    model: nn.Module,
    variant: str,
    calibrate: Calibrate | None = None,
    alpha: float = SMOOTH_ALPHA,
    fuse: bool = True,
) -> nn.Module:
    """The ``variant`` copy of ``model``: ``int8`` (one weight scale per matrix), ``int8-pc`` (per output row),
    ``int8-sq`` (per row after SmoothQuant of strength ``alpha``, which needs ``calibrate``) or ``bf16`` (weights
    and activations in bfloat16). The int8 copies fuse Linears that read one input when given ``calibrate`` and
    ``fuse``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown precision {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "bf16":
        return copy.deepcopy(model).cpu().eval().to(torch.bfloat16)
    if variant == "int8-sq" and calibrate is None:
        raise ValueError("int8-sq (SmoothQuant) needs calibrate: a function that runs the model on sample inputs")
    if variant == "int8":  # one scale per matrix: neither smoothed nor fused, so nothing to calibrate
        return int8_copy(model, per_channel=False)
    smooth = alpha if variant == "int8-sq" else None
    return int8_copy(model, calibrate=calibrate, alpha=smooth, fuse=fuse)
