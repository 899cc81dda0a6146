"""The one training loop, for every role.

``fit`` knows nothing about distillation: it asks the objective for ``StepOutput(loss, parts,
logits)``, steps the optimizer, evaluates on validation data after each epoch, and writes metrics and
checkpoints. Teacher, scratch, KD and label-smoothing students differ only in their objective.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdistill import dist
from kdistill.config import TrainConfig, config_diff
from kdistill.data import BatchLoader, Split
from kdistill.io import CheckpointError, atomic_save, atomic_write_text, safe_load
from kdistill.views import ViewCache, augment_batch

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    tqdm = None


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    acc: float
    errors: int
    nll: float
    n: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_acc": self.acc, f"{prefix}_errors": self.errors, f"{prefix}_nll": self.nll}


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    """Logits (float32, on the CPU) of ``model`` in eval mode on every row of ``split``, in order."""
    was = model.training
    model.eval()
    dev = model_device(model)
    out = torch.cat([model(b["x"].to(dev)).float().cpu() for b in BatchLoader(split, batch_size)])
    model.train(was)
    return out


def score(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Accuracy, error count and NLL of predictions already made (no second forward pass)."""
    correct = int((logits.argmax(1) == labels).sum())
    nll = float(F.cross_entropy(logits, labels))
    return EvalResult(acc=correct / len(labels), errors=len(labels) - correct, nll=nll, n=len(labels))


def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> EvalResult:
    return score(predict(model, split, batch_size), split.y)


