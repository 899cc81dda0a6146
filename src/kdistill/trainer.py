"""The one training loop, for every role.

``fit`` knows nothing about distillation: it asks the objective for the batch its model is shown
(``objective.student_batch``: augmented, or a teacher cache's view) and for ``StepOutput(loss, logits,
parts)``, steps the optimizer, evaluates on validation data after each epoch, and writes metrics and
checkpoints. Teacher, scratch, KD and label-smoothing students and mutual cohorts differ only in their
objective; where a KD student's teacher outputs come from is the objective's business.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdistill import dist
from kdistill.augment import Augmenter
from kdistill.averaging import WeightAverage
from kdistill.config import TrainConfig, config_diff
from kdistill.data import Batch, BatchLoader, Split
from kdistill.data.loader import INFERENCE_BATCH, RowBuffer
from kdistill.distiller import Objective
from kdistill.io import CheckpointError, atomic_save, atomic_write_text, safe_load
from kdistill.metrics import EvalResult, score
from kdistill.models import module_device
from kdistill.teacher import bf16_supported

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    tqdm = None


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """Logits (float32, on the CPU) of ``model`` in eval mode on every row of ``split``, in order."""
    was = model.training
    model.eval()
    dev = module_device(model)
    out = RowBuffer(len(split))
    for b in BatchLoader(split, batch_size):
        out.add(model(b["x"].to(dev)).float().cpu())
    model.train(was)
    return out.result()


def evaluate(model: nn.Module, split: Split, batch_size: int = INFERENCE_BATCH) -> EvalResult:
    if isinstance(split.x, torch.Tensor) and not split.x.is_floating_point():  # token ids: a language model
        return _evaluate_tokens(model, split, batch_size)
    return score(predict(model, split, batch_size), split.y)


@torch.no_grad()
def _evaluate_tokens(model: nn.Module, split: Split, batch_size: int) -> EvalResult:
    """Next-token accuracy and NLL (nats per token) without keeping ``[N, L, V]`` logits (V may be 50,000)."""
    was = model.training
    model.eval()
    dev = module_device(model)
    right = total = 0
    nll = 0.0
    for b in BatchLoader(split, batch_size):
        r = score(model(b["x"].to(dev)).float().cpu(), b["y"])
        right, total, nll = right + r.n - r.errors, total + r.n, nll + r.nll * r.n
    model.train(was)
    return EvalResult(acc=right / total, errors=total - right, nll=nll / total, n=total)


# ----------------------------------------------------------------------------- optimizer


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    # PyTorch's fused kernels (one pass over all parameters) where every parameter lives on a CPU or a CUDA device:
    # the demo MLP's optimizer step took 108 us against 275 us for the multi-tensor (foreach) update, 8 % of its
    # bf16 step (benchmarks/step_speed.py); on a CPU PyTorch would otherwise pick its per-parameter loop, slower
    # still. Fused rounds differently from the loop (weights ~4e-9 apart after 1,000 steps), so runs made before
    # the switch are reproduced within seed noise, not bit for bit; foreach on other devices.
    fast = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in params) else {"foreach": True}
    if cfg.optimizer == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, weight_decay=cfg.weight_decay, **fast
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def make_lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step (linear warm-up, then the chosen schedule)."""
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":
            return 0.1 ** (step // (cfg.step_size * steps_per_epoch))
        progress = (step - warm) / max(1, total - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        # onecycle: 30 % linear ramp from 1/25, then cosine to ~0 (Smith & Topin 2019)
        if progress < 0.3:
            return 0.04 + 0.96 * progress / 0.3
        return 0.5 * (1.0 + math.cos(math.pi * (progress - 0.3) / 0.7))

    return factor


# ----------------------------------------------------------------------------- fit

# Fault injection for the resume test (DEVELOPERS.md): with KDISTILL_KILL_AFTER_STEPS=N the process
# SIGKILLs itself right after its N-th optimizer step, counted over every fit() of the process, i.e. at
# an exactly known point in the middle of an epoch, which an outside `kill` could only hit by chance.
_steps_taken = 0


def _maybe_kill() -> None:
    global _steps_taken
    _steps_taken += 1
    # KDISTILL_KILL_RANK: under torchrun, only that rank dies (the test of a rank lost mid-training)
    rank_ok = os.environ.get("KDISTILL_KILL_RANK") in (None, str(dist.rank()))
    if _steps_taken == int(os.environ.get("KDISTILL_KILL_AFTER_STEPS", "0")) and rank_ok:
        os.kill(os.getpid(), signal.SIGKILL)


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived: training stopped at the end of the step it was in. Every file on disk is whole
    (checkpoints are written atomically at epoch ends), so ``--resume`` continues from the last finished epoch."""


_stop: list[str] = []  # the name of the signal that asked training to stop, once one has


@contextmanager
def _stop_between_steps() -> Iterator[None]:
    """While training, SIGINT / SIGTERM only ask to stop (checked after each optimizer step) instead of killing
    the process wherever it is; a second one stops at once. Outside the main thread, signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum: int, frame: object) -> None:
        if _stop:  # asked twice: the user means now
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        _stop.append(signal.Signals(signum).name)

    _stop.clear()
    old = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@dataclass
class FitResult:
    best_epoch: int
    best_val_acc: float
    train_seconds: float
    history: list[dict]
    steps: int = 0  # optimizer steps taken (seconds per step compares objectives across set sizes)
    precision: str = "float32"  # what the forward passes ran in (bf16 only where asked for and supported)


def fit(
    objective: Objective,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    *,
    seed: int,
    out_dir: Path | None = None,
    desc: str = "train",
    progress: bool | None = None,
    verbose: bool = True,
    device: torch.device | str | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``objective.model`` by minimizing ``objective(batch).loss``.

    After every epoch (or ``cfg.validations`` evenly spaced ones and the last) the model is evaluated on ``val``;
    the weights with the best validation accuracy
    (or the lowest validation NLL, ``cfg.select = "nll"``: language models; or simply the last epoch's,
    ``"last"``: students with a label budget) are kept (and restored into the
    model at the end), so model selection never looks at test data. With ``cfg.ema`` every validation, and so the
    kept weights, are those of the weights' moving average (:mod:`kdistill.averaging`).
    With ``out_dir``, writes ``metrics.jsonl``, ``metrics.csv``, ``best.pt`` and ``last.pt`` there;
    ``last.pt`` holds everything needed to continue exactly (``resume=True``): weights, the objective's
    own state, optimizer, scheduler, RNG states, history and best-so-far, at the end of each epoch (of every
    ``epochs // 50``-th epoch in runs longer than 50 epochs, and of the last).
    Data order depends only on ``(seed, epoch)``, so a resumed run replays the interrupted epoch exactly.

    Under ``torchrun`` the objective is wrapped in DistributedDataParallel (its teacher excluded), each
    process takes its share of every global batch of ``cfg.batch_size``, training metrics are summed
    over processes, and only rank 0 writes files.
    """
    run = _Fit(objective, train, val, cfg, seed, out_dir, desc, progress, verbose, device)
    if resume:
        run.restore()
    run.write_metrics()  # the metrics file always matches the history (none on a fresh start)
    with _stop_between_steps():
        for epoch in range(run.start, run.cfg.epochs):
            sums, correct, seen = run.train_epoch(epoch)
            run.end_epoch(epoch, sums, correct, seen)
    return run.finish()


class _Fit:
    """One call of :func:`fit`: its set-up, and the state that ``last.pt`` keeps between epochs."""

    def __init__(
        self,
        objective: Objective,
        train: Split,
        val: Split,
        cfg: TrainConfig,
        seed: int,
        out_dir: Path | None,
        desc: str,
        progress: bool | None,
        verbose: bool,
        device: torch.device | str | None,
    ) -> None:
        self.objective, self.model = objective, objective.model
        self.device = torch.device(device) if device is not None else module_device(self.model)
        objective.to(self.device)
        torch.manual_seed(seed)
        params = [p for p in objective.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{desc}: the objective has no trainable parameters")
        self.rank, world = dist.rank(), dist.world()
        drop_last = len(train) > cfg.batch_size
        self.loader = BatchLoader(
            train,
            cfg.batch_size,
            shuffle=True,
            seed=seed,
            drop_last=drop_last,
            rank=self.rank,
            world=world,
            by_length=cfg.batching == "by_length",
        )
        if cfg.steps is not None:
            cfg = cfg.model_copy(update={"epochs": max(1, -(-cfg.steps // len(self.loader)))})
        self.cfg, self.train, self.val, self.seed, self.desc, self.verbose = cfg, train, val, seed, desc, verbose
        self.opt = make_optimizer(params, cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, make_lr_lambda(cfg, len(self.loader)))
        # Each process draws its own augmentations; the generator's state is saved with the checkpoint.
        self.augment = Augmenter(cfg.augment, torch.Generator().manual_seed(seed + 7919 + self.rank))
        self.runner = _wrap_distributed(objective, self.device) if world > 1 else objective
        # bf16 autocast: always on CUDA; on a CPU when asked for and its oneDNN has bf16 kernels (else float32,
        # said once: a silently slow run would be worse than a loud one).
        self.precision = "bf16" if self.device.type == "cuda" else "float32"
        if cfg.precision == "bf16" and self.device.type != "cuda":
            if bf16_supported(self.device):
                self.precision = "bf16"
            elif verbose and dist.is_main():
                print(f"  {desc}: precision bf16 asked for, but this CPU has no bf16 kernels: float32", flush=True)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        if cfg.memory_format == "channels_last":  # 4-D weights only; the input's layout follows the weights'
            objective.to(memory_format=torch.channels_last)
        self.progress = progress if progress is not None else sys.stderr.isatty() and dist.is_main()
        self.out_dir = out_dir
        self.writes = out_dir is not None and dist.is_main()
        if self.writes:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = _fit_fingerprint(cfg, train, seed, world)
        self.history: list[dict] = []
        self.best_acc, self.best_nll, self.best_epoch, self.best_state = -1.0, math.inf, -1, None
        self.seconds, self.start = 0.0, 0
        # The epochs that end with a validation: all of them, or evenly spaced ones and the last (cfg.validations)
        every = -(-cfg.epochs // cfg.validations) if cfg.validations else 1
        self.val_epochs = sorted({e for e in range(every, cfg.epochs + 1, every)} | {cfg.epochs})
        # Training sums of the epochs since the last validation (its row averages over them), kept in last.pt
        self.pending: dict = {"sums": {}, "correct": 0, "seen": 0, "epochs": 0}
        self.saved_epoch = 0  # the epoch that last.pt ends (what a resume continues from)
        # train.ema: validation, the kept epoch and best.pt see the averaged weights; last.pt keeps both
        self.ema = WeightAverage(self.model, cfg.ema) if cfg.ema is not None else None
        self.last_loss: float | None = None  # for the message when a loss turns non-finite

    # ------------------------------------------------------------------ restore

    def restore(self) -> None:
        """Continue from ``last.pt`` when there is one: every state the next epoch depends on."""
        last = self.out_dir / "last.pt" if self.out_dir is not None else None
        if last is None or not last.is_file():
            return
        ck = _load_resume(last, self.fingerprint, self.desc)
        self.model.load_state_dict(ck["state_dict"])
        _load_objective_state(self.objective, ck["objective_state"], last)
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        rng = ck["rng"][self.rank]
        torch.set_rng_state(rng["torch"])
        self.augment.generator.set_state(rng["aug"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.history, self.seconds, self.start = list(ck["history"]), float(ck["seconds"]), int(ck["epoch"])
        self.saved_epoch = self.start
        self.best_acc, self.best_epoch, self.best_state = float(ck["best_acc"]), int(ck["best_epoch"]), ck["best_state"]
        self.best_nll = float(ck.get("best_nll", math.inf))
        self.pending = ck.get("pending", self.pending)
        if self.ema is not None:
            self.ema.load_state_dict(ck["ema"])
        if self.verbose and dist.is_main():
            print(f"  {self.desc}: resumed from {last} after epoch {self.start}/{self.cfg.epochs}", flush=True)

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], int, int]:
        """One pass over the training data: per-part loss sums (weighted by batch rows), labelled rows right
        and seen."""
        self.objective.train()
        self.loader.set_epoch(epoch)
        self.objective.set_epoch(epoch)  # epoch-scheduled loss weights (e.g. DKD's warm-up)
        sums: dict[str, float] = {}
        correct = seen = 0
        t0 = time.perf_counter()
        show = self.progress and tqdm is not None
        bar = tqdm(self.loader, desc=f"{self.desc} {epoch + 1}/{self.cfg.epochs}", leave=False, disable=not show)
        for step, batch in enumerate(bar):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            batch = self.objective.student_batch(batch, epoch, self.seed, self.augment)
            out, self.last_loss = self._step(batch, epoch, step)
            n = batch["x"].shape[0]
            if _stop:
                raise RunInterrupted(
                    f"{self.desc}: {_stop[0]} at epoch {epoch + 1}, step {step + 1} of {len(self.loader)}; stopped "
                    f"after that step. Every file is whole; the last checkpoint is the end of epoch {self.saved_epoch}"
                )
            sums["loss"] = sums.get("loss", 0.0) + self.last_loss * n
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            y = batch["y"] if out.targets is None else out.targets
            if y.is_floating_point():  # regression targets: no accuracy to count
                continue
            # A class per row, or a next token per position ([B, L] with [B, L, V] logits); unlabelled rows (y < 0)
            # never equal an argmax, so no mask is needed to count the right ones (a boolean mask cost ~30 us a step)
            correct += int((out.logits.detach().argmax(-1) == y).sum())
            seen += int((y >= 0).sum())
        self.seconds += time.perf_counter() - t0
        return sums, correct, seen

    def _step(self, batch: Batch, epoch: int, step: int):  # noqa: ANN202 - (StepOutput, the loss as a float)
        with self.autocast:
            out = self.runner(batch)
        value = out.loss.item()
        if not math.isfinite(value):
            last = f"{self.last_loss:.4g}" if self.last_loss is not None else "none yet"
            raise FloatingPointError(
                f"{self.desc}: loss became {value} at epoch {epoch + 1}, step {step + 1} of "
                f"{len(self.loader)} (last finite loss: {last}); lower the learning rate (lr={self.cfg.lr} now) "
                "or a loss weight and run again (the last finished epoch is kept in last.pt)"
            )
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        _maybe_kill()
        return out, value

    # ------------------------------------------------------------------ end of an epoch

    def end_epoch(self, epoch: int, sums: dict[str, float], correct: int, seen: int) -> None:
        """Sum the training metrics over processes, evaluate, keep the best weights, write the checkpoint."""
        keys = sorted(sums)
        totals = dist.all_sum([sums[k] for k in keys] + [correct, seen])
        pend = self.pending
        for k, t in zip(keys, totals[:-2], strict=True):
            pend["sums"][k] = pend["sums"].get(k, 0.0) + t
        pend["correct"], pend["seen"], pend["epochs"] = (
            pend["correct"] + totals[-2],
            pend["seen"] + totals[-1],
            pend["epochs"] + 1,
        )
        if epoch + 1 in self.val_epochs:
            self._validate(epoch)
        # last.pt and metrics.jsonl after every epoch of a short run, ~50 times in all in a long one: a student of a
        # 2,000-image set runs 860 epochs, and writing (and fsyncing) both per epoch wrote ~2.6 GB per student.
        if (epoch + 1) % max(1, self.cfg.epochs // 50) == 0 or epoch + 1 == self.cfg.epochs:
            rngs = dist.gather_objects(self._rng_state())  # every rank's RNG, so that each resumes its own streams
            if self.writes:
                self.write_metrics()
                atomic_save(self._checkpoint(epoch, rngs), self.out_dir / "last.pt")
            self.saved_epoch = epoch + 1

    def _validate(self, epoch: int) -> None:
        """Evaluate, append the row (training metrics averaged over the epochs since the last one), keep the best
        weights."""
        pend = self.pending
        n_rows = len(self.loader) * self.loader.batch_size if self.loader.drop_last else len(self.train)
        n_rows *= pend["epochs"]
        dist.sync_buffers(self.model)  # every rank evaluates rank 0's model: same numbers, same best epoch
        with self.ema.applied(self.model) if self.ema is not None else nullcontext():
            v = self.objective.validate(self.val, self.cfg.eval_batch_size)
            if v is None:
                v = evaluate(self.model, self.val, self.cfg.eval_batch_size)
            select = self.cfg.select
            better = v.acc > self.best_acc if select == "acc" else v.nll < self.best_nll if select == "nll" else True
            # copied inside the block: leaving it copies the trained weights back into these very tensors
            state = {k: t.detach().clone() for k, t in self.model.state_dict().items()} if better else None
        row = {"epoch": epoch + 1, **{f"train_{k}": s / n_rows for k, s in pend["sums"].items()}}
        row["train_acc"] = pend["correct"] / pend["seen"] if pend["seen"] else float("nan")
        self.pending = {"sums": {}, "correct": 0, "seen": 0, "epochs": 0}
        row.update(v.as_dict("val"))
        row["lr"] = self.opt.param_groups[0]["lr"]
        row["seconds"] = round(self.seconds, 3)
        self.history.append(row)
        if better:
            self.best_acc, self.best_nll, self.best_epoch = v.acc, v.nll, epoch + 1
            self.best_state = state
            if self.writes:
                best = {"state_dict": self.best_state, "objective_state": objective_state(self.objective)}
                atomic_save({**best, "epoch": epoch + 1, "val_acc": v.acc}, self.out_dir / "best.pt")
        shown = len(self.history) - 1  # this validation's position among the run's
        every = max(1, len(self.val_epochs) // 10)
        if self.verbose and dist.is_main() and (len(self.val_epochs) <= 30 or (shown + 1) % every == 0):
            print(
                f"  {self.desc} epoch {epoch + 1}/{self.cfg.epochs}: loss {row['train_loss']:.4f} "
                f"val_acc {v.acc:.4f} ({self.seconds:.0f}s)",
                flush=True,
            )

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "aug": self.augment.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _checkpoint(self, epoch: int, rngs: list[dict]) -> dict:
        return {
            "state_dict": self.model.state_dict(),
            "objective_state": objective_state(self.objective),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": epoch + 1,
            "rng": rngs,
            "history": self.history,
            "seconds": self.seconds,
            "best_acc": self.best_acc,
            "best_nll": self.best_nll,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "pending": self.pending,
            "fingerprint": self.fingerprint,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def write_metrics(self) -> None:
        """``metrics.jsonl``, rewritten whole (atomically) so that it never holds half a line."""
        if self.writes:
            text = "".join(json.dumps(r) + "\n" for r in self.history)
            atomic_write_text(self.out_dir / "metrics.jsonl", text)

    def finish(self) -> FitResult:
        """Restore the best epoch's weights into the model; write ``metrics.csv``."""
        assert self.best_state is not None
        self.model.load_state_dict(self.best_state)
        if self.writes:
            write_metrics_csv(self.history, self.out_dir / "metrics.csv")
        steps = self.cfg.epochs * len(self.loader)
        return FitResult(self.best_epoch, self.best_acc, self.seconds, self.history, steps, self.precision)


def _wrap_distributed(objective: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the student and whatever the objective trains (adapters, heads).

    The frozen teacher is excluded from DDP's parameter and buffer handling: it has nothing to
    synchronise and broadcasting its buffers every step would be pure overhead.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    ignore = [n for n, _ in [*objective.named_parameters(), *objective.named_buffers()] if n.startswith("teacher.")]
    DDP._set_params_and_buffers_to_ignore_for_model(objective, ignore)
    # Terms with a warm-up are skipped while their weight is 0, leaving their adapters without grads.
    has_terms = len(getattr(objective, "terms", ())) > 0
    ids = [device.index] if device.type == "cuda" else None
    return DDP(objective, device_ids=ids, find_unused_parameters=has_terms)


def _fit_fingerprint(cfg: TrainConfig, train: Split, seed: int, world: int) -> dict:
    """What a checkpoint must agree on to be continued: recipe, data size, seed, number of processes."""
    return {"train": cfg.key(), "rows": len(train), "seed": seed, "world": world}


def _load_resume(path: Path, fingerprint: dict, desc: str) -> dict:
    ck = safe_load(path)
    needed = {"state_dict", "optimizer", "scheduler", "epoch", "rng", "history", "best_state", "fingerprint"}
    if not isinstance(ck, dict) or not needed <= set(ck):
        missing = sorted(needed - set(ck)) if isinstance(ck, dict) else sorted(needed)
        raise CheckpointError(f"{path} cannot be resumed: it lacks {', '.join(missing)} (an older kdistill's?)")
    diff = config_diff(ck["fingerprint"], fingerprint, "in the checkpoint")
    if diff:
        raise CheckpointError(f"{desc}: cannot resume from {path}, it was trained differently: " + "; ".join(diff))
    if len(ck["rng"]) != dist.world():
        raise CheckpointError(f"{path} was written by {len(ck['rng'])} processes, this run has {dist.world()}")
    return ck


def _load_objective_state(objective: nn.Module, state: dict, path: Path) -> None:
    missing, unexpected = objective.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("model.", "teacher."))]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the objective's state does not match (missing {missing}, unexpected {unexpected}); the "
            "checkpoint belongs to other loss terms"
        )


def objective_state(objective: nn.Module) -> dict[str, torch.Tensor]:
    """What the objective trains or keeps besides the student: adapters, embedding heads, memories.

    The student (``model.*``) is saved as ``state_dict`` on its own, and the frozen teacher (``teacher.*``)
    never changes, so neither is repeated here.
    """
    return {k: v for k, v in objective.state_dict().items() if not k.startswith(("model.", "teacher."))}


def write_metrics_csv(history: list[dict], path: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")
