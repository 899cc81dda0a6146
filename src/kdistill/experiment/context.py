"""What one ``kdistill run`` shares across its roles and seeds: config, device, run directory, data, the
teacher, and what roles build once per run (:meth:`RunContext.once`).

:func:`open_run` does everything that comes before the first model: the smoke variant of the config,
the device and the process group, threads, the run directory (checked for ``--resume``), and the data.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from kdistill import dist
from kdistill.config import ExperimentConfig, config_diff
from kdistill.data import DataBundle, load_data
from kdistill.data.inspect import record
from kdistill.io import CheckpointError, atomic_write_text
from kdistill.teacher import FrozenTeacher

# A smoke run: the same pipeline on a few hundred samples for one epoch, in its own run directory.
SMOKE = {"limit_train": 800, "limit_test": 500, "val_size": 200, "epochs": 1, "labelled": 200}


def log(msg: str) -> None:
    if dist.is_main():  # one voice per distributed run
        print(f"[kdistill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class TeacherInfo:
    """A teacher as the run got it: loaded from its checkpoint, reused from the teacher cache, or trained."""

    model: torch.nn.Module
    source: str  # "checkpoint", "reused" or "trained"
    path: Path
    train_seconds: float


@dataclass
class RunContext:
    cfg: ExperimentConfig
    smoke: bool
    resume: bool
    device: torch.device
    run_dir: Path
    data: DataBundle
    # Set by kdistill.experiment.teachers.attach_teacher, before any role runs:
    teacher: TeacherInfo | None = None
    frozen: FrozenTeacher | None = None  # the run's teacher as a distilled student sees it
    # its logits on the test and validation images, got when first asked for (t_test, t_val)
    teacher_predictions: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)
    shared: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def t_test(self) -> torch.Tensor:
        """The teacher's logits on the test images."""
        return self._predictions()[0]

    @property
    def t_val(self) -> torch.Tensor:
        """The teacher's logits on the validation images."""
        return self._predictions()[1]

    def _predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.teacher_predictions is None:
            raise RuntimeError("the run's teacher is not attached yet (kdistill.experiment.teachers.attach_teacher)")
        return self.once("teacher:predictions", self.teacher_predictions)

    @property
    def fast(self) -> bool:
        """Online teacher forwards in channels_last + bf16 where the hardware has bf16 kernels."""
        return self.cfg.kd.teacher_precision == "auto"

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` the first time ``key`` is asked for in this run, the same object afterwards: a teacher
        cache or a second teacher that every seed of every role shares."""
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]


def smoke_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same pipeline on a few hundred samples for one epoch, in its own run directory."""
    c = cfg.model_copy(deep=True)
    c.name = cfg.name + "-smoke"
    for tc in c.train_configs():
        tc.epochs, tc.steps = SMOKE["epochs"], None
    c.data.val_size = min(c.data.val_size, SMOKE["val_size"])
    if c.data.labelled is not None:
        c.data.labelled = min(c.data.labelled, SMOKE["labelled"])
    return c


def run_dir_of(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def open_run(cfg: ExperimentConfig, smoke: bool, resume: bool) -> RunContext:
    """Device, process group, threads, run directory and data of a run (``cfg`` already in smoke form; a
    ``resume`` already checked against the run directory)."""
    device = dist.resolve_device(cfg.device)
    dist.setup(device)
    dist.check_same(cfg.to_yaml(), "resolved config")
    # Under torchrun the processes of one machine share its cores.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local))
    run_dir = run_dir_of(cfg)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    data = _load(cfg, smoke)
    if dist.world() > 1:
        dist.check_same(data.fingerprint, "data")
        log(f"distributed: {dist.world()} processes, {device.type}, global batch {cfg.student.train.batch_size}")
    return RunContext(cfg, smoke, resume, device, run_dir, data)


def start_writing(ctx: RunContext) -> None:
    """The point of no return, once every check has passed and the teacher is ready: ``config.yaml`` and
    ``data.json`` written, and on a fresh start (not ``--resume``) an earlier run's finished students and
    checkpoints set aside. Before it, a run that fails (bad data, a teacher checkpoint of another model, a
    role's check) has changed nothing an earlier run left in the directory."""
    if dist.is_main():
        atomic_write_text(ctx.run_dir / "config.yaml", ctx.cfg.to_yaml())
        # the data as found: classes, counts, normalization, a carved test split's files
        atomic_write_text(ctx.run_dir / "data.json", json.dumps(record(ctx.data), indent=1) + "\n")
        if not ctx.resume:  # a fresh start: no earlier run's finished students or checkpoints count
            for old in [*ctx.run_dir.rglob("row.json"), *ctx.run_dir.rglob("last.pt")]:
                old.unlink()
    dist.barrier()


def _load(cfg: ExperimentConfig, smoke: bool) -> DataBundle:
    d = cfg.data
    data = load_data(
        d.name,
        **d.load_kwargs(cfg.output_dir),
        transfer=cfg.kd.transfer,
        limit_train=SMOKE["limit_train"] if smoke else None,
        limit_test=SMOKE["limit_test"] if smoke else None,
        exclude_classes=cfg.kd.exclude_classes,
    )
    held = "read from disk a batch at a time" if data.streamed else "in memory"
    log(
        f"data: {data.name} train {len(data.train)}, val {len(data.val)}, test {len(data.test)}; student labels "
        f"{len(data.student_labelled)}, KD transfer set {len(data.transfer_set)}; inputs {data.input_shape}, {held}"
    )
    for note in data.notes:
        log(f"data: {note}")
    return data


def plain_run_dir(cfg: Any, smoke: bool) -> Path:
    """Where a text or encoder config's run goes: ``output_dir/name``, ``-smoke`` for smoke runs."""
    return Path(cfg.output_dir) / (cfg.name + ("-smoke" if smoke else ""))


def open_run_dir(cfg: Any, smoke: bool, resume: bool) -> tuple[Path, dict]:
    """The run directory of a text or encoder config (``output_dir/name``, ``-smoke`` for smoke runs), created,
    with the resolved config written to ``config.yaml``; ``resume`` first checks the saved config is the same
    (``threads`` may differ). Sets the thread count. Returns the directory and the resolved config."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = plain_run_dir(cfg, smoke)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_dump(mode="json")
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise CheckpointError(f"{run_dir} holds no run to resume; run without --resume")
        old = yaml.safe_load(saved.read_text())
        try:  # keys added to the schema since that run count at their defaults (the run used exactly those)
            old = type(cfg).model_validate(old).model_dump(mode="json")
        except ValidationError:  # a key since removed or renamed: the raw diff names it
            pass
        diff = config_diff(old, resolved, f"in {saved}", ignore=("threads",))
        if diff:
            raise CheckpointError(f"cannot resume {run_dir}: the config differs: " + "; ".join(diff))
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return run_dir, resolved
