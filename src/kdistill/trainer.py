"""The one training loop, for every role.

``fit`` knows nothing about distillation: it asks the objective for ``StepOutput(loss, parts,
logits)``, steps the optimizer, evaluates on validation data after each epoch, and writes metrics and
checkpoints. Teacher, scratch, KD and label-smoothing students differ only in their objective.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import AugmentConfig, TrainConfig
from kdistill.data import BatchLoader, Split
from kdistill.io import atomic_save, atomic_write_text

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    tqdm = None


# ----------------------------------------------------------------------------- augmentation


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random shift (pad + crop) and optional horizontal flip, per sample, on a whole batch.

    Padding uses the batch minimum, i.e. the background of normalized Fashion-MNIST/digits images,
    so a shifted image does not grow an artificial border.
    """
    if x.dim() != 4 or (cfg.shift == 0 and not cfg.flip):
        return x
    B, C, H, W = x.shape
    if cfg.shift > 0:
        p = cfg.shift
        xp = F.pad(x, (p, p, p, p), value=float(x.amin()))
        dy = torch.randint(0, 2 * p + 1, (B,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (B,), generator=gen)
        rows = (dy[:, None] + torch.arange(H)[None])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(W)[None])[:, None, None, :]
        x = xp[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    if cfg.flip:
        flip = torch.rand(B, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    acc: float
    errors: int
    nll: float
    n: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_acc": self.acc, f"{prefix}_errors": self.errors, f"{prefix}_nll": self.nll}


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(b["x"]).float() for b in BatchLoader(split, batch_size)])
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
) -> FitResult:
    """Train ``objective.model`` by minimizing ``objective(batch).loss``.

    After every epoch the model is evaluated on ``val``; the weights with the best validation accuracy
    are kept (and restored into the model at the end), so model selection never looks at test data.
    With ``out_dir``, writes ``metrics.jsonl``, ``metrics.csv``, ``best.pt`` and ``last.pt`` there.
    """
    model: nn.Module = objective.model
    torch.manual_seed(seed)
    params = [p for p in objective.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the objective has no trainable parameters")
    loader = BatchLoader(train, cfg.batch_size, shuffle=True, seed=seed, drop_last=len(train) > cfg.batch_size)
    if cfg.steps is not None:
        cfg = cfg.model_copy(update={"epochs": max(1, -(-cfg.steps // len(loader)))})
    opt = make_optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, make_lr_lambda(cfg, len(loader)))
    aug_gen = torch.Generator().manual_seed(seed + 7919)
    if progress is None:
        progress = sys.stderr.isatty()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)

    history: list[dict] = []
    best_acc, best_epoch, best_state = -1.0, -1, None
    seconds = 0.0
    for epoch in range(cfg.epochs):
        objective.train()
        loader.set_epoch(epoch)
        if hasattr(objective, "set_epoch"):
            objective.set_epoch(epoch)  # epoch-scheduled loss weights (e.g. DKD's warm-up)
        sums: dict[str, float] = {}
        correct = seen = 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress or tqdm is None)
        for batch in bar:
            batch["x"] = augment_batch(batch["x"], cfg.augment, aug_gen)
            out = objective(batch)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(
                    f"{desc}: loss became {out.loss.item()} at epoch {epoch + 1}; lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
            n = batch["x"].shape[0]
            sums["loss"] = sums.get("loss", 0.0) + out.loss.item() * n
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            labelled = batch["y"] >= 0
            correct += int((out.logits.detach().argmax(1)[labelled] == batch["y"][labelled]).sum())
            seen += int(labelled.sum())
        seconds += time.perf_counter() - t0
        n_rows = len(loader) * loader.batch_size if loader.drop_last else len(train)
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
            if out_dir is not None:
                atomic_save({"state_dict": best_state, "objective_state": objective_state(objective),
                             "epoch": epoch + 1, "val_acc": v.acc}, out_dir / "best.pt")  # fmt: skip
        if out_dir is not None:
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            atomic_save(
                {"state_dict": model.state_dict(), "objective_state": objective_state(objective),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch + 1},
                out_dir / "last.pt",
            )  # fmt: skip
        if verbose and (cfg.epochs <= 30 or (epoch + 1) % max(1, cfg.epochs // 10) == 0):
            print(
                f"  {desc} epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                f"val_acc {v.acc:.4f} ({seconds:.0f}s)",
                flush=True,
            )
    assert best_state is not None
    model.load_state_dict(best_state)
    if out_dir is not None:
        write_metrics_csv(history, out_dir / "metrics.csv")
    return FitResult(best_epoch, best_acc, seconds, history, steps=cfg.epochs * len(loader))


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