# ----------------------------------------------------------------------------- optimizer


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
    if _steps_taken == int(os.environ.get("KDISTILL_KILL_AFTER_STEPS", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class FitResult:
    best_epoch: int
    best_val_acc: float
    train_seconds: float
    history: list[dict]
    steps: int = 0  # optimizer steps taken (seconds per step compares objectives across set sizes)


def fit(
    objective: nn.Module,
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

    After every epoch the model is evaluated on ``val``; the weights with the best validation accuracy
    are kept (and restored into the model at the end), so model selection never looks at test data.
    With ``out_dir``, writes ``metrics.jsonl``, ``metrics.csv``, ``best.pt`` and ``last.pt`` there;
    ``last.pt`` holds everything needed to continue exactly (``resume=True``): weights, the objective's
    own state, optimizer, scheduler, RNG states, history and best-so-far, at the end of each epoch.
    Data order depends only on ``(seed, epoch)``, so a resumed run replays the interrupted epoch exactly.

    Under ``torchrun`` the objective is wrapped in DistributedDataParallel (its teacher excluded), each
    process takes its share of every global batch of ``cfg.batch_size``, training metrics are summed
    over processes, and only rank 0 writes files.
    """
    model: nn.Module = objective.model
    device = torch.device(device) if device is not None else model_device(model)
    objective.to(device)
    torch.manual_seed(seed)
    params = [p for p in objective.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the objective has no trainable parameters")
    rank, world = dist.rank(), dist.world()
    drop_last = len(train) > cfg.batch_size
    loader = BatchLoader(train, cfg.batch_size, shuffle=True, seed=seed, drop_last=drop_last, rank=rank, world=world)
    if cfg.steps is not None:
        cfg = cfg.model_copy(update={"epochs": max(1, -(-cfg.steps // len(loader)))})
    opt = make_optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, make_lr_lambda(cfg, len(loader)))
    aug_gen = torch.Generator().manual_seed(seed + 7919 + rank)  # each process its own augmentation draws
    views = getattr(objective, "cache", None)
    views = views if isinstance(views, ViewCache) else None
    runner = _wrap_distributed(objective, device) if world > 1 else objective
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if progress is None:
        progress = sys.stderr.isatty() and dist.is_main()
    writes = out_dir is not None and dist.is_main()
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)

    history: list[dict] = []
    best_acc, best_epoch, best_state = -1.0, -1, None
    seconds, start = 0.0, 0
    fingerprint = _fit_fingerprint(cfg, train, seed, world)
    last = out_dir / "last.pt" if out_dir is not None else None
    if resume and last is not None and last.is_file():
        ck = _load_resume(last, fingerprint, desc)
        model.load_state_dict(ck["state_dict"])
        _load_objective_state(objective, ck["objective_state"], last)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        rng = ck["rng"][rank]
        torch.set_rng_state(rng["torch"])
        aug_gen.set_state(rng["aug"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        history, seconds, start = list(ck["history"]), float(ck["seconds"]), int(ck["epoch"])
        best_acc, best_epoch, best_state = float(ck["best_acc"]), int(ck["best_epoch"]), ck["best_state"]
        if verbose and dist.is_main():
            print(f"  {desc}: resumed from {last} after epoch {start}/{cfg.epochs}", flush=True)
    if writes:  # the metrics file always matches the history (none on a fresh start)
        atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    for epoch in range(start, cfg.epochs):
        objective.train()
        loader.set_epoch(epoch)
        if hasattr(objective, "set_epoch"):
            objective.set_epoch(epoch)  # epoch-scheduled loss weights (e.g. DKD's warm-up)
        sums: dict[str, float] = {}
        correct = seen = 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress or tqdm is None)
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if views is not None:
                batch = views.student_batch(batch, epoch, seed)  # exactly the views the teacher's rows belong to
            else:
                batch["x"] = augment_batch(batch["x"], cfg.augment, aug_gen)
            with autocast:
                out = runner(batch)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(
                    f"{desc}: loss became {out.loss.item()} at epoch {epoch + 1}; lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
            _maybe_kill()
            n = batch["x"].shape[0]
            sums["loss"] = sums.get("loss", 0.0) + out.loss.item() * n
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            labelled = batch["y"] >= 0
            correct += int((out.logits.detach().argmax(1)[labelled] == batch["y"][labelled]).sum())
            seen += int(labelled.sum())
        seconds += time.perf_counter() - t0
        keys = sorted(sums)
        totals = dist.all_sum([sums[k] for k in keys] + [correct, seen])
        sums, correct, seen = dict(zip(keys, totals[:-2], strict=True)), totals[-2], totals[-1]
        n_rows = len(loader) * loader.batch_size if loader.drop_last else len(train)
        dist.sync_buffers(model)  # every rank evaluates rank 0's model: same numbers, same best epoch
        v = evaluate(model, val, cfg.eval_batch_size)
        row = {"epoch": epoch + 1, **{f"train_{k}": s / n_rows for k, s in sums.items()}}
        row["train_acc"] = correct / seen if seen else float("nan")
        row.update(v.as_dict("val"))
        row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = round(seconds, 3)
        history.append(row)
        if v.acc > best_acc:
            best_acc, best_epoch = v.acc, epoch + 1
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            if writes:
                atomic_save({"state_dict": best_state, "objective_state": objective_state(objective),
                             "epoch": epoch + 1, "val_acc": v.acc}, out_dir / "best.pt")  # fmt: skip
        rng = {"torch": torch.get_rng_state(), "aug": aug_gen.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        rngs = dist.gather_objects(rng)  # every rank's RNG, so that each one resumes its own streams
        if writes:
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            atomic_save(
                {"state_dict": model.state_dict(), "objective_state": objective_state(objective),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch + 1,
                 "rng": rngs, "history": history, "seconds": seconds, "best_acc": best_acc,
                 "best_epoch": best_epoch, "best_state": best_state, "fingerprint": fingerprint},
                out_dir / "last.pt",
            )  # fmt: skip
        if verbose and dist.is_main() and (cfg.epochs <= 30 or (epoch + 1) % max(1, cfg.epochs // 10) == 0):
            print(
                f"  {desc} epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                f"val_acc {v.acc:.4f} ({seconds:.0f}s)",
                flush=True,
            )
    assert best_state is not None
    model.load_state_dict(best_state)
    if writes:
        write_metrics_csv(history, out_dir / "metrics.csv")
    return FitResult(best_epoch, best_acc, seconds, history, steps=cfg.epochs * len(loader))


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
    return {"train": cfg.model_dump(mode="json"), "rows": len(train), "seed": seed, "world": world}


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
        raise CheckpointError(f"{path}: the objective's state does not match (missing {missing}, unexpected "
                              f"{unexpected}); the checkpoint belongs to other loss terms")  # fmt: skip


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
