"""Checks that run before anything is trained: a bad set-up fails in a second, not after the teacher.

- :func:`check_resumable`: ``--resume`` needs a run directory of the same config with something to continue.
- :func:`check_models`: build every model a role uses (loading extra teachers' checkpoints), run two
  training images through each, and require the data's number of classes from all of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from kdistill.config import ConfigError, ExperimentConfig, ModelSpec, config_diff
from kdistill.data import DataBundle
from kdistill.io import CheckpointError
from kdistill.models import build_model, load_weights_into

# Keys that change how fast a run goes, not what it computes: a run may be resumed with others.
RESUME_MAY_DIFFER = ("threads", "device")


def check_resumable(run_dir: Path, cfg: ExperimentConfig) -> None:
    """``--resume`` needs a run directory of the same config that holds something to continue."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(f"--resume: {run_dir} holds no run to resume (no config.yaml); start it without --resume")
    old = yaml.safe_load(saved.read_text()) or {}
    diff = config_diff(old, cfg.model_dump(mode="json"), f"in {saved}", ignore=RESUME_MAY_DIFFER)
    if diff:
        raise CheckpointError(
            f"--resume: {run_dir} was started with another config: "
            + "; ".join(diff)
            + ". Resume with the same config and overrides, or start a new run (e.g. another name=...)."
        )
    if not any(run_dir.rglob("last.pt")) and not any(run_dir.rglob("row.json")):
        raise CheckpointError(
            f"--resume: {run_dir} has no checkpoint (no */last.pt) and no finished student; nothing to continue, "
            "so run it without --resume"
        )


@dataclass(frozen=True)
class ModelUse:
    """A model a role builds: where the config gives it (``ta_chain.assistants[0]``), its spec, and the
    checkpoint it is loaded from (extra teachers), if any."""

    where: str
    spec: ModelSpec
    checkpoint: str | None = None


def probe_model(use: ModelUse, data: DataBundle) -> int:
    """Build the model (and load its checkpoint), run two training images through it; its output width."""
    try:
        model = build_model(use.spec.arch, data.input_shape, data.num_classes, use.spec.kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{use.where}: cannot build the model: {e}") from None
    if use.checkpoint is not None:
        where = use.where.removesuffix(".model")
        path = Path(use.checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"{where}.checkpoint: {path} not found (looked relative to {Path.cwd()}); give the weights file, "
                "or null to train the teacher in this run"
            )
        try:
            load_weights_into(model, path)
        except ValueError as e:
            raise CheckpointError(f"{where}.checkpoint: {e}") from None
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.train.x[:2])
    except Exception as e:  # any failure of a user model is reported with its config key
        raise ConfigError(
            f"{use.where} ({use.spec.arch} {use.spec.kwargs}): a forward pass on two training images of shape "
            f"{tuple(data.input_shape)} fails: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{use.where} ({use.spec.arch}): expected logits of shape (batch, classes), got {shape}")
    return int(out.shape[1])


def check_models(role: str, uses: Sequence[ModelUse], why: str, data: DataBundle, probed: dict) -> None:
    """Every model of ``uses`` builds, runs and outputs the data's number of classes, or a ConfigError
    (or CheckpointError) that names the config key. ``why``: what passes between the models, for the
    message. ``probed`` remembers models already probed by another role of the run."""
    widths = {}
    with torch.random.fork_rng(devices=[]):  # probing draws initial weights: leave the run's RNG alone
        for use in uses:
            key = (use.where, json.dumps(use.spec.model_dump(), sort_keys=True, default=str))
            if key not in probed:
                probed[key] = probe_model(use, data)
            widths[use.where] = probed[key]
    if any(n != data.num_classes for n in widths.values()):
        listing = ", ".join(f"{w} -> {n}" for w, n in widths.items())
        raise ConfigError(
            f"{role}: the models disagree on the number of classes ({listing}), but {why}, so every one must "
            f"output the data's {data.num_classes} classes ({data.name}); remove a num_classes from the model "
            "kwargs, or make the factory take num_classes"
        )
