"""Lower-precision copies of a trained model for CPU inference, the other way to make a model faster: a user
deciding between a distilled student and a quantised teacher (or both) needs them measured side by side.

- :func:`int8_copy`: PyTorch's dynamic quantisation of every ``nn.Linear`` (int8 weights, activations quantised
  per call), with one weight scale per output row by default: a row with large weights then no longer coarsens
  every other row's grid (on all-MiniLM-L6-v2 it keeps 0.797 of the float model's top-10 neighbours instead of
  0.718 with one scale per matrix, at the same speed; ``benchmarks/results/encoder_int8.md``).
- :func:`low_precision`: one of :data:`VARIANTS` by name, bf16 included (fast only on CPUs with bf16 kernels).

Every function returns a copy; the model passed in is left as it was.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

VARIANTS = ("int8", "int8-pc", "bf16")


def int8_copy(model: nn.Module, per_channel: bool = True) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with every ``nn.Linear`` dynamically quantised to int8: one weight
    scale per output row (``per_channel``) or per matrix (PyTorch's default recipe)."""
    q = getattr(torch.ao, "quantization", None)
    quantize = getattr(q, "quantize_dynamic", None)
    if quantize is None:  # moved to torchao in newer PyTorch; say so instead of an AttributeError
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic: int8 copies need a PyTorch "
            "that has it (2.x up to at least 2.13)"
        )
    spec = {nn.Linear: q.per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice, printed once per call
        # in place on our own CPU copy: left to itself, quantize_dynamic would deep-copy the model a second time
        return quantize(copy.deepcopy(model).cpu(), spec, dtype=torch.qint8, inplace=True)


def low_precision(model: nn.Module, variant: str) -> nn.Module:
    """The ``variant`` copy of ``model``: ``int8`` (one weight scale per matrix), ``int8-pc`` (per output row) or
    ``bf16`` (weights and activations in bfloat16)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown precision {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "bf16":
        return copy.deepcopy(model).cpu().eval().to(torch.bfloat16)
    return int8_copy(model, per_channel=variant == "int8-pc")
