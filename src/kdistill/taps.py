"""Capture any layer's activations by dotted name, and list a model's layers.

``Tapped(model, ["features.3", "features.4:input"])`` wraps any ``nn.Module``; calling it returns
``Outputs(logits, feats)`` with ``feats[spec]`` the activation of each requested layer. Names are the
dotted paths of ``model.named_modules()`` (``features.3``, ``layer2.0.conv1``); ``kdistill layers``
or :func:`layer_table` lists them. :func:`probe_shapes` runs one probe forward to learn the shapes
of chosen layers (to size adapters before training).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

Repeat = Literal["error", "first", "last", "all"]
_REPEATS = ("error", "first", "last", "all")
NO_SHAPE = "—"  # shape shown for a module that the probe forward never called


class LayerError(ValueError):
    """A layer name or capture request is invalid; the message says what exists and how to fix it."""


class Outputs(NamedTuple):
    """What :class:`Tapped` returns: the wrapped model's output and the captured activations.

    ``feats`` maps each requested spec string (exactly as given, e.g. ``"features.3:input"``) to a
    tensor, or to a tuple of tensors for ``repeat="all"``.
    """

    logits: Any
    feats: dict[str, Any]


def _module_names(model: nn.Module) -> dict[str, nn.Module]:
    # remove_duplicate=False: a module registered under two names can be tapped by either.
    return {name: m for name, m in model.named_modules(remove_duplicate=False) if name}


def _unknown_layer(name: str, model: nn.Module, names: Iterable[str]) -> LayerError:
    names = list(names)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.0)
    hint = f"; closest: {', '.join(close)}" if close else " (it has no submodules)"
    return LayerError(
        f"unknown layer {name!r} in {type(model).__name__}{hint}. "
        "List every layer with `kdistill layers MODEL_SPEC --input-shape ...` or kdistill.taps.layer_table"
    )


def freeze(model: nn.Module, names: Iterable[str]) -> int:
    """Turn off the gradients of every parameter of the named submodules (dotted names, as for taps); returns
    how many parameters were frozen. An unknown name is a :class:`LayerError` naming the closest ones, before
    anything is changed."""
    modules = _module_names(model)
    names = list(names)
    for name in names:
        if name not in modules:
            raise _unknown_layer(name, model, modules)
    frozen = {id(p): p for name in names for p in modules[name].parameters()}  # shared weights counted once
    for p in frozen.values():
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen.values())


def _parse_spec(spec: str, modules: dict[str, nn.Module], model: nn.Module) -> tuple[str, str]:
    """``"name"`` -> (name, "output"); ``"name:input"`` / ``"name:output"`` -> (name, kind)."""
    if not isinstance(spec, str):
        raise LayerError(f"layer spec {spec!r} is not a string; give a dotted name such as 'features.3'")
    name, kind = spec, "output"
    if ":" in spec and spec not in modules:
        head, _, tail = spec.rpartition(":")
        if tail not in ("input", "output"):
            raise LayerError(f"layer spec {spec!r}: the suffix after ':' must be 'input' or 'output', got {tail!r}")
        name, kind = head, tail
    if name == "":
        raise LayerError(
            f"layer spec {spec!r} names the whole model: its output is already Outputs.logits and its input "
            "is x; tap a submodule instead"
        )
    if name not in modules:
        raise _unknown_layer(name, model, modules)
    return name, kind


def _snapshot(obj: Any) -> Any:
    """Copy every tensor in ``obj`` (nested tuples/lists/dicts), keeping autograd graphs."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # NamedTuple
        return type(obj)(*(_snapshot(o) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_snapshot(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    return obj


def _version(obj: Any) -> int | None:
    if not isinstance(obj, torch.Tensor):
        return None
    try:
        return obj._version
    except RuntimeError:  # inference-mode tensors have no version counter (and cannot be modified later)
        return None


class Tapped(nn.Module):
    """Wrap ``model`` so that ``forward(x)`` returns ``Outputs(logits, feats)``.

    ``layers`` are specs: ``"name"`` captures the module's output, ``"name:input"`` its first
    positional input (``"name:output"`` is accepted too). ``name`` is a dotted path from
    ``model.named_modules()``; ``""`` (the whole model) is not allowed. The key in ``feats`` is the spec
    string exactly as given. An unknown name raises :class:`LayerError` listing the 5 closest names.

    Hooks are registered once, here, and only record while ``Tapped.forward`` runs (calling
    ``self.model`` directly records nothing). Per-forward state is reset at every forward.

    ``repeat`` -- what to do when a tapped module runs more than once in one forward (a single
    ``nn.ReLU`` shared by every block, a module applied in a loop):

    - ``"error"`` (default): raise :class:`LayerError` naming the layer and the number of calls;
    - ``"first"`` / ``"last"``: keep the activation of the first / last call;
    - ``"all"``: ``feats[spec]`` is a tuple with one activation per call, in call order (not stacked:
      shapes often differ between calls).

    A tapped module that is not called at all during a forward raises :class:`LayerError`.

    ``clone`` -- ``True`` (default) copies each captured tensor when it is captured, so a later
    in-place op (``ReLU(inplace=True)`` right after a BatchNorm, as in the built-in CNN) cannot
    overwrite it. The copy keeps the autograd graph: gradients of a loss on ``feats`` flow into the
    model (for a student); under ``torch.no_grad()`` (a teacher) features are plain tensors. ``False``
    skips the copy (less memory) and instead raises if a captured tensor was modified in place later
    in the same forward.

    Hook handles are removed by :meth:`close` (also called on leaving a ``with`` block). After close,
    ``forward`` raises ``RuntimeError``; ``tapped.model`` is the untouched model.

    The wrapped model is the submodule ``self.model``: the state_dict of a ``Tapped`` has the model's
    keys prefixed with ``model.`` (``Tapped`` has no parameters or buffers of its own). Save and load
    ``tapped.model.state_dict()`` to keep the plain model's keys.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | str,
        repeat: Repeat = "error",
        clone: bool = True,
    ) -> None:
        super().__init__()
        if repeat not in _REPEATS:
            raise LayerError(f"repeat={repeat!r}: choose one of {', '.join(map(repr, _REPEATS))}")
        self.model = model
        self.repeat: Repeat = repeat
        self.clone = clone
        specs = [layers] if isinstance(layers, str) else list(layers)
        self.specs: tuple[str, ...] = tuple(dict.fromkeys(specs))  # duplicates tapped once, order kept
        modules = _module_names(model)
        parsed = {spec: _parse_spec(spec, modules, model) for spec in self.specs}
        self._calls: dict[str, int] = {}
        self._store: dict[str, list[tuple[Any, int | None]]] = {}
        self._active = False
        self._closed = False
        self._handles: list[Any] = []
        for spec, (name, kind) in parsed.items():
            module = modules[name]
            # functools.partial of a bound method (not a closure), so deepcopy(tapped) stays consistent.
            if kind == "input":
                h = module.register_forward_pre_hook(functools.partial(self._on_input, spec))
            else:
                h = module.register_forward_hook(functools.partial(self._on_output, spec))
            self._handles.append(h)

    # ------------------------------------------------------------------ hooks

    def _record(self, spec: str, value: Any) -> None:
        n = self._calls[spec] = self._calls[spec] + 1
        if n > 1 and self.repeat in ("error", "first"):
            return  # "error" only needs the count; the error is raised once the forward is done
        item = (_snapshot(value) if self.clone else value, None if self.clone else _version(value))
        if self.repeat == "all":
            self._store.setdefault(spec, []).append(item)
        else:
            self._store[spec] = [item]

    def _on_input(self, spec: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._active:
            return
        if not args:
            raise LayerError(
                f"layer spec {spec!r}: {type(module).__name__} was called without positional arguments, so it "
                "has no first positional input to capture; tap its output or the layer before it"
            )
        self._record(spec, args[0])

    def _on_output(self, spec: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._active:
            self._record(spec, output)

    # ------------------------------------------------------------------ API

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Outputs:
        if self._closed:
            raise RuntimeError(
                "this Tapped was closed (its hooks are removed); call tapped.model(x) for the plain output "
                "or wrap the model in a new Tapped"
            )
        self._calls = dict.fromkeys(self.specs, 0)
        self._store = {}
        self._active = True
        try:
            logits = self.model(x, *args, **kwargs)
        finally:
            self._active = False
        try:
            feats = {spec: self._collect(spec) for spec in self.specs}
        finally:
            self._store = {}  # do not keep activations (and their graphs) alive between forwards
        return Outputs(logits, feats)

    def _collect(self, spec: str) -> Any:
        calls = self._calls[spec]
        if calls == 0:
            raise LayerError(
                f"layer spec {spec!r} was not called during the forward of {type(self.model).__name__} "
                "(defined but unused, or on a branch not taken); check the names with `kdistill layers`"
            )
        if calls > 1 and self.repeat == "error":
            raise LayerError(
                f"layer {spec!r} ran {calls} times in one forward of {type(self.model).__name__} (a shared module "
                "or one called in a loop), so its activation is ambiguous; choose with "
                "Tapped(..., repeat='first'|'last'|'all') ('all' gives a tuple with one activation per call)"
            )
        items = self._store[spec]
        for i, (value, version) in enumerate(items):
            if version is not None and _version(value) != version:
                raise LayerError(
                    f"layer spec {spec!r}: the captured tensor (call {i + 1}) was modified in place later in the "
                    "forward (e.g. by ReLU(inplace=True)), so it no longer holds this layer's activation; "
                    "use Tapped(..., clone=True)"
                )
        values = tuple(value for value, _ in items)
        return values if self.repeat == "all" else values[0]

    def close(self) -> None:
        """Remove every hook from the wrapped model. Idempotent."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._closed = True
        self._store = {}

    def __enter__(self) -> Tapped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extra_repr(self) -> str:
        return f"specs={list(self.specs)}, repeat={self.repeat!r}, clone={self.clone}" + (
            ", closed" if self._closed else ""
        )


# ---------------------------------------------------------------------- probing


def _probe_input(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    try:
        shape = (int(batch_size), *(int(d) for d in input_shape))
    except (TypeError, ValueError) as e:
        raise LayerError(f"input_shape {input_shape!r} must be a sequence of ints (without the batch dim)") from e
    if any(d < 1 for d in shape):
        raise LayerError(f"probe input shape {shape} has a non-positive dimension")
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(0)  # fixed, and leaves the global RNG alone
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


def _probe_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """One forward in eval mode under no_grad; every module's training flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    except LayerError:
        raise
    except Exception as e:  # wrong input shape for the architecture, mostly
        raise LayerError(
            f"probe forward of {type(model).__name__} on an input of shape {tuple(x.shape)} failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    finally:
        for m, training in modes:
            m.training = training


def _describe(obj: Any) -> tuple[int, ...] | str:
    """A tensor's shape as a tuple; anything else as a short string (``tuple((2, 3), (2, 4))``, ``None``)."""
    if isinstance(obj, torch.Tensor):
        return tuple(obj.shape)
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(str(_describe(o)) for o in obj)
        return f"{type(obj).__name__}({inner})"
    if isinstance(obj, dict):
        inner = ", ".join(f"{k}: {_describe(v)}" for k, v in obj.items())
        return f"dict({inner})"
    return "None" if obj is None else type(obj).__name__


@dataclass(frozen=True)
class LayerInfo:
    """One row of :func:`layer_table`. ``name`` is ``""`` for the root (shown as ``(root)``).

    ``output_shape`` includes the probe batch dim: a tuple for a tensor output; a string for other
    outputs, for a module whose calls gave different shapes (``"(2, 8) | (2, 4)"``), or ``"—"`` for a
    module the forward never called (``calls == 0``).
    """

    name: str
    type_name: str
    output_shape: tuple[int, ...] | str
    own_params: int
    total_params: int
    calls: int


def layer_table(model: nn.Module, input_shape: Sequence[int], batch_size: int = 2) -> list[LayerInfo]:
    """Every module of ``model`` (root first, then ``named_modules()`` order) with its output shape.

    Runs one probe forward on a ``randn`` batch of ``batch_size`` with shape ``input_shape`` (without
    the batch dim, as for ``build_model``), with a fixed seed, in eval mode under no_grad; training
    flags are restored and the temporary hooks removed afterwards. ``own_params`` counts a module's
    direct parameters (``recurse=False``): summed over the table they give the model's parameter count
    (unless weights are tied between modules); ``total_params`` includes submodules.
    """
    x = _probe_input(model, input_shape, batch_size)
    modules = list(model.named_modules())
    outputs: dict[int, list[Any]] = {id(m): [] for _, m in modules}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        outputs[id(module)].append(_describe(output))

    handles = [m.register_forward_hook(hook) for _, m in modules]
    try:
        _probe_forward(model, x)
    finally:
        for h in handles:
            h.remove()

    rows = []
    for name, m in modules:
        shapes = outputs[id(m)]
        distinct = list(dict.fromkeys(shapes))
        if not distinct:
            shape: tuple[int, ...] | str = NO_SHAPE
        elif len(distinct) == 1:
            shape = distinct[0]
        else:
            shape = " | ".join(str(s) for s in distinct)
        rows.append(
            LayerInfo(
                name=name,
                type_name=type(m).__name__,
                output_shape=shape,
                own_params=sum(p.numel() for p in m.parameters(recurse=False)),
                total_params=sum(p.numel() for p in m.parameters()),
                calls=len(shapes),
            )
        )
    return rows


def format_layer_table(rows: Sequence[LayerInfo]) -> str:
    """An aligned text table (name, type, output shape, own params) with a total line."""
    header = ("name", "type", "output shape", "params")
    body = [
        (
            r.name or "(root)",
            r.type_name,
            str(r.output_shape) + (f" x{r.calls}" if r.calls > 1 else ""),
            f"{r.own_params:,}",
        )
        for r in rows
    ]
    root = next((r for r in rows if r.name == ""), None)
    total = root.total_params if root is not None else sum(r.own_params for r in rows)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]

    def fmt(row: tuple[str, str, str, str]) -> str:
        return "  ".join(
            [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]), row[3].rjust(widths[3])]
        )

    rule = "-" * len(fmt(header))
    lines = [fmt(header), rule, *(fmt(b) for b in body), rule]
    unused = [r.name for r in rows if r.calls == 0]
    lines.append(f"total: {total:,} parameters in {len(rows)} modules")
    if unused:
        lines.append(f"not called by forward ({len(unused)}): {', '.join(unused)}")
    return "\n".join(lines)


def probe_shapes(
    model: nn.Module,
    names: Sequence[str] | str,
    input_shape: Sequence[int],
    repeat: Repeat = "error",
    batch_size: int = 2,
) -> dict[str, Any]:
    """Per-sample shapes (batch dim dropped) of the given layer specs, from one probe forward.

    ``{"features.3": (32, 14, 14), "classifier:input": (128,)}``. Uses :class:`Tapped` (same specs,
    same ``repeat`` policy; with ``repeat="all"`` a value is a tuple of shapes, one per call) and the
    same probe as :func:`layer_table`: ``input_shape`` is without the batch dim, eval mode, no_grad,
    training flags restored, hooks removed. A non-tensor activation raises :class:`LayerError`.
    """
    x = _probe_input(model, input_shape, batch_size)
    with Tapped(model, names, repeat=repeat) as tapped:
        feats = _probe_forward(tapped, x).feats

    def per_sample(spec: str, t: Any) -> tuple[int, ...]:
        if not isinstance(t, torch.Tensor):
            raise LayerError(
                f"layer spec {spec!r} gives {_describe(t)}, not a tensor; tap a layer with a tensor output"
            )
        return tuple(t.shape[1:])

    return {
        spec: tuple(per_sample(spec, t) for t in v) if repeat == "all" else per_sample(spec, v)
        for spec, v in feats.items()
    }
