"""ONNX Runtime copies of a model: what a user who deploys the exported file gets, scored and timed like the
PyTorch copies of :mod:`kdistill.precision`, so that a distilled student is measured against the teacher as it
would really be served, not only against the teacher in PyTorch.

At batch 1 a small transformer in PyTorch eager mode spends much of each call outside its matrix products (one
Python call per module); onnxruntime runs the whole graph as one native call. On all-MiniLM-L6-v2 (16 tokens, 1
thread, Intel Xeon) the same weights answer 1.7-1.9x faster there, and its int8 copy after SmoothQuant 3.8-5.3x
faster than the float32 model in PyTorch, keeping 0.932 of its top-10 neighbours (docs/encoder_rounds.md, tenth
round). A student must therefore be timed against the teacher served the same way.

- :class:`OnnxRuntimeModel`: an ONNX file in an ``onnxruntime`` session, called like the ``nn.Module`` it was
  exported from (a tensor in, a tensor out), so :func:`kdistill.deploy.measure_many` times it and any scoring
  code that calls a model runs it.
- :func:`onnx_copy`: one of :data:`ONNX_VARIANTS`: ``onnx`` (the float32 export), ``onnx-int8``
  (onnxruntime's dynamic quantisation: int8 weights with one scale per output row, activations quantised per
  call, asymmetric uint8), ``onnx-int8-sq`` (the same after SmoothQuant, :func:`kdistill.precision.smooth_copy`).

Needs the ``onnx`` extra (``pip install -e '.[onnx]'``: onnx and onnxruntime).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.export import export_onnx, onnx_session
from kdistill.precision import SMOOTH_ALPHA, Calibrate, smooth_copy

ONNX_VARIANTS = ("onnx", "onnx-int8", "onnx-int8-sq")


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a RuntimeError that says what to install."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError(
            "onnxruntime copies need onnx and onnxruntime: pip install -e '.[onnx]' (or pip install onnx onnxruntime)"
        ) from None
    return onnxruntime


class OnnxRuntimeModel(nn.Module):
    """The ONNX file ``path`` run by onnxruntime on the CPU with ``threads`` threads: ``model(x)`` feeds ``x`` to
    the graph's first input and returns its first output as a float tensor. It has no parameters; a copy
    (``copy.deepcopy``, pickling) opens its own session on the same file."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        super().__init__()
        self.path, self.threads = Path(path), int(threads)
        self._open()

    def _open(self) -> None:
        require_onnxruntime()
        self._session = onnx_session(self.path, self.threads)
        self._input = self._session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._session.run(None, {self._input: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, threads={self.threads}"

    def __getstate__(self) -> dict:  # a session cannot be copied: the copy opens its own
        state = self.__dict__.copy()
        state.pop("_session", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()


def quantize_onnx(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of ``source``'s MatMuls into ``target``: int8 weights with one
    symmetric scale per output row (per-channel; one per matrix keeps 0.776 of all-MiniLM-L6-v2's top-10
    neighbours against 0.882), activations quantised on every call (uint8, asymmetric)."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process first (which changed nothing here)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.getLogger().setLevel(quiet)


def onnx_copy(
    model: nn.Module,
    variant: str,
    example: torch.Tensor,
    directory: str | Path,
    *,
    calibrate: Calibrate | None = None,
    alpha: float = SMOOTH_ALPHA,
    threads: int = 1,
    dynamic: Sequence[int] = (0,),
    name: str = "model",
) -> OnnxRuntimeModel:
    """The ``variant`` copy of ``model`` (one of :data:`ONNX_VARIANTS`) as an :class:`OnnxRuntimeModel`, its files
    written under ``directory``: the float export ``<name>.onnx`` (``<name>.sq.onnx`` when smoothed) and the
    quantised ``<name>.<variant>.onnx``. ``example`` is an input
    the export traces; ``dynamic`` its axes that may change size (a sentence encoder: ``(0, 1)``, batch and
    tokens). ``onnx-int8-sq`` smooths a copy of ``model`` first (strength ``alpha``), which needs ``calibrate``.
    ``model`` itself is left as it was."""
    if variant not in ONNX_VARIANTS:
        raise ValueError(f"unknown onnxruntime copy {variant!r}; choose from {', '.join(ONNX_VARIANTS)}")
    if variant == "onnx-int8-sq" and calibrate is None:
        raise ValueError("onnx-int8-sq (SmoothQuant) needs calibrate: a function that runs the model on sample inputs")
    require_onnxruntime()  # before any export work: say what to install
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if variant == "onnx-int8-sq":
        assert calibrate is not None
        source = smooth_copy(model, calibrate, alpha)  # a float copy; its Linears' inputs arrive divided
    else:
        source = copy.deepcopy(model).cpu().eval()
    stem = f"{name}.sq" if variant == "onnx-int8-sq" else name
    float_path = out / f"{stem}.onnx"
    export_onnx(source, example.cpu(), float_path, name, dynamic=tuple(dynamic))
    if variant == "onnx":
        return OnnxRuntimeModel(float_path, threads)
    int8_path = out / f"{name}.{variant}.onnx"
    quantize_onnx(float_path, int8_path)
    return OnnxRuntimeModel(int8_path, threads)
