"""Model zoo and model specs.

A model is described by a small dict (a *spec*), e.g. ``{"arch": "cnn", "channels": [32, 64, 128]}``
or ``{"arch": "mypkg.nets:resnet_tiny", "kwargs": {"width": 16}}`` for any user factory.
The same spec rebuilds the model when a checkpoint is loaded, so weights never travel without the
code shape they belong to.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.io import CheckpointError, atomic_save, safe_load
from kdistill.plugins import import_callable

MODEL_FORMAT = "kdistill-model/1"  # a weights file that also holds the spec that rebuilds the model


class MLP(nn.Module):
    """Fully connected net: flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (800, 800),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            # Hinton et al. also dropped input pixels (20 %) for their big teacher.
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class CNN(nn.Module):
    """Small VGG-style CNN: one stage per entry of ``channels``.

    Each stage has ``convs_per_stage[i]`` 3x3 conv-BN-ReLU blocks and ends with a 2x2 max-pool,
    except the last stage, which ends with global average pooling. The default
    ``channels=(32, 64, 128), convs_per_stage=(2, 2, 1)`` is a 5-conv, ~140k-parameter net;
    ``channels=(8, 16, 32)`` is the same family at ~1/16 of the parameters. ``stem_stride=2`` makes
    the first conv strided (a cheaper student of the same family).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_stage: Sequence[int] | None = None,
        dropout: float = 0.0,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if convs_per_stage is None:
            convs_per_stage = [2] * (len(channels) - 1) + [1]
        if len(convs_per_stage) != len(channels):
            raise ValueError(
                f"CNN: convs_per_stage has {len(convs_per_stage)} entries but channels has "
                f"{len(channels)}; give one count per stage"
            )
        layers: list[nn.Module] = []
        cin = in_channels
        for i, (c, n) in enumerate(zip(channels, convs_per_stage, strict=True)):
            for j in range(n):
                # A strided first conv shrinks the image early: most of a small CNN's CPU time is
                # spent at full resolution.
                layers += _conv_bn_relu(cin, c, stem_stride if (i, j) == (0, 0) else 1)
                cin = c
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat vectors from a tabular loader: restore the square image
            side = int(round(x.shape[1] ** 0.5))
            x = x.view(x.shape[0], 1, side, side)
        return self.classifier(self.dropout(self.features(x)))


def _build_mlp(input_shape: Sequence[int], num_classes: int, **kw: Any) -> nn.Module:
    in_features = 1
    for d in input_shape:
        in_features *= d
    return MLP(in_features, num_classes, **kw)


def _build_cnn(input_shape: Sequence[int], num_classes: int, **kw: Any) -> nn.Module:
    in_channels = input_shape[0] if len(input_shape) == 3 else 1
    return CNN(in_channels, num_classes, **kw)


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": _build_mlp, "cnn": _build_cnn}


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a built-in model (``mlp``, ``cnn``) or a user model from ``package.module:factory``.

    Built-ins receive the data's ``input_shape`` and ``num_classes``. A user factory receives only
    its own ``kwargs`` plus ``num_classes`` when its signature accepts that name, so plain
    ``nn.Module`` classes work unchanged.
    """
    kwargs = dict(kwargs or {})
    if arch in BUILTIN:
        try:
            return BUILTIN[arch](input_shape, num_classes, **kwargs)
        except TypeError as e:
            raise ValueError(f"model arch {arch!r}: bad keyword arguments {kwargs}: {e}") from e
    usage = (
        f"neither a built-in ({', '.join(BUILTIN)}) nor an import path; write a user model as 'package.module:factory'"
    )
    factory = import_callable(arch, f"model arch {arch!r}", usage)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without signatures: pass kwargs as given
        sig = None
    if sig is not None:
        if "num_classes" in sig.parameters and "num_classes" not in kwargs:
            kwargs["num_classes"] = num_classes
        try:  # a signature mismatch is the config's fault: say so instead of a traceback from inside the call
            sig.bind(**kwargs)
        except TypeError as e:
            raise ValueError(
                f"model arch {arch!r}{sig} cannot take kwargs {kwargs}: {e}; a user factory gets only its kwargs "
                "(plus num_classes when it names that parameter), so give every required argument there"
            ) from e
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model arch {arch!r} returned {type(model).__name__}, not an nn.Module")
    return model


def module_device(model: nn.Module) -> torch.device:
    """Where a module's first parameter (or buffer) lives; the CPU for a module without either."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, explaining any key or shape mismatch instead of a bare RuntimeError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint {source} does not fit the model ({type(model).__name__}):"]
        if missing:
            lines.append(f"  missing in checkpoint: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            lines.append(f"  not in model: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        if wrong_shape:
            lines.append("  shape mismatch: " + "; ".join(wrong_shape[:8]))
        lines.append("  check that the config's model spec matches the architecture the checkpoint was trained with")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- model files


def save_model_file(
    model: nn.Module,
    spec: dict[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
    path: str | Path,
    normalize: dict | None = None,
    **meta: Any,
) -> None:
    """Weights plus the spec that rebuilds the model (and the input normalization it expects): a file
    that is loadable on its own, written atomically. ``meta``: plain data kept beside (role, epoch, ...)."""
    atomic_save(
        {
            "format": MODEL_FORMAT,
            "spec": spec,
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "normalize": normalize,
            "state_dict": model.state_dict(),
            "meta": meta,
        },
        path,
    )


def read_model_file(path: str | Path) -> dict:
    """The content of a kdistill model file (weights-only loading); a CheckpointError for anything else."""
    obj = safe_load(path)
    if not (isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT):
        raise CheckpointError(f"{path} is not a kdistill model file (format {MODEL_FORMAT})")
    return obj


def load_model_file(path: str | Path) -> tuple[nn.Module, dict]:
    """The model of a kdistill model file, rebuilt from its spec with its weights, in eval mode, and the file's
    content."""
    obj = read_model_file(path)
    spec = obj["spec"]
    model = build_model(spec["arch"], obj["input_shape"], obj["num_classes"], spec.get("kwargs"))
    load_state_strict(model, obj["state_dict"], str(path))
    return model.eval(), obj


def load_weights_into(model: nn.Module, path: str | Path) -> dict:
    """Load a kdistill model file or a bare ``state_dict`` into ``model``; returns the file's meta."""
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        load_state_strict(model, obj["state_dict"], str(path))
        return dict(obj.get("meta", {}))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        load_state_strict(model, obj["state_dict"], str(path))
        return {}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        load_state_strict(model, obj, str(path))
        return {}
    raise CheckpointError(f"{path}: neither a kdistill model file nor a state_dict")
